"""What the simulator runs: nodes with their processors and workers, the links between them (each a FIFO
channel with a bandwidth, constant or replayed from a trace, and a delay, shared by every pair of nodes
routed over it), the streams (spec, source, policy) and the scheduler's settings. Built from a mesh file
(as `dayu experiment` runs it: one policy for every stream, the trace on every link to the cloud) or
generated: a cloud, edges grouped behind shared uplinks, and a seeded mix of streams."""

from __future__ import annotations

import math
import os
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from dayu.controller.links import BandwidthTrace
from dayu.datasource.service import DatasourceSection, played_sources
from dayu.experiment import policy_run_data
from dayu.generator.service import StreamSection
from dayu.mesh.model import CONFIGS, MeshConfig, ProcessorSection, load_mesh_config, read_mesh_file
from dayu.runtime.errors import InvalidArgument, from_validation_error
from dayu.runtime.pipelines import load_pipelines
from dayu.scheduler.service import SchedulerSection
from dayu.simulator.compute import MachineSpec, NodeThreads
from dayu.v1 import decision_pb2, types_pb2

MONITOR_INTERVAL_S = 2.0  # monitor.interval_s's default: a report and a round of link probes
PROBE_BYTES = 32 * 1024  # monitor.probe_bytes's default
# A deployable processor's model, as measured on this machine (docs/deployment.md): PP-OCRv4's text
# detector, loaded and checked through Triton's repository API in about 2.2 s.
MODEL_LOAD_S = 2.2
MODEL_BYTES = 4_745_517
NODE_MEMORY_BYTES = 4 << 30  # what a simulated node reports (free but for the models it loaded)
DEFAULT_CORES = 2.0  # what a node without resources.cpus reports (the machine the mesh runs on, here)
# A kernel link carries a task's bytes in TCP segments of at most MSS bytes (MTU 1500, TCP timestamps on),
# each with 66 bytes of headers that the link's htb class counts: Ethernet 14, IPv4 20, TCP 20 + 12 of
# timestamp option. (TLS records and HTTP/2 frames add about 30 bytes per 16 KB: left out.)
KERNEL_MSS = 1448
KERNEL_HEADER_BYTES = 66


@dataclass(frozen=True)
class ProcessorSpec:
    name: str  # as stages name it (a processor of the mesh file's processors section, or a kind)
    workers: int
    queue_capacity: int


@dataclass(frozen=True)
class NodeSpec:
    name: str
    processors: dict[str, ProcessorSpec]  # always loaded
    cpu_cores: float = DEFAULT_CORES
    # Loaded and unloaded by the scheduler's deployment plan (the mesh file's nodes.NODE.deployable).
    deployable: dict[str, ProcessorSpec] = field(default_factory=dict)
    memory_bytes: int = NODE_MEMORY_BYTES


@dataclass(frozen=True)
class ChannelSpec:
    """One direction of a link: transfers between the node pairs routed over it go one at a time."""

    name: str
    pairs: tuple[tuple[str, str], ...]  # (from node, to node)
    bandwidth_mbps: float  # 0 and no trace: unlimited (only queues and counts)
    delay_ms: float
    trace: Path | None = None
    uplink: bool = False  # carries tasks towards the cloud
    header_bytes: int = 0  # bytes each packet of at most `mss` bytes of payload adds on the link (0: none)
    mss: int = KERNEL_MSS
    # The kernel carries the bytes (the cluster's links), not the controllers' emulator: a transfer under
    # way cannot be called off, as the controller's Link.transmit asks keep_going only of emulated bytes.
    kernel: bool = False

    def wire_bytes(self, nbytes: int) -> int:
        """What carrying nbytes takes of the link's bandwidth, headers included."""
        if not self.header_bytes:
            return nbytes
        return nbytes + self.header_bytes * max(1, math.ceil(nbytes / self.mss))


@dataclass(frozen=True)
class StreamModel:
    spec: decision_pb2.StreamSpec
    source_fps: float
    has_ground_truth: bool


@dataclass(frozen=True)
class Scenario:
    name: str
    cloud_node: str
    nodes: dict[str, NodeSpec]
    channels: list[ChannelSpec]
    streams: list[StreamModel]
    scheduler: SchedulerSection
    late_factor: float
    monitor_interval_s: float = MONITOR_INTERVAL_S
    probe_bytes: int = PROBE_BYTES
    notes: dict[str, Any] = field(default_factory=dict)  # how it was made, for the JSON results
    machine: MachineSpec | None = None  # the nodes share one machine's cores (None: each worker at full speed)

    def check_against(self, processors: list[str], field: str) -> None:
        """Every stage's processor must be one the profile measured."""
        for stream in self.streams:
            for stage in stream.spec.pipeline.stages:
                if stage.processor not in processors:
                    raise InvalidArgument(
                        field,
                        f"a profile of every processor the streams use {sorted(processors)}, but stream "
                        f"{stream.spec.stream_id!r} runs {stage.processor!r} (run `dayu profile` on a mesh file "
                        "whose pipelines use it)",
                    )


def mesh_streams(config: MeshConfig) -> list[decision_pb2.StreamSpec]:
    """The mesh file's streams as their generators register them."""
    pipelines = load_pipelines(config.pipelines_file)
    specs = []
    for i, stream in enumerate(config.streams):
        try:
            section = StreamSection.model_validate(stream.model_dump(exclude={"node"}))
        except pydantic.ValidationError as error:
            raise from_validation_error(error, f"streams[{i}]") from None
        specs.append(section.spec(stream.node, pipelines, f"streams[{i}]"))
    return specs


def _sources(config: MeshConfig) -> dict[str, tuple[float, bool]]:
    """Source id -> (frames per second, whether it knows its ground truth)."""
    try:
        section = DatasourceSection.model_validate({"sources": config.sources})
    except pydantic.ValidationError as error:
        raise from_validation_error(error, "sources") from None
    return {p.source_id: (p.source.fps, p.source.has_ground_truth) for p in played_sources(section)}


def _scheduler(config: MeshConfig) -> SchedulerSection:
    try:
        return SchedulerSection.model_validate({"cloud_node": config.cloud_node, **config.scheduler})
    except pydantic.ValidationError as error:
        raise from_validation_error(error, "scheduler") from None


def _check_trace(trace: Path | None, field: str = "--trace") -> None:
    if trace is not None:
        try:
            BandwidthTrace.load(trace)
        except InvalidArgument as error:
            raise InvalidArgument(field, str(error)) from None


TARGETS = ("embedded", "cluster")  # the modes of `dayu experiment` a mesh file's scenario can follow


def machine_cores() -> float:
    """The cores this process may run on: those of the machine a cluster of real nodes runs on."""
    return float(len(os.sched_getaffinity(0)))


def from_mesh(
    config_path: Path,
    policy: str,
    trace: Path | None = None,
    target: str = "embedded",
    background: float = 0.0,
    cores: float | None = None,
    node_threads: NodeThreads = (),
) -> Scenario:
    """The mesh file's scenario with every stream under `policy` (default parameters) and every link
    to the cloud replaying `trace`: what `dayu experiment` runs for that policy. `target` is the mode
    it follows where the modes differ. "cluster": the nodes are namespaces of one machine (`cores`,
    default this one's), so their processing shares its cores, node by node, within each node's CPU
    limit, with the nodes' other load (`node_threads`: (seconds, ((node, threads), ...)) over time, in
    cores' worth of threads, as measured) and `background` runnable threads outside them
    (dayu.simulator.compute);
    its kernel links have no added delay (no netem: a link's delay_ms is not applied), carry TCP/IP
    headers, and a transfer under way on them goes to its end (no call-off)."""
    if target not in TARGETS:
        raise InvalidArgument("--target", f"one of {list(TARGETS)}, got {target!r}")
    if background < 0 or any(threads < 0 for _, sample in node_threads for _, threads in sample):
        raise InvalidArgument("--background", f"runnable threads >= 0, got {background}")
    _check_trace(trace)
    base = read_mesh_file(config_path)
    cloud = load_mesh_config(config_path, base).cloud_node
    config = load_mesh_config(config_path, policy_run_data(base, policy, trace, cloud))
    nodes = {
        name: NodeSpec(
            name,
            {
                processor: ProcessorSpec(processor, settings.workers, settings.queue_capacity)
                for processor in section.processors
                for settings in [config.processors.get(processor, ProcessorSection())]
            },
            section.resources.cpus or DEFAULT_CORES,
            {
                processor: ProcessorSpec(processor, settings.workers, settings.queue_capacity)
                for processor in section.deployable
                for settings in [config.processors.get(processor, ProcessorSection())]
            },
        )
        for name, section in config.nodes.items()
    }
    channels = []
    for i, link in enumerate(config.links):
        a, b = link.between
        if a == b:
            raise InvalidArgument(f"links[{i}].between", f"two different nodes, got {list(link.between)}")
        for one, other in ((a, b), (b, a)):
            channels.append(
                ChannelSpec(
                    f"{one}->{other}",
                    ((one, other),),
                    link.bandwidth_mbps,
                    link.delay_ms if target == "embedded" else 0.0,
                    link.trace,
                    uplink=other == cloud,
                    header_bytes=KERNEL_HEADER_BYTES if target == "cluster" else 0,
                    kernel=target == "cluster",
                )
            )
    sources = _sources(config)
    streams = []
    for i, spec in enumerate(mesh_streams(config)):
        if spec.source_id not in sources:
            raise InvalidArgument(
                f"streams[{i}].source_id", f"one of the sources {sorted(sources)}, got {spec.source_id!r}"
            )
        fps, truth = sources[spec.source_id]
        streams.append(StreamModel(spec, fps, truth))
    machine = None
    if target == "cluster":
        limits = tuple((name, s.resources.cpus) for name, s in config.nodes.items() if s.resources.cpus)
        unknown = {node for _, sample in node_threads for node, _ in sample} - set(config.nodes)
        if unknown:
            raise InvalidArgument("node_threads", f"nodes of the mesh file, got {sorted(unknown)}")
        machine = MachineSpec(cores or machine_cores(), background, limits, node_threads)
    notes = {"config": str(config_path), "trace": str(trace) if trace else None, "target": target}
    if machine is not None:
        notes["machine"] = {
            "cores": machine.cores,
            "background": background,
            "node_threads": {  # on average over the samples replayed
                node: statistics.fmean(dict(sample).get(node, 0.0) for _, sample in node_threads)
                for node in config.nodes
            }
            if node_threads
            else {},
            "node_cpus": dict(limits),
        }
    return Scenario(
        config_path.stem,
        cloud,
        nodes,
        channels,
        streams,
        _scheduler(config),
        config.late_factor,
        notes=notes,
        machine=machine,
    )


@dataclass(frozen=True)
class GeneratedParams:
    """`--generate KEY=VALUE,...`: the shape of a generated scenario."""

    cloud_workers: int = 4  # workers of each processor on the cloud
    edges: int = 40
    uplinks: int = 10  # the edges are split evenly behind this many shared uplinks (and downlinks)
    streams: int = 500
    uplink_mbps: float = 40.0
    delay_ms: float = 15.0
    edge_detector_share: float = 0.25  # edges with a text detector of their own (one worker); the rest read only
    edge_deployable_share: float = 0.0  # of the others, those whose detector the deployment plan may load
    late_factor: float = 4.0
    pipeline: str = "plates"
    # 1: the scheduler is told which edges each uplink carries (scheduler.shared_uplinks), so their streams
    # share it together; 0: each edge's streams divide what the edge sees of it, as if it were its own.
    uplinks_known: int = 1

    @classmethod
    def parse(cls, text: str, field: str = "--generate") -> GeneratedParams:
        values: dict[str, Any] = {}
        known = {f.name: f.type for f in cls.__dataclass_fields__.values()}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            key, equals, value = item.partition("=")
            key = key.strip()
            if not equals or key not in known:
                raise InvalidArgument(field, f"KEY=VALUE pairs with keys from {sorted(known)}, got {item!r}")
            kind = {"int": int, "float": float, "str": str}[str(known[key])]
            try:
                values[key] = kind(value.strip())
            except ValueError:
                raise InvalidArgument(f"{field} {key}", f"a number ({known[key]}), got {value.strip()!r}") from None
        params = cls(**values)
        for name in ("cloud_workers", "edges", "uplinks", "streams"):
            if getattr(params, name) < 1:
                raise InvalidArgument(f"{field} {name}", f"at least 1, got {getattr(params, name)}")
        if params.uplinks > params.edges:
            raise InvalidArgument(f"{field} uplinks", f"at most the edges ({params.edges}), got {params.uplinks}")
        if params.uplink_mbps <= 0 or params.delay_ms < 0 or params.late_factor < 0:
            raise InvalidArgument(field, "uplink_mbps > 0, delay_ms >= 0 and late_factor >= 0")
        if params.uplinks_known not in (0, 1):
            raise InvalidArgument(f"{field} uplinks_known", f"0 or 1, got {params.uplinks_known}")
        for share in ("edge_detector_share", "edge_deployable_share"):
            if not 0 <= getattr(params, share) <= 1:
                raise InvalidArgument(f"{field} {share}", f"a share in [0, 1], got {getattr(params, share)}")
        return params


BUDGETS_S = (1.0, 1.5, 2.0, 3.0)
MAX_FPS = (1.0, 2.0, 4.0)
SEGMENT_FRAMES = (1, 2, 4)
SOURCE_SIZES = ((1280, 720), (960, 540))
SOURCE_FPS = 8.0
CLOUD = "cloud"


def generate(
    params: GeneratedParams,
    policy: str,
    seed: int,
    trace: Path | None = None,
    pipelines_file: Path = CONFIGS / "pipelines.yaml",
) -> Scenario:
    """A cloud with `cloud_workers` workers of each processor the pipeline uses, edges grouped behind
    shared uplinks (an edge in `edge_detector_share` of them runs the pipeline's detector too, the
    others its later stages only; of those, `edge_deployable_share` can host the detector, loaded when
    the scheduler's deployment plan says so), and streams on the edges in turn with budgets, frame rates, segment
    lengths and source sizes drawn with `seed`; every link replays `trace` when given."""
    _check_trace(trace)
    pipelines = load_pipelines(pipelines_file)
    if params.pipeline not in pipelines:
        raise InvalidArgument(
            "--generate pipeline", f"one of the pipelines {sorted(pipelines)}, got {params.pipeline!r}"
        )
    pipeline = pipelines[params.pipeline]
    kinds = list(dict.fromkeys(stage.processor for stage in pipeline.stages))
    first = pipeline.stages[0].processor
    rng = random.Random(seed)
    edges = [f"edge-{i + 1}" for i in range(params.edges)]
    nodes = {CLOUD: NodeSpec(CLOUD, {k: ProcessorSpec(k, params.cloud_workers, 64) for k in kinds})}
    with_detector = set(rng.sample(edges, round(params.edge_detector_share * len(edges))))
    without = [edge for edge in edges if edge not in with_detector]  # in order: the seed's draws stay as they were
    may_load = set(without[: round(params.edge_deployable_share * len(without))])
    for edge in edges:
        local = [k for k in kinds if k != first or edge in with_detector]
        deployable = {first: ProcessorSpec(first, 1, 64)} if edge in may_load else {}
        nodes[edge] = NodeSpec(edge, {k: ProcessorSpec(k, 1, 64) for k in local}, deployable=deployable)
    channels, behind = [], {}
    for group in range(params.uplinks):
        members = edges[group :: params.uplinks]
        behind[f"uplink-{group + 1}"] = members
        for name, pairs, up in (
            (f"uplink-{group + 1}", tuple((e, CLOUD) for e in members), True),
            (f"downlink-{group + 1}", tuple((CLOUD, e) for e in members), False),
        ):
            channels.append(ChannelSpec(name, pairs, params.uplink_mbps, params.delay_ms, trace, uplink=up))
    streams = []
    for i in range(params.streams):
        width, height = rng.choice(SOURCE_SIZES)
        spec = decision_pb2.StreamSpec(
            stream_id=f"cam-{i + 1}",
            source_id=f"street-{i + 1}",
            node=edges[i % len(edges)],
            pipeline=pipeline,
            latency_budget_s=rng.choice(BUDGETS_S),
            max_configuration=types_pb2.Configuration(
                resolution=types_pb2.Resolution(width=width, height=height),
                fps=rng.choice(MAX_FPS),
                quality=85,
                frames_per_segment=rng.choice(SEGMENT_FRAMES),
                codec=types_pb2.CODEC_JPEG,
            ),
            policy=decision_pb2.PolicySpec(name=policy),
        )
        streams.append(StreamModel(spec, SOURCE_FPS, True))
    shared = {name: nodes for name, nodes in behind.items() if len(nodes) > 1} if params.uplinks_known else {}
    scheduler = SchedulerSection.model_validate({"cloud_node": CLOUD, "shared_uplinks": shared})
    notes = {"generated": params.__dict__, "seed": seed, "trace": str(trace) if trace else None}
    name = f"generated-{params.streams}-streams"
    return Scenario(name, CLOUD, nodes, channels, streams, scheduler, params.late_factor, notes=notes)
