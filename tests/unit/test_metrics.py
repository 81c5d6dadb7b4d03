"""The metrics catalogue (dayu.runtime.metrics): names and labels by Prometheus' conventions, bounded
reason categories for every drop and decision reason the code makes, what a Meter counts, and /metrics
served by a component (`metrics.listen`) with its gRPC calls counted per method and status, in the
text format and, with exemplars, in OpenMetrics."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from dayu.cli import _parser
from dayu.controller.core import ControllerCore
from dayu.distributor.core import Gap, _settled
from dayu.runtime import metrics, retry
from dayu.runtime.config import ComponentSettings, load_settings
from dayu.runtime.errors import InvalidArgument, RemoteError
from dayu.runtime.metrics import (
    CATALOGUE,
    DECISION_REASONS,
    DROP_REASONS,
    Meter,
    MetricsServer,
    decision_category,
    drop_category,
    trace_exemplar,
)
from dayu.runtime.server import ComponentServer
from dayu.scheduler.service import SchedulerComponent, SchedulerSettings
from dayu.v1 import decision_pb2, resources_pb2, scheduler_pb2, scheduler_pb2_grpc, task_pb2, types_pb2

from conftest import BOXES, LABELS, fork_join_pipeline, make_task, stage, tokens_file

NAME = re.compile(r"^dayu_[a-z][a-z0-9_]*[a-z0-9]$")
LABEL = re.compile(r"^[a-z][a-z0-9_]*$")
BASE_UNITS = ("_seconds", "_bytes", "_bytes_per_second")
NOT_BASE_UNITS = re.compile(r"_(ms|milliseconds|us|microseconds|minutes|hours|mbps|kb|kib|mb|mib|bits|percent)(_|$)")
DIMENSIONLESS = {"dayu_queue_length", "dayu_batch_size"}  # counts of things, in no unit
UNBOUNDED = {"task", "task_id", "root_id", "trace_id", "span_id", "sequence", "cursor", "frame"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


# -- the catalogue -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", CATALOGUE.values(), ids=lambda spec: spec.name)
def test_every_metric_is_named_and_labelled_by_the_conventions(spec: metrics.MetricSpec) -> None:
    assert NAME.match(spec.name), spec.name
    assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
    assert not NOT_BASE_UNITS.search(spec.name), f"{spec.name}: base units only (seconds, bytes)"
    if spec.kind != "counter" and spec.name not in DIMENSIONLESS:
        assert spec.name.endswith(BASE_UNITS), f"{spec.name}: a measure ends in its base unit"
    assert spec.help.strip() and spec.source, spec.name
    assert all(LABEL.match(label) for label in spec.labels), spec.labels
    assert not set(spec.labels) & (UNBOUNDED | set(metrics.IDENTITY)), spec.labels
    if spec.kind == "histogram":
        assert list(spec.buckets) == sorted(set(spec.buckets)) and spec.buckets, spec.name
    else:
        assert not spec.buckets


def test_the_catalogue_is_what_the_registry_serves() -> None:
    """Every metric of the catalogue, and only those, under dayu_ in the process's registry, each with
    the component and node labels first."""
    served = {metric.name: metric for metric in REGISTRY.collect() if metric.name.startswith("dayu_")}
    # prometheus_client names a counter's family without its _total.
    assert set(served) == {name.removesuffix("_total") for name in CATALOGUE}
    for name, spec in CATALOGUE.items():
        collector = REGISTRY._names_to_collectors[name]  # type: ignore[attr-defined]
        assert collector._labelnames == (*metrics.IDENTITY, *spec.labels), name


# -- bounded reasons -----------------------------------------------------------------------------


class FakeMesh:
    """What one controller sees of the others: each answers with the status it is given ("" takes it)."""

    def __init__(self, process_code: str = "", forward_code: str = "", deliver_code: str = "") -> None:
        self.process_code, self.forward_code, self.deliver_code = process_code, forward_code, deliver_code
        self.hang = asyncio.Event()
        self.dropped: list[str] = []

    async def process(self, kind: str, task: task_pb2.Task, stage: str) -> Any:
        if self.process_code == "hang":
            await self.hang.wait()
        raise RemoteError(self.process_code or "UNAVAILABLE", "processor says no")

    async def forward(self, node: str, task: task_pb2.Task, timeout_s: float) -> None:
        if self.forward_code:
            raise RemoteError(self.forward_code, "peer says no")

    async def deliver(self, task: task_pb2.Task, timeout_s: float) -> None:
        if self.deliver_code:
            raise RemoteError(self.deliver_code, "distributor says no")

    async def probe(self, node: str, nbytes: int) -> None: ...

    async def record_drop(self, task: task_pb2.Task, reason: str) -> None:
        self.dropped.append(reason)


async def _drop_reason(
    mesh: FakeMesh, task: task_pb2.Task, node: str = "edge-1", kinds: frozenset[str] = frozenset(), **core: Any
) -> str:
    """The reason a controller on `node` records for `task`, routed among the FakeMesh's answers."""
    controller = ControllerCore(node, "cloud", {"edge-1", "edge-2"}, set(kinds), {}, mesh, **core)
    await controller.submit(task, "")
    for _ in range(300):
        await asyncio.sleep(0.01)
        if mesh.dropped:
            break
    if not mesh.dropped:  # a task held (a hung processor): the controller stops with it unfinished
        await controller.drain(0.05)
    (reason,) = mesh.dropped
    return reason


def _linear() -> types_pb2.Pipeline:
    return types_pb2.Pipeline(name="linear", stages=[stage("a"), stage("b", ("a",), BOXES, LABELS)])


def _placed(task: task_pb2.Task, node: str) -> task_pb2.Task:
    for each in task.dag.stages:
        each.node = node
    return task


def _done(task: task_pb2.Task) -> task_pb2.Task:
    for each in task.dag.stages:
        each.state = task_pb2.STAGE_STATE_DONE
    return task


def _waiting_copy() -> task_pb2.Task:
    """A copy of the classify branch, its branch done, whose sibling (count, on edge-2) never comes."""
    task = _placed(make_task(fork_join_pipeline()), "edge-1")
    stages = {s.spec.name: s for s in task.dag.stages}
    stages["detect"].state = stages["classify"].state = task_pb2.STAGE_STATE_DONE
    stages["count"].node = "edge-2"
    task.task_id = str(uuid.uuid4())
    task.branch.append("classify")
    return task


def _late() -> task_pb2.Task:
    task = _placed(make_task(_linear()), "edge-2")
    task.latency_budget_s, task.age_s = 0.1, 5.0
    return task


def _nowhere_to_fall_back() -> task_pb2.Task:
    task = _placed(make_task(_linear()), "edge-1")
    for node in ("edge-2", "cloud"):
        task.hops.add(component="controller (fallback)", node=node, stage="a")
    return task


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "RETRY_S", (0.01, 0.05))


@pytest.mark.usefixtures("quick_retries")
async def test_every_drop_reason_the_code_makes_has_its_category() -> None:
    """Reasons made by the real controller, distributor and generator code where they can be made
    here, else as the generator writes them; each falls in its category, never in "other"."""
    task = make_task(_linear())
    made = {
        "processor_failed": await _drop_reason(
            FakeMesh(process_code="INVALID_ARGUMENT"), task, kinds=frozenset({"noop"})
        ),
        "controller_refused": await _drop_reason(
            FakeMesh(forward_code="INVALID_ARGUMENT"), _placed(make_task(_linear()), "edge-2")
        ),
        "unreachable": await _drop_reason(
            FakeMesh(forward_code="UNAVAILABLE"), _placed(make_task(_linear()), "edge-2"), patience_s=0.1
        ),
        "late": await _drop_reason(FakeMesh(), _late(), late_factor=4.0),
        "join_timeout": await _drop_reason(FakeMesh(), _waiting_copy(), kinds=frozenset({"noop"}), join_timeout_s=0.05),
        "no_processor": await _drop_reason(FakeMesh(), _nowhere_to_fall_back()),
        "distributor_refused": await _drop_reason(
            FakeMesh(deliver_code="INVALID_ARGUMENT"),
            _done(_placed(make_task(_linear()), "cloud")),
            node="cloud",
        ),
        "shutdown": await _drop_reason(FakeMesh(process_code="hang"), make_task(_linear()), kinds=frozenset({"noop"})),
        "lost": _settled("cam-1", 7),
    }
    for category, reason in made.items():
        assert drop_category(reason) == category, (category, reason)
    assert drop_category(Gap(3, 5, 0.0, 9, restored=True).reason("cam-1", 4, 31.0)) == "lost"
    # The generator's, as it writes them (generator/core.py).
    written = {
        "controller of edge-1 refused the task: RESOURCE_EXHAUSTED: queue full": "controller_refused",
        "segment not encoded: generator stopped": "shutdown",
        "segment not encoded: cannot encode frame 3: bad shape": "encode_failed",
        "stage detect failed on edge-1: ValueError: no frame": "processor_failed",
        "distributor on refused the task from edge-1: INVALID_ARGUMENT: no": "distributor_refused",
        "routing failed on edge-1: KeyError: 'x'": "other",  # a bug, with its error
        "DAG cannot progress: pending stages have unfinished parents": "other",
        "operator's reason": "other",  # RecordDrop takes any text
    }
    for reason, category in written.items():
        assert drop_category(reason) == category, reason
    assert set(made) | set(written.values()) == set(DROP_REASONS)


def _scheduler_scenarios() -> Iterator[Any]:
    """The scheduler's own unit tests that take no fixture: together they make every kind of decision."""
    import test_scheduler

    for name, function in vars(test_scheduler).items():
        if name.startswith("test_") and asyncio.iscoroutinefunction(function) and not function.__code__.co_argcount:
            yield function


async def test_every_decision_reason_the_scheduler_makes_has_its_category(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[decision_pb2.Decision] = []
    monkeypatch.setattr(Meter, "decision", lambda self, decision: made.append(decision))
    for scenario in _scheduler_scenarios():
        await scenario()
    categories = {decision_category(d.reason): d.reason for d in made}
    assert "other" not in categories, categories["other"]
    # Each category but the operator's or a policy's own: at least one made by the real scheduler.
    assert set(categories) >= set(DECISION_REASONS) - {"other"}, sorted(set(DECISION_REASONS) - set(categories))
    assert decision_category("a policy of my own") == "other"


def test_a_trace_id_comes_from_a_valid_traceparent_only() -> None:
    assert trace_exemplar(f"00-{TRACE_ID}-00f067aa0ba902b7-01") == {"trace_id": TRACE_ID}
    assert trace_exemplar("") is None
    assert trace_exemplar(f"00-{'0' * 32}-00f067aa0ba902b7-01") is None


# -- what a Meter counts -------------------------------------------------------------------------


def _value(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_record_counts_as_delivered_with_its_latencies_or_dropped_by_category() -> None:
    meter = Meter("distributor", "unit-node")
    task = task_pb2.Task(stream_id="unit-stream", task_id="t", root_id="t")
    task.trace_context.traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    done = task.dag.stages.add(spec=stage("detect"), state=task_pb2.STAGE_STATE_DONE)
    done.timings.process_s, done.timings.queue_s = 0.2, 0.05
    task.dag.stages.add(spec=stage("read"), state=task_pb2.STAGE_STATE_FAILED)  # no timings
    labels = {"component": "distributor", "node": "unit-node", "stream": "unit-stream"}
    meter.task_recorded(task_pb2.TaskRecord(task=task, outcome=task_pb2.TASK_OUTCOME_DELIVERED, latency_s=1.3))
    meter.task_recorded(task_pb2.TaskRecord(task=task, outcome=task_pb2.TASK_OUTCOME_DROPPED, reason="late: 9 s"))
    assert _value("dayu_tasks_delivered_total", labels) == 1
    assert _value("dayu_tasks_dropped_total", {**labels, "reason": "late"}) == 1
    assert _value("dayu_task_latency_seconds_count", labels) == 1
    assert _value("dayu_task_latency_seconds_sum", labels) == pytest.approx(1.3)
    assert _value("dayu_stage_latency_seconds_sum", {**labels, "stage": "detect"}) == pytest.approx(0.2)
    assert _value("dayu_stage_queue_seconds_sum", {**labels, "stage": "detect"}) == pytest.approx(0.05)
    assert _value("dayu_stage_latency_seconds_count", {**labels, "stage": "read"}) == 0
    (bucket,) = [
        s
        for family in openmetrics_families(
            metrics.prometheus_client.openmetrics.exposition.generate_latest(REGISTRY).decode()
        )
        for s in family.samples
        if s.name == "dayu_task_latency_seconds_bucket" and s.labels.get("stream") == "unit-stream" and s.exemplar
    ]
    assert bucket.exemplar.labels == {"trace_id": TRACE_ID} and bucket.exemplar.value == pytest.approx(1.3)
    assert bucket.labels["le"] == "1.5"  # the bucket the task fell in


def test_a_meter_labels_at_most_so_many_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "MAX_STREAM_LABELS", 2)
    meter = Meter("generator", "bounded-node")
    for stream in ("s1", "s2", "s3", "s4", "s1"):
        meter.task_generated(stream)
    labels = {"component": "generator", "node": "bounded-node"}
    assert _value("dayu_tasks_generated_total", {**labels, "stream": "s1"}) == 2
    assert _value("dayu_tasks_generated_total", {**labels, "stream": metrics.OTHER_STREAM}) == 2


def test_links_measured_are_gauges_in_base_units_and_go_when_a_measure_fails() -> None:
    meter = Meter("monitor", "gauge-node")
    meter.link_measured(resources_pb2.LinkBandwidth(to_node="far", bandwidth_mbps=20, rtt_ms=30))
    labels = {"component": "monitor", "node": "gauge-node", "from_node": "gauge-node", "to_node": "far"}
    assert _value("dayu_link_bandwidth_bytes_per_second", labels) == 20e6 / 8
    assert _value("dayu_link_rtt_seconds", labels) == pytest.approx(0.03)
    meter.link_unmeasured("far")
    meter.link_unmeasured("far")  # twice: harmless
    assert REGISTRY.get_sample_value("dayu_link_rtt_seconds", labels) is None


# -- served --------------------------------------------------------------------------------------


def _get(url: str, accept: str = "") -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.headers["Content-Type"], reply.read().decode()


def test_the_setting_comes_from_the_environment_and_the_serve_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(ComponentSettings).metrics.listen == ""
    monkeypatch.setenv("DAYU_METRICS__LISTEN", "0.0.0.0:9464")
    assert load_settings(ComponentSettings).metrics.listen == "0.0.0.0:9464"
    assert load_settings(ComponentSettings, metrics={"listen": "127.0.0.1:0"}).metrics.listen == "127.0.0.1:0"
    monkeypatch.setenv("DAYU_METRICS__LISTEN", "9464")
    with pytest.raises(InvalidArgument, match=r"metrics\.listen"):
        load_settings(ComponentSettings)
    args = _parser().parse_args(["serve", "scheduler", "--metrics-listen", "0.0.0.0:9464"])
    assert args.metrics_listen == "0.0.0.0:9464"
    assert _parser().parse_args(["up"]).metrics_port == metrics.DEFAULT_PORT == 9464


async def test_a_component_serves_its_calls_counts_per_method_and_status(tmp_path: Path) -> None:
    settings = load_settings(
        SchedulerSettings,
        node="served-node",
        server={"listen": "127.0.0.1:0"},
        metrics={"listen": "127.0.0.1:0"},
        auth={"tokens_file": str(tokens_file(tmp_path))},
    )
    server = ComponentServer(SchedulerComponent(settings), settings)
    address = await server.start()
    assert server.metrics is not None
    url = server.metrics.url
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            await stub.GetSchedulerStats(scheduler_pb2.GetSchedulerStatsRequest(), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetDecision(scheduler_pb2.GetDecisionRequest(stream_id="nobody"), timeout=5)
        content_type, text = await asyncio.to_thread(_get, url)
        assert content_type.startswith("text/plain")
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        ours = {"component": "scheduler", "node": "served-node"}

        def value(name: str, **labels: str) -> float:
            return sum(s.value for s in samples if s.name == name and {**ours, **labels}.items() <= s.labels.items())

        method = "dayu.v1.SchedulerService/"
        assert value("dayu_grpc_server_handled_total", method=method + "GetSchedulerStats", code="OK") == 1
        assert value("dayu_grpc_server_handled_total", method=method + "GetDecision", code="NOT_FOUND") == 1
        assert value("dayu_grpc_server_started_total", method=method + "GetDecision") == 1
        assert value("dayu_grpc_server_handling_seconds_count", method=method + "GetDecision") == 1
        assert any(s.name == "process_cpu_seconds_total" for s in samples)  # the process's own
        # OpenMetrics to a scraper that asks for it.
        content_type, text = await asyncio.to_thread(_get, url, OPENMETRICS)
        assert content_type.startswith("application/openmetrics-text") and text.endswith("# EOF\n")
    finally:
        await server.stop(grace=0)
    assert server.metrics is None
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(_get, url)


async def test_a_metrics_port_taken_is_logged_and_the_component_serves_all_the_same(tmp_path: Path) -> None:
    taken = MetricsServer("127.0.0.1:0")
    port = taken.start()
    try:
        settings = load_settings(
            SchedulerSettings,
            server={"listen": "127.0.0.1:0"},
            metrics={"listen": f"127.0.0.1:{port}"},
            auth={"tokens_file": str(tokens_file(tmp_path))},
        )
        server = ComponentServer(SchedulerComponent(settings), settings)
        await server.start()
        assert server.metrics is None
        await server.stop(grace=0)
    finally:
        taken.stop()
