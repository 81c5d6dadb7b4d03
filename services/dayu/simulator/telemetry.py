"""The spans the simulated mesh exports, as the real components do: the processors' queue wait and
inference, and the controllers' link transfers, with the attributes the scheduler reads
(dayu.runtime.tracing), in OTLP export requests of at most max_batch spans, each component's spans under
a resource naming its service and node. Held spans are bounded, as the exporters' queues are: past
max_queue, new spans are dropped (counted).

The requests are what an OTLP exporter sends, parsed as the collector's end parses them: each span is
written in the protobuf wire format as it is added (the encoding of an attribute that repeats, a node's
or a stream's, is kept and reused), and each request is parsed from its bytes, which costs a fraction of
building the same messages field by field in Python."""

from __future__ import annotations

import struct

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from dayu.runtime.tracing import BYTES, NODE, TASK, TracingSettings
from dayu.scheduler.traces import SERVICE_NAME

EXPORT_INTERVAL_S = TracingSettings().schedule_delay_ms / 1000  # the exporters' longest wait before a batch
MAX_BATCH = TracingSettings().max_export_batch_size
MAX_QUEUE = TracingSettings().max_queue_size
PER_TASK = frozenset((TASK, BYTES))  # attributes whose values rarely repeat: their encoding is not kept
ENCODINGS_KEPT = 1 << 16  # encoded attributes kept for reuse (past it, they are forgotten and made again)

_FIXED64 = struct.Struct("<Q")
_DOUBLE = struct.Struct("<d")


def _attribute(key: str, value: str | int | float) -> common_pb2.KeyValue:
    """An attribute as a message (what the exporters' encoding stands for; tests compare the two)."""
    if isinstance(value, bool) or isinstance(value, str):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=str(value)))
    if isinstance(value, int):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(int_value=value))
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(double_value=value))


def _varint(n: int) -> bytes:
    if n < 0:  # int64: two's complement in ten bytes
        n += 1 << 64
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, data: bytes) -> bytes:
    """A length-delimited field (tag: its number << 3 | 2)."""
    return bytes((tag,)) + _varint(len(data)) + data


def _encoded_attribute(key: str, value: str | int | float, tag: int = 0x4A) -> bytes:
    """A KeyValue as a field `tag` of its parent (Span.attributes: 9, Resource.attributes: 1)."""
    if isinstance(value, bool) or isinstance(value, str):
        any_value = _field(0x0A, str(value).encode())  # AnyValue.string_value = 1
    elif isinstance(value, int):
        any_value = b"\x18" + _varint(value)  # int_value = 3
    else:
        any_value = b"\x21" + _DOUBLE.pack(value)  # double_value = 4
    return _field(tag, _field(0x0A, key.encode()) + _field(0x12, any_value))  # KeyValue: key = 1, value = 2


class SpanExporter:
    def __init__(self, max_batch: int = MAX_BATCH, max_queue: int = MAX_QUEUE) -> None:
        self.max_batch, self.max_queue = max_batch, max_queue
        self._held: list[tuple[tuple[str, str], bytes]] = []  # ((service, node), the span's encoding)
        self._encoded: dict[tuple[str, type, str | int | float], bytes] = {}  # attribute -> its encoding
        self._names: dict[str, bytes] = {}  # span name -> its field
        self._resources: dict[tuple[str, str], bytes] = {}  # (service, node) -> the Resource field
        self.exported = 0
        self.dropped = 0

    def _attribute(self, key: str, value: str | int | float) -> bytes:
        if key in PER_TASK:
            return _encoded_attribute(key, value)
        pair = (key, value.__class__, value)  # True and 1, 1 and 1.0 are equal keys, encoded apart
        encoded = self._encoded.get(pair)
        if encoded is None:
            if len(self._encoded) >= ENCODINGS_KEPT:
                self._encoded.clear()
            encoded = self._encoded[pair] = _encoded_attribute(key, value)
        return encoded

    def add(
        self, service: str, node: str, name: str, start_s: float, end_s: float, **attributes: str | int | float
    ) -> None:
        """A span of `service` on `node` from start_s to end_s (simulated seconds)."""
        if len(self._held) >= self.max_queue:
            self.dropped += 1
            return
        named = self._names.get(name)
        if named is None:
            named = self._names[name] = _field(0x2A, name.encode())  # Span.name = 5
        parts = [
            named,
            b"\x39",  # start_time_unix_nano = 7, fixed64
            _FIXED64.pack(round(start_s * 1e9)),
            b"\x41",  # end_time_unix_nano = 8, fixed64
            _FIXED64.pack(round(end_s * 1e9)),
            self._attribute(NODE, node),
        ]
        parts.extend(self._attribute(key, value) for key, value in attributes.items())
        self._held.append(((f"dayu-{service}", node), b"".join(parts)))

    def __len__(self) -> int:
        return len(self._held)

    def _resource(self, service: str, node: str) -> bytes:
        """A ResourceSpans' resource field: the Resource naming the service and the node."""
        encoded = self._resources.get((service, node))
        if encoded is None:
            attributes = _encoded_attribute(SERVICE_NAME, service, 0x0A) + _encoded_attribute(NODE, node, 0x0A)
            encoded = self._resources[(service, node)] = _field(0x0A, attributes)  # ResourceSpans.resource = 1
        return encoded

    def requests(self) -> list[trace_service_pb2.ExportTraceServiceRequest]:
        """The spans held, as export requests of at most max_batch spans each; none are held after. In a
        request, a ResourceSpans per (service, node), in the order of their first span, with one
        ScopeSpans holding their spans in the order they were added."""
        held, self._held = self._held, []
        out = []
        for start in range(0, len(held), self.max_batch):
            by_resource: dict[tuple[str, str], list[bytes]] = {}
            for resource, span in held[start : start + self.max_batch]:
                spans = by_resource.get(resource)
                if spans is None:
                    spans = by_resource[resource] = []
                spans.append(b"\x12")  # ScopeSpans.spans = 2
                spans.append(_varint(len(span)))
                spans.append(span)
            request = bytearray()
            for (service, node), spans in by_resource.items():
                scope = _field(0x12, b"".join(spans))  # ResourceSpans.scope_spans = 2
                request += _field(0x0A, self._resource(service, node) + scope)  # Request.resource_spans = 1
            out.append(trace_service_pb2.ExportTraceServiceRequest.FromString(bytes(request)))
        self.exported += len(held)
        return out
