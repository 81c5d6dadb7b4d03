"""The spans the simulated mesh exports, as the real components do: the processors' queue wait and
inference, and the controllers' link transfers, with the attributes the scheduler reads
(dayu.runtime.tracing), in OTLP export requests of at most max_batch spans, each component's spans under
a resource naming its service and node. Held spans are bounded, as the exporters' queues are: past
max_queue, new spans are dropped (counted)."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from dayu.runtime.tracing import NODE, TracingSettings
from dayu.scheduler.traces import SERVICE_NAME

EXPORT_INTERVAL_S = TracingSettings().schedule_delay_ms / 1000  # the exporters' longest wait before a batch
MAX_BATCH = TracingSettings().max_export_batch_size
MAX_QUEUE = TracingSettings().max_queue_size


def _attribute(key: str, value: str | int | float) -> common_pb2.KeyValue:
    if isinstance(value, bool) or isinstance(value, str):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=str(value)))
    if isinstance(value, int):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(int_value=value))
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(double_value=value))


class SpanExporter:
    def __init__(self, max_batch: int = MAX_BATCH, max_queue: int = MAX_QUEUE) -> None:
        self.max_batch, self.max_queue = max_batch, max_queue
        self._held: list[tuple[str, str, trace_pb2.Span]] = []  # (service, node, span)
        self.exported = 0
        self.dropped = 0

    def add(
        self, service: str, node: str, name: str, start_s: float, end_s: float, **attributes: str | int | float
    ) -> None:
        """A span of `service` on `node` from start_s to end_s (simulated seconds)."""
        if len(self._held) >= self.max_queue:
            self.dropped += 1
            return
        span = trace_pb2.Span(
            name=name,
            start_time_unix_nano=round(start_s * 1e9),
            end_time_unix_nano=round(end_s * 1e9),
            attributes=[_attribute(NODE, node), *(_attribute(k, v) for k, v in attributes.items())],
        )
        self._held.append((f"dayu-{service}", node, span))

    def __len__(self) -> int:
        return len(self._held)

    def requests(self) -> list[trace_service_pb2.ExportTraceServiceRequest]:
        """The spans held, as export requests of at most max_batch spans each; none are held after."""
        held, self._held = self._held, []
        out = []
        for start in range(0, len(held), self.max_batch):
            request = trace_service_pb2.ExportTraceServiceRequest()
            by_resource: dict[tuple[str, str], trace_pb2.ScopeSpans] = {}
            for service, node, span in held[start : start + self.max_batch]:
                scope = by_resource.get((service, node))
                if scope is None:
                    resource_spans = request.resource_spans.add(
                        resource=resource_pb2.Resource(
                            attributes=[_attribute(SERVICE_NAME, service), _attribute(NODE, node)]
                        )
                    )
                    scope = by_resource[(service, node)] = resource_spans.scope_spans.add()
                scope.spans.append(span)
            out.append(request)
        self.exported += len(held)
        return out
