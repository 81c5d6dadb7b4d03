"""Delivery, drops, queries and live watching of task records, without gRPC.

Every task is stored once, under its original task id and its stream's sequence number; the store
runs on one worker thread, so the event loop never waits on SQLite. Latency is the task's own age
(Task.age_s, summed from durations each node measured), never a difference of two machines' clocks.

Gaps: generators number each stream's tasks 0, 1, 2, ...; a sequence still missing `gap_timeout_s`
after a later one was stored is recorded as dropped ("lost: ..."), under the task id
"{stream}#{sequence}", so even a task whose generator or controller died leaves a record. Should the
real task arrive after all, the store refuses it as a duplicate. settle() does the same at once for
whatever a finished run numbered and never delivered.

Accuracy of a delivered task is F1 at IoU 0.5 of its first detector stage against a reference: the
segment's ground truth when the source knows it (synthetic scenes), else, for a sample of the tasks,
the golden configuration's detections (full resolution), as Chameleon profiles configurations. The
golden detections come from a golden processor after the task has arrived, so they cost the
measured latency nothing: latency ends when the task reaches the distributor.

The last task delivered of each recent stream is kept in memory as Deliver received it, frames and
all (LatestTasks), for a stream's latest frame; records keep no frames. Controllers send the frames
on only for a segment without ground truth (for golden scoring): one with ground truth arrives, and is
kept, without them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from dayu.distributor.store import PAGE_BYTES, RecordStore
from dayu.media.accuracy import segment_f1
from dayu.runtime.clock import timestamp
from dayu.runtime.errors import InvalidArgument, NotFound, ResourceExhausted, shown
from dayu.runtime.logs import get_logger
from dayu.runtime.metrics import Meter
from dayu.runtime.tracing import NO_TRACING, Tracing, task_attributes
from dayu.runtime.validation import require_id, validate_task
from dayu.v1 import distributor_pb2, task_pb2, types_pb2

log = get_logger(__name__)
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
RECORD_BYTES = 4 * 1024 * 1024  # a stored task, without frames: results, hops, timings (a few KiB usually)
# JPEG quality of the frames sent for the golden configuration: near lossless, a fraction of raw size.
GOLDEN_QUALITY = 95
MAX_SEQUENCE = 2**63 - 1  # SQLite's largest integer
MAX_GAPS = 10_000  # runs of missing sequences tracked per stream
# Streams tracked (as many as the scheduler registers): callers name them, so past this many the
# least recently stored is forgotten; what it misses is still recorded when its streams are settled.
# (The `stream` label of its metrics holds as many: dayu.runtime.metrics.MAX_STREAM_LABELS.)
MAX_STREAMS = 4096
# Sequences a stream may skip at once and still have them recorded as lost: a larger jump (a
# generator's sequences file kept, the records file not; a caller's made-up number) is stored, but the
# sequences it skips are not tracked, or one request would have the distributor write up to 2**63 lost
# records. A hundred thousand is hours of a stream's tasks lost in a row (at 10 tasks a second).
MAX_JUMP = 100_000
SETTLE_AT_ONCE = 10 * 1000  # lost records SettleStreams writes before answering; the rest in the background
LOST_PER_CHECK = 1000  # lost records written per check, in one transaction
CHECK_EVERY_S = 1.0
LOST = "lost: "  # how the reason of a task found missing begins
LATEST_STREAMS = 256  # streams whose last delivered task is kept, frames and all
LATEST_BYTES = 256 * 1024 * 1024  # what those tasks may take in all (frames: up to a message each)
T = TypeVar("T")


def _check_filter(where: distributor_pb2.RecordFilter, field: str) -> None:
    if where.stream_id:
        require_id(where.stream_id, f"{field}.stream_id")
    if where.after_cursor > MAX_SEQUENCE:  # cursors are SQLite integers
        raise InvalidArgument(f"{field}.after_cursor", f"at most {MAX_SEQUENCE}, got {where.after_cursor}")


def _check_original(task: task_pb2.Task) -> None:
    if task.root_id != task.task_id:
        raise InvalidArgument(
            "task.root_id", f"equal to task.task_id {task.task_id!r}: records keep original tasks, not forked copies"
        )
    if task.sequence > MAX_SEQUENCE:
        raise InvalidArgument("task.sequence", f"at most {MAX_SEQUENCE}, got {task.sequence}")


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


def _settled(stream: str, sequence: int) -> str:
    return f"{LOST}sequence {sequence} of stream {stream} never reached the distributor before the run ended"


@dataclass
class Gap:
    """Sequences start..end-1 of a stream, missing since `noticed` (time.monotonic()), when sequence
    `seen` had been stored (before the distributor restarted, if `restored`)."""

    start: int
    end: int
    noticed: float
    seen: int
    restored: bool = False
    ended: bool = False  # due at once: the run ended (SettleStreams) without these sequences

    def reason(self, stream: str, sequence: int, now: float) -> str:
        if self.ended:
            return _settled(stream, sequence)
        when = " before the distributor restarted" if self.restored else ""
        return (
            f"{LOST}sequence {sequence} of stream {stream} never reached the distributor "
            f"(sequence {self.seen} did{when}, {now - self.noticed:.1f} s earlier)"
        )


class GapTracker:
    """Per stream, the highest sequence stored and the runs of sequences missing below it.

    Bounded: one integer per stream, and at most `max_gaps` runs per stream, however large a jump in
    sequence. Past that many runs the two oldest merge into one; the sequences stored between them
    are then refused by the store when the merged run is recorded, so nothing is stored twice. A jump
    of more than `max_jump` sequences is not tracked (logged): one request must not cost millions of
    records. At most `max_streams` streams, the least recently stored forgotten first."""

    def __init__(
        self, timeout_s: float, max_gaps: int = MAX_GAPS, max_jump: int = MAX_JUMP, max_streams: int = MAX_STREAMS
    ) -> None:
        self.timeout_s, self.max_gaps, self.max_jump, self.max_streams = timeout_s, max_gaps, max_jump, max_streams
        self.highest: OrderedDict[str, int] = OrderedDict()  # least recently stored first
        self.gaps: dict[str, list[Gap]] = {}  # per stream, by sequence (and so by when noticed)

    def missing(self, stream: str) -> list[int]:
        return [s for gap in self.gaps.get(stream, ()) for s in range(gap.start, gap.end)]

    def restore(self, highest: Mapping[str, int], runs: Iterable[tuple[str, int, int]], now: float) -> None:
        """The state of a store just opened: its highest sequences and missing runs, noticed `now`."""
        self.highest.update(highest)
        for stream, start, end in runs:
            if end - start <= self.max_jump:  # a longer run was not tracked before the restart either
                self._add(stream, Gap(start, end, now, end, restored=True))

    def stored(self, stream: str, sequence: int, now: float) -> None:
        """Notes that the stream's `sequence` is stored: it is no longer missing, and every sequence
        between the highest so far and it is, from `now` on."""
        highest = self.highest.get(stream, -1)
        if stream in self.highest:
            self.highest.move_to_end(stream)
        elif len(self.highest) >= self.max_streams:
            forgotten, _ = self.highest.popitem(last=False)
            self.gaps.pop(forgotten, None)
            log.warning("too many streams: the least recent is no longer tracked for gaps", stream_id=shown(forgotten))
        if sequence > highest:
            self.highest[stream] = sequence
            if sequence - highest - 1 > self.max_jump:
                log.warning(
                    "sequence jump too large to track",
                    stream_id=shown(stream),
                    sequence=sequence,
                    highest=highest,
                    not_tracked=sequence - highest - 1,
                )
            elif sequence > highest + 1:
                self._add(stream, Gap(highest + 1, sequence, now, sequence))
            return
        gaps = self.gaps.get(stream, [])
        i = bisect.bisect_right(gaps, sequence, key=lambda gap: gap.start) - 1
        if i < 0 or sequence >= gaps[i].end:
            return
        gap = gaps[i]
        gaps[i : i + 1] = [
            replace(gap, start=start, end=end)
            for start, end in ((gap.start, sequence), (sequence + 1, gap.end))
            if start < end
        ]
        if not gaps:
            del self.gaps[stream]
        self._bound(gaps)

    def _add(self, stream: str, gap: Gap) -> None:
        gaps = self.gaps.setdefault(stream, [])
        gaps.append(gap)
        self._bound(gaps)

    def _bound(self, gaps: list[Gap]) -> None:
        while len(gaps) > self.max_gaps:
            first, second = gaps[0], gaps[1]
            gaps[0:2] = [replace(second, start=first.start, noticed=first.noticed)]

    def due(self, now: float, limit: int) -> list[tuple[str, int, str]]:
        """Up to `limit` sequences missing for timeout_s or longer, each stream's oldest first:
        (stream, sequence, reason). Streams take turns, so a huge gap does not hold up the others."""
        found: list[tuple[str, int, str]] = []
        taken = []
        for stream, gaps in self.gaps.items():
            if len(found) >= limit:
                break
            for gap in gaps:
                if gap.noticed + self.timeout_s > now or len(found) >= limit:
                    break
                end = min(gap.end, gap.start + limit - len(found))
                found.extend((stream, s, gap.reason(stream, s, now)) for s in range(gap.start, end))
                taken.append(stream)
        for stream in dict.fromkeys(taken):
            self.gaps[stream] = self.gaps.pop(stream)  # to the back of the line
        return found

    def overdue(self, stream: str, end: int, now: float) -> None:
        """Every sequence of the stream below `end` that is not stored is due at once, as having never
        reached the distributor before the run ended (SettleStreams, for what it does not record itself)."""
        due = now - self.timeout_s
        gaps: list[Gap] = []
        for gap in self.gaps.get(stream, []):
            if gap.start < end:
                gaps.append(replace(gap, end=min(gap.end, end), noticed=min(gap.noticed, due), ended=True))
            if gap.end > end:
                gaps.append(replace(gap, start=max(gap.start, end)))
        highest = self.highest.get(stream, -1)
        if end - 1 > highest:  # numbered, never stored: the highest is accounted for as missing
            gaps.append(Gap(highest + 1, end, due, end - 1, ended=True))
            self.highest[stream] = end - 1
        if gaps:
            self.gaps[stream] = gaps
            self._bound(gaps)

    def missing_below(self, stream: str, end: int) -> list[range]:
        """The runs of the stream's sequences below `end` that are not stored."""
        runs = [range(gap.start, min(gap.end, end)) for gap in self.gaps.get(stream, ())]
        runs.append(range(self.highest.get(stream, -1) + 1, end))
        return [run for run in runs if run]


class LatestTasks:
    """The last task delivered of each stream with its segment's frames, for at most `max_streams`
    streams and `max_bytes` of tasks (the least recently delivered forgotten first; the one just
    delivered is always kept)."""

    def __init__(self, max_streams: int = LATEST_STREAMS, max_bytes: int = LATEST_BYTES) -> None:
        self.max_streams, self.max_bytes = max_streams, max_bytes
        self._records: OrderedDict[str, tuple[task_pb2.TaskRecord, int]] = OrderedDict()  # (record, bytes)
        self._bytes = 0

    def keep(self, record: task_pb2.TaskRecord, frames: Sequence[bytes], stream: bytes) -> None:
        """Keeps the stored record with the frames its task carried when it was delivered."""
        kept = task_pb2.TaskRecord()
        kept.CopyFrom(record)
        kept.task.segment.frames.extend(frames)
        kept.task.segment.stream = stream
        size = record.task.ByteSize() + sum(map(len, frames)) + len(stream)
        stream_id = record.task.stream_id
        if stream_id in self._records:
            self._bytes -= self._records.pop(stream_id)[1]
        self._records[stream_id] = (kept, size)
        self._bytes += size
        while len(self._records) > 1 and (len(self._records) > self.max_streams or self._bytes > self.max_bytes):
            _, (_, forgotten) = self._records.popitem(last=False)
            self._bytes -= forgotten

    def get(self, stream_id: str) -> task_pb2.TaskRecord:
        """The record kept (itself, not a copy: a reply copies it)."""
        require_id(stream_id, "stream_id")
        try:
            return self._records[stream_id][0]
        except KeyError:
            raise NotFound(
                f"no task of stream {stream_id!r} was delivered with its frames since the distributor started "
                f"(it keeps the last of the {self.max_streams} streams delivered most recently)"
            ) from None


class DistributorCore:
    def __init__(
        self,
        store: RecordStore,
        on_stored: Callable[[task_pb2.TaskRecord], None] | None = None,
        golden: GoldenSampler | None = None,
        tracing: Tracing = NO_TRACING,
        gap_timeout_s: float = 30.0,
    ) -> None:
        self.store = store
        self.tracing = tracing
        self.meter = Meter("distributor", tracing.node)
        self.on_stored = on_stored
        self.golden = golden
        self.gaps = GapTracker(gap_timeout_s)
        self.latest = LatestTasks()
        self.duplicates = 0  # tasks refused because they were stored already
        self.last_cursor = 0
        self._stored = asyncio.Condition()
        self._wake = asyncio.Event()  # a put happened: check the gaps
        # One thread owns the SQLite connection: calls are serialized and the event loop never waits.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distributor-store")
        self._closed = False

    async def _in_worker(self, call: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, call, *args)

    async def start(self) -> None:
        """Rebuilds the gaps from the store: what is missing below each stream's highest stored
        sequence counts as noticed now."""
        highest, runs = await self._in_worker(self.store.sequences)
        self.gaps.restore(highest, runs, time.monotonic())

    async def close(self) -> None:
        """Closes the store, after the calls already queued for it; closing twice is harmless."""
        if not self._closed:
            self._closed = True
            await self._in_worker(self.store.close)
            self._worker.shutdown()

    async def _announce(self, records: list[task_pb2.TaskRecord]) -> None:
        async with self._stored:
            self.last_cursor = max(self.last_cursor, records[-1].cursor)
            self._stored.notify_all()
        for record in records:
            self.meter.task_recorded(record)
        if self.on_stored:
            for record in records:
                self.on_stored(record)
        self._wake.set()

    async def _put(
        self,
        task: task_pb2.Task,
        outcome: int,
        reason: str,
        golden: Sequence[types_pb2.FrameDetections] | None = None,
    ) -> tuple[int, bool]:
        # The frames served the golden configuration, if any; a record keeps results, not data (the
        # last delivered task of the stream keeps them, in memory).
        frames, stream = list(task.segment.frames), task.segment.stream
        del task.segment.frames[:]
        task.segment.stream = b""
        if task.ByteSize() > RECORD_BYTES:
            raise ResourceExhausted(f"task: at most {RECORD_BYTES} bytes without its frames, got {task.ByteSize()}")
        # age_s already includes the transfer to this node: no clock of another machine is involved.
        record = task_pb2.TaskRecord(
            task=task, outcome=outcome, reason=reason, stored_at=timestamp(), latency_s=task.age_s
        )
        if outcome == task_pb2.TASK_OUTCOME_DELIVERED and (score := accuracy(task, golden)) is not None:
            record.accuracy = score
        with self.tracing.span("distributor.store", **task_attributes(task.stream_id, task.root_id)):
            cursor, duplicate = await self._in_worker(self.store.put, record)
        if duplicate:
            self.duplicates += 1
            log.info(
                "duplicate refused",
                task_id=task.task_id,
                stream_id=task.stream_id,
                sequence=task.sequence,
                stored_cursor=cursor,
                duplicates=self.duplicates,
            )
            return cursor, True
        self.gaps.stored(task.stream_id, task.sequence, time.monotonic())
        if outcome == task_pb2.TASK_OUTCOME_DELIVERED and (frames or stream):  # most come without (previews)
            self.latest.keep(record, frames, stream)
        await self._announce([record])
        return cursor, False

    async def deliver(self, task: task_pb2.Task) -> tuple[int, bool]:
        validate_task(task, with_data=False)
        _check_original(task)
        for i, stage in enumerate(task.dag.stages):
            if stage.state == task_pb2.STAGE_STATE_UNSPECIFIED:
                raise InvalidArgument(f"task.dag.stages[{i}].state", "DONE or FAILED for a delivered task, got PENDING")
        golden = await self.golden.detections(task) if self.golden else None
        return await self._put(task, task_pb2.TASK_OUTCOME_DELIVERED, "", golden)

    async def record_drop(self, task: task_pb2.Task, reason: str) -> tuple[int, bool]:
        require_id(task.stream_id, "task.stream_id")
        if not task.task_id:
            raise InvalidArgument("task.task_id", "the id of the dropped task")
        _check_original(task)
        if not reason.strip():
            raise InvalidArgument("reason", "why the task was dropped")
        return await self._put(task, task_pb2.TASK_OUTCOME_DROPPED, reason)

    async def _record_lost(self, lost: list[tuple[str, int, str]]) -> int:
        """Records (stream, sequence, reason) as dropped, in one transaction, except those stored
        meanwhile; returns how many it recorded."""
        stored_at = timestamp()
        records = [
            task_pb2.TaskRecord(
                task=task_pb2.Task(
                    stream_id=stream, sequence=sequence, task_id=f"{stream}#{sequence}", root_id=f"{stream}#{sequence}"
                ),
                outcome=task_pb2.TASK_OUTCOME_DROPPED,
                reason=reason,
                stored_at=stored_at,
            )
            for stream, sequence, reason in lost
        ]
        results = await self._in_worker(self.store.put_all, records)
        now = time.monotonic()
        for stream, sequence, _ in lost:  # stored now, as lost or as the real task
            self.gaps.stored(stream, sequence, now)
        new = [record for record, (_, duplicate) in zip(records, results, strict=True) if not duplicate]
        if new:
            log.warning("tasks lost", count=len(new), streams=sorted({r.task.stream_id for r in new}))
            await self._announce(new)
        return len(new)

    async def check_gaps(self) -> int:
        """Records as lost up to LOST_PER_CHECK sequences missing for gap_timeout_s; returns how many
        it looked at (LOST_PER_CHECK: there may be more)."""
        due = self.gaps.due(time.monotonic(), LOST_PER_CHECK)
        if due:
            await self._record_lost(due)
        return len(due)

    async def check_gaps_forever(self) -> None:
        """Checks the gaps every second and after every put, for as long as the distributor runs (run
        it supervised: an error leaves the gaps as they were, for the next check)."""
        every_s = min(CHECK_EVERY_S, self.gaps.timeout_s)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), every_s)
            self._wake.clear()
            if await self.check_gaps() == LOST_PER_CHECK:
                self._wake.set()  # more may be due: go on at once

    async def settle(self, generated: Mapping[str, int]) -> int:
        """Records as lost, at once, every sequence below generated[stream] (how many tasks the
        stream's generator numbered) that is not stored: the run is over and the mesh drained.
        Returns how many it recorded. At most SETTLE_AT_ONCE are recorded before it answers: the rest
        are due at once for the gap check, which records them a thousand at a time in the background."""
        for stream, count in generated.items():
            require_id(stream, "generated")
            most = min(MAX_SEQUENCE, self.gaps.highest.get(stream, -1) + 1 + self.gaps.max_jump)
            if not 0 <= count <= most:
                raise InvalidArgument(
                    f"generated[{stream}]",
                    f"a number of tasks, 0 to {most} (the stream's highest sequence stored + 1 + {self.gaps.max_jump}),"
                    f" got {count}",
                )
        lost = (
            (stream, s, _settled(stream, s))
            for stream, count in generated.items()
            for run in self.gaps.missing_below(stream, count)
            for s in run
        )
        recorded = looked = 0
        while looked < SETTLE_AT_ONCE and (batch := list(itertools.islice(lost, LOST_PER_CHECK))):
            recorded += await self._record_lost(batch)
            looked += len(batch)
        if looked >= SETTLE_AT_ONCE:  # there may be more: the gap check records them
            now = time.monotonic()
            for stream, count in generated.items():
                self.gaps.overdue(stream, count, now)
            self._wake.set()
        return recorded

    def latest_task(self, stream_id: str) -> task_pb2.TaskRecord:
        """The stream's last delivered task as stored, with the frames it arrived with."""
        return self.latest.get(stream_id)

    async def query(
        self, where: distributor_pb2.RecordFilter, limit: int, newest_first: bool = False
    ) -> tuple[list[task_pb2.TaskRecord], int]:
        """A page of records and the cursor of the next page (0 when this is the last, or newest first)."""
        _check_filter(where, "filter")
        if limit > MAX_LIMIT:
            raise InvalidArgument("limit", f"at most {MAX_LIMIT}, got {limit}")
        limit = limit or DEFAULT_LIMIT
        records, more = await self._in_worker(self.store.query, where, limit, PAGE_BYTES, newest_first)
        return records, records[-1].cursor if more and not newest_first else 0

    async def export(self, where: distributor_pb2.RecordFilter) -> AsyncIterator[bytes]:
        """The matching records as gzipped JSON lines, each chunk read and compressed on the worker."""
        _check_filter(where, "filter")
        chunks = self.store.export(where)
        try:
            while (chunk := await self._in_worker(next, chunks, None)) is not None:
                yield chunk
        finally:
            self._worker.submit(chunks.close)  # after a next() still running there, if any

    async def watch(self, where: distributor_pb2.RecordFilter) -> AsyncIterator[task_pb2.TaskRecord]:
        _check_filter(where, "filter")
        page = distributor_pb2.RecordFilter(stream_id=where.stream_id, after_cursor=where.after_cursor)
        while True:
            for record in (await self._in_worker(self.store.query, page, MAX_LIMIT))[0]:
                page.after_cursor = record.cursor
                yield record
            async with self._stored:
                await self._stored.wait_for(lambda: self.last_cursor > page.after_cursor)
