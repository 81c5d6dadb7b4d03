from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from dayu.distributor.core import DistributorCore, GoldenSampler, LatestTasks
from dayu.distributor.store import RecordStore
from dayu.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from dayu.v1 import distributor_pb2, task_pb2, types_pb2

from conftest import make_task


def finished_task(stream: str = "stream-1") -> task_pb2.Task:
    task = make_task()
    task.stream_id = stream
    for stage in task.dag.stages:
        stage.state = task_pb2.STAGE_STATE_DONE
    return task


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[DistributorCore]:
    core = DistributorCore(RecordStore(tmp_path / "records.sqlite"))
    await core.start()
    yield core
    await core.close()


async def test_delivered_twice_is_stored_once_and_survives_reopen(core: DistributorCore, tmp_path: Path) -> None:
    task = finished_task()
    first = await core.deliver(task)
    again = await core.deliver(task)
    assert again == (first[0], True) and core.duplicates == 1
    await core.close()
    reopened = RecordStore(tmp_path / "records.sqlite")
    (record,), _ = reopened.query(distributor_pb2.RecordFilter(), 10)
    assert record.task.task_id == task.task_id and record.cursor == first[0]
    assert record.outcome == task_pb2.TASK_OUTCOME_DELIVERED
    # One INSERT wrote the whole record; the cursor comes from its column, not the blob.
    with sqlite3.connect(tmp_path / "records.sqlite") as db:
        ((sequence, blob),) = db.execute("SELECT sequence, record FROM records").fetchall()
    stored = task_pb2.TaskRecord.FromString(blob)
    assert sequence == task.sequence and stored.cursor == 0 and stored.task.task_id == task.task_id
    reopened.close()


async def test_the_same_stream_and_sequence_is_stored_once(core: DistributorCore) -> None:
    first = finished_task("cam")
    cursor, duplicate = await core.deliver(first)
    assert not duplicate
    other = finished_task("cam")  # another task id, the same place in the stream
    other.sequence = first.sequence
    assert await core.deliver(other) == (cursor, True)
    assert await core.record_drop(other, "late: 9.0 s old") == (cursor, True)
    (record,), _ = await core.query(distributor_pb2.RecordFilter(), 0)
    assert record.task.task_id == first.task_id and core.duplicates == 2


async def test_records_keep_original_tasks_with_a_storable_sequence(core: DistributorCore) -> None:
    copy = finished_task()
    copy.task_id = "4f0b7e56-0f6c-4b36-9d3b-1f4f0a0f0c01"  # a forked copy: not the root
    with pytest.raises(InvalidArgument, match=r"^task.root_id"):
        await core.deliver(copy)
    huge = finished_task()
    huge.sequence = 2**63
    with pytest.raises(InvalidArgument, match=r"^task.sequence"):
        await core.record_drop(huge, "late")


async def test_latency_is_the_tasks_own_age_not_a_difference_of_clocks(core: DistributorCore) -> None:
    task = finished_task()
    task.created_at.FromSeconds(int(time.time()) - 3600)  # the generator's clock, an hour off
    task.age_s = 1.25
    await core.deliver(task)
    dropped = make_task()
    dropped.age_s = 0.5
    await core.record_drop(dropped, "join timed out after 5 s")
    records, _ = await core.query(distributor_pb2.RecordFilter(), 0)
    assert [r.latency_s for r in records] == [1.25, 0.5]


# The schema before sequence numbers were unique (PRAGMA user_version 0), and how it stored records.
FIRST_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    cursor     INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    TEXT NOT NULL UNIQUE,
    stream_id  TEXT NOT NULL,
    outcome    INTEGER NOT NULL,
    stored_at  REAL NOT NULL,
    record     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_stream ON records (stream_id, cursor);
CREATE INDEX IF NOT EXISTS records_by_time ON records (stored_at);
"""


def first_schema_db(path: Path, tasks: list[task_pb2.Task], torn: int = 0) -> None:
    """A database as the first schema left it: each record inserted then updated with its cursor,
    and `torn` rows whose update a crash prevented (an empty blob)."""
    with sqlite3.connect(path) as db:
        db.executescript(FIRST_SCHEMA)
        for task in tasks:
            record = task_pb2.TaskRecord(task=task, outcome=task_pb2.TASK_OUTCOME_DELIVERED)
            (cursor,) = db.execute(
                "INSERT INTO records (task_id, stream_id, outcome, stored_at, record) VALUES (?, ?, 1, 0, x'') "
                "RETURNING cursor",
                (task.task_id, task.stream_id),
            ).fetchone()
            record.cursor = cursor
            db.execute("UPDATE records SET record = ? WHERE cursor = ?", (record.SerializeToString(), cursor))
        for i in range(torn):
            db.execute(
                "INSERT INTO records (task_id, stream_id, outcome, stored_at, record) VALUES (?, 'cam', 2, 0, x'')",
                (f"torn-{i}",),
            )
    db.close()


async def test_a_database_of_the_first_schema_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    tasks = [finished_task("cam") for _ in range(3)]
    for sequence, task in zip((0, 1, 3), tasks, strict=True):
        task.sequence = sequence
    first_schema_db(path, tasks, torn=2)
    core = DistributorCore(RecordStore(path))
    await core.start()
    assert core.gaps.missing("cam") == [2]  # what the old runs never recorded
    again = finished_task("cam")
    again.sequence = 1
    assert await core.deliver(again) == (2, True)
    records, _ = await core.query(distributor_pb2.RecordFilter(), 0)
    await core.close()
    assert [(r.cursor, r.task.task_id) for r in records] == [
        (1, tasks[0].task_id),
        (2, tasks[1].task_id),
        (3, tasks[2].task_id),
        (4, ""),  # torn by a crash under the first schema: kept as it was
        (5, ""),
    ]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
        assert db.execute("SELECT sequence FROM records ORDER BY cursor").fetchall() == [
            (0,),
            (1,),
            (3,),
            (None,),
            (None,),
        ]
    db.close()
    RecordStore(path).close()  # opening it again changes nothing


async def test_a_first_schema_database_with_a_sequence_stored_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    tasks = [finished_task("cam") for _ in range(2)]
    tasks[0].sequence = tasks[1].sequence = 7
    first_schema_db(path, tasks)
    with pytest.raises(FailedPrecondition, match=rf"^{path}: stream cam has sequence 7 stored 2 times"):
        RecordStore(path)
    with sqlite3.connect(path) as db:  # left as it was
        assert db.execute("PRAGMA user_version").fetchone() == (0,)
        assert "sequence" not in {row[1] for row in db.execute("PRAGMA table_info(records)")}
    db.close()


def test_a_database_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 9")
    db.close()
    with pytest.raises(FailedPrecondition, match=rf"^{path}: records of schema version 9"):
        RecordStore(path)


class SlowStore(RecordStore):
    """A store whose writes take 0.3 s, noting the thread they ran on."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.threads: list[str] = []

    def put_all(self, records: Iterable[task_pb2.TaskRecord]) -> list[tuple[int, bool]]:
        self.threads.append(threading.current_thread().name)
        time.sleep(0.3)
        return super().put_all(records)


async def test_store_calls_run_on_the_worker_thread_not_the_event_loop(tmp_path: Path) -> None:
    core = DistributorCore(SlowStore(tmp_path / "records.sqlite"))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(tick())
    await core.deliver(finished_task())
    ticking.cancel()
    await core.close()
    assert ticks >= 10  # the loop went on while SQLite wrote
    assert core.store.threads == ["distributor-store_0"]


async def test_pending_stage_is_not_deliverable_but_droppable(core: DistributorCore) -> None:
    task = make_task()
    with pytest.raises(InvalidArgument, match=r"^task.dag.stages\[0\].state"):
        await core.deliver(task)
    with pytest.raises(InvalidArgument, match=r"^reason"):
        await core.record_drop(task, " ")
    await core.record_drop(task, "join timed out after 5 s")
    (record,), _ = await core.query(distributor_pb2.RecordFilter(), 0)
    assert (record.outcome, record.reason) == (task_pb2.TASK_OUTCOME_DROPPED, "join timed out after 5 s")


async def test_query_pages_by_cursor_and_stream_and_exports_jsonl(core: DistributorCore) -> None:
    for i in range(5):
        await core.deliver(finished_task("a" if i % 2 == 0 else "b"))
    page, next_cursor = await core.query(distributor_pb2.RecordFilter(stream_id="a"), 2)
    assert len(page) == 2 and next_cursor == page[-1].cursor
    rest, last = await core.query(distributor_pb2.RecordFilter(stream_id="a", after_cursor=next_cursor), 2)
    assert len(rest) == 1 and last == 0
    chunks = [chunk async for chunk in core.export(distributor_pb2.RecordFilter())]
    lines = gzip.decompress(b"".join(chunks)).splitlines()
    assert [json.loads(line)["task"]["stream_id"] for line in lines] == ["a", "b", "a", "b", "a"]
    assert [json.loads(line)["cursor"] for line in lines] == ["1", "2", "3", "4", "5"]
    with pytest.raises(InvalidArgument, match=r"^limit"):
        await core.query(distributor_pb2.RecordFilter(), 5000)
    with pytest.raises(InvalidArgument, match=r"^filter.stream_id"):
        await anext(core.export(distributor_pb2.RecordFilter(stream_id="no spaces")))


async def test_a_page_ends_at_its_byte_budget_and_a_record_has_a_size_limit(core: DistributorCore) -> None:
    for _ in range(3):
        task = finished_task()
        task.dag.stages[0].error = "e" * 3000  # about 3 KB a record
        await core.deliver(task)
    records, more = core.store.query(distributor_pb2.RecordFilter(), 10, page_bytes=7000)
    assert len(records) == 2 and more  # the third would pass 7000 bytes: the next page has it
    rest, more = core.store.query(distributor_pb2.RecordFilter(after_cursor=records[-1].cursor), 10, page_bytes=7000)
    assert len(rest) == 1 and not more
    huge = finished_task()
    for _ in range(1000):
        huge.hops.add(component="controller", node="n" * 5000)  # 5 MB, past RECORD_BYTES
    with pytest.raises(ResourceExhausted, match=r"^task: at most 4194304 bytes without its frames"):
        await core.deliver(huge)


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
    task.age_s = 0.1
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
    records, _ = await core.query(distributor_pb2.RecordFilter(), 10)
    await core.close()
    # One task in two is measured: the first (1 box per frame, all matched), the third; the fifth has truth.
    assert [r.accuracy if r.HasField("accuracy") else None for r in records] == [1.0, None, 1.0, None, 1.0]
    assert golden.calls == 2
    assert all(not r.task.segment.frames for r in records)  # records keep results, not data
    stored_after = (records[0].stored_at.ToNanoseconds() - records[0].task.created_at.ToNanoseconds()) / 1e9
    assert records[0].latency_s == 0.1 and stored_after >= 0.3  # the golden run is not the task's latency


async def test_a_failing_golden_reference_leaves_the_record_without_accuracy(tmp_path: Path) -> None:
    core = DistributorCore(
        RecordStore(tmp_path / "records.sqlite"), golden=GoldenSampler(ScriptedGolden(fail=True), 1, 5)
    )
    await core.deliver(detector_task())
    (record,), _ = await core.query(distributor_pb2.RecordFilter(), 10)
    await core.close()
    assert record.outcome == task_pb2.TASK_OUTCOME_DELIVERED and not record.HasField("accuracy")


# Found by the fuzz (tests/integration/test_fuzz.py): each of these answered INTERNAL, and the stored
# timestamp made every later export fail.


@pytest.mark.parametrize(
    ("where", "field"),
    [
        (distributor_pb2.RecordFilter(after_cursor=2**63), "filter.after_cursor"),  # past SQLite's integers
    ],
)
async def test_a_filter_past_what_the_store_reads_is_invalid(
    core: DistributorCore, where: distributor_pb2.RecordFilter, field: str
) -> None:
    with pytest.raises(InvalidArgument, match=rf"^{field}:"):
        await core.query(where, 10)
    with pytest.raises(InvalidArgument, match=rf"^{field}:"):
        async for _ in core.export(where):
            pass
    with pytest.raises(InvalidArgument, match=rf"^{field}:"):
        async for _ in core.watch(where):
            pass


async def test_the_last_second_of_year_9999_is_stored_and_exported(core: DistributorCore) -> None:
    # Times that protobuf cannot read back are refused at the door (validation.check_request).
    good = finished_task()
    good.created_at.FromSeconds(253_402_300_799)  # the last second of year 9999 is fine
    await core.deliver(good)
    chunks = [chunk async for chunk in core.export(distributor_pb2.RecordFilter())]
    (line,) = gzip.decompress(b"".join(chunks)).splitlines()
    assert json.loads(line)["task"]["task_id"] == good.task_id


async def test_the_last_delivered_task_of_a_stream_is_kept_with_its_frames(core: DistributorCore) -> None:
    with pytest.raises(NotFound, match="no task of stream 'cam' was delivered with its frames"):
        core.latest_task("cam")
    first, last = finished_task("cam"), finished_task("cam")
    first.segment.frames[:] = [b"frame"]
    last.segment.frames[:] = [b"frame 0", b"frame 1"]
    await core.deliver(first)
    await core.deliver(last)
    await core.record_drop(finished_task("cam"), "late")  # a drop is no delivered task
    kept = core.latest_task("cam")
    assert kept.task.task_id == last.task_id and kept.outcome == task_pb2.TASK_OUTCOME_DELIVERED
    assert list(kept.task.segment.frames) == [b"frame 0", b"frame 1"]  # as Deliver received them
    (stored,), _ = await core.query(distributor_pb2.RecordFilter(after_cursor=1), 1)
    assert kept.cursor == stored.cursor and not stored.task.segment.frames  # the record keeps none
    await core.deliver(last)  # a duplicate is not delivered again
    assert core.latest_task("cam").task.task_id == last.task_id
    # Controllers send a segment with ground truth without its frames, but for a preview every 2 s: the
    # task kept is the last that came with them (the console's latest frame; none are made up).
    ground_truth = finished_task("cam")
    ground_truth.segment.ClearField("frames")
    await core.deliver(ground_truth)
    assert core.latest_task("cam").task.task_id == last.task_id
    assert list(core.latest_task("cam").task.segment.frames) == [b"frame 0", b"frame 1"]
    only_without = finished_task("other")
    only_without.segment.ClearField("frames")
    await core.deliver(only_without)
    with pytest.raises(NotFound, match="no task of stream 'other' was delivered with its frames"):
        core.latest_task("other")
    with pytest.raises(InvalidArgument, match=r"^stream_id:"):
        core.latest_task("not an id")


def test_latest_tasks_are_bounded_in_streams_and_bytes_least_recently_delivered_forgotten_first() -> None:
    latest = LatestTasks(max_streams=2, max_bytes=10_000)

    def deliver(stream: str, frame_bytes: int = 10) -> None:
        task = finished_task(stream)
        del task.segment.frames[:]  # as stored
        latest.keep(task_pb2.TaskRecord(task=task), [b"f" * frame_bytes], b"")

    deliver("a")
    deliver("b")
    deliver("a")  # a again: b is the least recently delivered
    deliver("c")
    assert latest.get("a") and latest.get("c")
    with pytest.raises(NotFound):
        latest.get("b")
    deliver("d", frame_bytes=9_500)  # past the bytes: the others go, the one just delivered stays
    for gone in ("a", "c"):
        with pytest.raises(NotFound):
            latest.get(gone)
    deliver("e", frame_bytes=20_000)  # alone past the bytes: kept all the same
    assert [len(frame) for frame in latest.get("e").task.segment.frames] == [20_000]
    with pytest.raises(NotFound):
        latest.get("d")


def test_a_query_gives_the_newest_records_first_when_asked(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.sqlite")
    for sequence in range(5):
        task = make_task()
        task.stream_id, task.sequence = "cam", sequence
        store.put(task_pb2.TaskRecord(task=task, outcome=task_pb2.TASK_OUTCOME_DELIVERED))
    where = distributor_pb2.RecordFilter(stream_id="cam")
    newest, more = store.query(where, 2, newest_first=True)
    assert [r.task.sequence for r in newest] == [4, 3] and more
    oldest, _ = store.query(where, 2)
    assert [r.task.sequence for r in oldest] == [0, 1]
