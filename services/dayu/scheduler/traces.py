"""Hop latency from OpenTelemetry spans, received over OTLP (the standard TraceService/Export).

Every component exports its spans of a task (see dayu.runtime.tracing); the scheduler keeps, per
stream, the recent durations of each kind of hop on each stage and node, so policies see where a
task's time goes: encoding, queueing, inference, link transfers, joins. Transfer spans also give
each link's current bandwidth: bytes over the time they took to go, the link's queue and its own
delay left out. Spans are folded in as they come (none is held per task), and the streams, hops and
links kept are bounded: past a limit, the one that has gone longest without a span is forgotten.

TaskTraces keeps, besides, the spans of the latest tasks themselves, by root id (dayu.task_id), for a
task's timeline (GetTaskTrace): a few of each, bounded in tasks and in spans a task."""

from __future__ import annotations

import array
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import NamedTuple, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from dayu.runtime.tracing import BYTES, DELAY, NODE, STAGE, STREAM, TASK, TO_NODE
from dayu.runtime.validation import MAX_ID_CHARS
from dayu.v1 import scheduler_pb2

RECENT_SPANS = 128  # durations kept per hop, stage and node
RECENT_TRANSFERS = 3  # a link's bandwidth: the median rate of its last few transfers, or the last if lower
MIN_TRANSFER_BYTES = 4096  # smaller transfers say more about per-message costs than about the rate
MAX_STREAMS = 1024  # streams whose hops are kept (spans name any stream, registered or not)
MAX_HOPS = 256  # (hop, stage, node) kept per stream
# Links whose rates are kept: four a node at the scheduler's most nodes (1024), each edge's uplink and
# downlink and more. Fewer than the mesh has, and links forgotten come back as new, deciding again for
# every stream of their nodes (at 1,000 edges, five times the decisions on link moves, for nothing).
MAX_LINKS = 4096
MAX_TRACED_TASKS = 2048  # tasks whose spans are kept, the least recently traced forgotten first
MAX_TASK_SPANS = 256  # spans kept of one task (a task makes about ten; those past this are not kept)
MAX_KEPT_SPANS = 64 * 1024  # spans kept in all: past it, the least recently traced tasks are forgotten too
SERVICE_NAME = "service.name"  # the resource attribute naming the component (dayu-generator, ...)

K = TypeVar("K")
V = TypeVar("V")


class HopKey(NamedTuple):  # equal to the plain tuple of its fields, which HopLatencies keeps
    hop: str  # the span name
    stage: str
    node: str  # FROM->TO for link transfers


HopKeyTuple = tuple[str, str, str]  # a HopKey's fields: how hops are kept (see HopLatencies)


class HopSamples:
    """A hop's spans, and the durations of the latest RECENT_SPANS of them: an array of numbers, in a
    ring, which the garbage collector need not go through (a deque of floats, a container, it does,
    number by number, for every hop of every stream at each full collection)."""

    __slots__ = ("_recent", "spans")

    def __init__(self) -> None:
        self.spans = 0
        self._recent = array.array("d")

    def add(self, duration_s: float) -> None:
        if len(self._recent) < RECENT_SPANS:
            self._recent.append(duration_s)
        else:  # over the oldest
            self._recent[self.spans % RECENT_SPANS] = duration_s
        self.spans += 1

    @property
    def last_s(self) -> float:
        return self._recent[(self.spans - 1) % len(self._recent)]

    @property
    def p50_s(self) -> float:
        return statistics.median(self._recent)

    @property
    def p95_s(self) -> float:
        ordered = sorted(self._recent)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def _value(value: common_pb2.AnyValue) -> str:
    if value.string_value:  # most are
        return value.string_value
    kind = value.WhichOneof("value")
    return str(getattr(value, kind)) if kind else ""


def _attributes(pairs: Iterable[common_pb2.KeyValue]) -> dict[str, str]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _recent(entries: dict[K, V], key: K, make: Callable[[], V], limit: int) -> V:
    """entries[key], made when absent, moved to the end; the least recently used go past `limit`."""
    value = entries.pop(key) if key in entries else make()
    entries[key] = value
    while len(entries) > limit:
        del entries[next(iter(entries))]
    return value


LINK = tuple[str, str]  # (from node, to node)
READ = frozenset((STREAM, TASK, STAGE, NODE, TO_NODE, BYTES, DELAY))  # the attributes the scheduler reads


class Span(NamedTuple):
    """What the scheduler reads of a span: read once, for the hops and the task traces both."""

    name: str
    start_ns: int
    end_ns: int
    service: str  # its resource's service.name
    attributes: dict[str, str]  # READ's, its own over its resource's


def spans_of(request: trace_service_pb2.ExportTraceServiceRequest) -> Iterator[Span]:
    """Each span of an export request, with the attributes the scheduler reads (only those: a span
    has others, and reading an attribute costs more than the rest of a span's handling)."""
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = resource.get(SERVICE_NAME, "")
        inherited = {key: value for key, value in resource.items() if key in READ}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes = inherited.copy()
                for pair in span.attributes:
                    if pair.key in READ:
                        attributes[pair.key] = _value(pair.value)
                yield Span(span.name, span.start_time_unix_nano, span.end_time_unix_nano, service, attributes)


class HopLatencies:
    """Per-stream hop latency, fed with OTLP export requests."""

    def __init__(self, max_streams: int | None = None) -> None:
        self.max_streams = MAX_STREAMS if max_streams is None else max_streams  # streams whose hops are kept
        # Keyed by plain tuples, equal to the HopKeys policies look up: the garbage collector leaves
        # tuples of strings alone, not named ones (a few per hop of every stream).
        self._streams: dict[str, dict[HopKeyTuple, HopSamples]] = {}
        self._link_rates: dict[LINK, deque[float]] = {}
        self._bandwidth: dict[LINK, float] = {}  # link_bandwidth(), kept up to date rate by rate
        self._moved: dict[LINK, float | None] = {}  # see moved_links()
        self.bandwidth: Mapping[LINK, float] = MappingProxyType(self._bandwidth)  # read-only, always current
        self.received = 0
        self.ignored = 0

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> int:
        """Takes the spans of an export request; returns how many were ignored (no stream attribute)."""
        return self.add_spans(spans_of(request))

    def add_spans(self, spans: Iterable[Span]) -> int:
        """Takes spans (spans_of); returns how many were ignored (no stream attribute)."""
        ignored = 0
        for span in spans:
            attributes = span.attributes
            stream = attributes.get(STREAM)
            if not stream or span.end_ns < span.start_ns:
                ignored += 1
                continue
            node = attributes.get(NODE, "")
            if TO_NODE in attributes:
                node = f"{node}->{attributes[TO_NODE]}"
            key = (span.name, attributes.get(STAGE, ""), node)
            hops = _recent(self._streams, stream, dict, self.max_streams)
            samples = _recent(hops, key, HopSamples, MAX_HOPS)
            duration_s = (span.end_ns - span.start_ns) / 1e9
            samples.add(duration_s)
            if span.name == "link.transfer":
                self._add_rate(attributes, duration_s)
            self.received += 1
        self.received += ignored
        self.ignored += ignored
        return ignored

    def forget(self, stream_id: str) -> None:
        """Drops the stream's hops (it was unregistered; spans of its tasks still on their way start them again)."""
        self._streams.pop(stream_id, None)

    def _add_rate(self, attributes: dict[str, str], duration_s: float) -> None:
        try:
            nbytes = int(attributes.get(BYTES, "0"))
            sending_s = duration_s - float(attributes.get(DELAY, "0"))
        except ValueError:
            return
        if nbytes >= MIN_TRANSFER_BYTES and sending_s > 0:
            self.add_link_rate((attributes.get(NODE, ""), attributes.get(TO_NODE, "")), nbytes * 8 / sending_s / 1e6)

    def add_link_rate(self, link: LINK, mbps: float) -> None:
        """A rate the link carried: a task's transfer, or a monitor's probe that found it changed."""
        rates = self._link_rates.pop(link, None)
        self._link_rates[link] = rates = deque(maxlen=RECENT_TRANSFERS) if rates is None else rates
        rates.append(mbps)
        self._moved.setdefault(link, self._bandwidth.get(link))
        self._bandwidth[link] = min(statistics.median(rates), rates[-1])
        while len(self._link_rates) > MAX_LINKS:  # the link that has gone longest without a rate
            gone = next(iter(self._link_rates))
            del self._link_rates[gone], self._bandwidth[gone]
            self._moved.pop(gone, None)

    def link_bandwidth(self) -> dict[LINK, float]:
        """(from node, to node) -> Mbit/s, from the most recent transfers on each link: their median,
        or the last one when it is lower, so a drop counts from its first transfer (late is worse than
        a step down too many, which the policies take back) and a rise once it holds. A copy: `bandwidth`
        is the same, always current."""
        return dict(self._bandwidth)

    def moved_links(self) -> dict[LINK, float | None]:
        """The links that took rates since the last call, each with its bandwidth before them (None
        when it had none): what a caller compares with `bandwidth` to see which moved, without going
        over every link."""
        moved, self._moved = self._moved, {}
        return moved

    def of(self, stream_id: str) -> dict[HopKeyTuple, HopSamples]:
        """The stream's hops (empty if no span of it came yet)."""
        return self._streams.get(stream_id, {})

    def stats(self, stream_id: str) -> list[scheduler_pb2.HopLatency]:
        return [
            scheduler_pb2.HopLatency(
                hop=hop,
                stage=stage,
                node=node,
                spans=samples.spans,
                p50_s=samples.p50_s,
                p95_s=samples.p95_s,
                last_s=samples.last_s,
            )
            for (hop, stage, node), samples in sorted(self.of(stream_id).items())
        ]


class TracedSpan(NamedTuple):
    """What is kept of one span of a task: its texts cut to MAX_ID_CHARS (they are names and ids). Kept
    as a plain tuple (of strings and numbers, which the garbage collector leaves alone), made one when read."""

    name: str
    component: str
    node: str
    stage: str
    to_node: str
    start_ns: int
    end_ns: int

    def message(self) -> scheduler_pb2.TaskSpan:
        start, end = Timestamp(), Timestamp()
        start.FromNanoseconds(self.start_ns)
        end.FromNanoseconds(self.end_ns)
        return scheduler_pb2.TaskSpan(
            name=self.name,
            component=self.component,
            node=self.node,
            stage=self.stage,
            to_node=self.to_node,
            start=start,
            end=end,
        )


class TaskTraces:
    """The spans of the latest tasks, by root id (the dayu.task_id attribute), as they come: at most
    `max_tasks` tasks, the least recently traced forgotten first, at most `max_spans` spans a task (the
    first ones), and at most `max_kept` spans in all. Spans without a task id, with one that is no id,
    or that end before they start are not kept."""

    def __init__(
        self, max_tasks: int = MAX_TRACED_TASKS, max_spans: int = MAX_TASK_SPANS, max_kept: int = MAX_KEPT_SPANS
    ) -> None:
        self.max_tasks, self.max_spans, self.max_kept = max_tasks, max_spans, max_kept
        self._tasks: dict[str, list[tuple[str, str, str, str, str, int, int]]] = {}  # least recent first
        self._kept = 0

    def add_spans(self, spans: Iterable[Span]) -> None:
        for span in spans:
            attributes = span.attributes
            root = attributes.get(TASK, "")
            if not root or len(root) > MAX_ID_CHARS or span.end_ns < span.start_ns:
                continue
            kept = self._tasks.pop(root, [])
            self._tasks[root] = kept  # to the end: the most recently traced
            if len(kept) >= self.max_spans:
                continue
            kept.append(
                (  # a TracedSpan's fields
                    span.name[:MAX_ID_CHARS],
                    # Dayu's components name themselves dayu-COMPONENT; a collector's other services keep theirs.
                    span.service.removeprefix("dayu-")[:MAX_ID_CHARS],
                    attributes.get(NODE, "")[:MAX_ID_CHARS],
                    attributes.get(STAGE, "")[:MAX_ID_CHARS],
                    attributes.get(TO_NODE, "")[:MAX_ID_CHARS],
                    span.start_ns,
                    span.end_ns,
                )
            )
            self._kept += 1
            while len(self._tasks) > self.max_tasks or self._kept > self.max_kept:
                self._kept -= len(self._tasks.pop(next(iter(self._tasks))))

    def spans(self, root_id: str) -> list[scheduler_pb2.TaskSpan]:
        """The task's spans kept, by start time (empty when none is)."""
        kept = sorted((TracedSpan._make(s) for s in self._tasks.get(root_id, ())), key=lambda s: (s.start_ns, s.end_ns))
        return [span.message() for span in kept]

    def __len__(self) -> int:
        return len(self._tasks)
