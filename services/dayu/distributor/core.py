"""Delivery, drops, queries and live watching of task records, without gRPC.

Accuracy of a delivered task is F1 at IoU 0.5 of its first detector stage against a reference: the
segment's ground truth when the source knows it (synthetic scenes), else, for a sample of the tasks,
the golden configuration's detections (full resolution), as Chameleon profiles configurations. The
golden detections come from a golden processor after the task has arrived, so they cost the
measured latency nothing: latency ends when the task reaches the distributor.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from dayu.distributor.store import RecordStore
from dayu.media.accuracy import segment_f1
from dayu.runtime.clock import timestamp
from dayu.runtime.errors import InvalidArgument
from dayu.runtime.logs import get_logger
from dayu.runtime.tracing import NO_TRACING, Tracing, task_attributes
from dayu.runtime.validation import require_id, validate_task
from dayu.v1 import distributor_pb2, task_pb2, types_pb2

log = get_logger(__name__)
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
# JPEG quality of the frames sent for the golden configuration: near lossless, a fraction of raw size.
GOLDEN_QUALITY = 95


def _check_filter(where: distributor_pb2.RecordFilter, field: str) -> None:
    if where.stream_id:
        require_id(where.stream_id, f"{field}.stream_id")


def first_detector(task: task_pb2.Task) -> task_pb2.TaskStage | None:
    """The first root stage producing boxes, the one whose accuracy a task reports."""
    for stage in task.dag.stages:
        if not stage.spec.parents and stage.spec.output_type == types_pb2.DATA_TYPE_BOXES:
            return stage
    return None


def accuracy(task: task_pb2.Task, golden: Sequence[types_pb2.FrameDetections] | None = None) -> float | None:
    """F1 at IoU 0.5 of the first detector stage against the segment's ground truth, else against
    `golden` (the golden configuration's detections, at the source's resolution); None without
    either, or when the stage did not run."""
    stage = first_detector(task)
    if stage is None or stage.state != task_pb2.STAGE_STATE_DONE:
        return None
    if task.segment.ground_truth:
        reference = list(task.segment.ground_truth)
    elif golden is not None:
        reference = list(golden)
    else:
        return None
    known = {f.frame_index for f in reference}
    # Frames without entries had nothing to find: count them as empty.
    reference += [types_pb2.FrameDetections(frame_index=i) for i in task.segment.frame_indices if i not in known]
    return segment_f1(stage.results, reference, task.segment.resolution, task.segment.source_resolution)


def golden_task(task: task_pb2.Task, stage: task_pb2.TaskStage) -> task_pb2.Task:
    """The task as the golden configuration sees it: its frames at the source's resolution, and only
    `stage` (pending) in its DAG, for a processor of the stage's kind (CPU work: run it in a thread)."""
    # Codecs (OpenCV, PyAV) only where golden scoring is configured: a distributor without it loads neither.
    from dayu.media.codecs import decode_segment, encode_segment
    from dayu.media.frames import resize

    source = task.segment.source_resolution
    frames = [resize(frame, source.width, source.height) for frame in decode_segment(task.segment)]
    golden = task_pb2.Task()
    golden.CopyFrom(task)
    del golden.dag.stages[:]
    golden.dag.stages.add(spec=stage.spec, node=stage.node)
    segment = golden.segment
    del segment.ground_truth[:]
    segment.codec = types_pb2.CODEC_JPEG
    encode_segment(segment, frames, GOLDEN_QUALITY)
    return golden


class GoldenReference(Protocol):
    async def detect(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> Sequence[types_pb2.FrameDetections]:
        """The detections of `stage`'s processor on the task's frames in the golden configuration, at the
        source's resolution; raises when there are none to be had."""


class GoldenSampler:
    """Picks the tasks measured against the golden configuration, one in `every` per stream among those
    without ground truth that still carry their frames, and asks `reference` for their detections
    within `timeout_s`. A task it cannot measure is stored without accuracy, never held up longer."""

    def __init__(self, reference: GoldenReference, every: int, timeout_s: float, tracing: Tracing = NO_TRACING) -> None:
        self.reference, self.every, self.timeout_s, self.tracing = reference, every, timeout_s, tracing
        self._eligible: Counter[str] = Counter()

    async def detections(self, task: task_pb2.Task) -> Sequence[types_pb2.FrameDetections] | None:
        stage = first_detector(task)
        segment = task.segment
        if segment.ground_truth or not (segment.frames or segment.stream) or stage is None:
            return None
        if stage.state != task_pb2.STAGE_STATE_DONE or not segment.source_resolution.width:
            return None
        self._eligible[task.stream_id] += 1
        if (self._eligible[task.stream_id] - 1) % self.every:
            return None
        try:
            with self.tracing.span("distributor.golden", **task_attributes(task.stream_id, task.root_id)):
                return await asyncio.wait_for(self.reference.detect(task, stage), self.timeout_s)
        except Exception as error:  # accuracy is optional; the record is not
            log.warning("no golden detections", task_id=task.task_id, error=f"{type(error).__name__}: {error}")
            return None


class DistributorCore:
    def __init__(
        self,
        store: RecordStore,
        on_stored: Callable[[task_pb2.TaskRecord], None] | None = None,
        golden: GoldenSampler | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.store = store
        self.tracing = tracing
        self.on_stored = on_stored
        self.golden = golden
        self._stored = asyncio.Condition()
        self.last_cursor = 0

    async def _put(
        self,
        task: task_pb2.Task,
        outcome: int,
        reason: str,
        received_at: Timestamp | None = None,
        golden: Sequence[types_pb2.FrameDetections] | None = None,
    ) -> tuple[int, bool]:
        """Stores the record; its latency ends at `received_at` (default: now), when the task arrived."""
        stored_at = timestamp()
        record = task_pb2.TaskRecord(task=task, outcome=outcome, reason=reason, stored_at=stored_at)
        if task.HasField("created_at"):
            arrived = received_at or stored_at
            record.latency_s = (arrived.ToNanoseconds() - task.created_at.ToNanoseconds()) / 1e9
        if outcome == task_pb2.TASK_OUTCOME_DELIVERED and (score := accuracy(task, golden)) is not None:
            record.accuracy = score
        with self.tracing.span("distributor.store", **task_attributes(task.stream_id, task.root_id)):
            cursor, duplicate = self.store.put(record)
        if not duplicate:
            async with self._stored:
                self.last_cursor = max(self.last_cursor, cursor)
                self._stored.notify_all()
            if self.on_stored:
                self.on_stored(record)
        return cursor, duplicate

    async def deliver(self, task: task_pb2.Task) -> tuple[int, bool]:
        validate_task(task, with_data=False)
        for i, stage in enumerate(task.dag.stages):
            if stage.state == task_pb2.STAGE_STATE_PENDING:
                raise InvalidArgument(f"task.dag.stages[{i}].state", "DONE or FAILED for a delivered task, got PENDING")
        received_at = timestamp()
        golden = await self.golden.detections(task) if self.golden else None
        # The frames served the golden configuration, if any; a record keeps results, not data.
        del task.segment.frames[:]
        task.segment.stream = b""
        return await self._put(task, task_pb2.TASK_OUTCOME_DELIVERED, "", received_at, golden)

    async def record_drop(self, task: task_pb2.Task, reason: str) -> tuple[int, bool]:
        require_id(task.stream_id, "task.stream_id")
        if not task.task_id:
            raise InvalidArgument("task.task_id", "the id of the dropped task")
        if not reason.strip():
            raise InvalidArgument("reason", "why the task was dropped")
        return await self._put(task, task_pb2.TASK_OUTCOME_DROPPED, reason)

    def query(self, where: distributor_pb2.RecordFilter, limit: int) -> tuple[list[task_pb2.TaskRecord], int]:
        """A page of records and the cursor of the next page (0 when this is the last)."""
        _check_filter(where, "filter")
        if limit > MAX_LIMIT:
            raise InvalidArgument("limit", f"at most {MAX_LIMIT}, got {limit}")
        limit = limit or DEFAULT_LIMIT
        records = self.store.query(where, limit)
        return records, records[-1].cursor if len(records) == limit else 0

    def export(self, where: distributor_pb2.RecordFilter) -> Iterator[bytes]:
        _check_filter(where, "filter")
        return self.store.export(where)

    async def watch(self, where: distributor_pb2.RecordFilter) -> AsyncIterator[task_pb2.TaskRecord]:
        _check_filter(where, "filter")
        page = distributor_pb2.RecordFilter(stream_id=where.stream_id, after_cursor=where.after_cursor)
        while True:
            for record in self.store.query(page, MAX_LIMIT):
                page.after_cursor = record.cursor
                yield record
            async with self._stored:
                await self._stored.wait_for(lambda: self.last_cursor > page.after_cursor)
