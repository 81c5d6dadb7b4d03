"""OpenTelemetry traces: one trace per task, a span per hop, across nodes.

Each component owns a TracerProvider (several components may share one process in the embedded
mesh, each must still say which service and node its spans come from). W3C trace context travels
in gRPC metadata: every call of a channel of Channels carries the current context (with_trace_context)
and ComponentServer makes the caller's context current while a request is handled.
Spans go over OTLP/gRPC to every endpoint in `tracing.export_to`: the scheduler (which turns them
into per-stage latency) and/or any collector (Jaeger, Tempo, the OpenTelemetry Collector). With TLS
(dayu.runtime.tls) an endpoint HOST:PORT is a mesh member, reached with the component's certificate;
`http://HOST:PORT` is a collector outside the mesh, reached in plaintext.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pydantic
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from dayu.runtime.tls import TARGET_NAME_OPTION, TlsSettings, channel_credentials

# Attribute names on Dayu spans; the scheduler's receiver reads them back.
STREAM = "dayu.stream_id"
TASK = "dayu.task_id"
STAGE = "dayu.stage"
NODE = "dayu.node"
TO_NODE = "dayu.to_node"
BYTES = "dayu.bytes"
DELAY = "dayu.link_delay_s"  # a link's own one-way delay, part of each transfer span

_PROPAGATOR = TraceContextTextMapPropagator()
PLAINTEXT = "http://"  # an export endpoint outside the mesh: no TLS, whatever the component's settings


class TracingSettings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    export_to: list[str] = pydantic.Field(
        default_factory=list,
        description="OTLP/gRPC endpoints (HOST:PORT) that receive the spans: the scheduler, any collector "
        "(http://HOST:PORT: plaintext, a collector outside a mesh with TLS)",
    )
    sample_ratio: float = pydantic.Field(1.0, ge=0, le=1, description="fraction of tasks traced")
    # A task makes about ten spans; a burst of a few thousand tasks must fit while the exporter waits.
    max_queue_size: int = pydantic.Field(65536, ge=1, description="spans held for export before dropping")
    max_export_batch_size: int = pydantic.Field(1024, ge=1, description="spans per OTLP request")
    schedule_delay_ms: int = pydantic.Field(500, ge=1, description="longest wait before a batch is sent")
    export_timeout_ms: int = pydantic.Field(5000, ge=1, description="deadline of one OTLP request")

    @pydantic.model_validator(mode="after")
    def _batch_fits_queue(self) -> TracingSettings:
        if self.max_export_batch_size > self.max_queue_size:
            raise ValueError("max_export_batch_size must not exceed max_queue_size")
        return self


class Tracing:
    """The tracer of one component on one node. Without export endpoints, spans are not recorded
    at all (a no-op tracer), though context still passes through."""

    def __init__(self, service: str, node: str, settings: TracingSettings, tls: TlsSettings | None = None) -> None:
        self.node = node
        self._provider: TracerProvider | None = None
        if not settings.export_to or settings.sample_ratio == 0:
            self.tracer: trace.Tracer = trace.NoOpTracer()
            return
        resource = Resource.create({"service.name": f"dayu-{service}", "service.namespace": "dayu", NODE: node})
        provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
        credentials = channel_credentials(tls) if tls is not None and tls.enabled else None
        for endpoint in settings.export_to:
            timeout_s = settings.export_timeout_ms / 1000
            if credentials is None or endpoint.startswith(PLAINTEXT):
                exporter = OTLPSpanExporter(endpoint=endpoint.removeprefix(PLAINTEXT), insecure=True, timeout=timeout_s)
            else:
                exporter = OTLPSpanExporter(
                    endpoint=endpoint,
                    insecure=False,
                    credentials=credentials,
                    channel_options=(TARGET_NAME_OPTION,),
                    timeout=timeout_s,
                )
            provider.add_span_processor(
                BatchSpanProcessor(
                    exporter,
                    max_queue_size=settings.max_queue_size,
                    max_export_batch_size=settings.max_export_batch_size,
                    schedule_delay_millis=settings.schedule_delay_ms,
                    export_timeout_millis=settings.export_timeout_ms,
                )
            )
        self._provider = provider
        self.tracer = provider.get_tracer("dayu")

    @contextmanager
    def span(
        self, name: str, parent: otel_context.Context | None = None, **attributes: str | int | float
    ) -> Iterator[trace.Span]:
        """A span of this node, current inside the block: child of `parent` or of the current span.
        An exception leaving the block marks it as an error."""
        with self.tracer.start_as_current_span(
            name, context=parent, attributes={NODE: self.node, **attributes}
        ) as span:
            yield span

    def start(
        self, name: str, parent: otel_context.Context | None = None, **attributes: str | int | float
    ) -> trace.Span:
        """A span ended later by the caller (queue waits, joins): child of `parent` or of the current span."""
        return self.tracer.start_span(name, context=parent, attributes={NODE: self.node, **attributes})

    def shutdown(self) -> None:
        """Sends what is queued and stops the exporters (blocking: call it off the event loop)."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None


def task_attributes(stream_id: str, root_id: str, stage: str = "") -> dict[str, str]:
    attributes = {STREAM: stream_id, TASK: root_id}
    if stage:
        attributes[STAGE] = stage
    return attributes


def traceparent() -> tuple[str, str]:
    """The current context as W3C (traceparent, tracestate) values; empty when there is none."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", ""), carrier.get("tracestate", "")


def extract(metadata: Sequence[tuple[str, Any]] | None) -> otel_context.Context:
    """The caller's trace context from gRPC invocation metadata (W3C traceparent/tracestate)."""
    carrier: Mapping[str, str] = {k: v for k, v in (metadata or ()) if isinstance(v, str)}
    return _PROPAGATOR.extract(carrier)


def with_trace_context(metadata: Sequence[tuple[str, Any]] | None) -> Sequence[tuple[str, Any]] | None:
    """An outgoing call's metadata with the current trace context (W3C traceparent/tracestate) added."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if not carrier:
        return metadata
    return (*(metadata or ()), *carrier.items())


NO_TRACING = Tracing("none", "", TracingSettings())  # for cores built without a component (unit tests)
