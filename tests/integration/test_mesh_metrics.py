"""Prometheus metrics of a running embedded mesh, scraped over HTTP as Prometheus would: the task
counters add up per stream (generated = delivered + dropped + in flight) and agree with the
distributor's records, while it runs and once it has settled; the gRPC server and client metrics count
the calls; the latency histograms count every delivered task, and their buckets carry exemplars with
the trace ids of real tasks (in the OpenMetrics format)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from dayu.mesh.embedded import Mesh
from dayu.mesh.model import MeshConfig
from dayu.runtime.metrics import DROP_REASONS, trace_exemplar
from dayu.runtime.server import free_port
from dayu.v1 import distributor_pb2, distributor_pb2_grpc, task_pb2

from conftest import FORK_JOIN_PIPELINES

# Stream ids of this file only: the registry is the process's, and other tests' meshes count too.
FORKED, SINGLE, LATE = "metrics-fork", "metrics-single", "metrics-late"
STREAMS = (FORKED, SINGLE)
PIPELINES = (
    FORK_JOIN_PIPELINES
    + """  - name: single
    stages:
      - {name: detect, processor: noop, input_type: DATA_TYPE_FRAMES, output_type: DATA_TYPE_BOXES}
"""
)
STAGES = {FORKED: {"detect", "classify", "count", "merge"}, SINGLE: {"detect"}}
RUN_S = 10.0
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def _stream(stream_id: str, pipeline: str, policy: dict[str, object], budget_s: float = 2.0) -> dict[str, object]:
    return {
        "stream_id": stream_id,
        "source_id": "street",
        "node": "edge-1",
        "pipeline": pipeline,
        "latency_budget_s": budget_s,
        "max_configuration": {"width": 320, "height": 180, "fps": 5, "quality": 80, "frames_per_segment": 1},
        "policy": policy,
    }


def _config(tmp_path: Path, *more: dict[str, object]) -> MeshConfig:
    """A cloud and an edge node with noop processors, one synthetic camera and two streams in the file:
    one through the fork/join pipeline, its classify stage across the link on the cloud, the other
    through one stage, on a policy that decides again every few tasks; and `more` streams."""
    (tmp_path / "pipelines.yaml").write_text(PIPELINES)
    return MeshConfig.model_validate(
        {
            "cloud_node": "cloud",
            "nodes": {"cloud": {"processors": ["noop"]}, "edge-1": {"processors": ["noop"]}},
            "links": [{"between": ["edge-1", "cloud"], "bandwidth_mbps": 50, "delay_ms": 5}],
            "pipelines_file": str(tmp_path / "pipelines.yaml"),
            "processors": {"noop": {"params": {"delay_s": 0.01}}},
            "sources": [
                {"source_id": "street", "kind": "synthetic", "params": {"width": 320, "height": 180, "fps": 5}}
            ],
            "streams": [
                _stream(
                    FORKED, "fork-join", {"name": "fixed", "params": {"fps": 3, "placement": {"classify": "cloud"}}}
                ),
                _stream(SINGLE, "single", {"name": "random", "params": {"seed": 1, "every_tasks": 3}}),
                *more,
            ],
            "join_timeout_s": 5,
        }
    )


@contextlib.asynccontextmanager
async def _running(config: MeshConfig, workdir: Path) -> AsyncIterator[Mesh]:
    mesh = Mesh(config, workdir, console_port=None, metrics_port=0)
    await mesh.start()
    try:
        yield mesh
    finally:
        await mesh.abort()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with _running(_config(tmp_path), tmp_path) as running:
        yield running


@pytest.fixture
async def mesh_with_drops(tmp_path: Path) -> AsyncIterator[Mesh]:
    """The same mesh with a third stream whose budget is too short: its tasks are dropped late, at the
    link to the cloud."""
    late = _stream(
        LATE, "fork-join", {"name": "fixed", "params": {"fps": 2, "placement": {"classify": "cloud"}}}, 0.001
    )
    async with _running(_config(tmp_path, late), tmp_path) as running:
        yield running


def _get(url: str, accept: str = "") -> str:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return str(reply.read().decode())


class Scrape:
    """One scrape of /metrics: its samples, summed by name and a subset of their labels."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def total(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.matching(name, **labels))

    def matching(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name and labels.items() <= s.labels.items()]


async def scrape(mesh: Mesh, openmetrics: bool = False) -> Scrape:
    text = await asyncio.to_thread(_get, mesh.metrics_url, OPENMETRICS if openmetrics else "")
    parse: Callable[[str], object] = openmetrics_families if openmetrics else text_string_to_metric_families
    return Scrape([sample for family in parse(text) for sample in family.samples])  # type: ignore[attr-defined]


def counts(scraped: Scrape, stream: str) -> tuple[float, float, float]:
    """(generated, delivered, dropped) of a stream, as the metrics say."""
    return (
        scraped.total("dayu_tasks_generated_total", stream=stream),
        scraped.total("dayu_tasks_delivered_total", stream=stream),
        scraped.total("dayu_tasks_dropped_total", stream=stream),
    )


async def records(mesh: Mesh) -> list[task_pb2.TaskRecord]:
    """Every record of the distributor, page after page."""
    found: list[task_pb2.TaskRecord] = []
    async with grpc.aio.insecure_channel(mesh.addresses["distributor"]) as channel:
        stub = distributor_pb2_grpc.DistributorServiceStub(channel)
        after = 0
        while True:
            where = distributor_pb2.RecordFilter(after_cursor=after)
            reply = await stub.QueryRecords(distributor_pb2.QueryRecordsRequest(filter=where, limit=1000), timeout=10)
            found.extend(reply.records)
            if not reply.next_cursor:
                return found
            after = reply.next_cursor


def by_outcome(found: list[task_pb2.TaskRecord], stream: str) -> Counter[int]:
    return Counter(r.outcome for r in found if r.task.stream_id == stream)


async def settle(mesh: Mesh, timeout_s: float) -> Scrape:
    """Once the generators stopped: waits until every task generated is delivered or dropped, having
    the distributor record what never arrived as lost (SettleStreams) after a while, as `dayu up` does."""
    deadline = time.monotonic() + timeout_s
    settled_streams = False
    while True:
        scraped = await scrape(mesh)
        if all(g == d + x for g, d, x in (counts(scraped, stream) for stream in STREAMS)):
            return scraped
        if time.monotonic() > deadline:
            if settled_streams:
                pytest.fail(f"not settled: {[counts(scraped, s) for s in STREAMS]}")
            generated = {stream: int(counts(scraped, stream)[0]) for stream in STREAMS}
            async with grpc.aio.insecure_channel(mesh.addresses["distributor"]) as channel:
                stub = distributor_pb2_grpc.DistributorServiceStub(channel)
                await stub.SettleStreams(distributor_pb2.SettleStreamsRequest(generated=generated), timeout=30)
            settled_streams, deadline = True, time.monotonic() + 5
        await asyncio.sleep(0.2)


async def test_a_running_mesh_s_counters_add_up_and_agree_with_the_distributor(mesh: Mesh) -> None:
    assert mesh.metrics_url.startswith("http://127.0.0.1:") and mesh.metrics_url.endswith("/metrics")
    await asyncio.sleep(RUN_S)
    # Running: what was counted before the records were read is at most what they hold, and what was
    # counted after at least; none is delivered or dropped that was not generated.
    before = await scrape(mesh)
    stored = await records(mesh)
    after = await scrape(mesh)
    for stream in STREAMS:
        generated, delivered, dropped = counts(before, stream)
        outcomes = by_outcome(stored, stream)
        assert delivered >= 3, (stream, counts(before, stream))
        in_flight = generated - delivered - dropped
        assert in_flight >= 0, (stream, counts(before, stream))
        assert delivered <= outcomes[task_pb2.TASK_OUTCOME_DELIVERED] <= counts(after, stream)[1], stream
        assert dropped <= outcomes[task_pb2.TASK_OUTCOME_DROPPED] <= counts(after, stream)[2], stream
        assert counts(before, stream)[0] <= counts(after, stream)[0]

    # Stopped and settled: exactly the distributor's records, by outcome and by reason.
    await mesh.stop_generators()
    settled = await settle(mesh, 20.0)
    stored = await records(mesh)
    traces = {r.task.trace_context.traceparent.split("-")[1] for r in stored if r.task.trace_context.traceparent}
    for stream in STREAMS:
        generated, delivered, dropped = counts(settled, stream)
        outcomes = by_outcome(stored, stream)
        assert generated == delivered + dropped == len([r for r in stored if r.task.stream_id == stream]), stream
        assert delivered == outcomes[task_pb2.TASK_OUTCOME_DELIVERED], stream
        assert dropped == outcomes[task_pb2.TASK_OUTCOME_DROPPED], stream
        assert settled.total("dayu_stream_latency_budget_seconds", stream=stream) == 2.0
        reasons = {s.labels["reason"] for s in settled.matching("dayu_tasks_dropped_total", stream=stream)}
        assert reasons <= set(DROP_REASONS), reasons
        # Every delivered task in the end-to-end histogram, and each of its stages in theirs.
        assert settled.total("dayu_task_latency_seconds_count", stream=stream) == delivered, stream
        assert settled.total("dayu_task_latency_seconds_sum", stream=stream) > 0, stream
        for stage in STAGES[stream]:
            for histogram in ("dayu_stage_latency_seconds", "dayu_stage_queue_seconds"):
                assert settled.total(f"{histogram}_count", stream=stream, stage=stage) == delivered, (histogram, stage)
        (series,) = {
            tuple(sorted(s.labels.items())) for s in settled.matching("dayu_tasks_generated_total", stream=stream)
        }
        assert dict(series) == {"component": "generator", "node": "edge-1", "stream": stream}
    # The classify stage ran on the cloud, the rest on the edge.
    forked = counts(settled, FORKED)[1]
    assert settled.total("dayu_stage_transfer_seconds_count", stream=FORKED, stage="classify") == forked

    # gRPC: the distributor served Deliver (OK) for every task the controllers delivered, and they count
    # their calls as clients; each call's time is in the histogram.
    deliver = "dayu.v1.DistributorService/Deliver"
    served = settled.total("dayu_grpc_server_handled_total", component="distributor", method=deliver, code="OK")
    delivered_here = sum(counts(settled, stream)[1] for stream in STREAMS)
    assert served >= delivered_here > 0
    assert settled.total("dayu_grpc_server_handling_seconds_count", component="distributor", method=deliver) >= served
    assert settled.total("dayu_grpc_server_started_total", component="distributor", method=deliver) >= served
    called = settled.total("dayu_grpc_client_handled_total", component="controller", method=deliver, code="OK")
    assert called >= delivered_here
    submit = "dayu.v1.ControllerService/SubmitTask"
    assert settled.total("dayu_grpc_client_handled_total", component="generator", method=submit, code="OK") > 0
    assert settled.total("dayu_grpc_server_handled_total", component="controller", node="edge-1", method=submit) > 0
    # A server stream (the controllers follow decisions), counted once it ends: not yet; started already.
    watch = "dayu.v1.SchedulerService/WatchDecisions"
    assert settled.total("dayu_grpc_server_started_total", component="scheduler", method=watch) > 0

    # The scheduler's decisions (by a bounded reason), their time, and the spans it took in.
    assert settled.total("dayu_decisions_total", stream=SINGLE, policy="random", reason="startup") >= 1
    assert settled.total("dayu_decisions_total", stream=FORKED, policy="fixed", reason="startup") == 1
    assert settled.total("dayu_decision_seconds_count", component="scheduler", policy="random") >= 1
    assert settled.total("dayu_spans_ingested_total", component="scheduler") > 0
    # The processors' queues, on each node.
    queues = settled.matching("dayu_queue_length", component="processor", processor="noop")
    assert {s.labels["node"] for s in queues} >= {"cloud", "edge-1"}

    # OpenMetrics: the latency buckets lead to the traces of real tasks.
    open_scrape = await scrape(mesh, openmetrics=True)
    exemplars = [
        s.exemplar
        for s in open_scrape.matching("dayu_task_latency_seconds_bucket", stream=FORKED)
        if s.exemplar is not None
    ]
    assert exemplars, "no exemplar on the latency buckets"
    assert all(trace_exemplar(f"00-{e.labels['trace_id']}-0000000000000001-01") for e in exemplars)
    assert {e.labels["trace_id"] for e in exemplars} <= traces


# -- a real Prometheus, and the dashboard's every query ------------------------------------------

PROMETHEUS = shutil.which("prometheus")
DASHBOARD = Path(__file__).resolve().parents[2] / "kustomize" / "components" / "monitoring" / "dayu-dashboard.json"
# What Grafana puts in place of the dashboard's variables: every stream, a rate window of several
# scrapes (Grafana's $__rate_interval: at least four scrape intervals), the range shown.
GRAFANA_VARIABLES = {"$stream": ".*", "$__rate_interval": "30s", "$__range": "5m"}


def _prometheus_api(base: str, path: str, **params: str) -> Any:
    with urllib.request.urlopen(f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10) as reply:
        answer = json.loads(reply.read())
    assert answer["status"] == "success", answer
    return answer["data"]


@contextlib.contextmanager
def _prometheus(workdir: Path, target: str) -> Iterator[str]:
    """Debian's prometheus scraping `target` (HOST:PORT) every second, exemplars kept; yields its URL."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: dayu\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    process = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "prometheus.log").open("w"),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, (panel["title"], expr)
            queries.append((panel["title"], expr))
    return queries


async def test_a_real_prometheus_scrapes_the_mesh_and_every_dashboard_panel_shows_series(
    mesh_with_drops: Mesh, tmp_path: Path
) -> None:
    if PROMETHEUS is None:
        pytest.fail("no prometheus binary: run hack/toolchains.sh (Debian's prometheus)")
    target = mesh_with_drops.metrics_url.removeprefix("http://").removesuffix("/metrics")
    with _prometheus(tmp_path / "prometheus", target) as prometheus:
        await asyncio.sleep(RUN_S + 2)
        targets = await asyncio.to_thread(_prometheus_api, prometheus, "targets")
        (scraped,) = targets["activeTargets"]
        assert scraped["health"] == "up", scraped
        empty = []
        for title, expr in _panel_queries():
            result = (await asyncio.to_thread(_prometheus_api, prometheus, "query", query=expr))["result"]
            shown = [(r["metric"], r["value"][1]) for r in result[:3]]
            print(f"panel {title!r}: {len(result)} series, e.g. {shown}")  # what each panel shows (-s)
            if not result:
                empty.append((title, expr))
        assert not empty, f"panels without series: {empty}"
        # The late stream's drops, by their category.
        dropped = await asyncio.to_thread(
            _prometheus_api, prometheus, "query", query=f'sum by (reason) (dayu_tasks_dropped_total{{stream="{LATE}"}})'
        )
        assert {r["metric"]["reason"] for r in dropped["result"]} == {"late"}
        # Exemplars kept (Prometheus asked for OpenMetrics): trace ids on the latency buckets.
        now = time.time()
        exemplars = await asyncio.to_thread(
            _prometheus_api,
            prometheus,
            "query_exemplars",
            query=f'dayu_task_latency_seconds_bucket{{stream="{FORKED}"}}',
            start=str(now - 120),
            end=str(now),
        )
        ids = {e["labels"]["trace_id"] for series in exemplars for e in series["exemplars"]}
        assert ids and all(trace_exemplar(f"00-{i}-0000000000000001-01") for i in ids), exemplars
