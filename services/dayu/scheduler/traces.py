"""Hop latency from OpenTelemetry spans, received over OTLP (the standard TraceService/Export).

Every component exports its spans of a task (see dayu.runtime.tracing); the scheduler keeps, per
stream, the recent durations of each kind of hop on each stage and node, so policies see where a
task's time goes: encoding, queueing, inference, link transfers, joins. Transfer spans also give
each link's current bandwidth: bytes over the time they took to go, the link's queue and its own
delay left out. Spans are folded in as they come (none is held per task), and the streams, hops and
links kept are bounded: past a limit, the one that has gone longest without a span is forgotten."""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from dayu.runtime.tracing import BYTES, DELAY, NODE, STAGE, STREAM, TO_NODE
from dayu.v1 import scheduler_pb2

RECENT_SPANS = 128  # durations kept per hop, stage and node
RECENT_TRANSFERS = 3  # a link's bandwidth: the median rate of its last few transfers, or the last if lower
MIN_TRANSFER_BYTES = 4096  # smaller transfers say more about per-message costs than about the rate
MAX_STREAMS = 1024  # streams whose hops are kept (spans name any stream, registered or not)
MAX_HOPS = 256  # (hop, stage, node) kept per stream
MAX_LINKS = 1024  # links whose rates are kept

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, order=True)
class HopKey:
    hop: str  # the span name
    stage: str
    node: str  # FROM->TO for link transfers


@dataclass
class HopSamples:
    spans: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_SPANS))

    def add(self, duration_s: float) -> None:
        self.spans += 1
        self.recent.append(duration_s)

    @property
    def p50_s(self) -> float:
        return statistics.median(self.recent)

    @property
    def p95_s(self) -> float:
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def _value(value: common_pb2.AnyValue) -> str:
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


class HopLatencies:
    """Per-stream hop latency, fed with OTLP export requests."""

    def __init__(self) -> None:
        self._streams: dict[str, dict[HopKey, HopSamples]] = {}
        self._link_rates: dict[tuple[str, str], deque[float]] = {}
        self.received = 0
        self.ignored = 0

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> int:
        """Takes the spans of an export request; returns how many were ignored (no stream attribute)."""
        ignored = 0
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {**resource, **_attributes(span.attributes)}
                    stream = attributes.get(STREAM)
                    if not stream or span.end_time_unix_nano < span.start_time_unix_nano:
                        ignored += 1
                        continue
                    node = attributes.get(NODE, "")
                    if TO_NODE in attributes:
                        node = f"{node}->{attributes[TO_NODE]}"
                    key = HopKey(span.name, attributes.get(STAGE, ""), node)
                    hops = _recent(self._streams, stream, dict, MAX_STREAMS)
                    samples = _recent(hops, key, HopSamples, MAX_HOPS)
                    duration_s = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9
                    samples.add(duration_s)
                    if span.name == "link.transfer":
                        self._add_rate(attributes, duration_s)
                    self.received += 1
        self.received += ignored
        self.ignored += ignored
        return ignored

    def _add_rate(self, attributes: dict[str, str], duration_s: float) -> None:
        try:
            nbytes = int(attributes.get(BYTES, "0"))
            sending_s = duration_s - float(attributes.get(DELAY, "0"))
        except ValueError:
            return
        if nbytes >= MIN_TRANSFER_BYTES and sending_s > 0:
            self.add_link_rate((attributes.get(NODE, ""), attributes.get(TO_NODE, "")), nbytes * 8 / sending_s / 1e6)

    def add_link_rate(self, link: tuple[str, str], mbps: float) -> None:
        """A rate the link carried: a task's transfer, or a monitor's probe that found it changed."""
        _recent(self._link_rates, link, lambda: deque(maxlen=RECENT_TRANSFERS), MAX_LINKS).append(mbps)

    def link_bandwidth(self) -> dict[tuple[str, str], float]:
        """(from node, to node) -> Mbit/s, from the most recent transfers on each link: their median,
        or the last one when it is lower, so a drop counts from its first transfer (late is worse than
        a step down too many, which the policies take back) and a rise once it holds."""
        return {link: min(statistics.median(rates), rates[-1]) for link, rates in self._link_rates.items()}

    def of(self, stream_id: str) -> dict[HopKey, HopSamples]:
        """The stream's hops (empty if no span of it came yet)."""
        return self._streams.get(stream_id, {})

    def stats(self, stream_id: str) -> list[scheduler_pb2.HopLatency]:
        return [
            scheduler_pb2.HopLatency(
                hop=key.hop,
                stage=key.stage,
                node=key.node,
                spans=samples.spans,
                p50_s=samples.p50_s,
                p95_s=samples.p95_s,
                last_s=samples.recent[-1],
            )
            for key, samples in sorted(self.of(stream_id).items())
        ]
