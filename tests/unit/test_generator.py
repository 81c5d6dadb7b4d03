"""The generator's core with in-memory ports: decisions shape the tasks; an unreachable scheduler
does not stop the stream; streams started at run time run beside the settings' and stop with every
task they made accounted for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from dayu.generator.core import (
    CapturedFrame,
    GeneratorStreams,
    StreamRunner,
    build_task,
    check_decision,
    check_startable,
    startup_decision,
)
from dayu.generator.sequences import SequenceStore
from dayu.media.codecs import decode_segment, encode_image
from dayu.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RemoteError,
    ResourceExhausted,
)
from dayu.runtime.errors import Unavailable as UnavailableError
from dayu.runtime.tracing import Tracing
from dayu.v1 import datasource_pb2, decision_pb2, generator_pb2, task_pb2, types_pb2

from conftest import fork_join_pipeline, make_stream_spec


def frame(index: int, width: int = 1280, height: int = 720, plate: bool = True) -> datasource_pb2.Frame:
    """A source frame, with one true plate (or, `plate` false, none)."""
    image = np.full((height, width, 3), index % 250, np.uint8)
    box = types_pb2.Detection(box=types_pb2.Box(x1=10, y1=10, x2=110, y2=40), label="plate", text="AB12 CDE")
    truth = [box] if plate else []
    return datasource_pb2.Frame(
        source_id="camera-1",
        index=index,
        codec=types_pb2.CODEC_JPEG,
        resolution=types_pb2.Resolution(width=width, height=height),
        data=encode_image(image, types_pb2.CODEC_JPEG, 90),
        ground_truth=truth,
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
        self.ground_truth = True  # what the datasource says of the source
        self.empty_frames = False  # frames without objects (no true box)

    async def source(self, source_id: str) -> datasource_pb2.SourceInfo:
        return datasource_pb2.SourceInfo(source_id=source_id, fps=30.0, has_ground_truth=self.ground_truth)

    async def frames(self, source_id: str) -> AsyncIterator[datasource_pb2.Frame]:
        for i in range(30):
            yield frame(i, plate=not self.empty_frames)
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
    # A segment being numbered or encoded when it stopped is recorded as dropped under its number.
    assert sorted(t.sequence for t in ports.submitted + [t for t, _ in ports.dropped]) == list(range(made))
    assert all(reason == "segment not encoded: generator stopped" for _, reason in ports.dropped)
    stopped = len(ports.dropped)
    runner.sequences.close()

    restarted = StreamRunner(spec, ports, sequences=SequenceStore(tmp_path / "sequences.sqlite"))
    assert restarted.status.tasks_generated == made  # numbering goes on, never reused
    bad = frame(0)
    bad.data = b"not a jpeg"
    await restarted._make_task([CapturedFrame(bad, 0.0)], ground_truth=True)
    await restarted.drain(5)
    ((task, reason),) = ports.dropped[stopped:]
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


class Mesh(FlakyController):
    """The mesh as the streams of one generator see it: endless sources of those the datasource plays,
    a controller that takes each task after a while, drops recorded."""

    def __init__(self, sources: tuple[str, ...] = ("camera-1", "camera-2")) -> None:
        super().__init__(away=0)
        self.sources = sources
        self.datasource: RemoteError | None = None  # how the datasource fails, when it does

    async def source(self, source_id: str) -> datasource_pb2.SourceInfo:
        if self.datasource is not None:
            raise self.datasource
        if source_id not in self.sources:
            raise NotFound(f"source {source_id!r} is not played by the datasource")
        return datasource_pb2.SourceInfo(source_id=source_id, fps=30.0)

    async def frames(self, source_id: str) -> AsyncIterator[datasource_pb2.Frame]:
        index = 0
        while True:
            yield frame(index, 160, 120)
            index += 1
            await asyncio.sleep(0.002)

    async def submit(self, task: task_pb2.Task) -> None:
        await asyncio.sleep(0.05)  # tasks are still on their way when a stream stops
        await super().submit(task)

    def sequences_of(self, stream_id: str) -> list[int]:
        """The sequences of the stream's tasks the controller took or that were recorded dropped."""
        made = [t.sequence for t in self.submitted if t.stream_id == stream_id]
        made += [t.sequence for t, _ in self.dropped if t.stream_id == stream_id]
        return sorted(made)


def small_spec(stream_id: str, source_id: str = "camera-2") -> decision_pb2.StreamSpec:
    spec = make_stream_spec()
    spec.stream_id, spec.source_id = stream_id, source_id
    config = spec.max_configuration
    config.resolution.width, config.resolution.height, config.frames_per_segment = 160, 120, 2
    return spec


@pytest.fixture
async def streams(tmp_path: Path) -> AsyncIterator[tuple[GeneratorStreams, Mesh]]:
    mesh = Mesh()
    launched: list[asyncio.Task[None]] = []

    def launch(runner: StreamRunner) -> asyncio.Task[None]:
        launched.append(asyncio.create_task(runner.run()))
        return launched[-1]

    sequences = SequenceStore(tmp_path / "sequences.sqlite")
    generator = GeneratorStreams("edge-1", mesh, launch, sequences=sequences, grace_s=5)
    generator.add_settings(small_spec("stream-1", "camera-1"))
    generator.launch_settings()
    yield generator, mesh
    for task in launched:
        task.cancel()
    await asyncio.gather(*launched, return_exceptions=True)
    await generator.drain_all(5)
    sequences.close()


async def wait_for(done: Callable[[], bool], seconds: float = 5) -> None:
    for _ in range(int(seconds / 0.01)):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not in time")


async def test_a_stream_started_at_run_time_runs_beside_the_settings_and_stops_with_every_task_accounted_for(
    streams: tuple[GeneratorStreams, Mesh],
) -> None:
    generator, mesh = streams
    spec = small_spec("started")
    assert await generator.start(spec)
    assert not await generator.start(small_spec("started"))  # the same spec again: nothing changes
    statuses = generator.statuses()
    assert [(s.spec.stream_id, s.origin) for s in statuses] == [
        ("started", generator_pb2.STREAM_ORIGIN_STARTED),
        ("stream-1", generator_pb2.STREAM_ORIGIN_SETTINGS),
    ]
    await wait_for(lambda: len(mesh.sequences_of("started")) >= 3)

    made = await generator.stop("started")
    # Capture stopped, and every task it numbered reached the controller or was recorded dropped.
    assert made >= 3 and mesh.sequences_of("started") == list(range(made))
    assert all(reason == "segment not encoded: generator stopped" for t, reason in mesh.dropped)
    assert [s.spec.stream_id for s in generator.statuses()] == ["stream-1"]
    await asyncio.sleep(0.1)
    assert mesh.sequences_of("started") == list(range(made))  # nothing more once stopped
    with pytest.raises(NotFound, match="'started' does not run"):
        await generator.stop("started")
    with pytest.raises(FailedPrecondition, match="comes from the generator's settings"):
        await generator.stop("stream-1")
    with pytest.raises(InvalidArgument, match=r"^stream_id:"):
        await generator.stop("no such id!")

    # Started again: its numbering goes on where it stopped (the same sequences).
    assert await generator.start(spec)
    assert generator.runner("started").status.tasks_generated == made
    await wait_for(lambda: len(mesh.sequences_of("started")) > made)
    again = await generator.stop("started")
    assert again > made and mesh.sequences_of("started") == list(range(again))
    assert len(mesh.sequences_of("stream-1")) > 0  # the settings' stream ran all along


async def test_a_start_that_conflicts_or_cannot_run_is_refused_by_name(
    streams: tuple[GeneratorStreams, Mesh],
) -> None:
    generator, mesh = streams
    assert await generator.start(small_spec("started"))
    other = small_spec("started")
    other.latency_budget_s = 9
    with pytest.raises(AlreadyExists, match="'started' runs already with another spec"):
        await generator.start(other)
    with pytest.raises(AlreadyExists, match="'stream-1' is a stream of the generator's settings"):
        await generator.start(small_spec("stream-1", "camera-1"))  # even with its very spec
    elsewhere = small_spec("elsewhere")
    elsewhere.node = "edge-2"
    with pytest.raises(InvalidArgument, match=r"^stream\.node: this generator's node 'edge-1'"):
        await generator.start(elsewhere)
    with pytest.raises(NotFound, match=r"^stream\.source_id: source 'camera-9'"):
        await generator.start(small_spec("unknown-source", "camera-9"))
    mesh.datasource = RemoteError("UNAVAILABLE", "connection refused")
    with pytest.raises(UnavailableError, match=r"^stream\.source_id: the datasource could not say"):
        await generator.start(small_spec("no-datasource"))
    mesh.datasource = RemoteError("PERMISSION_DENIED", "not you")
    with pytest.raises(FailedPrecondition, match="PERMISSION_DENIED: not you"):
        await generator.start(small_spec("no-datasource"))
    mesh.datasource = None
    generator.max_streams = 3
    assert await generator.start(small_spec("third"))
    with pytest.raises(ResourceExhausted, match="'fourth' is new and this generator runs 3 streams"):
        await generator.start(small_spec("fourth"))
    assert not await generator.start(small_spec("third"))  # a retry is no new stream
    assert [s.spec.stream_id for s in generator.statuses()] == ["started", "stream-1", "third"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: setattr(c.resolution, "width", 65535), "stream.max_configuration.resolution"),
        (lambda c: setattr(c.resolution, "height", 4321), "stream.max_configuration.resolution"),
        (lambda c: setattr(c, "fps", float("inf")), "stream.max_configuration.fps"),
        (lambda c: setattr(c, "fps", 241), "stream.max_configuration.fps"),
        (lambda c: setattr(c, "frames_per_segment", 2**32 - 1), "stream.max_configuration.frames_per_segment"),
        (lambda c: setattr(c, "quality", 0), "stream.max_configuration.quality"),
    ],
)
async def test_a_started_stream_is_held_to_what_a_datasource_plays(
    streams: tuple[GeneratorStreams, Mesh], change: Callable[[types_pb2.Configuration], None], field: str
) -> None:
    generator, _ = streams
    spec = small_spec("started")
    change(spec.max_configuration)
    with pytest.raises(InvalidArgument, match=rf"^{field}:"):
        await generator.start(spec)
    check_startable(small_spec("fine"))
    largest = small_spec("largest")
    largest.max_configuration.resolution.width, largest.max_configuration.resolution.height = 7680, 4320
    largest.max_configuration.frames_per_segment = 8
    check_startable(largest)  # 8 frames of 8K
    largest.max_configuration.frames_per_segment = 9
    with pytest.raises(InvalidArgument, match=r"frames_per_segment: at most 8 at 7680x4320"):
        check_startable(largest)


class SlowSequences(SequenceStore):
    """Numbers that take a while to be taken (a slow disk): a stream may stop meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()

    async def take(self, stream_id: str) -> int:
        self.waiting.set()
        await self.release.wait()
        return await super().take(stream_id)


async def test_a_number_being_taken_when_the_stream_stops_is_recorded_dropped() -> None:
    ports = Mesh()
    sequences = SlowSequences()
    runner = StreamRunner(small_spec("started"), ports, sequences=sequences, origin=generator_pb2.STREAM_ORIGIN_STARTED)
    run = asyncio.create_task(runner.run())
    await asyncio.wait_for(sequences.waiting.wait(), 5)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    sequences.release.set()  # the number is taken after all
    await runner.drain(5)
    ((task, reason),) = ports.dropped
    assert (task.sequence, reason) == (0, "segment not encoded: generator stopped")
    assert runner.status.tasks_generated == 1 and runner.in_flight == 0
    assert sequences.next("started") == 1
    sequences.close()


async def test_every_span_of_a_task_names_it() -> None:
    """The scheduler keeps a task's spans by its root id: the generator's own spans carry it too."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from dayu.runtime.tracing import TASK, TracingSettings

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing("generator", "edge-1", TracingSettings())
    tracing.tracer = provider.get_tracer("test")
    ports = Mesh()
    runner = StreamRunner(small_spec("started"), ports, tracing)
    await run_until(runner, lambda: len(ports.submitted) >= 1)
    task = ports.submitted[0]
    names = {span.name for span in exporter.get_finished_spans() if span.attributes[TASK] == task.root_id}
    assert names == {"generator.task", "generator.encode", "generator.submit"}


async def test_the_tasks_of_a_stream_stopped_past_its_grace_are_awaited_when_the_generator_stops(
    streams: tuple[GeneratorStreams, Mesh],
) -> None:
    generator, mesh = streams
    generator.grace_s = 0  # StopStream answers at once: its tasks are still on their way
    assert await generator.start(small_spec("started"))
    await wait_for(lambda: len(mesh.sequences_of("started")) >= 2)
    made = await generator.stop("started")
    assert len(mesh.sequences_of("started")) < made
    await generator.drain_all(5)  # the component's stop()
    assert mesh.sequences_of("started") == list(range(made))


def test_a_segment_of_a_source_with_ground_truth_says_so_even_where_its_frames_hold_nothing() -> None:
    """A segment with no ground-truth entry is one its source knows nothing of: the controller sends
    its frames on to the distributor for golden scoring. Frames empty of objects must not read as that
    (they did: every such segment crossed the uplink with its frames)."""
    spec = make_stream_spec()
    decision = startup_decision(spec)
    captured = [CapturedFrame(frame(i, plate=False), 0.0) for i in range(2)]

    known = build_task(spec, decision, 1, captured, ground_truth=True)
    assert [(g.frame_index, len(g.detections)) for g in known.segment.ground_truth] == [(0, 0), (1, 0)]
    assert not build_task(spec, decision, 2, captured).segment.ground_truth  # a source without ground truth


@pytest.mark.parametrize("knows", [True, False])
async def test_the_stream_asks_the_datasource_whether_its_source_knows_its_true_boxes(knows: bool) -> None:
    spec = make_stream_spec()  # source 30 fps, 10 frames per segment
    ports = Ports(scheduler_up=True)
    ports.ground_truth, ports.empty_frames = knows, True
    await run_until(StreamRunner(spec, ports), lambda: bool(ports.submitted))
    entries = [len(g.detections) for g in ports.submitted[0].segment.ground_truth]
    assert entries == ([0] * 10 if knows else [])
