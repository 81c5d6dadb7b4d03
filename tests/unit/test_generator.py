"""The generator's core with in-memory ports: decisions shape the tasks; an unreachable scheduler
does not stop the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from dayu.generator.core import CapturedFrame, StreamRunner, build_task, check_decision, startup_decision
from dayu.generator.sequences import SequenceStore
from dayu.media.codecs import decode_segment, encode_image
from dayu.runtime.errors import InvalidArgument, RemoteError
from dayu.v1 import datasource_pb2, decision_pb2, task_pb2, types_pb2

from conftest import fork_join_pipeline, make_stream_spec


def frame(index: int, width: int = 1280, height: int = 720) -> datasource_pb2.Frame:
    image = np.full((height, width, 3), index % 250, np.uint8)
    truth = types_pb2.Detection(box=types_pb2.Box(x1=10, y1=10, x2=110, y2=40), label="plate", text="AB12 CDE")
    return datasource_pb2.Frame(
        source_id="camera-1",
        index=index,
        codec=types_pb2.CODEC_JPEG,
        resolution=types_pb2.Resolution(width=width, height=height),
        data=encode_image(image, types_pb2.CODEC_JPEG, 90),
        ground_truth=[truth],
    )


class Unavailable(RemoteError):
    def __init__(self) -> None:
        super().__init__("UNAVAILABLE", "down")


class Ports:
    """The mesh as a generator sees it: a source of 30 frames, a scheduler that may be down."""

    def __init__(self, scheduler_up: bool) -> None:
        self.scheduler_up = scheduler_up
        self.submitted: list[task_pb2.Task] = []
        self.decisions_queue: asyncio.Queue[decision_pb2.Decision] = asyncio.Queue()

    async def source_fps(self, source_id: str) -> float:
        return 30.0

    async def frames(self, source_id: str) -> AsyncIterator[datasource_pb2.Frame]:
        for i in range(30):
            yield frame(i)
            await asyncio.sleep(0)

    async def register(self, spec: decision_pb2.StreamSpec) -> decision_pb2.Decision:
        if not self.scheduler_up:
            raise Unavailable()
        decision = startup_decision(spec)
        decision.version = 1
        decision.configuration.fps = 10
        decision.configuration.resolution.width, decision.configuration.resolution.height = 640, 360
        return decision

    async def decisions(self, stream_id: str) -> AsyncIterator[decision_pb2.Decision]:
        while True:
            yield await self.decisions_queue.get()

    async def submit(self, task: task_pb2.Task) -> None:
        self.submitted.append(task)

    async def record_drop(self, task: task_pb2.Task, reason: str) -> None:
        raise AssertionError(f"nothing should be dropped: {reason}")


def test_build_task_follows_the_decision() -> None:
    spec = make_stream_spec(fork_join_pipeline())
    decision = startup_decision(spec)
    decision.version = 3
    decision.placement["count"] = "cloud"
    decision.configuration.resolution.width, decision.configuration.resolution.height = 641, 361
    decision.configuration.codec = types_pb2.CODEC_H264
    task = build_task(spec, decision, 7, [CapturedFrame(frame(i), 0.0) for i in (3, 6, 9)])
    assert (task.sequence, task.decision_version, task.task_id) == (7, 3, task.root_id)
    assert {s.spec.name: s.node for s in task.dag.stages} == {
        "detect": "edge-1",
        "classify": "edge-1",
        "count": "cloud",
        "merge": "edge-1",
    }
    assert list(task.segment.frame_indices) == [3, 6, 9]
    assert (task.segment.resolution.width, task.segment.resolution.height) == (640, 360)  # even for H.264
    assert len(decode_segment(task.segment)) == 3
    assert [g.frame_index for g in task.segment.ground_truth] == [3, 6, 9]
    assert task.segment.source_resolution.width == 1280


async def test_stream_goes_on_without_scheduler_then_follows_it() -> None:
    spec = make_stream_spec()  # source 30 fps, 10 frames per segment
    ports = Ports(scheduler_up=False)
    runner = StreamRunner(spec, ports)
    run = asyncio.create_task(runner.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if len(ports.submitted) == 3:
            break
    assert len(ports.submitted) == 3  # 30 frames, every frame kept, 10 per segment
    assert not runner.status.scheduler_reachable
    assert all(t.decision_version == 0 for t in ports.submitted)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)

    ports = Ports(scheduler_up=True)
    runner = StreamRunner(spec, ports)
    run = asyncio.create_task(runner.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if ports.submitted:
            break
    assert runner.status.scheduler_reachable and runner.decision.version == 1
    assert runner.status.frames_kept == 10  # 10 of 30 fps
    assert len(ports.submitted) == 1
    assert ports.submitted[0].segment.resolution.width == 640
    newer = decision_pb2.Decision()
    newer.CopyFrom(runner.decision)
    newer.version = 2
    await ports.decisions_queue.put(newer)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if runner.decision.version == 2:
            break
    assert runner.decision.version == 2
    stale = decision_pb2.Decision()
    stale.CopyFrom(newer)
    stale.version = 1
    assert not runner.apply(stale)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)


class FlakyController(Ports):
    """A controller that is away for its first `away` submissions, then takes every task."""

    def __init__(self, away: int) -> None:
        super().__init__(scheduler_up=False)
        self.away, self.attempts = away, []
        self.dropped: list[tuple[task_pb2.Task, str]] = []

    async def submit(self, task: task_pb2.Task) -> None:
        self.attempts.append((task.task_id, task.age_s))
        if len(self.attempts) <= self.away:
            raise Unavailable()
        self.submitted.append(task)

    async def record_drop(self, task: task_pb2.Task, reason: str) -> None:
        self.dropped.append((task, reason))


async def run_until(runner: StreamRunner, done: Callable[[], bool]) -> None:
    run = asyncio.create_task(runner.run())
    for _ in range(300):
        await asyncio.sleep(0.01)
        if done():
            break
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    await runner.drain(5)


async def test_a_task_is_submitted_again_with_its_id_while_the_controller_is_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("dayu.runtime.retry.RETRY_S", (0.01, 0.02))
    ports = FlakyController(away=2)
    runner = StreamRunner(make_stream_spec(), ports)
    await run_until(runner, lambda: len(ports.submitted) >= 1)
    first_id = ports.attempts[0][0]
    assert [task_id for task_id, _ in ports.attempts[:3]] == [first_id] * 3  # the same task, three times
    ages = [age for _, age in ports.attempts[:3]]
    assert ages == sorted(ages) and ages[2] > 0  # its age grows while it waits, on this clock
    assert ports.submitted[0].task_id == first_id
    # Only a segment cut short by the stop may be recorded as dropped (its number was taken).
    assert all(reason == "segment not encoded: generator stopped" for _, reason in ports.dropped)


async def test_sequence_numbers_go_on_after_a_restart_and_an_unencodable_segment_is_recorded(
    tmp_path: Path,
) -> None:
    spec = make_stream_spec()
    ports = FlakyController(away=0)
    runner = StreamRunner(spec, ports, sequences=SequenceStore(tmp_path / "sequences.sqlite"))
    await run_until(runner, lambda: len(ports.submitted) >= 2)
    made = runner.status.tasks_generated
    assert made >= 2 and [t.sequence for t in ports.submitted] == list(range(len(ports.submitted)))
    runner.sequences.close()

    restarted = StreamRunner(spec, ports, sequences=SequenceStore(tmp_path / "sequences.sqlite"))
    assert restarted.status.tasks_generated == made  # numbering goes on, never reused
    bad = frame(0)
    bad.data = b"not a jpeg"
    await restarted._make_task([CapturedFrame(bad, 0.0)])
    await restarted.drain(5)
    ((task, reason),) = ports.dropped
    assert task.sequence == made and task.stream_id == spec.stream_id
    assert reason.startswith("segment not encoded")
    assert restarted.status.tasks_generated == made + 1
    restarted.sequences.close()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: setattr(c.resolution, "width", 65535), "decision.configuration.resolution"),  # 12 GiB a frame
        (lambda c: setattr(c.resolution, "height", 0), "decision.configuration.resolution"),
        (lambda c: setattr(c, "fps", float("nan")), "decision.configuration.fps"),
        (lambda c: setattr(c, "fps", float("inf")), "decision.configuration.fps"),
        (lambda c: setattr(c, "frames_per_segment", 0), "decision.configuration.frames_per_segment"),
        (lambda c: setattr(c, "frames_per_segment", 2**32 - 1), "decision.configuration.frames_per_segment"),
        (lambda c: setattr(c, "codec", types_pb2.CODEC_UNSPECIFIED), "decision.configuration.codec"),
    ],
)
def test_an_applied_decision_must_be_one_the_stream_can_follow(
    change: Callable[[types_pb2.Configuration], None], field: str
) -> None:
    """Found by the fuzz: ApplyDecision took any configuration, and the stream resized its frames to it."""
    spec = make_stream_spec()
    decision = startup_decision(spec)
    check_decision(spec, decision)  # the stream's own best configuration is fine
    change(decision.configuration)
    with pytest.raises(InvalidArgument, match=rf"^{field}:"):
        check_decision(spec, decision)
