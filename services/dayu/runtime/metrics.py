"""Prometheus metrics: the one catalogue of what Dayu measures, and where it is served.

Every metric is declared once, below (name, help, labels, buckets), in the process's one registry
(prometheus_client's default, with its process and Python collectors). Names follow Prometheus'
conventions: the `dayu_` prefix, base units (`_seconds`, `_bytes`, `_bytes_per_second`: bytes, not
bits), `_total` on counters. Every series carries the `component` and `node` of the instance that made it: the embedded
mesh runs every component in one process and serves this registry once.

Labels are bounded: methods are the contracts' (a fixed set); streams by each component's MAX_STREAMS
(generator 64; distributor and scheduler 4096), and by MAX_STREAM_LABELS per component instance
whatever its callers send (later ones count as OTHER_STREAM); stages by the pipelines; processors and
models by the node's configuration; nodes by the mesh file; drop and decision reasons are mapped to a
fixed set of categories (drop_category, decision_category). Never a task id: a task leads to its
trace through the exemplars that the histograms carry (the trace id, shown in the OpenMetrics format).

The cores count through a Meter (one per component instance, one call per event); the gRPC server
(dayu.runtime.server) and clients (dayu.runtime.client) through an RpcMeter per method.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal
from wsgiref.simple_server import WSGIServer

import prometheus_client
from google.protobuf.descriptor import MethodDescriptor
from opentelemetry import trace
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from dayu.v1 import decision_pb2, resources_pb2, task_pb2

# `_created` series would double every counter and histogram for what nobody queries here.
prometheus_client.disable_created_metrics()

MAX_STREAM_LABELS = 4096  # distinct `stream` values one component instance labels; the rest are OTHER_STREAM
OTHER_STREAM = "(other)"  # no stream id has parentheses
DEFAULT_PORT = 9464  # `dayu up`, and every pod of the Kubernetes manifests (the exporters' usual port)
PATH = "/metrics"
IDENTITY = ("component", "node")  # on every Dayu series

# -- buckets ------------------------------------------------------------------------------------------

RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Budgets are seconds (2 s in the default mesh): fine around them, coarse past them.
TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 15, 30, 60)
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2.5, 5, 10)
DECISION_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# -- the catalogue ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """A metric as declared: its full exposed name, kind, help, labels (after component and node) and
    buckets (histograms)."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()
    source: str = ""  # where it is counted, for docs/metrics.md


CATALOGUE: dict[str, MetricSpec] = {}


def _declare(spec: MetricSpec) -> Counter | Gauge | Histogram:
    CATALOGUE[spec.name] = spec
    labels = (*IDENTITY, *spec.labels)
    if spec.kind == "counter":
        return Counter(spec.name, spec.help, labels, registry=REGISTRY)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.help, labels, registry=REGISTRY)
    return Histogram(spec.name, spec.help, labels, registry=REGISTRY, buckets=spec.buckets)


def _counter(name: str, help: str, labels: tuple[str, ...], source: str) -> Counter:
    return _declare(MetricSpec(name, "counter", help, labels, source=source))  # type: ignore[return-value]


def _gauge(name: str, help: str, labels: tuple[str, ...], source: str) -> Gauge:
    return _declare(MetricSpec(name, "gauge", help, labels, source=source))  # type: ignore[return-value]


def _histogram(name: str, help: str, labels: tuple[str, ...], buckets: tuple[float, ...], source: str) -> Histogram:
    return _declare(MetricSpec(name, "histogram", help, labels, buckets, source))  # type: ignore[return-value]


GRPC_STARTED = {
    side: _counter(
        f"dayu_grpc_{side}_started_total",
        f"gRPC calls started ({side} side), per full method name.",
        ("method",),
        "dayu.runtime.server" if side == "server" else "dayu.runtime.client",
    )
    for side in ("server", "client")
}
GRPC_HANDLED = {
    side: _counter(
        f"dayu_grpc_{side}_handled_total",
        f"gRPC calls completed ({side} side), per full method name and status code.",
        ("method", "code"),
        "dayu.runtime.server" if side == "server" else "dayu.runtime.client",
    )
    for side in ("server", "client")
}
GRPC_SECONDS = {
    side: _histogram(
        f"dayu_grpc_{side}_handling_seconds",
        f"Time from the start of a gRPC call to its status ({side} side; for a stream, its whole life).",
        ("method",),
        RPC_BUCKETS,
        "dayu.runtime.server" if side == "server" else "dayu.runtime.client",
    )
    for side in ("server", "client")
}
TASKS_GENERATED = _counter(
    "dayu_tasks_generated_total",
    "Tasks numbered by the stream's generator (every one ends delivered or dropped at the distributor).",
    ("stream",),
    "generator: a segment takes its sequence number",
)
LATENCY_BUDGET = _gauge(
    "dayu_stream_latency_budget_seconds",
    "The stream's end-to-end latency budget, to compare dayu_task_latency_seconds with.",
    ("stream",),
    "generator: a stream set up (from the settings, or started at run time)",
)
TASKS_DELIVERED = _counter(
    "dayu_tasks_delivered_total",
    "Tasks stored as delivered by the distributor (once each: duplicates are not counted).",
    ("stream",),
    "distributor: a delivered record stored",
)
TASKS_DROPPED = _counter(
    "dayu_tasks_dropped_total",
    "Tasks stored as dropped by the distributor, by the category of the reason (drop_category).",
    ("stream", "reason"),
    "distributor: a dropped record stored (recorded by a generator or controller, or found lost)",
)
TASK_LATENCY = _histogram(
    "dayu_task_latency_seconds",
    "End-to-end latency of delivered tasks: from the generator making the task to the distributor "
    "storing it (the task's age, summed from each node's own clock). Exemplar: the task's trace id.",
    ("stream",),
    TASK_BUCKETS,
    "distributor: a delivered record stored",
)
STAGE_LATENCY = _histogram(
    "dayu_stage_latency_seconds",
    "Processing time of each stage of delivered tasks (decode, inference, post-processing). Exemplar: trace id.",
    ("stream", "stage"),
    STAGE_BUCKETS,
    "distributor: the stage timings of a delivered record",
)
STAGE_QUEUE = _histogram(
    "dayu_stage_queue_seconds",
    "Time each stage of delivered tasks waited in its processor's queue. Exemplar: trace id.",
    ("stream", "stage"),
    STAGE_BUCKETS,
    "distributor: the stage timings of a delivered record",
)
STAGE_TRANSFER = _histogram(
    "dayu_stage_transfer_seconds",
    "Time each stage of delivered tasks spent being sent to the node that ran it (0 when local).",
    ("stream", "stage"),
    STAGE_BUCKETS,
    "distributor: the stage timings of a delivered record",
)
QUEUE_LENGTH = _gauge(
    "dayu_queue_length",
    "Tasks waiting in the processor's queue.",
    ("processor",),
    "processor: a task queued or taken by a worker",
)
BATCH_SIZE = _histogram(
    "dayu_batch_size",
    "Images per model call (frames, or crops of a segment batched together).",
    ("processor", "model"),
    BATCH_BUCKETS,
    "processor: each call to Triton or onnxruntime",
)
LINK_BANDWIDTH = _gauge(
    "dayu_link_bandwidth_bytes_per_second",
    "Bandwidth of the link from one node to another, as last measured by the monitor's probes.",
    ("from_node", "to_node"),
    "monitor: each link measurement (through its node's controller)",
)
LINK_RTT = _gauge(
    "dayu_link_rtt_seconds",
    "Round trip of a small probe from one node to another, as last measured.",
    ("from_node", "to_node"),
    "monitor: each link measurement (through its node's controller)",
)
DECISIONS = _counter(
    "dayu_decisions_total",
    "Decisions published for a stream, by policy and the category of their reason (decision_category).",
    ("stream", "policy", "reason"),
    "scheduler: a new version of a stream's decision",
)
DECISION_SECONDS = _histogram(
    "dayu_decision_seconds",
    "Time a policy took to decide (whether or not it proposed a new decision).",
    ("policy",),
    DECISION_BUCKETS,
    "scheduler: each call of a policy",
)
SPANS_INGESTED = _counter(
    "dayu_spans_ingested_total",
    "Spans the scheduler took from OTLP exports (with a stream attribute).",
    (),
    "scheduler: each OTLP export received",
)
SPANS_IGNORED = _counter(
    "dayu_spans_ignored_total",
    "Spans the scheduler received over OTLP and left out (no stream attribute).",
    (),
    "scheduler: each OTLP export received",
)

# -- bounded reasons ----------------------------------------------------------------------------------

# Why a task was dropped, from the free text of its record (the reasons' wording is the generators',
# controllers' and distributor's: see tests/unit/test_metrics.py for one of each). First match wins.
DROP_CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("lost", re.compile(r"^lost: ")),  # the distributor found the sequence missing
    ("late", re.compile(r"^late: ")),  # too far past its budget to be worth sending on
    ("join_timeout", re.compile(r"^join at .+ timed out after ")),
    ("shutdown", re.compile(r"^segment not encoded: generator stopped$| shut down with the task unfinished$")),
    ("encode_failed", re.compile(r"^segment not encoded: ")),
    ("unreachable", re.compile(r" \(tried for [\d.]+ s\)$")),  # a peer away for as long as the task could wait
    ("controller_refused", re.compile(r"^controller (of|on) \S+ refused the task")),
    ("distributor_refused", re.compile(r"^distributor (on )?refused the (task|drop)")),
    ("processor_failed", re.compile(r"^processor '.*' on \S+ failed stage |^stage \S+ failed on ")),
    ("no_processor", re.compile(r"^no processor '.*' for stage ")),
)
DROP_REASONS = (*(name for name, _ in DROP_CATEGORIES), "other")

# Why a decision was made, from the prefix the scheduler gives its reason ("WHY: the policy's reason").
DECISION_CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("startup", re.compile(r"^startup plan")),
    ("policy_switch", re.compile(r"^policy switched to ")),
    ("feedback", re.compile(r"^feedback( resumed)?(:|$)")),
    ("link_change", re.compile(r"^(traces|probes)(:|$)")),
    ("cpu_change", re.compile(r"^\S+ CPU \S+ -> \S+ cores")),
    ("stale_node", re.compile(r"^no report from |^\S+ reporting again")),
    ("admission", re.compile(r"^admission: ")),
    ("fallback", re.compile(r"^fallback: ")),
)
DECISION_REASONS = (*(name for name, _ in DECISION_CATEGORIES), "other")


def _category(text: str, categories: Sequence[tuple[str, re.Pattern[str]]]) -> str:
    for name, pattern in categories:
        if pattern.search(text):
            return name
    return "other"


def drop_category(reason: str) -> str:
    """The bounded category (DROP_REASONS) of a drop's free-text reason."""
    return _category(reason, DROP_CATEGORIES)


def decision_category(reason: str) -> str:
    """The bounded category (DECISION_REASONS) of a decision's reason."""
    return _category(reason, DECISION_CATEGORIES)


# -- exemplars ----------------------------------------------------------------------------------------


def trace_exemplar(traceparent: str) -> dict[str, str] | None:
    """{"trace_id": ...} from a W3C traceparent ("00-TRACE-SPAN-FLAGS"); None without a valid one."""
    parts = traceparent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and parts[1].strip("0"):
        return {"trace_id": parts[1]}
    return None


def current_exemplar() -> dict[str, str] | None:
    """{"trace_id": ...} of the current span (the caller's, on a server), None outside a trace."""
    context = trace.get_current_span().get_span_context()
    return {"trace_id": format(context.trace_id, "032x")} if context.is_valid else None


# -- what the cores count -----------------------------------------------------------------------------

# The processor and node that the current worker runs stages for (set once per worker task), so that
# the inference backends, which serve whichever processor made them, label their batches with it.
_PROCESSOR: ContextVar[tuple[str, str]] = ContextVar("dayu_processor", default=("", ""))


def working_for(node: str, processor: str) -> None:
    """Labels the batches of the model calls made from this task on (a processor's worker)."""
    _PROCESSOR.set((node, processor))


def model_called(model: str, batch: int) -> None:
    """One model call of `batch` images, for the processor the current worker runs stages for."""
    node, processor = _PROCESSOR.get()
    BATCH_SIZE.labels("processor", node, processor, model).observe(batch)


class Meter:
    """The metrics of one component instance: every series it adds carries its component and node.
    One call per event."""

    def __init__(self, component: str, node: str) -> None:
        self.component, self.node = component, node
        self._streams: set[str] = set()

    def _stream(self, stream: str) -> str:
        """The `stream` label: the id, for the first MAX_STREAM_LABELS streams seen, else OTHER_STREAM."""
        if stream in self._streams:
            return stream
        if len(self._streams) < MAX_STREAM_LABELS:
            self._streams.add(stream)
            return stream
        return OTHER_STREAM

    def latency_budget(self, stream: str, seconds: float) -> None:
        LATENCY_BUDGET.labels(self.component, self.node, self._stream(stream)).set(seconds)

    def task_generated(self, stream: str) -> None:
        TASKS_GENERATED.labels(self.component, self.node, self._stream(stream)).inc()

    def task_recorded(self, record: task_pb2.TaskRecord) -> None:
        """A record the distributor stored (not a duplicate): delivered, with its latencies, or dropped."""
        task = record.task
        stream = self._stream(task.stream_id)
        if record.outcome != task_pb2.TASK_OUTCOME_DELIVERED:
            TASKS_DROPPED.labels(self.component, self.node, stream, drop_category(record.reason)).inc()
            return
        TASKS_DELIVERED.labels(self.component, self.node, stream).inc()
        exemplar = trace_exemplar(task.trace_context.traceparent)
        TASK_LATENCY.labels(self.component, self.node, stream).observe(record.latency_s, exemplar)
        for stage in task.dag.stages:
            if stage.state != task_pb2.STAGE_STATE_DONE or not stage.HasField("timings"):
                continue
            labels = (self.component, self.node, stream, stage.spec.name)
            timings = stage.timings
            STAGE_LATENCY.labels(*labels).observe(timings.process_s, exemplar)
            STAGE_QUEUE.labels(*labels).observe(timings.queue_s, exemplar)
            STAGE_TRANSFER.labels(*labels).observe(timings.transfer_s, exemplar)

    def queue_length(self, processor: str, length: int) -> None:
        QUEUE_LENGTH.labels(self.component, self.node, processor).set(length)

    def link_measured(self, link: resources_pb2.LinkBandwidth) -> None:
        labels = (self.component, self.node, link.from_node or self.node, link.to_node)
        LINK_BANDWIDTH.labels(*labels).set(link.bandwidth_mbps * 1e6 / 8)  # Mbit/s -> bytes/s, the base unit
        LINK_RTT.labels(*labels).set(link.rtt_ms / 1000)

    def link_unmeasured(self, to_node: str) -> None:
        """The link's measurement failed: its figures are gone from the reports, and from here."""
        labels = (self.component, self.node, self.node, to_node)
        for gauge in (LINK_BANDWIDTH, LINK_RTT):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def decision(self, decision: decision_pb2.Decision) -> None:
        labels = (self.component, self.node, self._stream(decision.stream_id), decision.policy)
        DECISIONS.labels(*labels, decision_category(decision.reason)).inc()

    def decision_time(self, policy: str, seconds: float) -> None:
        DECISION_SECONDS.labels(self.component, self.node, policy).observe(seconds)

    def spans_received(self, ingested: int, ignored: int) -> None:
        SPANS_INGESTED.labels(self.component, self.node).inc(ingested)
        SPANS_IGNORED.labels(self.component, self.node).inc(ignored)


# -- gRPC ---------------------------------------------------------------------------------------------


def rpc_method(method: MethodDescriptor) -> str:
    """The `method` label: the call's path without its leading '/', as clients see it
    ("dayu.v1.DistributorService/Deliver")."""
    return f"{method.containing_service.full_name}/{method.name}"


class RpcMeter:
    """One method's gRPC metrics on one side (server or client) of one component instance: the
    children are bound once, so a call costs two clock reads and three updates. Its started counter
    shows from the start (at 0); its histogram and status counters once a call ends (a method never
    called would add 17 series of zeros)."""

    def __init__(self, side: Literal["server", "client"], component: str, node: str, method: str) -> None:
        self._labels = (component, node, method)
        self._side = side
        self._codes: dict[str, Counter] = {}
        self._started = GRPC_STARTED[side].labels(*self._labels)
        self._seconds: Histogram | None = None

    def started(self) -> None:
        self._started.inc()

    def handled(self, code: str, seconds: float, exemplar: dict[str, str] | None = None) -> None:
        counter = self._codes.get(code)
        if counter is None:
            counter = self._codes[code] = GRPC_HANDLED[self._side].labels(*self._labels, code)
        counter.inc()
        if self._seconds is None:
            self._seconds = GRPC_SECONDS[self._side].labels(*self._labels)
        self._seconds.observe(seconds, exemplar)


# -- serving ------------------------------------------------------------------------------------------


class MetricsServer:
    """/metrics of this process's registry over plain HTTP, on a thread of prometheus_client's own
    (the event loop never serves a scrape). It answers in the OpenMetrics format, with exemplars, to a
    scraper that asks for it (Accept: application/openmetrics-text), else in the text format."""

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"metrics listen address: HOST:PORT, got {listen!r}")
        self.host, self.port = host.strip("[]"), int(port)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Binds and serves; returns the port (OSError when it cannot listen)."""
        self._server, self._thread = start_http_server(self.port, self.host, registry=REGISTRY)
        self.port = int(self._server.server_port)
        return self.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{PATH}"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
