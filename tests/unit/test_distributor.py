from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import pytest

from dayu.distributor.core import DistributorCore, GoldenSampler
from dayu.distributor.store import RecordStore
from dayu.runtime.errors import InvalidArgument
from dayu.v1 import distributor_pb2, task_pb2, types_pb2

from conftest import make_task


def finished_task(stream: str = "stream-1") -> task_pb2.Task:
    task = make_task()
    task.stream_id = stream
    for stage in task.dag.stages:
        stage.state = task_pb2.STAGE_STATE_DONE
    return task


@pytest.fixture
def core(tmp_path: Path) -> DistributorCore:
    return DistributorCore(RecordStore(tmp_path / "records.sqlite"))


async def test_delivered_twice_is_stored_once_and_survives_reopen(core: DistributorCore, tmp_path: Path) -> None:
    task = finished_task()
    first = await core.deliver(task)
    again = await core.deliver(task)
    assert again == (first[0], True)
    core.store.close()
    reopened = RecordStore(tmp_path / "records.sqlite")
    (record,) = reopened.query(distributor_pb2.RecordFilter(), 10)
    assert record.task.task_id == task.task_id and record.cursor == first[0]
    assert record.outcome == task_pb2.TASK_OUTCOME_DELIVERED


async def test_pending_stage_is_not_deliverable_but_droppable(core: DistributorCore) -> None:
    task = make_task()
    with pytest.raises(InvalidArgument, match=r"^task.dag.stages\[0\].state"):
        await core.deliver(task)
    with pytest.raises(InvalidArgument, match=r"^reason"):
        await core.record_drop(task, " ")
    await core.record_drop(task, "join timed out after 5 s")
    (record,), _ = core.query(distributor_pb2.RecordFilter(), 0)
    assert (record.outcome, record.reason) == (task_pb2.TASK_OUTCOME_DROPPED, "join timed out after 5 s")


async def test_query_pages_by_cursor_and_stream_and_exports_jsonl(core: DistributorCore) -> None:
    for i in range(5):
        await core.deliver(finished_task("a" if i % 2 == 0 else "b"))
    page, next_cursor = core.query(distributor_pb2.RecordFilter(stream_id="a"), 2)
    assert len(page) == 2 and next_cursor == page[-1].cursor
    rest, last = core.query(distributor_pb2.RecordFilter(stream_id="a", after_cursor=next_cursor), 2)
    assert len(rest) == 1 and last == 0
    lines = gzip.decompress(b"".join(core.export(distributor_pb2.RecordFilter()))).splitlines()
    assert [json.loads(line)["task"]["stream_id"] for line in lines] == ["a", "b", "a", "b", "a"]
    with pytest.raises(InvalidArgument, match=r"^limit"):
        core.query(distributor_pb2.RecordFilter(), 5000)


async def test_watch_yields_new_records(core: DistributorCore) -> None:
    await core.deliver(finished_task())
    watched = core.watch(distributor_pb2.RecordFilter())
    assert (await anext(watched)).cursor == 1
    later = asyncio.create_task(anext(watched))
    await asyncio.sleep(0.05)
    assert not later.done()
    await core.deliver(finished_task())
    assert (await asyncio.wait_for(later, 5)).cursor == 2


def detector_task(boxes_per_frame: int = 1) -> task_pb2.Task:
    """A finished task whose detector found `boxes_per_frame` boxes on each frame of a 320x180 segment
    (a 640x360 source), carrying its (undecoded) frames and no ground truth."""
    task = finished_task()
    task.segment.resolution.width, task.segment.resolution.height = 320, 180
    task.segment.source_resolution.width, task.segment.source_resolution.height = 640, 360
    detect = task.dag.stages[0]
    for index in task.segment.frame_indices:
        found = detect.results.add(frame_index=index)
        for i in range(boxes_per_frame):
            found.detections.add(box=types_pb2.Box(x1=10 + 50 * i, y1=10, x2=40 + 50 * i, y2=30), label="plate")
    return task


class ScriptedGolden:
    """Golden detections at the source's resolution: one box per frame, where the detector's first box is."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s, self.fail, self.calls = delay_s, fail, 0

    async def detect(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> list[types_pb2.FrameDetections]:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("golden processor down")
        box = types_pb2.Box(x1=20, y1=20, x2=80, y2=60)
        return [types_pb2.FrameDetections(frame_index=i, detections=[{"box": box}]) for i in task.segment.frame_indices]


async def test_tasks_without_ground_truth_are_sampled_against_the_golden_configuration(tmp_path: Path) -> None:
    golden = ScriptedGolden(delay_s=0.3)
    core = DistributorCore(RecordStore(tmp_path / "records.sqlite"), golden=GoldenSampler(golden, 2, timeout_s=5))
    for boxes in (1, 2, 1, 1):
        await core.deliver(detector_task(boxes))
    with_truth = detector_task()
    for index in with_truth.segment.frame_indices:
        with_truth.segment.ground_truth.add(
            frame_index=index, detections=[{"box": types_pb2.Box(x1=20, y1=20, x2=80, y2=60)}]
        )
    await core.deliver(with_truth)
    records, _ = core.query(distributor_pb2.RecordFilter(), 10)
    # One task in two is measured: the first (1 box per frame, all matched), the third; the fifth has truth.
    assert [r.accuracy if r.HasField("accuracy") else None for r in records] == [1.0, None, 1.0, None, 1.0]
    assert golden.calls == 2
    assert all(not r.task.segment.frames for r in records)  # records keep results, not data
    stored_after = (records[0].stored_at.ToNanoseconds() - records[0].task.created_at.ToNanoseconds()) / 1e9
    assert records[0].latency_s < 0.3 <= stored_after  # the golden run is not the task's latency


async def test_a_failing_golden_reference_leaves_the_record_without_accuracy(tmp_path: Path) -> None:
    core = DistributorCore(
        RecordStore(tmp_path / "records.sqlite"), golden=GoldenSampler(ScriptedGolden(fail=True), 1, 5)
    )
    await core.deliver(detector_task())
    (record,), _ = core.query(distributor_pb2.RecordFilter(), 10)
    assert record.outcome == task_pb2.TASK_OUTCOME_DELIVERED and not record.HasField("accuracy")
