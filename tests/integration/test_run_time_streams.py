"""A stream started at run time on a real embedded mesh: its generator starts it beside the stream
of its settings (StartStream), its tasks are delivered, the distributor has its latest task with the
frames and the scheduler a task's spans from every component on its way; stopped (StopStream), every
task it made is delivered or recorded dropped; the scheduler then forgets it (UnregisterStream) and
its watchers' streams end. The settings' stream cannot be stopped so."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from dayu.media.codecs import decode_image
from dayu.mesh.embedded import Mesh
from dayu.mesh.model import MeshConfig
from dayu.v1 import (
    decision_pb2,
    distributor_pb2,
    distributor_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
    types_pb2,
)

from conftest import FORK_JOIN_PIPELINES, fork_join_pipeline

SIZE = {"width": 160, "height": 120}
PLACEMENT = {"detect": "edge-1", "classify": "cloud", "count": "edge-1", "merge": "edge-1"}


@pytest.fixture
async def mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "pipelines.yaml").write_text(FORK_JOIN_PIPELINES)
    ys, xs = np.mgrid[0:240, 0:320]
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), np.dstack([xs % 256, ys % 256, np.full_like(xs, 99)]).astype(np.uint8))
    config = MeshConfig.model_validate(
        {
            "nodes": {"cloud": {"processors": ["noop"]}, "edge-1": {"processors": ["noop"]}},
            "links": [{"between": ["edge-1", "cloud"], "bandwidth_mbps": 50, "delay_ms": 2}],
            "pipelines_file": str(tmp_path / "pipelines.yaml"),
            "processors": {"noop": {"params": {"delay_s": 0.0}}},
            "sources": [
                {"source_id": "street", "kind": "synthetic", "params": {**SIZE, "fps": 4}},
                # Photos have no ground truth: their tasks reach the distributor with their frames.
                {"source_id": "photos", "kind": "photos", "params": {**SIZE, "fps": 8, "images": [str(photo)]}},
            ],
            "streams": [
                {
                    "stream_id": "cam",
                    "source_id": "street",
                    "node": "edge-1",
                    "pipeline": "fork-join",
                    "latency_budget_s": 2.0,
                    "max_configuration": {**SIZE, "fps": 4, "frames_per_segment": 2},
                }
            ],
        }
    )  # fmt: skip
    mesh = Mesh(config, tmp_path)
    await mesh.start()
    yield mesh
    await mesh.abort()


def started_spec() -> decision_pb2.StreamSpec:
    policy = decision_pb2.PolicySpec(name="fixed")
    policy.params.update({"placement": PLACEMENT})
    return decision_pb2.StreamSpec(
        stream_id="lobby",
        source_id="photos",
        node="edge-1",
        pipeline=fork_join_pipeline(),
        latency_budget_s=2.0,
        max_configuration=types_pb2.Configuration(
            resolution=types_pb2.Resolution(**SIZE), fps=8, quality=80, frames_per_segment=2, codec=types_pb2.CODEC_JPEG
        ),
        policy=policy,
    )


async def records_of(
    distributor: distributor_pb2_grpc.DistributorServiceStub, stream: str
) -> list[task_pb2.TaskRecord]:
    request = distributor_pb2.QueryRecordsRequest(filter=distributor_pb2.RecordFilter(stream_id=stream), limit=1000)
    return list((await distributor.QueryRecords(request, timeout=5)).records)


async def until(what: str, check, seconds: float = 15.0):  # type: ignore[no-untyped-def]
    """check()'s answer once it is true, trying every 0.1 s."""
    for _ in range(int(seconds * 10)):
        if answer := await check():
            return answer
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {seconds} s: {what}")


async def test_a_stream_started_at_run_time_is_delivered_traced_stopped_and_forgotten(mesh: Mesh) -> None:
    async with (
        grpc.aio.insecure_channel(mesh.addresses["generator@edge-1"]) as to_generator,
        grpc.aio.insecure_channel(mesh.addresses["distributor"]) as to_distributor,
        grpc.aio.insecure_channel(mesh.addresses["scheduler"]) as to_scheduler,
    ):
        generator = generator_pb2_grpc.GeneratorServiceStub(to_generator)
        distributor = distributor_pb2_grpc.DistributorServiceStub(to_distributor)
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(to_scheduler)

        start = generator_pb2.StartStreamRequest(stream=started_spec())
        assert (await generator.StartStream(start, timeout=10)).started
        assert not (await generator.StartStream(start, timeout=10)).started  # the same again: a no-op
        listed = (await generator.ListStreams(generator_pb2.ListStreamsRequest(), timeout=5)).streams
        assert [(s.spec.stream_id, s.origin) for s in listed] == [
            ("cam", generator_pb2.STREAM_ORIGIN_SETTINGS),
            ("lobby", generator_pb2.STREAM_ORIGIN_STARTED),
        ]

        async def delivered() -> list[task_pb2.TaskRecord]:
            """Its tasks delivered, once 3 are, the first ones made before its first decision came too."""
            found = [r for r in await records_of(distributor, "lobby") if r.outcome == task_pb2.TASK_OUTCOME_DELIVERED]
            decided = [r for r in found if r.task.decision_version >= 1]
            return decided if len(found) >= 3 else []

        record = (await until("3 tasks of lobby delivered", delivered))[-1]
        assert {s.spec.name: s.executed_on for s in record.task.dag.stages} == PLACEMENT
        latest = (
            await distributor.GetLatestTask(distributor_pb2.GetLatestTaskRequest(stream_id="lobby"), timeout=5)
        ).record
        assert latest.task.stream_id == "lobby" and latest.outcome == task_pb2.TASK_OUTCOME_DELIVERED
        segment = latest.task.segment
        assert len(segment.frames) == len(segment.frame_indices) == 2  # the frames, as they were delivered
        assert decode_image(segment.frames[-1], segment.codec, segment.resolution, "frame").shape == (120, 160, 3)

        async def traced() -> list[scheduler_pb2.TaskSpan]:
            request = scheduler_pb2.GetTaskTraceRequest(root_id=record.task.root_id)
            try:
                spans = (await scheduler.GetTaskTrace(request, timeout=5)).spans
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND  # its spans are on their way (every 0.5 s)
                return []
            components = {s.component for s in spans}
            wanted = {"generator", "controller", "processor", "distributor"}
            return list(spans) if wanted <= components else []

        spans = await until("the task's spans from every component", traced)
        assert [s.start.ToNanoseconds() for s in spans] == sorted(s.start.ToNanoseconds() for s in spans)
        names = {(s.name, s.node, s.to_node) for s in spans}
        assert {("generator.encode", "edge-1", ""), ("link.transfer", "edge-1", "cloud")} <= names
        assert {s.stage for s in spans if s.name == "processor.inference"} == {"detect", "classify", "count", "merge"}

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await generator.StopStream(generator_pb2.StopStreamRequest(stream_id="cam"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "comes from the generator's settings" in (refused.value.details() or "")

        # Its decisions, watched as its generator does, end when the scheduler forgets it.
        watch = scheduler.WatchDecisions(scheduler_pb2.WatchDecisionsRequest(stream_id="lobby"), timeout=30)
        assert (await watch.read()).decision.stream_id == "lobby"  # type: ignore[union-attr]

        made = (
            await generator.StopStream(generator_pb2.StopStreamRequest(stream_id="lobby"), timeout=30)
        ).tasks_generated
        assert made >= 3

        async def accounted() -> list[task_pb2.TaskRecord]:
            found = await records_of(distributor, "lobby")
            return found if len(found) >= made else []

        # Every task it made reaches the distributor, delivered or recorded dropped (none lost).
        await until(f"records of the {made} tasks of lobby", accounted)
        await asyncio.sleep(0.5)  # and no more
        found = await records_of(distributor, "lobby")
        assert sorted(r.task.sequence for r in found) == list(range(made))
        outcomes = {r.outcome for r in found}
        assert outcomes <= {task_pb2.TASK_OUTCOME_DELIVERED, task_pb2.TASK_OUTCOME_DROPPED}
        assert not [r.reason for r in found if r.reason.startswith("lost")]
        listed = (await generator.ListStreams(generator_pb2.ListStreamsRequest(), timeout=5)).streams
        assert [s.spec.stream_id for s in listed] == ["cam"]
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await generator.StopStream(generator_pb2.StopStreamRequest(stream_id="lobby"), timeout=5)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND

        admin = (("authorization", f"Bearer {mesh.tokens.admin[0]}"),)
        unregister = scheduler_pb2.UnregisterStreamRequest(stream_id="lobby")
        assert (await scheduler.UnregisterStream(unregister, timeout=5, metadata=admin)).unregistered
        while await watch.read() != grpc.aio.EOF:  # a fallback decision, its feedback having stopped
            pass
        assert await watch.code() == grpc.StatusCode.OK
        assert not (await scheduler.UnregisterStream(unregister, timeout=5, metadata=admin)).unregistered
        with pytest.raises(grpc.aio.AioRpcError) as forgotten:
            await scheduler.GetDecision(scheduler_pb2.GetDecisionRequest(stream_id="lobby"), timeout=5)
        assert forgotten.value.code() == grpc.StatusCode.NOT_FOUND
        decision = (await scheduler.GetDecision(scheduler_pb2.GetDecisionRequest(stream_id="cam"), timeout=5)).decision
        assert decision.stream_id == "cam"  # the settings' stream runs on
