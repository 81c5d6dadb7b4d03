"""The embedded mesh: every component of a cloud node and edge nodes in one process on loopback,
each with its own gRPC server and port, talking to each other only through the contracts, exactly
as they would across machines. Links between logical nodes go through the controllers' link
emulators. Run with `dayu up`."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pydantic
import yaml

from dayu.components import COMPONENTS
from dayu.processor.repository import assemble
from dayu.processor.triton_server import TritonServer, model_statistics
from dayu.runtime.client import Channels
from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.errors import InvalidArgument, from_validation_error
from dayu.runtime.logs import get_logger
from dayu.runtime.server import Component, ComponentServer
from dayu.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    distributor_pb2,
    distributor_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)

log = get_logger(__name__)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = CONFIGS / "embedded.yaml"
EXPERIMENT_CONFIG = CONFIGS / "experiment.yaml"
# Generators first (no new tasks), controllers before processors, the cloud services last.
STOP_ORDER = [
    "generator",
    "controller",
    "processor",
    "monitor",
    "datasource",
    "backend",
    "distributor",
    "scheduler",
]


class NodeSection(StrictModel):
    processors: list[str] = pydantic.Field(default_factory=list, description="processor kinds on this node")
    triton: str = pydantic.Field("", description="HOST:PORT of a running Triton for this node; empty: the mesh's own")


class TritonSection(StrictModel):
    """The tritonserver the mesh starts (one, shared by the nodes that name none) on the repository
    assembled from triton_models/ in the workdir."""

    grpc_port: int = pydantic.Field(0, ge=0, le=65535, description="0 picks a free port")
    model_config_name: str = pydantic.Field("", description="--model-config-name; empty: config.pbtxt (CPU path)")
    startup_timeout_s: float = pydantic.Field(120.0, gt=0)


class LinkSection(StrictModel):
    between: tuple[str, str]
    bandwidth_mbps: float = pydantic.Field(0.0, ge=0)
    delay_ms: float = pydantic.Field(0.0, ge=0)
    trace: Path | None = None


class ProcessorSection(StrictModel):
    workers: int = pydantic.Field(1, ge=1)
    queue_capacity: int = pydantic.Field(64, ge=1)
    params: dict[str, Any] = pydantic.Field(default_factory=dict)


class StreamSection(StrictModel):
    """A stream and the edge node its generator runs on; the rest is the generator's stream section."""

    node: str
    model_config = pydantic.ConfigDict(extra="allow")


class MeshConfig(StrictModel):
    cloud_node: str = "cloud"
    nodes: dict[str, NodeSection]
    links: list[LinkSection] = pydantic.Field(default_factory=list)
    pipelines_file: Path
    processors: dict[str, ProcessorSection] = pydantic.Field(default_factory=dict)
    sources: list[dict[str, Any]] = pydantic.Field(default_factory=list)
    streams: list[StreamSection] = pydantic.Field(default_factory=list)
    scheduler: dict[str, Any] = pydantic.Field(default_factory=dict)
    join_timeout_s: float = pydantic.Field(10.0, gt=0)
    triton: TritonSection = TritonSection()
    late_factor: float = pydantic.Field(4.0, ge=0, description="controllers drop tasks this many budgets late")
    golden: dict[str, ProcessorSection] = pydantic.Field(
        default_factory=dict,
        description="detector kind -> the processor (on the cloud) that scores tasks without ground truth",
    )
    otlp_collectors: list[str] = pydantic.Field(
        default_factory=list,
        description="OTLP/gRPC endpoints (Jaeger, Tempo, a collector) also sent the spans (the scheduler always is)",
    )
    trace_sample_ratio: float = pydantic.Field(1.0, ge=0, le=1, description="fraction of tasks traced")

    @pydantic.model_validator(mode="after")
    def _nodes_exist(self) -> MeshConfig:
        names = set(self.nodes)
        if self.cloud_node not in names:
            raise ValueError(f"cloud_node {self.cloud_node!r} is not one of the nodes {sorted(names)}")
        for link in self.links:
            for node in link.between:
                if node not in names:
                    raise ValueError(f"link between {list(link.between)} names unknown node {node!r}")
        for stream in self.streams:
            if stream.node not in names:
                raise ValueError(f"stream on unknown node {stream.node!r}")
        return self


def _on_triton(section: ProcessorSection | None) -> bool:
    return section is not None and section.params.get("backend") == "triton"


def _with_triton_address(params: dict[str, Any], address: str) -> dict[str, Any]:
    """A kind's parameters with its node's Triton address, unless they are not on Triton or name one."""
    if params.get("backend") != "triton":
        return params
    return {**params, "triton": {"address": address, **params.get("triton", {})}}


def read_mesh_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise InvalidArgument("--config", f"a readable YAML file ({error})") from None
    if not isinstance(data, dict):
        raise InvalidArgument("--config", "a YAML mapping")
    return data


def load_mesh_config(path: Path, data: dict[str, Any] | None = None) -> MeshConfig:
    """Reads the mesh file (or `data` read from it); relative paths in it are relative to the file."""
    try:
        config = MeshConfig.model_validate(read_mesh_file(path) if data is None else data)
    except pydantic.ValidationError as error:
        raise from_validation_error(error, str(path)) from None
    base = path.resolve().parent
    config.pipelines_file = base / config.pipelines_file
    for link in config.links:
        if link.trace is not None:
            link.trace = base / link.trace
    return config


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]}


class ResultTally:
    """What the run produced, from the distributor's live records."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self.delivered = 0
        self.dropped = 0
        self.drop_reasons: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.accuracies: list[float] = []
        self.in_budget = 0
        self.stage_times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    async def wait_for_total(self, total: int, timeout_s: float) -> None:
        """Waits until `total` tasks are delivered or dropped, or the timeout passes."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.delivered + self.dropped >= total), timeout_s
                )
            except TimeoutError:
                log.warning("tasks unaccounted at stop", missing=total - self.delivered - self.dropped)

    async def add(self, record: task_pb2.TaskRecord) -> None:
        async with self._changed:
            self._count(record)
            self._changed.notify_all()

    def _count(self, record: task_pb2.TaskRecord) -> None:
        if record.outcome == task_pb2.TASK_OUTCOME_DROPPED:
            self.dropped += 1
            self.drop_reasons[record.reason] += 1
            return
        self.delivered += 1
        self.latencies.append(record.latency_s)
        if record.task.latency_budget_s and record.latency_s <= record.task.latency_budget_s:
            self.in_budget += 1
        if record.HasField("accuracy"):
            self.accuracies.append(record.accuracy)
        for stage in record.task.dag.stages:
            times = self.stage_times[stage.spec.name]
            times["queue_s"].append(stage.timings.queue_s)
            times["process_s"].append(stage.timings.process_s)
            times["transfer_s"].append(stage.timings.transfer_s)

    def summary(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "dropped": self.dropped,
            "drop_reasons": dict(self.drop_reasons.most_common()),
            "latency_s": _percentiles(self.latencies),
            "within_budget": self.in_budget / self.delivered if self.delivered else None,
            "accuracy_f1": statistics.fmean(self.accuracies) if self.accuracies else None,
            "stages": {
                name: {kind: _percentiles(values) for kind, values in times.items()}
                for name, times in sorted(self.stage_times.items())
            },
        }


class Mesh:
    """Builds, starts and stops the components of a MeshConfig."""

    def __init__(self, config: MeshConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.servers: dict[str, ComponentServer] = {}  # "component@node[/detail]" -> server
        self.addresses: dict[str, str] = {}
        self.triton: TritonServer | None = None
        self.triton_addresses: list[str] = []
        self.triton_statistics: dict[str, dict[str, dict[str, float | int]]] = {}  # address -> model -> counters
        self.tracing: dict[str, Any] = {}  # where every component started after the scheduler exports spans

    async def _start(self, key: str, component: str, node: str, **settings: Any) -> str:
        component_class = COMPONENTS.entry(component).factory
        settings_class: type[ComponentSettings] = component_class.settings_class  # type: ignore[attr-defined]
        server_settings = {"listen": "127.0.0.1:0", "shutdown_grace_s": 10}
        loaded = settings_class(node=node, server=server_settings, tracing=self.tracing, **settings)
        instance: Component = component_class(loaded)  # type: ignore[call-arg]
        server = ComponentServer(instance, loaded)
        self.servers[key] = server
        self.addresses[key] = await server.start()
        return self.addresses[key]

    async def _start_golden(self) -> dict[str, str]:
        """The golden-configuration processors the distributor scores ground-truth-less tasks with."""
        return {
            kind: await self._start(
                f"processor@{self.config.cloud_node}/golden-{kind}",
                "processor",
                self.config.cloud_node,
                processor={"kind": kind, **section.model_dump()},
            )
            for kind, section in self.config.golden.items()
        }

    async def start(self) -> None:
        config, cloud = self.config, self.config.cloud_node
        scheduler = await self._start(
            "scheduler", "scheduler", cloud, scheduler={"cloud_node": cloud, **config.scheduler}
        )
        self.tracing = {"export_to": [scheduler, *config.otlp_collectors], "sample_ratio": config.trace_sample_ratio}
        distributor = await self._start(
            "distributor",
            "distributor",
            cloud,
            distributor={
                "database": str(self.workdir / "dayu-records.sqlite"),
                "scheduler": scheduler,
                "golden": {"processors": await self._start_golden()},
            },
        )
        datasource = await self._start("datasource", "datasource", cloud, datasource={"sources": config.sources})
        await self._start("backend", "backend", cloud, backend={"pipelines_file": str(config.pipelines_file)})
        links: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for link in config.links:
            a, b = link.between
            section = {"bandwidth_mbps": link.bandwidth_mbps, "delay_ms": link.delay_ms, "trace": link.trace}
            links[a][b] = links[b][a] = section
        node_processors: dict[str, dict[str, str]] = {}
        tritons = await self._start_triton()
        for node, node_config in config.nodes.items():
            processors = {}
            for kind in node_config.processors:
                section = config.processors.get(kind, ProcessorSection())
                params = _with_triton_address(section.params, tritons.get(node, ""))
                processors[kind] = await self._start(
                    f"processor@{node}/{kind}",
                    "processor",
                    node,
                    processor={"kind": kind, **section.model_dump(), "params": params},
                )
            await self._start(
                f"controller@{node}",
                "controller",
                node,
                controller={
                    "cloud_node": cloud,
                    "peers": {other: "" for other in config.nodes if other != node},
                    "processors": processors,
                    "distributor": distributor,
                    "scheduler": scheduler,
                    "links": links[node],
                    "join_timeout_s": config.join_timeout_s,
                    "late_factor": config.late_factor,
                },
            )
            node_processors[node] = processors
        for node in config.nodes:  # controllers learn each other's addresses once all are bound
            controller = self.servers[f"controller@{node}"].component
            for other in config.nodes:
                if other != node:
                    controller.set_peer(other, self.addresses[f"controller@{other}"])  # type: ignore[attr-defined]
        for node in config.nodes:  # monitors probe every link through their node's controller
            await self._start(
                f"monitor@{node}",
                "monitor",
                node,
                monitor={
                    "controller": self.addresses[f"controller@{node}"],
                    "peers": [other for other in config.nodes if other != node],
                    "processors": node_processors[node],
                    "scheduler": scheduler,
                },
            )
        for stream in config.streams:
            generator_stream = stream.model_dump(exclude={"node"})
            await self._start(
                f"generator@{stream.node}/{generator_stream['stream_id']}",
                "generator",
                stream.node,
                generator={
                    "datasource": datasource,
                    "controller": self.addresses[f"controller@{stream.node}"],
                    "scheduler": scheduler,
                    "distributor": distributor,
                    "pipelines_file": str(config.pipelines_file),
                    "streams": [generator_stream],
                },
            )

    async def _start_triton(self) -> dict[str, str]:
        """The Triton address of each node with a processor on Triton: its own when it names one, else
        that of the tritonserver started here, before any processor, once ready."""
        config = self.config
        addresses = {
            node: section.triton
            for node, section in config.nodes.items()
            if any(_on_triton(config.processors.get(kind)) for kind in section.processors)
        }
        if not all(addresses.values()):
            settings = config.triton
            self.triton = TritonServer(
                assemble(self.workdir / "triton_models"),
                self.workdir,
                grpc_port=settings.grpc_port,
                model_config_name=settings.model_config_name,
                startup_timeout_s=settings.startup_timeout_s,
            )
            local = await self.triton.start()
            addresses = {node: address or local for node, address in addresses.items()}
        self.triton_addresses = sorted(set(addresses.values()))
        return addresses

    async def _stop_triton(self) -> None:
        """Reads each Triton's own statistics once the processors are done with it, then stops the one
        started here."""
        for address in self.triton_addresses:
            try:
                stats = await model_statistics(address)
            except Exception as error:  # the summary goes on without them
                log.warning("no triton statistics", address=address, error=str(error))
                continue
            self.triton_statistics[address] = {model: counters.as_dict() for model, counters in stats.items()}
        if self.triton is not None:
            await self.triton.stop()

    def keys(self, component: str) -> list[str]:
        return [key for key in self.servers if key.split("@")[0] == component]

    async def stop(self, settle: Callable[[], Awaitable[None]]) -> None:
        """Stops the generators first, lets the tasks in flight settle (delivered or dropped), then
        stops the rest, controllers before processors, the cloud services last."""
        for key in self.keys("generator"):
            await self.servers[key].stop()
        await settle()
        for component in STOP_ORDER[1:]:
            for key in self.keys(component):
                await self.servers[key].stop()
        await self._stop_triton()

    async def abort(self) -> None:
        """Stops whatever still runs, without waiting for in-flight calls (in the same order: the
        scheduler, which receives the others' last spans, last)."""
        for component in STOP_ORDER:
            for key in self.keys(component):
                await self.servers[key].stop(grace=0)
        if self.triton is not None:
            await self.triton.stop()


async def run_mesh(
    config: MeshConfig,
    duration_s: float | None,
    workdir: Path,
    progress: Callable[[str], None] = print,
    stop_event: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Runs the mesh until `duration_s` passes or `stop_event` is set; returns the summary. The
    distributor's records go to a SQLite file in `workdir`."""
    mesh = Mesh(config, workdir)
    stop_event = stop_event or asyncio.Event()
    tally = ResultTally()
    channels = Channels(64 * 1024 * 1024)
    started = time.monotonic()
    try:
        await mesh.start()
        progress(
            f"dayu: mesh up with nodes {sorted(config.nodes)}, {len(config.streams)} streams; "
            f"scheduler {mesh.addresses['scheduler']}, backend {mesh.addresses['backend']}"
        )
        distributor = distributor_pb2_grpc.DistributorServiceStub(channels.get(mesh.addresses["distributor"]))
        watcher = asyncio.create_task(_watch(distributor, tally))

        deadline = started + duration_s if duration_s else None
        while not stop_event.is_set() and (deadline is None or time.monotonic() < deadline):
            wait = 5.0 if deadline is None else max(0.0, min(5.0, deadline - time.monotonic()))
            try:
                await asyncio.wait_for(stop_event.wait(), timeout=wait)
            except TimeoutError:
                pass
            generated = sum((await _generated_per_stream(mesh, channels)).values())
            latency = _percentiles(tally.latencies)["p50"]
            progress(
                f"dayu: {time.monotonic() - started:5.0f} s  generated {generated}  delivered {tally.delivered}"
                f"  dropped {tally.dropped}  latency p50 {latency or 0:.2f} s"
            )
        # Read before the generators stop; they make no task after this.
        generator_counts = await _generated_per_stream(mesh, channels)
        link_bytes = await _link_bytes(mesh, channels)
        scheduling = await _scheduling(mesh, channels)
        progress("dayu: stopping: generators first, then waiting for tasks in flight")
        total = sum(generator_counts.values())
        await mesh.stop(settle=lambda: tally.wait_for_total(total, config.join_timeout_s + 10))
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    finally:
        await mesh.abort()
        await channels.close()
    summary = {
        "duration_s": round(time.monotonic() - started, 1),
        "generated": sum(generator_counts.values()),
        "generated_per_stream": generator_counts,
        **tally.summary(),
        "bytes_per_link": link_bytes,
        "scheduling": scheduling,
        "triton": mesh.triton_statistics,
    }
    summary["unaccounted"] = summary["generated"] - summary["delivered"] - summary["dropped"]
    progress(format_summary(summary))
    return summary


async def _watch(distributor: distributor_pb2_grpc.DistributorServiceStub, tally: ResultTally) -> None:
    request = distributor_pb2.WatchRecordsRequest(filter=distributor_pb2.RecordFilter())
    async for record in distributor.WatchRecords(request):
        await tally.add(record)


async def _generated_per_stream(mesh: Mesh, channels: Channels) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in mesh.keys("generator"):
        stub = generator_pb2_grpc.GeneratorServiceStub(channels.get(mesh.addresses[key]))
        reply = await stub.ListStreams(generator_pb2.ListStreamsRequest(), timeout=5)
        counts.update({stream.spec.stream_id: stream.tasks_generated for stream in reply.streams})
    return counts


async def _scheduling(mesh: Mesh, channels: Channels) -> dict[str, Any]:
    """Per stream: its policy, how many decisions it made and how long they took, and the latency of
    its hops from the traces the scheduler received."""
    stub = scheduler_pb2_grpc.SchedulerServiceStub(channels.get(mesh.addresses["scheduler"]))
    reply = await stub.GetSchedulerStats(scheduler_pb2.GetSchedulerStatsRequest(), timeout=5)
    return {
        s.stream_id: {
            "policy": s.policy,
            "decisions": s.decisions,
            "decision_time_p50_s": s.decision_time_p50_s,
            "decision_time_p95_s": s.decision_time_p95_s,
            "last_reason": s.current.reason,
            "hops": [
                {"hop": h.hop, "stage": h.stage, "node": h.node, "spans": h.spans, "p50_s": h.p50_s, "p95_s": h.p95_s}
                for h in s.hop_latencies
            ],
        }
        for s in reply.streams
    }


async def _link_bytes(mesh: Mesh, channels: Channels) -> dict[str, int]:
    totals: dict[str, int] = {}
    for key in mesh.keys("controller"):
        stub = controller_pb2_grpc.ControllerServiceStub(channels.get(mesh.addresses[key]))
        reply = await stub.GetLinkStats(controller_pb2.GetLinkStatsRequest(), timeout=5)
        for link in reply.links:
            totals[f"{link.from_node}->{link.to_node}"] = link.bytes_sent
    return totals


def format_summary(summary: dict[str, Any]) -> str:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        "dayu: summary",
        f"  tasks: generated {summary['generated']}, delivered {summary['delivered']}, dropped {summary['dropped']}"
        f", unaccounted {summary['unaccounted']}",
    ]
    for reason, count in summary["drop_reasons"].items():
        lines.append(f"    dropped {count}: {reason}")
    lat = summary["latency_s"]
    lines.append(f"  end-to-end latency: p50 {seconds(lat['p50'])} s, p95 {seconds(lat['p95'])} s")
    if summary["within_budget"] is not None:
        lines.append(f"  within latency budget: {summary['within_budget']:.0%}")
    accuracy = summary["accuracy_f1"]
    lines.append(f"  accuracy (F1 at IoU 0.5 against ground truth): {'-' if accuracy is None else f'{accuracy:.3f}'}")
    for stage, times in summary["stages"].items():
        parts = ", ".join(f"{kind[:-2]} p50 {seconds(t['p50'])} p95 {seconds(t['p95'])}" for kind, t in times.items())
        lines.append(f"  stage {stage}: {parts}")
    for link, count in sorted(summary["bytes_per_link"].items()):
        lines.append(f"  link {link}: {count} bytes")
    for stream, stats in sorted(summary["scheduling"].items()):
        lines.append(
            f"  stream {stream}: policy {stats['policy']}, {stats['decisions']} decisions, "
            f"p50 {stats['decision_time_p50_s'] * 1000:.3f} ms each; last: {stats['last_reason']}"
        )
        for h in stats["hops"]:
            where = f"{h['stage']} on {h['node']}" if h["stage"] else h["node"]
            lines.append(
                f"    traced {h['hop']} ({where}): {h['spans']} spans, p50 {seconds(h['p50_s'])} s,"
                f" p95 {seconds(h['p95_s'])} s"
            )
    for address, models in sorted(summary.get("triton", {}).items()):
        for model, c in sorted(models.items()):
            lines.append(
                f"  triton {address} {model}: {c['inferences']} inferences in {c['executions']} model calls, "
                f"{c['requests']} requests ({c['failures']} failed); per request {c['request_ms']:.1f} ms "
                f"(queue {c['queue_ms']:.1f}, model {c['compute_ms']:.1f})"
            )
    return "\n".join(lines)
