"""Bytes that need not move do not: a task's frames cross each emulated link at most once on their way
through a fork and a join whose branches run on another node, and a processor answers with the stage it
ran, not the task. Counted by the controllers' link emulators (GetLinkStats), per task."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from dayu.controller.core import ControllerCore
from dayu.controller.journal import TaskJournal, task_key
from dayu.mesh.embedded import Mesh
from dayu.mesh.model import MeshConfig
from dayu.runtime import retry
from dayu.runtime.errors import RemoteError
from dayu.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    distributor_pb2,
    distributor_pb2_grpc,
    processor_pb2,
    processor_pb2_grpc,
    task_pb2,
    types_pb2,
)

from conftest import FORK_JOIN_PIPELINES, fork_join_pipeline, make_task

FRAME_BYTES = 100_000  # two frames a task: 200 kB of frames against a few kB of everything else
FRAMES = 2 * FRAME_BYTES
SLACK = 10_000  # what a task carries besides its frames (DAG, results, hops), with room to spare


@pytest.fixture
async def mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "pipelines.yaml").write_text(FORK_JOIN_PIPELINES)
    config = MeshConfig.model_validate(
        {
            "nodes": {"cloud": {"processors": ["noop"]}, "edge-1": {"processors": ["noop"]}},
            "links": [{"between": ["edge-1", "cloud"], "bandwidth_mbps": 1000, "delay_ms": 1}],
            "pipelines_file": str(tmp_path / "pipelines.yaml"),
            "processors": {"noop": {"workers": 2}},
            "join_timeout_s": 5,
        }
    )
    mesh = Mesh(config, tmp_path)
    await mesh.start()
    yield mesh
    await mesh.abort()


def big_task(**placement: str) -> task_pb2.Task:
    """The fork/join task (detect -> classify, count -> merge) placed as given, with 200 kB of frames and
    ground truth (so a delivery carries no frames, but for the console's preview)."""
    task = make_task(fork_join_pipeline())
    for stage in task.dag.stages:
        stage.node = placement[stage.spec.name]
    del task.segment.frames[:]
    task.segment.frames.extend([b"\xff" * FRAME_BYTES] * 2)
    task.segment.ground_truth.add(frame_index=0)
    task.segment.resolution.width, task.segment.resolution.height = 640, 360
    task.segment.source_resolution.CopyFrom(task.segment.resolution)
    return task


async def link_bytes(mesh: Mesh) -> dict[tuple[str, str], int]:
    """Task bytes each controller's link emulator sent so far, per (from, to)."""
    sent = {}
    for node in ("edge-1", "cloud"):
        async with grpc.aio.insecure_channel(mesh.addresses[f"controller@{node}"]) as channel:
            stub = controller_pb2_grpc.ControllerServiceStub(channel)
            stats = await stub.GetLinkStats(controller_pb2.GetLinkStatsRequest(), timeout=5)
        sent.update({(link.from_node, link.to_node): link.bytes_sent for link in stats.links})
    return sent


async def run(mesh: Mesh, task: task_pb2.Task) -> tuple[task_pb2.TaskRecord, dict[tuple[str, str], int]]:
    """Submits the task on edge-1; its record and the bytes each link carried meanwhile."""
    before = await link_bytes(mesh)
    async with grpc.aio.insecure_channel(mesh.addresses["controller@edge-1"]) as channel:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        await stub.SubmitTask(controller_pb2.SubmitTaskRequest(task=task), timeout=5)
    async with grpc.aio.insecure_channel(mesh.addresses["distributor"]) as channel:
        stub = distributor_pb2_grpc.DistributorServiceStub(channel)
        for _ in range(100):
            reply = await stub.QueryRecords(distributor_pb2.QueryRecordsRequest(), timeout=5)
            found = [r for r in reply.records if r.task.task_id == task.task_id]
            if found:
                break
            await asyncio.sleep(0.05)
    assert found, "the task never reached the distributor"
    await asyncio.sleep(0.2)  # nothing more in flight for it
    after = await link_bytes(mesh)
    return found[0], {link: after[link] - before.get(link, 0) for link in after}


@pytest.mark.parametrize(
    "placement",
    [
        # Both branches and the join on the cloud: the task crosses once, and is forked there.
        {"detect": "edge-1", "classify": "cloud", "count": "cloud", "merge": "cloud"},
        # Both branches on the cloud, the join back on edge-1: the frames cross each way once.
        {"detect": "edge-1", "classify": "cloud", "count": "cloud", "merge": "edge-1"},
        # One branch here, one on the cloud, the join on the cloud: the local branch joins without frames.
        {"detect": "edge-1", "classify": "edge-1", "count": "cloud", "merge": "cloud"},
    ],
    ids=["join-on-cloud", "join-back-on-edge", "one-branch-local"],
)
async def test_frames_cross_each_link_once_through_a_fork_and_join(mesh: Mesh, placement: dict[str, str]) -> None:
    await run(mesh, big_task(**placement))  # the stream's first delivery keeps its frames (the console's preview)
    record, sent = await run(mesh, big_task(**placement))

    assert record.outcome == task_pb2.TASK_OUTCOME_DELIVERED, record.reason
    stages = {s.spec.name: s for s in record.task.dag.stages}
    assert {name: s.executed_on for name, s in stages.items()} == placement
    for stage in stages.values():
        assert stage.state == task_pb2.STAGE_STATE_DONE
        assert [r.frame_index for r in stage.results] == [0, 1]
    # The controllers time each crossing: the stages the task crossed a link to run count it as theirs.
    assert stages["detect"].timings.transfer_s == 0
    for name in ("classify", "count"):
        crossed = placement[name] != "edge-1"
        assert (stages[name].timings.transfer_s > 0) == crossed, (name, stages[name].timings)
    # The frames went to the cloud once, forked there or not, and came back at most once.
    assert FRAMES <= sent[("edge-1", "cloud")] < FRAMES + SLACK, sent
    back = FRAMES if placement["merge"] == "edge-1" else 0
    assert back <= sent[("cloud", "edge-1")] < back + SLACK, sent


async def test_a_processor_answers_with_the_stage_not_the_task(mesh: Mesh) -> None:
    task = big_task(detect="edge-1", classify="edge-1", count="edge-1", merge="edge-1")
    async with grpc.aio.insecure_channel(mesh.addresses["processor@edge-1/noop"]) as channel:
        stub = processor_pb2_grpc.ProcessorServiceStub(channel)
        reply = await stub.Process(processor_pb2.ProcessRequest(task=task, stage="detect"), timeout=5)

    assert not reply.HasField("task")
    assert reply.stage.spec.name == "detect" and reply.stage.state == task_pb2.STAGE_STATE_DONE
    assert reply.stage.executed_on == "edge-1" and reply.stage.timings.process_s >= 0
    assert [r.frame_index for r in reply.stage.results] == [0, 1]
    assert reply.ByteSize() < 1_000 < FRAMES  # the stage's result, not the 200 kB of frames
    assert task.segment.codec == types_pb2.CODEC_JPEG


class EdgeTwoAway:
    """What edge-1's controller sees: its processor runs any stage, edge-2 stays unreachable, the cloud
    takes what it is sent."""

    def __init__(self) -> None:
        self.forwarded: list[tuple[str, task_pb2.Task]] = []
        self.dropped: list[str] = []

    async def process(self, kind: str, task: task_pb2.Task, stage: str) -> task_pb2.TaskStage:
        (done,) = (task_pb2.TaskStage(spec=s.spec, node=s.node) for s in task.dag.stages if s.spec.name == stage)
        done.state, done.executed_on = task_pb2.STAGE_STATE_DONE, "edge-1"
        return done

    async def forward(self, node: str, task: task_pb2.Task, timeout_s: float) -> None:
        if node == "edge-2":
            raise RemoteError("UNAVAILABLE", "edge-2 away")
        copy = task_pb2.Task()
        copy.CopyFrom(task)
        self.forwarded.append((node, copy))

    async def deliver(self, task: task_pb2.Task, timeout_s: float) -> None: ...

    async def probe(self, node: str, nbytes: int) -> None: ...

    async def record_drop(self, task: task_pb2.Task, reason: str) -> None:
        self.dropped.append(reason)


async def test_branches_for_an_unreachable_node_fall_back_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "RETRY_S", (0.01, 0.05))
    mesh = EdgeTwoAway()
    core = ControllerCore("edge-1", "cloud", {"edge-2"}, {"noop"}, {}, mesh, patience_s=0.5)
    task = big_task(detect="edge-1", classify="edge-2", count="edge-2", merge="cloud")
    for stage in task.dag.stages[1:3]:
        stage.spec.processor = "gpu"  # not on edge-1: they fall back to the cloud
    await core.submit(task, "")
    for _ in range(300):
        await asyncio.sleep(0.01)
        if not core._work:
            break

    # The branches went to edge-2 together, and on to the cloud together: one transfer of the frames.
    ((node, sent),) = mesh.forwarded
    assert node == "cloud" and not mesh.dropped
    assert not sent.branch and sent.task_id == task.task_id  # the task itself: the cloud forks it
    assert [s.node for s in sent.dag.stages] == ["edge-1", "cloud", "cloud", "cloud"]
    assert core.stats.fallbacks == 2 and core.stats.forks == 0


async def test_a_finished_stage_is_journaled_alone_and_resumed_with_its_task(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    journal = TaskJournal(path)
    task = big_task(detect="edge-1", classify="edge-1", count="edge-1", merge="edge-1")
    task.branch.append("classify")
    task.hops.add(component="controller", node="edge-1")
    assert await journal.hold(task)
    size = path.stat().st_size + (tmp_path / "journal.sqlite-wal").stat().st_size
    detect = task.dag.stages[0]
    detect.state, detect.executed_on = task_pb2.STAGE_STATE_DONE, "edge-1"
    detect.results.add(frame_index=0)
    await journal.progress(task, detect)
    grown = path.stat().st_size + (tmp_path / "journal.sqlite-wal").stat().st_size - size
    assert grown < FRAMES // 4  # the stage, not the task's frames again
    journal.close()

    (held,) = await TaskJournal(path).held()
    assert held.key == task_key(task)
    assert held.task.dag.stages[0] == detect and list(held.task.branch) == ["classify", "detect"]
    assert list(held.task.segment.frames) == list(task.segment.frames)
