"""One stream's generator, without gRPC: takes frames from its source, applies the current decision
(frame-rate filter, resize, encoding, frames per segment), and submits each segment as a task to
its node's controller. Decisions come from the scheduler; while it cannot be reached the stream
goes on with the last decision (or the local startup plan).

Every task is accounted for: its sequence number is taken for good (SequenceStore) before it is
made, a submission the controller cannot take yet is tried again with the same task id (the
controller acknowledges a retry of what it holds without routing it twice) for up to
SUBMIT_PATIENCE_S, and a segment that cannot become a task (its frames bad, or the stream stopping
while it was numbered or encoded), or a task the controller refuses, is recorded as dropped with the
reason. One lost anyway (this process killed) is missing from its
stream's numbers, and the distributor records it as lost.

A generator runs the streams of its settings from start to stop, and those started at run time
(StartStream, the backend's) until they are stopped (StopStream): GeneratorStreams keeps both."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from opentelemetry import trace
from opentelemetry.context import Context

from dayu.generator.sequences import SequenceStore
from dayu.media.codecs import decode_image, encode_segment
from dayu.media.frames import FrameRateFilter, resize
from dayu.runtime.clock import timestamp
from dayu.runtime.errors import (
    AlreadyExists,
    DayuError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RemoteError,
    ResourceExhausted,
    Unavailable,
    cut,
    shown,
)
from dayu.runtime.logs import get_logger
from dayu.runtime.metrics import Meter
from dayu.runtime.retry import TRANSIENT, Backoff
from dayu.runtime.tracing import NO_TRACING, Tracing, task_attributes, traceparent
from dayu.runtime.validation import require_id, validate_configuration, validate_stream_spec
from dayu.v1 import datasource_pb2, decision_pb2, generator_pb2, task_pb2, types_pb2

log = get_logger(__name__)

MAX_IN_FLIGHT = 8  # submissions waiting on the controller before capture waits too
SUBMIT_PATIENCE_S = 30.0  # longest a task waits for its controller to come back (a restart takes seconds)
RECONNECT_S = (0.2, 5.0)  # first and longest wait before reconnecting to the scheduler or source
MAX_STREAMS = 64  # streams one generator runs: each takes a source's frames and encodes its segments
# (and so bounds the `stream` label of its metrics)
# A stream started at run time is held to what a datasource can play (its sources' own limits), and
# a segment to what build_task decodes at once: frames are resized to the stream's decisions, and its
# max_configuration bounds them (7680x4320 at 240 fps; 8 frames of 8K, 128 of 1080p, ~800 MB as BGR).
MAX_WIDTH, MAX_HEIGHT, MAX_FPS = 7680, 4320, 240.0
MAX_SEGMENT_PIXELS = 8 * MAX_WIDTH * MAX_HEIGHT
SETTINGS = generator_pb2.STREAM_ORIGIN_SETTINGS
STARTED = generator_pb2.STREAM_ORIGIN_STARTED


class StreamPorts(Protocol):
    """What a stream needs from the mesh; failures raise RemoteError."""

    async def source(self, source_id: str) -> datasource_pb2.SourceInfo:
        """The source as the datasource plays it (frame rate, whether it knows its true boxes);
        NotFound when the datasource does not play it."""

    def frames(self, source_id: str) -> AsyncIterator[datasource_pb2.Frame]: ...

    async def register(self, spec: decision_pb2.StreamSpec) -> decision_pb2.Decision: ...

    def decisions(self, stream_id: str) -> AsyncIterator[decision_pb2.Decision]:
        """The stream's decisions: the current one, then each new one."""

    async def submit(self, task: task_pb2.Task) -> None: ...

    async def record_drop(self, task: task_pb2.Task, reason: str) -> None: ...


def startup_decision(spec: decision_pb2.StreamSpec) -> decision_pb2.Decision:
    """The plan a stream starts with before the scheduler answers: the source's best configuration,
    every stage on the stream's own node. Version 0, so any scheduler decision replaces it."""
    return decision_pb2.Decision(
        stream_id=spec.stream_id,
        version=0,
        configuration=spec.max_configuration,
        placement={stage.name: spec.node for stage in spec.pipeline.stages},
        reason="local startup plan: scheduler not reached yet",
        policy="startup",
    )


def check_decision(spec: decision_pb2.StreamSpec, decision: decision_pb2.Decision, field: str = "decision") -> None:
    """Refuses a decision given from outside (ApplyDecision) that the stream cannot follow: a
    configuration that is not one, or past the stream's max_configuration (frames are resized to the
    decision's resolution: 65535x65535 would be 12 GiB a frame)."""
    config, most = decision.configuration, spec.max_configuration
    where = f"{field}.configuration"
    validate_configuration(config, where)
    size, largest = config.resolution, most.resolution
    if size.width > largest.width or size.height > largest.height:
        raise InvalidArgument(
            f"{where}.resolution",
            f"at most the stream's {largest.width}x{largest.height}, got {size.width}x{size.height}",
        )
    if not config.fps <= most.fps:
        raise InvalidArgument(f"{where}.fps", f"at most the stream's {most.fps}, got {config.fps}")
    if config.frames_per_segment > most.frames_per_segment:
        raise InvalidArgument(
            f"{where}.frames_per_segment",
            f"at most the stream's {most.frames_per_segment}, got {config.frames_per_segment}",
        )


@dataclass
class CapturedFrame:
    frame: datasource_pb2.Frame
    captured_at: float


def check_startable(spec: decision_pb2.StreamSpec, field: str = "stream") -> None:
    """Refuses a stream given from outside (StartStream) that is not one, or whose max_configuration
    is past what a datasource plays (MAX_WIDTH, MAX_HEIGHT, MAX_FPS) or makes segments too large to
    decode at once (MAX_SEGMENT_PIXELS): the stream resizes its frames to it."""
    validate_stream_spec(spec, field)
    config = spec.max_configuration
    where = f"{field}.max_configuration"
    size = config.resolution
    if size.width > MAX_WIDTH or size.height > MAX_HEIGHT:
        raise InvalidArgument(
            f"{where}.resolution", f"at most {MAX_WIDTH}x{MAX_HEIGHT}, got {size.width}x{size.height}"
        )
    if not (math.isfinite(config.fps) and config.fps <= MAX_FPS):
        raise InvalidArgument(f"{where}.fps", f"at most {MAX_FPS:g}, got {config.fps}")
    if config.frames_per_segment * size.width * size.height > MAX_SEGMENT_PIXELS:
        most = MAX_SEGMENT_PIXELS // (size.width * size.height)
        raise InvalidArgument(
            f"{where}.frames_per_segment",
            f"at most {most} at {size.width}x{size.height} ({MAX_SEGMENT_PIXELS} pixels a segment), "
            f"got {config.frames_per_segment}",
        )


def new_task(spec: decision_pb2.StreamSpec, sequence: int, task_id: str = "") -> task_pb2.Task:
    """A task of the stream with its ids (`task_id`, or a new one) and nothing else yet."""
    task_id = task_id or str(uuid.uuid4())
    return task_pb2.Task(
        stream_id=spec.stream_id,
        sequence=sequence,
        task_id=task_id,
        root_id=task_id,
        latency_budget_s=spec.latency_budget_s,
    )


def build_task(
    spec: decision_pb2.StreamSpec,
    decision: decision_pb2.Decision,
    sequence: int,
    frames: list[CapturedFrame],
    task_id: str = "",
    ground_truth: bool = False,
) -> task_pb2.Task:
    """Decodes, resizes and encodes the frames into a task following the decision, with id `task_id`
    (or a new one) (CPU work: run it in a thread). `ground_truth`: the source knows its true boxes, so
    every frame gets an entry in segment.ground_truth, an empty one where it has nothing to find: a
    segment without any entry is one the source knows nothing of (its frames go on to the distributor
    for golden scoring), not one whose frames are empty of objects."""
    config = decision.configuration
    width, height = config.resolution.width, config.resolution.height
    if config.codec == types_pb2.CODEC_H264:  # 4:2:0 needs even sizes
        width, height = width - width % 2, height - height % 2
    images: list[np.ndarray] = []
    for i, captured in enumerate(frames):
        image = decode_image(captured.frame.data, captured.frame.codec, captured.frame.resolution, f"frames[{i}]")
        images.append(resize(image, width, height))
    task = new_task(spec, sequence, task_id)
    task.configuration.CopyFrom(config)
    task.decision_version, task.decision_epoch = decision.version, decision.epoch
    task.dag.pipeline = spec.pipeline.name
    for stage in spec.pipeline.stages:
        task.dag.stages.add(spec=stage, node=decision.placement.get(stage.name, spec.node))
    segment = task.segment
    segment.codec = config.codec
    segment.fps = config.fps
    segment.source_resolution.CopyFrom(frames[0].frame.resolution)
    for captured in frames:
        segment.frame_indices.append(captured.frame.index)
        segment.capture_times.append(captured.frame.captured_at)
        if ground_truth or captured.frame.ground_truth:
            segment.ground_truth.add(frame_index=captured.frame.index, detections=captured.frame.ground_truth)
    encode_segment(segment, images, config.quality)
    task.created_at.CopyFrom(timestamp())
    return task


class StreamRunner:
    def __init__(
        self,
        spec: decision_pb2.StreamSpec,
        ports: StreamPorts,
        tracing: Tracing = NO_TRACING,
        sequences: SequenceStore | None = None,
        origin: int = SETTINGS,
        taken: int | None = None,
    ) -> None:
        """`taken`: the stream's next number, when the caller read it already (SequenceStore.taken;
        else it is read here, blocking)."""
        self.spec, self.ports, self.tracing = spec, ports, tracing
        self.sequences = sequences or SequenceStore()
        self.status = generator_pb2.StreamStatus(spec=spec, decision=startup_decision(spec), origin=origin)
        # Numbers taken so far, over every run of this generator: sequences 0 .. tasks_generated - 1.
        self.status.tasks_generated = self.sequences.next(spec.stream_id) if taken is None else taken
        self.submitted = 0
        self.dropped = 0
        self.meter = Meter("generator", spec.node)
        self.meter.latency_budget(spec.stream_id, spec.latency_budget_s)
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._submissions: set[asyncio.Task[None]] = set()
        self._taking: asyncio.Future[int] | None = None  # the last number asked of the sequences

    @property
    def decision(self) -> decision_pb2.Decision:
        return self.status.decision

    def apply(self, decision: decision_pb2.Decision) -> bool:
        """Takes a newer decision; older ones are ignored. (epoch, version) orders them: a restarted
        scheduler counts versions from 1 again, in a newer epoch."""
        if (decision.epoch, decision.version) <= (self.decision.epoch, self.decision.version):
            return False
        self.status.decision.CopyFrom(decision)
        log.info("decision applied", stream_id=self.spec.stream_id, version=decision.version, reason=decision.reason)
        return True

    async def run(self) -> None:
        # A task group: if one fails, the other is cancelled too, and a restart runs both once.
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow_decisions())
            group.create_task(self._capture())

    @property
    def in_flight(self) -> int:
        """Tasks made and not yet taken by the controller or recorded as dropped."""
        return len(self._submissions)

    async def drain(self, timeout_s: float) -> None:
        if self._submissions:
            await asyncio.wait(set(self._submissions), timeout=timeout_s)

    async def numbered(self) -> int:
        """How many numbers the stream has taken (sequences 0 .. n-1), once the one being taken when
        capturing stopped, if any, is (a write of its own, not a wait on the controller)."""
        if self._taking is not None:
            await asyncio.wait({self._taking})
        return self.status.tasks_generated

    def _taken(self, taking: asyncio.Future[int]) -> None:
        if not taking.cancelled() and taking.exception() is None:
            self.status.tasks_generated = max(self.status.tasks_generated, taking.result() + 1)
            self.meter.task_generated(self.spec.stream_id)

    async def _follow_decisions(self) -> None:
        wait = RECONNECT_S[0]
        while True:
            try:
                self.apply(await self.ports.register(self.spec))
                self.status.scheduler_reachable = True
                wait = RECONNECT_S[0]
                async for decision in self.ports.decisions(self.spec.stream_id):
                    self.apply(decision)
            except RemoteError as error:
                if self.status.scheduler_reachable:
                    log.warning("scheduler unreachable; keeping the last decision", code=error.code)
                self.status.scheduler_reachable = False
            await asyncio.sleep(wait)
            wait = min(wait * 2, RECONNECT_S[1])

    async def _capture(self) -> None:
        wait = RECONNECT_S[0]
        buffer: list[CapturedFrame] = []
        while True:
            try:
                source = await self.ports.source(self.spec.source_id)
                source_fps = source.fps
                frame_filter = FrameRateFilter(source_fps, source_fps)
                async for frame in self.ports.frames(self.spec.source_id):
                    wait = RECONNECT_S[0]
                    self.status.frames_captured += 1
                    if self.decision.paused:
                        buffer.clear()
                        continue
                    frame_filter.target_fps = min(self.decision.configuration.fps, source_fps)
                    if not frame_filter.keep():
                        continue
                    self.status.frames_kept += 1
                    buffer.append(CapturedFrame(frame, time.time()))
                    if len(buffer) >= self.decision.configuration.frames_per_segment:
                        await self._make_task(buffer, source.has_ground_truth)
                        buffer = []
                log.info("source ended", source_id=self.spec.source_id)
                return
            except (RemoteError, DayuError) as error:
                log.warning("source unavailable", source_id=self.spec.source_id, error=str(error))
            await asyncio.sleep(wait)
            wait = min(wait * 2, RECONNECT_S[1])

    async def _make_task(self, frames: list[CapturedFrame], ground_truth: bool) -> None:
        await self._in_flight.acquire()
        decision = decision_pb2.Decision()
        decision.CopyFrom(self.decision)
        taking = self._taking = asyncio.ensure_future(self.sequences.take(self.spec.stream_id))
        taking.add_done_callback(self._taken)  # counted as soon as taken, even if the stream stopped meanwhile
        try:
            sequence = await asyncio.shield(taking)
        except asyncio.CancelledError:
            # Stopped while the number was being taken: it is taken for good all the same, so the
            # segment is recorded as dropped under it (in the background: stop() waits for it).
            self._in_flight.release()
            self._track(self._record_taken(taking))
            raise
        # Ids first, so every span of the task names it (the scheduler keeps traces by root id).
        task_id = str(uuid.uuid4())
        attributes = task_attributes(self.spec.stream_id, task_id)
        # The root span of the task's trace; it ends once the controller has taken the task.
        root = self.tracing.start("generator.task", parent=Context(), **attributes)
        with trace.use_span(root, end_on_exit=False):
            try:
                with self.tracing.span("generator.encode", **attributes):
                    task = await asyncio.to_thread(
                        build_task, self.spec, decision, sequence, frames, task_id, ground_truth
                    )
            except (Exception, asyncio.CancelledError) as error:
                # Bad frame data, or the generator stopping: the segment never becomes a task, but
                # its number is taken, so it is recorded (in the background: stop() waits for it).
                root.end()
                self._in_flight.release()
                why = "generator stopped" if isinstance(error, asyncio.CancelledError) else str(error)
                log.warning("segment not encoded", stream_id=self.spec.stream_id, sequence=sequence, error=why)
                self._track(self._record_drop(new_task(self.spec, sequence, task_id), f"segment not encoded: {why}"))
                if isinstance(error, asyncio.CancelledError):
                    raise
                return
            task.trace_context.traceparent, task.trace_context.tracestate = traceparent()
            self._track(self._submit(task, root))

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs `work` beside capturing; drain() waits for it."""
        submission = asyncio.create_task(work)
        self._submissions.add(submission)
        submission.add_done_callback(self._submissions.discard)

    async def _submit(self, task: task_pb2.Task, root: trace.Span) -> None:
        made_at = time.monotonic()
        try:
            with self.tracing.span("generator.submit", **task_attributes(task.stream_id, task.root_id)):
                await self._submit_patiently(task, made_at)
            self.submitted += 1
        except RemoteError as error:
            reason = f"controller of {self.spec.node} refused the task: {error.code}: {error.details}"
            log.warning("task not submitted", task_id=task.task_id, reason=reason)
            del task.segment.frames[:]
            task.segment.stream = b""
            await self._record_drop(task, reason)
        finally:
            root.end()
            self._in_flight.release()

    async def _submit_patiently(self, task: task_pb2.Task, made_at: float) -> None:
        """Submits the task, trying again with the same id while the controller is away."""
        backoff = Backoff(SUBMIT_PATIENCE_S - (time.monotonic() - made_at))
        while True:
            task.age_s = time.monotonic() - made_at  # both on this machine's clock
            try:
                return await self.ports.submit(task)
            except RemoteError as error:
                if error.code not in TRANSIENT or backoff.exhausted():
                    raise
                log.info("controller away; submitting again", task_id=task.task_id, wait_s=backoff.wait)
            await backoff.sleep()

    async def _record_taken(self, taking: asyncio.Future[int]) -> None:
        """Records as dropped the segment whose number was being taken when the stream stopped."""
        try:
            sequence = await taking
        except Exception as error:  # not taken after all: nothing is missing
            log.warning("sequence not taken", stream_id=self.spec.stream_id, error=str(error))
            return
        await self._record_drop(new_task(self.spec, sequence), "segment not encoded: generator stopped")

    async def _record_drop(self, task: task_pb2.Task, reason: str) -> None:
        self.dropped += 1
        try:
            await self.ports.record_drop(task, reason)
        except RemoteError as error:  # the distributor finds the number missing and records it as lost
            log.error("cannot record drop", task_id=task.task_id, sequence=task.sequence, code=error.code)


Launch = Callable[[StreamRunner], asyncio.Task[None]]


@dataclass
class _Running:
    runner: StreamRunner
    task: asyncio.Task[None] | None = None  # what runs it (launch()); None until launched


class GeneratorStreams:
    """The streams a generator runs: those of its settings, from start to stop, and those started at
    run time (StartStream) until they are stopped (StopStream). `launch` runs a stream's runner in the
    background, supervised, and returns the task that runs it: cancelling that task stops capturing.

    Every task a stopped stream made is then taken by the controller or recorded as dropped: its
    runner is drained (its submissions awaited, for up to `grace_s`); what the drain leaves goes on in
    the background, and drain_all() (the component's stop) waits for it too."""

    def __init__(
        self,
        node: str,
        ports: StreamPorts,
        launch: Launch,
        tracing: Tracing = NO_TRACING,
        sequences: SequenceStore | None = None,
        grace_s: float = 30.0,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self.node, self.ports, self.launch, self.tracing = node, ports, launch, tracing
        self.sequences = sequences or SequenceStore()
        self.grace_s, self.max_streams = grace_s, max_streams
        self._streams: dict[str, _Running] = {}
        self._stopped: set[StreamRunner] = set()  # stopped, their tasks possibly still on their way

    def add_settings(self, spec: decision_pb2.StreamSpec) -> StreamRunner:
        """A stream of the generator's settings (checked by the caller), launched by launch_settings()."""
        runner = StreamRunner(spec, self.ports, self.tracing, self.sequences, SETTINGS)
        self._streams[spec.stream_id] = _Running(runner)
        return runner

    def launch_settings(self) -> None:
        for running in self._streams.values():
            if running.task is None:
                running.task = self.launch(running.runner)

    def statuses(self) -> list[generator_pb2.StreamStatus]:
        """Every stream's status, in stream id order."""
        return [self._streams[stream_id].runner.status for stream_id in sorted(self._streams)]

    def runner(self, stream_id: str) -> StreamRunner:
        try:
            return self._streams[stream_id].runner
        except KeyError:
            raise NotFound(f"stream {stream_id!r} does not run on this generator") from None

    def _runs_already(self, spec: decision_pb2.StreamSpec) -> bool:
        """Whether the stream runs with this very spec (AlreadyExists when its id runs otherwise)."""
        running = self._streams.get(spec.stream_id)
        if running is None:
            return False
        if running.runner.status.origin == SETTINGS:
            raise AlreadyExists(
                f"stream.stream_id: {spec.stream_id!r} is a stream of the generator's settings (the mesh file)"
            )
        if running.runner.spec != spec:
            raise AlreadyExists(
                f"stream.stream_id: {spec.stream_id!r} runs already with another spec; stop it first (StopStream)"
            )
        return True

    def _check_room(self, spec: decision_pb2.StreamSpec) -> None:
        if len(self._streams) >= self.max_streams:
            raise ResourceExhausted(
                f"stream.stream_id: {spec.stream_id!r} is new and this generator runs {len(self._streams)} "
                f"streams (at most {self.max_streams}); stop one first"
            )

    async def start(self, spec: decision_pb2.StreamSpec) -> bool:
        """Starts a stream at run time; False when it runs already with the same spec (nothing changes).
        Its numbering goes on from its last run on this generator (the same SequenceStore)."""
        check_startable(spec, "stream")
        if spec.node != self.node:
            raise InvalidArgument("stream.node", f"this generator's node {self.node!r}, got {shown(spec.node)}")
        if self._runs_already(spec):
            return False
        self._check_room(spec)
        await self._check_source(spec.source_id)
        taken = await self.sequences.taken(spec.stream_id)
        # Again: another call may have started (or refused) the same stream meanwhile.
        if self._runs_already(spec):
            return False
        self._check_room(spec)
        copy = decision_pb2.StreamSpec()
        copy.CopyFrom(spec)
        runner = StreamRunner(copy, self.ports, self.tracing, self.sequences, STARTED, taken)
        running = self._streams[spec.stream_id] = _Running(runner)
        running.task = self.launch(runner)
        log.info("stream started", stream_id=spec.stream_id, source_id=spec.source_id, tasks_generated=taken)
        return True

    async def _check_source(self, source_id: str) -> None:
        """That the datasource plays the source: a stream of a source it does not play would only wait."""
        try:
            await self.ports.source(source_id)
        except NotFound as error:
            raise NotFound(f"stream.source_id: {error}") from None
        except RemoteError as error:
            why = f"the datasource could not say whether it plays {source_id!r}: {error.code}: {cut(error.details)}"
            if error.code in TRANSIENT:
                raise Unavailable(f"stream.source_id: {why}; try again") from None
            raise FailedPrecondition(f"stream.source_id: {why}") from None

    async def stop(self, stream_id: str) -> int:
        """Stops a stream started at run time: capturing stops, then the tasks it made are awaited
        (taken by the controller or recorded as dropped, within grace_s). Returns how many tasks it
        made in all (sequences 0 .. n-1)."""
        require_id(stream_id, "stream_id")
        running = self._streams.get(stream_id)
        if running is None:
            raise NotFound(f"stream {stream_id!r} does not run on this generator")
        runner = running.runner
        if runner.status.origin == SETTINGS:
            raise FailedPrecondition(
                f"stream {stream_id!r} comes from the generator's settings (the mesh file); remove it there"
            )
        del self._streams[stream_id]
        self._stopped = {stopped for stopped in self._stopped if stopped.in_flight}  # those done are let go
        self._stopped.add(runner)
        if running.task is not None:
            running.task.cancel()
            # Its capture ends here: a segment being numbered or encoded is recorded as dropped.
            await asyncio.gather(running.task, return_exceptions=True)
        made = await runner.numbered()
        await runner.drain(self.grace_s)
        if runner.in_flight:
            log.warning("stream stopped with tasks still on their way", stream_id=stream_id, tasks=runner.in_flight)
        else:
            self._stopped.discard(runner)
        log.info("stream stopped", stream_id=stream_id, tasks_generated=made)
        return made

    async def drain_all(self, timeout_s: float) -> None:
        """Lets the tasks every stream made reach the controller or be recorded as dropped (once
        capturing has stopped: the caller cancelled what launch() started)."""
        runners = [running.runner for running in self._streams.values()] + list(self._stopped)
        await asyncio.gather(*(runner.drain(timeout_s) for runner in runners))
        self._stopped = {runner for runner in self._stopped if runner.in_flight}
