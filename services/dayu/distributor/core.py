"""Delivery, drops, queries and live watching of task records, without gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

from dayu.distributor.store import RecordStore
from dayu.media.accuracy import segment_f1
from dayu.runtime.clock import timestamp
from dayu.runtime.errors import InvalidArgument
from dayu.runtime.validation import require_id, validate_task
from dayu.v1 import distributor_pb2, task_pb2, types_pb2

DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


def _check_filter(where: distributor_pb2.RecordFilter, field: str) -> None:
    if where.stream_id:
        require_id(where.stream_id, f"{field}.stream_id")


def accuracy(task: task_pb2.Task) -> float | None:
    """F1 at IoU 0.5 of the first detector stage (a root stage producing boxes) against the
    segment's ground truth; None when the source has no ground truth or the stage did not run."""
    if not task.segment.ground_truth:
        return None
    for stage in task.dag.stages:
        if not stage.spec.parents and stage.spec.output_type == types_pb2.DATA_TYPE_BOXES:
            if stage.state != task_pb2.STAGE_STATE_DONE:
                return None
            truth = list(task.segment.ground_truth)
            known = {f.frame_index for f in truth}
            # Frames without ground truth entries had nothing to find: count them as empty truth.
            truth += [types_pb2.FrameDetections(frame_index=i) for i in task.segment.frame_indices if i not in known]
            return segment_f1(stage.results, truth, task.segment.resolution, task.segment.source_resolution)
    return None


class DistributorCore:
    def __init__(self, store: RecordStore, on_stored: Callable[[task_pb2.TaskRecord], None] | None = None) -> None:
        self.store = store
        self.on_stored = on_stored
        self._stored = asyncio.Condition()
        self.last_cursor = 0

    async def _put(self, task: task_pb2.Task, outcome: int, reason: str) -> tuple[int, bool]:
        stored_at = timestamp()
        record = task_pb2.TaskRecord(task=task, outcome=outcome, reason=reason, stored_at=stored_at)
        if task.HasField("created_at"):
            record.latency_s = (stored_at.ToNanoseconds() - task.created_at.ToNanoseconds()) / 1e9
        if outcome == task_pb2.TASK_OUTCOME_DELIVERED and (score := accuracy(task)) is not None:
            record.accuracy = score
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
        return await self._put(task, task_pb2.TASK_OUTCOME_DELIVERED, "")

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
