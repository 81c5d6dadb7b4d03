"""One stream's generator, without gRPC: takes frames from its source, applies the current decision
(frame-rate filter, resize, encoding, frames per segment), and submits each segment as a task to
its node's controller. Decisions come from the scheduler; while it cannot be reached the stream
goes on with the last decision (or the local startup plan).

Every task is accounted for: its sequence number is taken for good (SequenceStore) before it is
made, a submission the controller cannot take yet is tried again with the same task id (the
controller acknowledges a retry of what it holds without routing it twice) for up to
SUBMIT_PATIENCE_S, and a segment that cannot become a task, or a task the controller refuses, is
recorded as dropped with the reason. One lost anyway (this process killed) is missing from its
stream's numbers, and the distributor records it as lost."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from opentelemetry import trace
from opentelemetry.context import Context

from dayu.generator.sequences import SequenceStore
from dayu.media.codecs import decode_image, encode_segment
from dayu.media.frames import FrameRateFilter, resize
from dayu.runtime.clock import timestamp
from dayu.runtime.errors import DayuError, InvalidArgument, RemoteError
from dayu.runtime.logs import get_logger
from dayu.runtime.retry import TRANSIENT, Backoff
from dayu.runtime.tracing import NO_TRACING, STREAM, TASK, Tracing, task_attributes, traceparent
from dayu.runtime.validation import validate_configuration
from dayu.v1 import datasource_pb2, decision_pb2, generator_pb2, task_pb2, types_pb2

log = get_logger(__name__)

MAX_IN_FLIGHT = 8  # submissions waiting on the controller before capture waits too
SUBMIT_PATIENCE_S = 30.0  # longest a task waits for its controller to come back (a restart takes seconds)
RECONNECT_S = (0.2, 5.0)  # first and longest wait before reconnecting to the scheduler or source


class StreamPorts(Protocol):
    """What a stream needs from the mesh; failures raise RemoteError."""

    async def source_fps(self, source_id: str) -> float:
        """The frame rate the source plays at."""

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


def new_task(spec: decision_pb2.StreamSpec, sequence: int) -> task_pb2.Task:
    """A task of the stream with its ids and nothing else yet."""
    task_id = str(uuid.uuid4())
    return task_pb2.Task(
        stream_id=spec.stream_id,
        sequence=sequence,
        task_id=task_id,
        root_id=task_id,
        latency_budget_s=spec.latency_budget_s,
    )


def build_task(
    spec: decision_pb2.StreamSpec, decision: decision_pb2.Decision, sequence: int, frames: list[CapturedFrame]
) -> task_pb2.Task:
    """Decodes, resizes and encodes the frames into a task following the decision (CPU work: run it
    in a thread)."""
    config = decision.configuration
    width, height = config.resolution.width, config.resolution.height
    if config.codec == types_pb2.CODEC_H264:  # 4:2:0 needs even sizes
        width, height = width - width % 2, height - height % 2
    images: list[np.ndarray] = []
    for i, captured in enumerate(frames):
        image = decode_image(captured.frame.data, captured.frame.codec, captured.frame.resolution, f"frames[{i}]")
        images.append(resize(image, width, height))
    task = new_task(spec, sequence)
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
        if captured.frame.ground_truth:
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
    ) -> None:
        self.spec, self.ports, self.tracing = spec, ports, tracing
        self.sequences = sequences or SequenceStore()
        self.status = generator_pb2.StreamStatus(spec=spec, decision=startup_decision(spec))
        # Numbers taken so far, over every run of this generator: sequences 0 .. tasks_generated - 1.
        self.status.tasks_generated = self.sequences.next(spec.stream_id)
        self.submitted = 0
        self.dropped = 0
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._submissions: set[asyncio.Task[None]] = set()

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

    async def drain(self, timeout_s: float) -> None:
        if self._submissions:
            await asyncio.wait(set(self._submissions), timeout=timeout_s)

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
                source_fps = await self.ports.source_fps(self.spec.source_id)
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
                        await self._make_task(buffer)
                        buffer = []
                log.info("source ended", source_id=self.spec.source_id)
                return
            except (RemoteError, DayuError) as error:
                log.warning("source unavailable", source_id=self.spec.source_id, error=str(error))
            await asyncio.sleep(wait)
            wait = min(wait * 2, RECONNECT_S[1])

    async def _make_task(self, frames: list[CapturedFrame]) -> None:
        await self._in_flight.acquire()
        decision = decision_pb2.Decision()
        decision.CopyFrom(self.decision)
        sequence = await self.sequences.take(self.spec.stream_id)
        self.status.tasks_generated = sequence + 1
        # The root span of the task's trace; it ends once the controller has taken the task.
        root = self.tracing.start("generator.task", parent=Context(), **{STREAM: self.spec.stream_id})
        with trace.use_span(root, end_on_exit=False):
            try:
                with self.tracing.span("generator.encode", **{STREAM: self.spec.stream_id}):
                    task = await asyncio.to_thread(build_task, self.spec, decision, sequence, frames)
            except (Exception, asyncio.CancelledError) as error:
                # Bad frame data, or the generator stopping: the segment never becomes a task, but
                # its number is taken, so it is recorded (in the background: stop() waits for it).
                root.end()
                self._in_flight.release()
                why = "generator stopped" if isinstance(error, asyncio.CancelledError) else str(error)
                log.warning("segment not encoded", stream_id=self.spec.stream_id, sequence=sequence, error=why)
                self._track(self._record_drop(new_task(self.spec, sequence), f"segment not encoded: {why}"))
                if isinstance(error, asyncio.CancelledError):
                    raise
                return
            root.set_attribute(TASK, task.root_id)
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

    async def _record_drop(self, task: task_pb2.Task, reason: str) -> None:
        self.dropped += 1
        try:
            await self.ports.record_drop(task, reason)
        except RemoteError as error:  # the distributor finds the number missing and records it as lost
            log.error("cannot record drop", task_id=task.task_id, sequence=task.sequence, code=error.code)
