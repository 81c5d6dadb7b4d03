"""What the scheduler's core costs: a decision, a stream, a span. It drives the real SchedulerCore
and the registered policies in this process (no gRPC, one event loop, one core), with the tasks of a
simulated mesh: a four-stage pipeline (detect -> classify, count -> merge) on an edge node and the
cloud, an uplink whose rate moves every few tasks (40, 6, 1.5, 15 Mbit/s), processing in proportion
to the pixels of a task (five times faster on the cloud, the edge slowed 1 to 8 times by its other
work), queueing once a stream asks for more than its processor has, ~1 bit a pixel at quality 85, an
accuracy that falls with pixels and frames. Records come as the distributor sends them (the segment
without its frames, a detection a frame), after the task's spans (as its components export them).

Tables (medians and percentiles of one run; the machine's other load shows in them):

* Decision time, per policy and per stream maximum configuration (`max_configuration`: 360p, 720p,
  1080p30, 4K30 at 30 fps, 4K60 at 60 fps; 30 frames a segment, quality 85): one stream, one decision
  per record (decision_interval_s 0). `policy` is the time inside the policy's decide (what the core
  records as a decision's decision_time_s), `core` the whole call that made the decision (the record or
  the spans taken, the view refreshed, the decision published). p50 and p99 in ms; `changed` the share
  of decisions that published a new version.
* Streams: 1, 100, 1,000 and 10,000 streams registered (latency_budget, 720p30), one edge node per ten
  streams (at most 1,000), every node reporting; each stream warmed with a task's spans and two records
  first, so its next decisions have feedback and traces to go on. Then records round-robin over up to
  1,000 of the streams (spread over all of them, so that rows from 1,000 streams on make the same
  decisions), one decision each: decisions/s is decisions over the time spent in the core's calls, with
  the p50 and p99 of one call; reports/s the same for nodes' resource reports; `sweep` one pass of
  check_feedback and check_nodes (run every second) with nothing due, and `longest stall` the longest
  the event loop went without running another task while the core's calls of the row ran (a stretch of
  a call without a yield, a garbage collection in it; span ingest included).
* OTLP span ingest, with those streams registered: export requests as the mesh's BatchSpanProcessors
  send them (one component on one node each, at most 1024 spans; 13 to 17 spans a task: generator.task,
  .encode, .submit, controller.route, processor.queue and .inference for each stage, distributor.store,
  and link.transfer, the cloud's controller.route and .join_wait when stages run there), taken by
  SchedulerCore.receive_spans (what the OTLP receiver calls); `with decoding` adds the parsing of the
  request bytes gRPC does first.
* Memory: the RSS a core adds to a fresh process (a process for each row) for --memory-streams streams
  (10,000) over ten edge nodes, holding --memory-records records each (64, what the core keeps), their
  startup decisions and two tasks' hops; the same for --wide-streams streams (200) over 1,000 edge nodes
  (what a stream holds that grows with the nodes); and --steady-streams streams (200) at a steady state:
  64 records, 40 decisions (their history and decision times) and eight tasks' spans each.

The scheduler's limit on streams (SchedulerCore's max_streams, 4,096 by default) is raised to the sizes
asked for, so that 10,000 streams are registered and traced. About two
minutes with the defaults:

    .venv/bin/python hack/bench_scheduler.py [--decisions 300] [--cell-seconds 6] [--configs 360p,4K60]
        [--policies latency_budget] [--streams 1,100,1000,10000] [--records 3000] [--row-seconds 8]
        [--span-tasks 8000] [--memory-streams 10000] [--wide-streams 200] [--steady-streams 200]
        [--only decisions,streams,memory]

Another version of the scheduler (an older commit's, to compare) runs with a copy of its
services/dayu/scheduler as DIR/dayu/scheduler and PYTHONPATH=DIR in front of the command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import math
import multiprocessing
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import psutil
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from dayu.runtime.tracing import BYTES, DELAY, NODE, STAGE, STREAM, TASK, TO_NODE
from dayu.scheduler.core import MAX_STREAMS, SchedulerCore
from dayu.scheduler.policies import POLICIES
from dayu.v1 import decision_pb2, resources_pb2, task_pb2, types_pb2

CLOUD = "cloud"
BUDGET_S = 1.0
FRAMES = 30
QUALITY = 85
# name -> (width, height, fps)
MAX_CONFIGS = {
    "360p": (640, 360, 30.0),
    "720p": (1280, 720, 30.0),
    "1080p30": (1920, 1080, 30.0),
    "4K30": (3840, 2160, 30.0),
    "4K60": (3840, 2160, 60.0),
}
# stage -> (processor, parents, share of the task's processing)
STAGES = {
    "detect": ("detector", (), 0.6),
    "classify": ("classifier", ("detect",), 0.15),
    "count": ("counter", ("detect",), 0.1),
    "merge": ("merger", ("classify", "count"), 0.15),
}
FRAMES_IN, BOXES, LABELS = types_pb2.DATA_TYPE_FRAMES, types_pb2.DATA_TYPE_BOXES, types_pb2.DATA_TYPE_LABELS
TYPES = {"detect": (FRAMES_IN, BOXES), "classify": (BOXES, LABELS), "count": (BOXES, LABELS), "merge": (LABELS, LABELS)}
UPLINKS_MBPS = (40.0, 6.0, 1.5, 15.0)  # the uplink's rate, each for PHASE_TASKS tasks of a stream
PHASE_TASKS = 6
EDGE_BUSY = (1.0, 4.0, 1.5, 8.0)  # the edge's processing slowed by its other work, each for BUSY_TASKS tasks
BUSY_TASKS = 9
EDGE_S_PER_MPIXEL, CLOUD_S_PER_MPIXEL = 0.03, 0.006
BYTES_PER_PIXEL = 0.125  # at quality 85 (~1 bit a pixel), scaled by (quality / 85) ** 1.5
SPAN_BATCH = 1024  # spans in one export request at most (tracing.max_export_batch_size)


def pipeline() -> types_pb2.Pipeline:
    return types_pb2.Pipeline(
        name="fork-join",
        stages=[
            types_pb2.StageSpec(
                name=name, processor=processor, parents=parents, input_type=TYPES[name][0], output_type=TYPES[name][1]
            )
            for name, (processor, parents, _share) in STAGES.items()
        ],
    )


def stream_spec(stream_id: str, node: str, config_name: str) -> decision_pb2.StreamSpec:
    width, height, fps = MAX_CONFIGS[config_name]
    return decision_pb2.StreamSpec(
        stream_id=stream_id,
        source_id=f"camera-{stream_id}",
        node=node,
        pipeline=pipeline(),
        latency_budget_s=BUDGET_S,
        max_configuration=types_pb2.Configuration(
            resolution=types_pb2.Resolution(width=width, height=height),
            fps=fps,
            quality=QUALITY,
            frames_per_segment=FRAMES,
            codec=types_pb2.CODEC_JPEG,
        ),
    )


def node_report(node: str, uplink_mbps: float | None) -> resources_pb2.NodeResources:
    """A monitor's report: its processors' queues (so every stage can run there) and its uplink's probe."""
    report = resources_pb2.NodeResources(node=node, cpu_count=8, queue_lengths={p: 0 for p, _, _ in STAGES.values()})
    report.measured_at.GetCurrentTime()
    if uplink_mbps is not None:
        report.links.add(from_node=node, to_node=CLOUD, bandwidth_mbps=uplink_mbps)
    return report


# -- OTLP, as the components' exporters encode it ----------------------------------------------------


def _attribute(key: str, value: str | int | float) -> common_pb2.KeyValue:
    if isinstance(value, str):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))
    if isinstance(value, int):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(int_value=value))
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(double_value=value))


def _resource(component: str, node: str) -> resource_pb2.Resource:
    """The resource of an OpenTelemetry SDK's TracerProvider as dayu.runtime.tracing makes it."""
    attributes = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": "1.45.2",
        "service.instance.id": str(uuid.uuid4()),
        "service.name": f"dayu-{component}",
        "service.namespace": "dayu",
        NODE: node,
    }
    return resource_pb2.Resource(attributes=[_attribute(k, v) for k, v in attributes.items()])


@dataclass
class SpanBatcher:
    """Spans grouped as the exporters send them: per component and node, SPAN_BATCH at most a request."""

    pending: dict[tuple[str, str], list[trace_pb2.Span]] = field(default_factory=dict)
    resources: dict[tuple[str, str], resource_pb2.Resource] = field(default_factory=dict)

    def add(self, component: str, node: str, span: trace_pb2.Span) -> None:
        self.pending.setdefault((component, node), []).append(span)

    def requests(self) -> list[trace_service_pb2.ExportTraceServiceRequest]:
        made = []
        for (component, node), spans in self.pending.items():
            resource = self.resources.setdefault((component, node), _resource(component, node))
            for start in range(0, len(spans), SPAN_BATCH):
                request = trace_service_pb2.ExportTraceServiceRequest()
                resource_spans = request.resource_spans.add(resource=resource)
                resource_spans.scope_spans.add(scope=common_pb2.InstrumentationScope(name="dayu")).spans.extend(
                    spans[start : start + SPAN_BATCH]
                )
                made.append(request)
        self.pending.clear()
        return made


# -- the simulated mesh ------------------------------------------------------------------------------


@dataclass
class World:
    """One stream's tasks: what a task made under a decision costs, as records and spans."""

    spec: decision_pb2.StreamSpec
    tasks: int = 0

    def uplink_mbps(self) -> float:
        return UPLINKS_MBPS[(self.tasks // PHASE_TASKS) % len(UPLINKS_MBPS)]

    def seconds_per_mpixel(self, node: str) -> float:
        return CLOUD_S_PER_MPIXEL if node == CLOUD else EDGE_S_PER_MPIXEL * EDGE_BUSY[(self.tasks // BUSY_TASKS) % 4]

    def task(self, decision: decision_pb2.Decision, batcher: SpanBatcher) -> task_pb2.TaskRecord:
        """A task made under `decision`: its spans go to `batcher`, its record is returned."""
        self.tasks += 1
        spec, config = self.spec, decision.configuration
        edge, stream_id = spec.node, spec.stream_id
        pixels = config.resolution.width * config.resolution.height * config.frames_per_segment
        nbytes = int(pixels * BYTES_PER_PIXEL * (config.quality / QUALITY) ** 1.5) + 2000
        uplink = self.uplink_mbps()
        task_id = str(uuid.uuid4())
        task = task_pb2.Task(
            stream_id=stream_id,
            sequence=self.tasks,
            task_id=task_id,
            root_id=task_id,
            configuration=config,
            decision_version=decision.version,
            latency_budget_s=spec.latency_budget_s,
        )
        task.dag.pipeline = spec.pipeline.name
        task.hops.add(component="generator", node=edge, bytes=nbytes)
        # As the distributor stores it and sends it on: the segment without its frames, the detections.
        first_frame = self.tasks * config.frames_per_segment
        frames = range(first_frame, first_frame + config.frames_per_segment)
        task.segment.codec, task.segment.fps = config.codec, config.fps
        task.segment.resolution.CopyFrom(config.resolution)
        task.segment.source_resolution.CopyFrom(spec.max_configuration.resolution)
        task.segment.frame_indices.extend(frames)
        where = {name: decision.placement.get(name, edge) for name in STAGES}
        on_cloud = [name for name in STAGES if where[name] == CLOUD]
        # Processing seconds of the task per second of the stream on each node: past 0.7, tasks queue.
        seconds_per_task = {
            node: sum(share for name, (_, _, share) in STAGES.items() if where[name] == node)
            * pixels
            / 1e6
            * self.seconds_per_mpixel(node)
            for node in {edge, CLOUD}
        }
        latency = 0.02  # capture and encoding
        tracer = _TaskTracer(batcher, stream_id, task_id, time.time_ns())
        tracer.span("generator", edge, "generator.encode", 0.015, edge)
        tracer.span("generator", edge, "generator.submit", 0.005, edge)
        tracer.span("controller", edge, "controller.route", 0.001, edge)
        for index, (name, (_, parents, share)) in enumerate(STAGES.items()):
            node = where[name]
            sources = [where[p] for p in parents] or [edge]
            crossing = sum(source != node for source in sources)
            moved = nbytes if not parents else 4000  # frames into a root stage, else boxes or labels
            transfer = crossing * (0.01 + moved * 8 / (uplink * 1e6))
            process = share * pixels / 1e6 * self.seconds_per_mpixel(node)
            load = seconds_per_task[node] * config.fps / config.frames_per_segment
            queue = min(5.0, process * max(0.0, load - 0.7) * 4)
            stage = task.dag.stages.add(spec=spec.pipeline.stages[index], node=node)
            stage.executed_on = node
            stage.state = task_pb2.STAGE_STATE_DONE
            if not parents:  # a box a frame
                for frame in frames:
                    box = types_pb2.Box(x1=10, y1=20, x2=110, y2=220)
                    stage.results.add(frame_index=frame).detections.add(box=box, label="car", score=0.9)
            stage.timings.transfer_s, stage.timings.process_s, stage.timings.queue_s = transfer, process, queue
            latency += transfer + process + queue
            if crossing:
                sender = sources[0]
                tracer.span(
                    "controller", sender, "link.transfer", transfer, sender, to_node=node, nbytes=moved, delay=0.01
                )
            tracer.span("processor", node, "processor.queue", queue, node, stage=name)
            tracer.span("processor", node, "processor.inference", process, node, stage=name)
        if on_cloud:
            tracer.span("controller", CLOUD, "controller.route", 0.001, CLOUD)
            tracer.span("controller", CLOUD, "controller.join_wait", 0.002, CLOUD, stage="merge")
        tracer.span("distributor", CLOUD, "distributor.store", 0.002, CLOUD)
        tracer.root("generator", edge, "generator.task", latency, edge)
        width, height = config.resolution.width, config.resolution.height
        best = spec.max_configuration
        accuracy = (
            0.95
            * (width * height / (best.resolution.width * best.resolution.height)) ** 0.15
            * (config.fps / best.fps) ** 0.1
        )
        return task_pb2.TaskRecord(
            task=task, outcome=task_pb2.TASK_OUTCOME_DELIVERED, latency_s=latency, accuracy=accuracy
        )


class _TaskTracer:
    """The spans of one task, one trace, children of its generator.task span."""

    def __init__(self, batcher: SpanBatcher, stream_id: str, task_id: str, start_ns: int) -> None:
        self.batcher, self.stream_id, self.task_id = batcher, stream_id, task_id
        self.trace_id, self.root_id = os.urandom(16), os.urandom(8)
        self.start_ns = self.now_ns = start_ns

    def _attributes(self, node: str, stage: str, to_node: str, nbytes: int, delay: float) -> list[common_pb2.KeyValue]:
        attributes = [_attribute(NODE, node), _attribute(STREAM, self.stream_id), _attribute(TASK, self.task_id)]
        if stage:
            attributes.append(_attribute(STAGE, stage))
        if to_node:
            attributes += [_attribute(TO_NODE, to_node), _attribute(BYTES, nbytes), _attribute(DELAY, delay)]
        return attributes

    def span(
        self,
        component: str,
        node: str,
        name: str,
        seconds: float,
        at: str,
        *,
        stage: str = "",
        to_node: str = "",
        nbytes: int = 0,
        delay: float = 0.0,
    ) -> None:
        start, self.now_ns = self.now_ns, self.now_ns + int(seconds * 1e9)
        span = trace_pb2.Span(
            trace_id=self.trace_id,
            span_id=os.urandom(8),
            parent_span_id=self.root_id,
            name=name,
            kind=trace_pb2.Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=start,
            end_time_unix_nano=self.now_ns,
            attributes=self._attributes(at, stage, to_node, nbytes, delay),
            flags=256,
        )
        self.batcher.add(component, node, span)

    def root(self, component: str, node: str, name: str, seconds: float, at: str) -> None:
        span = trace_pb2.Span(
            trace_id=self.trace_id,
            span_id=self.root_id,
            name=name,
            kind=trace_pb2.Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=self.start_ns,
            end_time_unix_nano=self.start_ns + int(seconds * 1e9),
            attributes=self._attributes(at, "", "", 0, 0.0),
            flags=256,
        )
        self.batcher.add(component, node, span)


# -- measuring ---------------------------------------------------------------------------------------


@dataclass
class Calls:
    """The durations of the core's calls of one kind."""

    seconds: list[float] = field(default_factory=list)

    async def time(self, call: Awaitable[object]) -> float:
        started = time.perf_counter()
        await call
        elapsed = time.perf_counter() - started
        self.seconds.append(elapsed)
        return elapsed

    def rate(self, count: int | None = None) -> float:
        total = sum(self.seconds)
        return (len(self.seconds) if count is None else count) / total if total else math.nan

    @property
    def longest(self) -> float:
        return max(self.seconds, default=0.0)


def percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.3f}"


def rate(per_second: float) -> str:
    return "-" if math.isnan(per_second) else f"{per_second:,.0f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |", flush=True)
    print()


def scheduler(policy: str, interval_s: float = 0.0, streams: int = 0) -> SchedulerCore:
    """A core whose nodes never turn stale nor streams silent: the benchmark runs longer than they may be.
    It holds (and traces) `streams` streams when that is more than a scheduler's default."""
    spec = decision_pb2.PolicySpec(name=policy)
    max_streams = max(MAX_STREAMS, streams)
    return SchedulerCore(spec, CLOUD, interval_s, fallback_after_s=1e9, stale_after_s=1e9, max_streams=max_streams)


def policy_times(core: SchedulerCore) -> list[float]:
    """The time of each policy call the core makes from now on, as it reports them to its meter (for
    dayu_decision_seconds): the list grows by one a decision."""
    times: list[float] = []
    report = core.meter.decision_time

    def decision_time(policy: str, seconds: float) -> None:
        times.append(seconds)
        report(policy, seconds)

    core.meter.decision_time = decision_time  # type: ignore[method-assign]
    return times


# -- decision time per policy and maximum configuration ---------------------------------------------


async def decision_cell(policy: str, config_name: str, decisions: int, cell_seconds: float) -> list[str]:
    core = scheduler(policy)
    spec = stream_spec("cam-0", "edge-0", config_name)
    world = World(spec)
    for node in (spec.node, CLOUD):
        await core.report_resources(node_report(node, UPLINKS_MBPS[0] if node != CLOUD else None))
    await core.register(spec)
    calls, decided = Calls(), policy_times(core)
    deadline = time.perf_counter() + cell_seconds
    first_version = core.decision(spec.stream_id).version
    while len(decided) < decisions and time.perf_counter() < deadline:
        batcher = SpanBatcher()
        record = world.task(core.decision(spec.stream_id), batcher)
        # The record, after the task's spans: each call makes one decision at most (one stream).
        for call in [*(core.receive_spans(request) for request in batcher.requests()), core.feedback(record)]:
            before = len(decided)
            elapsed = await Calls().time(call)
            if len(decided) > before:
                calls.seconds.append(elapsed)
    changed = core.decision(spec.stream_id).version - first_version
    return [
        policy,
        config_name,
        str(len(decided)),
        ms(percentile(decided, 0.5)),
        ms(percentile(decided, 0.99)),
        ms(percentile(calls.seconds, 0.5)),
        ms(percentile(calls.seconds, 0.99)),
        f"{changed / max(len(decided), 1):.0%}",
    ]


async def bench_decisions(args: argparse.Namespace) -> None:
    print("## Decision time per policy and maximum configuration (ms)\n")
    policies = args.policies or sorted(POLICIES.names())
    header = ["policy", "max config", "decisions", "policy p50", "policy p99", "core p50", "core p99", "changed"]
    rows = []
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for policy in policies:
        for config_name in args.configs:
            row = await decision_cell(policy, config_name, args.decisions, args.cell_seconds)
            rows.append(row)
            print("| " + " | ".join(row) + " |", flush=True)
    print()


# -- streams: decisions, reports, sweeps and span ingest with many streams ---------------------------


@dataclass
class Mesh:
    core: SchedulerCore
    worlds: list[World]
    nodes: list[str]
    stalls: Stalls = field(default_factory=lambda: Stalls())

    async def call(self, calls: Calls, call: Awaitable[object]) -> None:
        async with self.stalls.watching():
            await calls.time(call)


class Stalls:
    """The longest the event loop went without running another task while the core's calls ran (a
    call's stretch without a yield, garbage collections in it): a task that yields at every turn of the
    loop notes the time between its turns."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._armed = False
        self._watcher: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            if self._armed:
                self.longest = max(self.longest, now - last)
            last = now

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch())
        await asyncio.sleep(0)  # the watcher's turn: what ran before is none of the call's
        self._armed = True
        try:
            yield
            await asyncio.sleep(0)  # its turn again: the stretch up to the call's end counts
        finally:
            self._armed = False

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()


async def build_mesh(streams: int, config_name: str = "720p", interval_s: float = 0.0) -> Mesh:
    core = scheduler("latency_budget", streams=streams)
    nodes = [f"edge-{i}" for i in range(min(1000, math.ceil(streams / 10)))]
    mesh = Mesh(core, [], nodes)
    for node in [*nodes, CLOUD]:
        await core.report_resources(node_report(node, UPLINKS_MBPS[0] if node != CLOUD else None))
    core.decision_interval_s = 3600.0  # warming up: records kept, no decision yet
    for i in range(streams):
        spec = stream_spec(f"cam-{i}", nodes[i * len(nodes) // streams], config_name)
        mesh.worlds.append(World(spec))
        await core.register(spec)
    batcher = SpanBatcher()
    records = [world.task(core.decision(world.spec.stream_id), batcher) for world in mesh.worlds]
    for request in batcher.requests():
        await core.receive_spans(request)
    for record in records:
        await core.feedback(record)
        second = task_pb2.TaskRecord()
        second.CopyFrom(record)
        second.task.task_id = second.task.root_id = str(uuid.uuid4())
        await core.feedback(second)
    core.decision_interval_s = interval_s
    return mesh


async def streams_row(streams: int, records: int, span_tasks: int, row_seconds: float) -> tuple[list[str], list[str]]:
    started = time.perf_counter()
    mesh = await build_mesh(streams)
    core = mesh.core
    setup_s = time.perf_counter() - started
    decided, reported, sweeps = Calls(), Calls(), Calls()
    decisions = policy_times(core)
    deadline = time.perf_counter() + row_seconds
    # Over 1,000 streams at most, spread over all: rows from 1,000 streams on make the same decisions.
    sample = mesh.worlds[:: max(1, len(mesh.worlds) // 1000)]
    for world in itertools.islice(itertools.cycle(sample), records):
        if time.perf_counter() > deadline:
            break
        stream_id = world.spec.stream_id
        record = world.task(core.decision(stream_id), SpanBatcher())  # its spans: the ingest below
        await mesh.call(decided, core.feedback(record))
    for node in itertools.islice(itertools.cycle(mesh.nodes), max(200, len(mesh.nodes))):
        await mesh.call(reported, core.report_resources(node_report(node, UPLINKS_MBPS[0])))
    for _ in range(5):
        await mesh.call(sweeps, core.check_feedback())
        await mesh.call(sweeps, core.check_nodes())
    # Spans of span_tasks tasks of these streams, batched as the exporters do, with the decision
    # interval of a real scheduler (0.5 s): link rates that move make decisions as they would.
    core.decision_interval_s = 0.5
    batcher = SpanBatcher()
    for world in itertools.islice(itertools.cycle(mesh.worlds), span_tasks):
        world.task(core.decision(world.spec.stream_id), batcher)
    requests = batcher.requests()
    encoded = [request.SerializeToString() for request in requests]
    spans = sum(len(r.resource_spans[0].scope_spans[0].spans) for r in requests)
    decode, ingest = Calls(), Calls()
    decode_s = 0.0
    for data in encoded:
        started = time.perf_counter()
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(data)
        decode_s += time.perf_counter() - started
        await mesh.call(ingest, core.receive_spans(request))
    decode.seconds.append(decode_s)
    mesh.stalls.stop()
    ingest_s = sum(ingest.seconds)
    sweep_s = percentile([a + b for a, b in zip(sweeps.seconds[::2], sweeps.seconds[1::2], strict=True)], 0.5)
    stream_row = [
        f"{streams:,}",
        f"{len(mesh.nodes):,}",
        rate(decided.rate(len(decisions))),
        ms(percentile(decided.seconds, 0.5)),
        ms(percentile(decided.seconds, 0.99)),
        rate(reported.rate()),
        ms(percentile(reported.seconds, 0.99)),
        ms(sweep_s),
        ms(mesh.stalls.longest),
        f"{setup_s:.1f}",
    ]
    span_row = [
        f"{streams:,}",
        f"{spans:,}",
        f"{len(requests):,}",
        rate(spans / ingest_s),
        rate(spans / (ingest_s + decode_s)),
        ms(percentile(ingest.seconds, 0.5)),
        ms(ingest.longest),
    ]
    return stream_row, span_row


async def bench_streams(args: argparse.Namespace) -> None:
    header = [
        "streams",
        "nodes",
        "decisions/s",
        "decision p50",
        "decision p99",
        "reports/s",
        "report p99",
        "sweep",
        "longest stall",
        "setup s",
    ]
    span_header = ["streams", "spans", "requests", "spans/s", "spans/s with decoding", "request p50", "request max"]
    stream_rows, span_rows = [], []
    for streams in args.streams:
        stream_row, span_row = await streams_row(streams, args.records, args.span_tasks, args.row_seconds)
        stream_rows.append(stream_row)
        span_rows.append(span_row)
        print(f"(streams {streams:,}: done)", flush=True)
        gc.collect()
    print("\n## Streams: decisions, node reports and sweeps (times in ms)\n")
    table(header, stream_rows)
    print("## OTLP span ingest (times in ms)\n")
    table(span_header, span_rows)


# -- memory per stream -------------------------------------------------------------------------------


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


async def fill(streams: int, nodes: int, records: int, decisions: int, span_tasks: int) -> SchedulerCore:
    """A core with `streams` streams over `nodes` edge nodes, each with `decisions` decisions, then
    `records` records (each its own message, parsed from bytes as the gRPC server does) and `span_tasks`
    tasks' spans."""
    core = scheduler("latency_budget", streams=streams)
    edges = [f"edge-{i}" for i in range(nodes)]
    for node in [*edges, CLOUD]:
        await core.report_resources(node_report(node, UPLINKS_MBPS[0] if node != CLOUD else None))
    batcher = SpanBatcher()
    for i in range(streams):
        world = World(stream_spec(f"cam-{i}", edges[i % len(edges)], "720p"))
        await core.register(world.spec)
        core.decision_interval_s = 0.0
        for _ in range(decisions):
            await core.feedback(world.task(core.decision(world.spec.stream_id), SpanBatcher()))
        core.decision_interval_s = 3600.0
        data = world.task(core.decision(world.spec.stream_id), SpanBatcher()).SerializeToString()
        for _ in range(records):
            await core.feedback(task_pb2.TaskRecord.FromString(data))
        for _ in range(span_tasks):
            world.task(core.decision(world.spec.stream_id), batcher)
        if i % 64 == 63 or i == streams - 1:  # the exporters' batches: spans of many streams each
            for request in batcher.requests():
                await core.receive_spans(request)
    return core


def grown_rss(streams: int, nodes: int, records: int, decisions: int, span_tasks: int) -> int:
    """The RSS a core filled with `streams` streams (fill) adds to a process."""
    before = rss()
    core = asyncio.run(fill(streams, nodes, records, decisions, span_tasks))
    grown = rss() - before
    del core
    return grown


def memory_row(streams: int, nodes: int, records: int, decisions: int, span_tasks: int) -> list[str]:
    # In a process of its own: memory an earlier row freed, kept by the allocator, would be reused.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        grown = pool.apply(grown_rss, (streams, nodes, records, decisions, span_tasks))
    holding = f"{records} records, {decisions or 'startup'} decisions, {span_tasks} tasks' spans"
    return [f"{streams:,}", f"{nodes:,}", holding, f"{grown / 2**20:,.1f}", f"{grown / streams / 1024:,.1f}"]


async def bench_memory(args: argparse.Namespace) -> None:
    rows = [
        memory_row(args.memory_streams, 10, args.memory_records, 0, 2),
        memory_row(args.wide_streams, 1000, args.memory_records, 0, 2),  # where a mesh has many nodes
        memory_row(args.steady_streams, 10, 64, 40, 8),
    ]
    print("## Memory per stream (RSS growth)\n")
    table(["streams", "edge nodes", "each holding", "MiB", "KiB per stream"], rows)


def numbers(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n]


def names(text: str) -> list[str]:
    return [n for n in text.split(",") if n]


async def main(args: argparse.Namespace) -> None:
    sections: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
        "decisions": bench_decisions,
        "streams": bench_streams,
        "memory": bench_memory,
    }
    started = time.perf_counter()
    print(f"# Scheduler benchmark ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})\n")
    for name in args.only:
        await sections[name](args)
    print(f"(all in {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=300, help="decisions per policy and configuration")
    parser.add_argument("--cell-seconds", type=float, default=6.0, help="at most this long per policy and config")
    parser.add_argument("--configs", type=names, default=list(MAX_CONFIGS), help=f"of {', '.join(MAX_CONFIGS)}")
    parser.add_argument("--policies", type=names, default=[], help="the registered ones when unset")
    parser.add_argument("--streams", type=numbers, default=[1, 100, 1000, 10000], help="streams registered")
    parser.add_argument("--records", type=int, default=3000, help="records (decisions) measured per row")
    parser.add_argument("--row-seconds", type=float, default=8.0, help="at most this long measuring decisions a row")
    parser.add_argument("--span-tasks", type=int, default=8000, help="tasks whose spans are ingested per row")
    parser.add_argument("--memory-streams", type=int, default=10000)
    parser.add_argument("--memory-records", type=int, default=64)
    parser.add_argument("--wide-streams", type=int, default=200)
    parser.add_argument("--steady-streams", type=int, default=200)
    parser.add_argument("--only", type=names, default=["decisions", "streams", "memory"])
    asyncio.run(main(parser.parse_args()))
