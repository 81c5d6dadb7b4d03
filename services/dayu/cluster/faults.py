"""Faults injected into a cluster of real nodes mid-run, and the accounting that shows whether every
task came through them (issue 14): a pod killed with SIGKILL and restarted by the supervisor, an edge
node partitioned from the others, a link's bandwidth collapsing, a node's CPU quota cut to a tenth.

A round runs on one cluster: the mesh comes up and delivers, then each fault in turn is injected,
lifted (the supervisor restarts the pod; the links heal; the quota comes back) and observed; at the
end the generators stop, the tasks in flight settle (and the distributor's gap timeout passes), and
every task is accounted for, all through gRPC: the generators' ListStreams (a stream's
`tasks_generated` is n: its tasks are sequences 0..n-1) and the distributor's QueryRecords pages.

Each fault owns the sequences its streams made from the start of its run (just before the mesh was
checked to deliver and the fault was injected) to the start of the next fault's (the last: to the end
of the round); the tasks in flight when a fault hits were made during its own run's lead, so a fault's
losses show in its row, not its neighbour's. Per fault, and for the round:

- generated: the sequences of its range;
- delivered, and dropped by reason kind (dayu.mesh.summary.reason_kind: every gap the distributor gave
  up on is one kind, "lost: never reached the distributor"), each sequence by its first record;
- unaccounted: sequences without any record;
- duplicated: sequences with more than one record as read back (the distributor keeps a task once by
  its id; a task id made anew, or a sequence number given twice, shows here).

Recovery (`FaultRun.recovery_s`): from the moment the fault was lifted (the killed pod listens again;
the links healed; the quota restored) to the first *delivered* record, stored by the distributor, of
a task *created at or after that moment*, for every affected stream (the last of them). That is the
honest measure of "the stream delivers again": a record of a task made before the moment may only be
a backlog draining (or a retry that was never in danger). `first_delivery_s` is the lax one (any
delivered record stored after the moment), reported beside it. Records carry `stored_at` and
`task.created_at` from this machine's clock, so they compare with this process's time.time().

The affected streams: those whose camera is at the fault's node, for a fault of an edge node's pod,
link or CPU; every stream for the cloud's.

The scheduler's reaction: its decisions (GetSchedulerStats' bounded history, read at every turn of a
fault so a busy stream's are not lost) made while the fault was on (`decisions_during`) and in the
window after it was lifted (`decisions_after`), each as one line of what it changed and why.

A kill of "the processor" or "the Triton" hits the one serving the stream's first stage where its
current decision places it, so the kill bites. Limits: the supervisor's back-off grows with a pod's
restarts (0.5 s, doubling); a round kills each pod at most once, so every recovery measured is a
first restart's. A mesh's link or CPU traces would
undo a fault at their next step: the fault mesh has none, and `check` refuses faults on traced parts.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from dayu.cluster.cluster import Cluster, cleanup
from dayu.mesh.model import CONFIGS, MeshConfig, load_mesh_config, read_mesh_file
from dayu.mesh.summary import reason_kind
from dayu.runtime.paging import every_page
from dayu.runtime.tls import open_channel
from dayu.v1 import (
    decision_pb2,
    distributor_pb2,
    distributor_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)

KINDS = ("kill", "partition", "bandwidth", "cpu")
DEFAULT_GAP_TIMEOUT_S = 30.0  # the distributor's, where the mesh file sets none
RECOVERY_LIMIT_S = 5.0  # issue 14: a stream delivers again within 5 s of a restart


@dataclass(frozen=True)
class Fault:
    """One fault: what is done to which part of the cluster, and for how long."""

    name: str  # "kill controller@edge-1", "partition edge-1", ...
    kind: str  # one of KINDS
    what: str  # in words
    duration_s: float = 0.0  # partition, bandwidth, cpu: how long it lasts; kill: 0 (until the restart)
    component: str = ""  # kill: a component ("controller") or workload ("dayu-processor-text-detector")
    node: str = ""  # kill: the pod's node; partition, cpu: the node; bandwidth: one end of the link
    peer: str = ""  # bandwidth: the other end
    mbps: float = 0.0  # bandwidth: the rate while it lasts
    cpu_share: float = 0.0  # cpu: the share of its cores the node keeps
    stage: str = ""  # kill processor, triton: the node is where this stage of `stream` runs now
    stream: str = ""  # the stream whose decision places `stage`


@dataclass(frozen=True)
class Timing:
    """How a fault's run is paced (seconds)."""

    lead_s: float = 3.0  # at least this long from a run's start to the injection
    steady_timeout_s: float = 30.0  # before injecting, wait this long at most for each stream to deliver in budget
    restart_timeout_s: float = 120.0  # a killed pod must listen again within this
    recovery_timeout_s: float = 20.0  # after the lift, wait this long at most for the streams to deliver
    after_s: float = 4.0  # keep observing at least this long after the lift before the next fault


@dataclass
class Accounting:
    """What became of a range of tasks (see the module)."""

    generated: int = 0
    delivered: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason kind -> tasks
    unaccounted: int = 0
    duplicated: int = 0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def add(self, other: Accounting) -> None:
        self.generated += other.generated
        self.delivered += other.delivered
        self.dropped.update(other.dropped)
        self.unaccounted += other.unaccounted
        self.duplicated += other.duplicated

    def as_dict(self) -> dict[str, Any]:
        return {
            "generated": self.generated,
            "delivered": self.delivered,
            "dropped": dict(self.dropped.most_common()),
            "unaccounted": self.unaccounted,
            "duplicated": self.duplicated,
        }


@dataclass
class FaultRun:
    """One fault's run on a cluster: when, what it hit, how the mesh recovered, what the scheduler did."""

    fault: Fault
    streams: list[str] = field(default_factory=list)  # the affected streams
    target: str = ""  # what was hit: a pod's name, a node, a link
    first: dict[str, int] = field(default_factory=dict)  # per stream, the first sequence of its range
    injected_count: dict[str, int] = field(default_factory=dict)  # per stream, tasks made before the injection
    started_at: float = 0.0
    injected_at: float = 0.0
    lifting_at: float = 0.0  # the fault was fully on until this moment (a kill: until lifted_at)
    lifted_at: float = 0.0  # the killed pod listened again; the links healed; the quota came back
    ended_at: float = 0.0
    restart_s: float | None = None  # kill: from the kill to the pod listening again
    recovery_s: float | None = None  # see the module; None: not within the recovery timeout
    first_delivery_s: float | None = None
    recovered: dict[str, float | None] = field(default_factory=dict)  # per affected stream, as recovery_s
    steady: bool = True  # every affected stream delivered a fresh task within budget before the injection
    # A CPU fault on a node where no stage of its streams was placed when it hit leaves the scheduler
    # nothing to move: no reaction is asked of it (the details say so).
    stages_there: bool = True
    decisions_during: list[str] = field(default_factory=list)
    decisions_after: list[str] = field(default_factory=list)
    reactions: int = 0  # decisions during that stepped a knob down, moved a stage or paused the stream
    accounting: Accounting = field(default_factory=Accounting)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    skipped: str = ""  # why the fault was not run (no such pod in this mesh)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fault": self.fault.name,
            "kind": self.fault.kind,
            "what": self.fault.what,
            "target": self.target,
            "streams": self.streams,
            "first": self.first,
            "restart_s": _round(self.restart_s),
            "recovery_s": _round(self.recovery_s),
            "first_delivery_s": _round(self.first_delivery_s),
            "recovered": {stream: _round(value) for stream, value in self.recovered.items()},
            "steady": self.steady,
            "window_s": _round(self.lifted_at - self.injected_at) if self.lifted_at else None,
            "decisions_during": self.decisions_during,
            "decisions_after": self.decisions_after,
            "reactions": self.reactions,
            "accounting": self.accounting.as_dict(),
            "notes": self.notes,
            "error": self.error,
            "skipped": self.skipped,
        }


@dataclass
class Round:
    """A round: the faults' runs on one cluster and the accounting of all its tasks."""

    name: str
    runs: list[FaultRun] = field(default_factory=list)
    warmup: Accounting = field(default_factory=Accounting)  # the tasks made before the first fault
    total: Accounting = field(default_factory=Accounting)
    generated_per_stream: dict[str, int] = field(default_factory=dict)
    settle_s: float = 0.0  # how long the tasks took to settle after the generators stopped
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runs": [run.as_dict() for run in self.runs],
            "warmup": self.warmup.as_dict(),
            "total": self.total.as_dict(),
            "generated_per_stream": self.generated_per_stream,
            "settle_s": round(self.settle_s, 1),
            "notes": self.notes,
            "timings": {k: round(v, 1) for k, v in self.timings.items()},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# -- the mesh and its faults ------------------------------------------------------------------------


def mesh_data(triton: bool = False, gap_timeout_s: float | None = None) -> dict[str, Any]:
    """The mesh the fault suite runs, as a mesh file's data (relative paths: to configs/).

    Default: configs/cluster.yaml (a cloud of 1 core, two edges of half a core) with steady links (a
    fault sets them; a trace would undo it), no golden scorer (CPU the two cores need), and both
    streams on latency_budget capped at 2 frames per second in 1-frame segments: a task at least every
    second, so recovery is measured in seconds, not in segment lengths, and the policy still has
    resolution, frame rate and placement to turn.

    triton: a smaller mesh whose processors run on a Triton: the cloud with text_detector and
    text_recognizer on its node's tritonserver (the manifests' dayu-triton), one edge without
    processors, and one stream (plates) fixed on the cloud at 640x360, 1 frame per second.

    gap_timeout_s: the distributor's gap timeout, set where the mesh file has the field.
    """
    data = read_mesh_file(CONFIGS / "cluster.yaml")
    data["links"] = [{k: v for k, v in link.items() if k != "trace"} for link in data["links"]]
    data.pop("golden", None)
    for section in data["nodes"].values():
        section.get("resources", {}).pop("cpu_trace", None)
    if triton:
        data["nodes"] = {
            "cloud": {
                "processors": ["text_detector", "text_recognizer"],
                "resources": {"cpus": 1.0, "memory_mb": 6144},
            },
            "edge-1": {"processors": [], "resources": {"cpus": 0.5, "memory_mb": 2048}},
        }
        data["links"] = [{"between": ["edge-1", "cloud"], "bandwidth_mbps": 20}]
        for kind in ("text_detector", "text_recognizer"):
            section = data.setdefault("processors", {}).setdefault(kind, {"workers": 1})
            section.setdefault("params", {})["backend"] = "triton"
        data["triton"] = {"model_config_name": ""}
        stream = next(s for s in data["streams"] if s["pipeline"] == "plates")
        placement = {"detect": "cloud", "read": "cloud"}
        # 640x360: the cloud's one core about a third busy (detection took 0.5 to 0.7 s a frame at 960x540,
        # 80% busy, and the tasks made while Triton was away took longer than the promise's 5 s to drain).
        params = {"width": 640, "height": 360, "fps": 1, "frames_per_segment": 1, "placement": placement}
        stream.update(node="edge-1", policy={"name": "fixed", "params": params})
        stream["max_configuration"].update(fps=1, frames_per_segment=1, codec="jpeg")
        data["streams"] = [stream]
    else:
        for stream in data["streams"]:
            stream["max_configuration"].update(fps=2, frames_per_segment=1)
            stream["policy"]["params"]["start"] = {"fps": 1, "frames_per_segment": 1}
    if gap_timeout_s is not None and "gap_timeout_s" in MeshConfig.model_fields:
        data["gap_timeout_s"] = gap_timeout_s
    return data


def load_mesh(data: dict[str, Any]) -> MeshConfig:
    """A mesh file's data (paths relative to configs/) as its config."""
    return load_mesh_config(CONFIGS / "cluster.yaml", data)


def gap_timeout_of(config: MeshConfig) -> float:
    """The distributor's gap timeout for this mesh: its gap_timeout_s, else the default (30 s)."""
    value = getattr(config, "gap_timeout_s", None)
    return float(value) if value else DEFAULT_GAP_TIMEOUT_S


def stream_nodes(config: MeshConfig) -> dict[str, str]:
    """stream id -> the node its camera (and generator) is at."""
    return {str(stream.model_dump()["stream_id"]): stream.node for stream in config.streams}


def faults(config: MeshConfig, short: bool = False) -> list[Fault]:
    """The faults of issue 14 on this mesh, the edge being the first stream's node: each component
    killed in turn (generator, the edge's controller, the cloud's controller, the processor running
    the stream's first stage, that node's Triton, distributor, scheduler, the edge's monitor), the
    edge's CPU quota cut to a tenth for 20 s, its uplink collapsing to 0.2 Mbit/s for 20 s, the edge
    partitioned for 10 s. `short`: the CPU and bandwidth faults last 10 s (the default suite's form).
    The CPU fault comes first of the lasting ones: the kill of the scheduler before it brings the
    streams back to their startup plan (stages on the edge where it can), where a slower edge bites;
    after the uplink's collapse or the partition the policy has moved them to the cloud."""
    if not config.streams:
        raise ValueError("the mesh has no stream: nothing to account for")
    stream, edge = next(iter(stream_nodes(config).items()))
    cloud = config.cloud_node
    first_stage = _stages(config, stream)[0][0]
    lasting = 10.0 if short else 20.0

    def kill(component: str, node: str, what: str, **where: str) -> Fault:
        at = f" ({where['stage']} of {stream})" if where else f"@{node}"
        return Fault(f"kill {component}{at}", "kill", what, component=component, node=node, **where)

    return [
        kill("generator", edge, f"SIGKILL of the generator of {stream}"),
        kill("controller", edge, f"SIGKILL of the controller of {edge}"),
        kill("controller", cloud, f"SIGKILL of the controller of {cloud}"),
        kill(
            "processor", "", f"SIGKILL of the processor of {stream}'s {first_stage}", stage=first_stage, stream=stream
        ),
        kill("triton", "", f"SIGKILL of the Triton of {stream}'s {first_stage}", stage=first_stage, stream=stream),
        kill("distributor", cloud, "SIGKILL of the distributor"),
        kill("scheduler", cloud, "SIGKILL of the scheduler"),
        kill("monitor", edge, f"SIGKILL of the monitor of {edge}"),
        Fault(
            f"cpu {edge}", "cpu", f"{edge}'s CPU quota at a tenth for {lasting:g} s", lasting, node=edge, cpu_share=0.1
        ),
        Fault(
            f"bandwidth {edge}<->{cloud}",
            "bandwidth",
            f"the {edge}<->{cloud} link at 0.2 Mbit/s for {lasting:g} s",
            lasting,
            node=edge,
            peer=cloud,
            mbps=0.2,
        ),
        Fault(f"partition {edge}", "partition", f"every link of {edge} down for 10 s", 10.0, node=edge),
    ]


def select(all_faults: Iterable[Fault], names: str) -> list[Fault]:
    """The faults whose name contains one of the comma-separated words (all for "" or "all")."""
    words = [word.strip() for word in names.split(",") if word.strip()]
    if not words or words == ["all"]:
        return list(all_faults)
    return [fault for fault in all_faults if any(word in fault.name for word in words)]


def _stages(config: MeshConfig, stream_id: str) -> list[tuple[str, str]]:
    """(stage, processor kind) of the stream's pipeline, in order."""
    stream = next(s.model_dump() for s in config.streams if s.model_dump()["stream_id"] == stream_id)
    pipelines = yaml.safe_load(Path(config.pipelines_file).read_text())["pipelines"]
    pipeline = next(p for p in pipelines if p["name"] == stream["pipeline"])
    return [(stage["name"], stage["processor"]) for stage in pipeline["stages"]]


def check(config: MeshConfig, fault: Fault) -> None:
    """Refuses a fault that the mesh's traces would undo at their next step."""
    if fault.kind in ("partition", "bandwidth"):
        for link in config.links:
            if fault.node in link.between and link.trace is not None and (not fault.peer or fault.peer in link.between):
                raise ValueError(f"{fault.name}: link {'<->'.join(link.between)} replays a trace, which would undo it")
    if fault.kind == "cpu" and config.nodes[fault.node].resources.cpu_trace is not None:
        raise ValueError(f"{fault.name}: {fault.node} replays a CPU trace, which would undo it")


def affected_streams(config: MeshConfig, fault: Fault) -> list[str]:
    nodes = stream_nodes(config)
    edge_fault = fault.node and fault.node != config.cloud_node and not fault.stage
    return sorted(s for s, node in nodes.items() if node == fault.node) if edge_fault else sorted(nodes)


# -- what the mesh says, through gRPC ---------------------------------------------------------------

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # A restarted distributor or scheduler is reached again within a second, not after gRPC's
    # default back-off (up to 2 minutes).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def _seconds(stamp: Any) -> float:
    return float(stamp.ToNanoseconds()) / 1e9


class MeshProbe:
    """Reads the cluster through its components' gRPC APIs: the generators' counts, the distributor's
    records (all of them, kept in cursor order), the scheduler's decisions (merged across reads)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.records: list[task_pb2.TaskRecord] = []
        self._cursor = 0
        self.decisions: dict[tuple[str, int, int], decision_pb2.Decision] = {}  # (stream, epoch, version)

    def _channel(self, component: str, node: str) -> grpc.aio.Channel:
        running = self.cluster.pod(component, node)
        address = f"{self.cluster.node_address(running.pod.node)}:{running.pod.port}"
        if address not in self._channels:
            self._channels[address] = open_channel(address, self.cluster.tls, _CHANNEL_OPTIONS)
        return self._channels[address]

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(channel.close() for channel in channels), return_exceptions=True)

    async def generated(self, timeout_s: float = 30.0) -> dict[str, int]:
        """Per stream of the mesh, the tasks its generator made (tasks_generated), asked again while a
        generator is down or has not installed its streams yet (restarting), for up to timeout_s."""
        expected = stream_nodes(self.cluster.config)
        deadline = time.monotonic() + timeout_s
        while True:
            counts: dict[str, int] = {}
            for node in sorted(set(expected.values())):
                stub = generator_pb2_grpc.GeneratorServiceStub(self._channel("generator", node))
                left = max(1.0, deadline - time.monotonic())
                streams, _ = await _retry(
                    lambda stub=stub: every_page(stub.ListStreams, generator_pb2.ListStreamsRequest(), "streams", 5),
                    left,
                )
                counts.update({s.spec.stream_id: int(s.tasks_generated) for s in streams})
            if set(expected) <= set(counts):
                return counts
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the generators list {sorted(counts)}, not every stream of {sorted(expected)}")
            await asyncio.sleep(0.25)

    async def refresh(self, timeout_s: float = 30.0) -> list[task_pb2.TaskRecord]:
        """Reads the records stored since the last read (QueryRecords pages); returns them."""
        stub = distributor_pb2_grpc.DistributorServiceStub(self._channel("distributor", self.cluster.config.cloud_node))
        found: list[task_pb2.TaskRecord] = []
        while True:
            request = distributor_pb2.QueryRecordsRequest(
                filter=distributor_pb2.RecordFilter(after_cursor=self._cursor), limit=1000
            )
            reply = await _retry(lambda request=request: stub.QueryRecords(request, timeout=10), timeout_s)
            found.extend(reply.records)
            if reply.records:
                self._cursor = max(self._cursor, max(record.cursor for record in reply.records))
            if not reply.next_cursor or not reply.records:
                break
        self.records.extend(found)
        return found

    async def read_all(self, timeout_s: float = 30.0) -> list[task_pb2.TaskRecord]:
        """Every record, read back afresh from the first (what the accounting counts)."""
        self.records, self._cursor = [], 0
        await self.refresh(timeout_s)
        return list(self.records)

    async def read_decisions(self) -> None:
        """Merges the scheduler's recent decisions (bounded history per stream) into `decisions`;
        a scheduler that does not answer (restarting) is skipped this time."""
        stub = scheduler_pb2_grpc.SchedulerServiceStub(self._channel("scheduler", self.cluster.config.cloud_node))
        try:
            streams, _ = await every_page(
                stub.GetSchedulerStats, scheduler_pb2.GetSchedulerStatsRequest(), "streams", 5
            )
        except grpc.aio.AioRpcError:
            return
        for stream in streams:
            for decision in [*stream.history, stream.current]:
                if decision.version:
                    self.decisions[stream.stream_id, decision.epoch, decision.version] = decision

    def delivered_after(
        self, streams: list[str], moment: float, in_budget: bool = False
    ) -> tuple[dict[str, float | None], float | None]:
        """Per stream, the earliest stored_at of a delivered task created at or after `moment` (with
        `in_budget`, of one delivered within its latency budget; None: none yet); and the earliest
        stored_at of any delivered record stored after it."""
        fresh: dict[str, float | None] = dict.fromkeys(streams)
        any_after: float | None = None
        for record in self.records:
            stream = record.task.stream_id
            if record.outcome != task_pb2.TASK_OUTCOME_DELIVERED or stream not in fresh:
                continue
            stored = _seconds(record.stored_at)
            if stored >= moment:
                any_after = stored if any_after is None else min(any_after, stored)
            late = in_budget and record.latency_s > record.task.latency_budget_s
            if _seconds(record.task.created_at) >= moment and not late:
                previous = fresh[stream]
                fresh[stream] = stored if previous is None else min(previous, stored)
        return fresh, any_after

    async def wait_delivered(
        self, streams: list[str], moment: float, timeout_s: float, in_budget: bool = False
    ) -> tuple[dict[str, float | None], float | None]:
        """Polls the records until every stream has a delivered task created at or after `moment`
        (within its budget, with `in_budget`), or timeout_s passed; returns delivered_after's answer."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.refresh(timeout_s=max(1.0, deadline - time.monotonic()))
            except (grpc.aio.AioRpcError, TimeoutError):
                pass
            fresh, any_after = self.delivered_after(streams, moment, in_budget)
            if all(value is not None for value in fresh.values()) or time.monotonic() >= deadline:
                return fresh, any_after
            await asyncio.sleep(0.25)

    def describe(self, streams: list[str], since: float, until: float) -> list[str]:
        """The decisions for these streams made in [since, until], one line each: when (seconds from
        `since`), stream, version, what changed from the decision before, why."""
        by_stream: dict[str, list[decision_pb2.Decision]] = defaultdict(list)
        for (stream, _epoch, _version), decision in sorted(self.decisions.items()):
            by_stream[stream].append(decision)
        lines = []
        for stream in streams:
            before: decision_pb2.Decision | None = None
            for decision in by_stream.get(stream, []):
                made = _seconds(decision.made_at)
                if since <= made <= until:
                    change = _change(before, decision)
                    lines.append(
                        f"+{made - since:.1f} s {stream} v{decision.version}: {change}; because {decision.reason}"
                    )
                before = decision
        return sorted(lines, key=lambda line: float(line[1:].split(" ", 1)[0]))

    def reactions(self, streams: list[str], since: float, until: float) -> int:
        """How many of these streams' decisions made in [since, until] lowered the resolution, the
        frame rate or the quality, moved a stage or paused the stream (a step up is not a reaction)."""
        by_stream: dict[str, list[decision_pb2.Decision]] = defaultdict(list)
        for (stream, _epoch, _version), decision in sorted(self.decisions.items()):
            by_stream[stream].append(decision)
        count = 0
        for stream in streams:
            history = by_stream.get(stream, [])
            for before, after in itertools.pairwise(history):
                if since <= _seconds(after.made_at) <= until and before.epoch == after.epoch and _reacts(before, after):
                    count += 1
        return count


def _reacts(before: decision_pb2.Decision, after: decision_pb2.Decision) -> bool:
    b, a = before.configuration, after.configuration
    lower = a.resolution.height < b.resolution.height or a.fps < b.fps or a.quality < b.quality
    return lower or dict(before.placement) != dict(after.placement) or (after.paused and not before.paused)


async def _retry(call: Callable[[], Any], timeout_s: float) -> Any:
    """A call retried while its server is unreachable (restarting), for up to timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            retryable = error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if not retryable or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.25)


def _change(before: decision_pb2.Decision | None, after: decision_pb2.Decision) -> str:
    """What a decision changed from the one before it, in words (all of it for the first known)."""
    c = after.configuration
    knobs = f"{c.resolution.width}x{c.resolution.height} {c.fps:g} fps {c.frames_per_segment} f/seg"
    where = ", ".join(f"{stage} {node}" for stage, node in sorted(after.placement.items()))
    if before is None or before.epoch != after.epoch:
        new = "" if before is None else "new epoch: "
        return f"{new}{knobs}; {where}" + ("; paused" if after.paused else "")
    b = before.configuration
    changes = []
    if (b.resolution.width, b.resolution.height) != (c.resolution.width, c.resolution.height):
        changes.append(f"{b.resolution.width}x{b.resolution.height} -> {c.resolution.width}x{c.resolution.height}")
    if b.fps != c.fps:
        changes.append(f"fps {b.fps:g} -> {c.fps:g}")
    if b.frames_per_segment != c.frames_per_segment:
        changes.append(f"frames per segment {b.frames_per_segment} -> {c.frames_per_segment}")
    if b.quality != c.quality:
        changes.append(f"quality {b.quality} -> {c.quality}")
    for stage, node in sorted(after.placement.items()):
        if before.placement.get(stage) != node:
            changes.append(f"{stage} {before.placement.get(stage, '-')} -> {node}")
    if before.paused != after.paused:
        changes.append("paused" if after.paused else "resumed")
    return ", ".join(changes) or "no change"


# -- a fault's run ----------------------------------------------------------------------------------


def _target_pod(cluster: Cluster, probe: MeshProbe, fault: Fault) -> str:
    """The pod a kill hits: its component on its node, or, for a stage's processor or Triton, on the
    node the stream's current decision places the stage (the cloud where it names none)."""
    if not fault.stage:
        return cluster.pod(fault.component, fault.node or None).pod.name
    config = cluster.config
    kind = dict(_stages(config, fault.stream))[fault.stage]
    current = [d for (stream, _, _), d in sorted(probe.decisions.items()) if stream == fault.stream]
    node = current[-1].placement.get(fault.stage, config.cloud_node) if current else config.cloud_node
    if fault.component == "processor":
        return cluster.pod(f"dayu-processor-{kind.replace('_', '-')}", node).pod.name
    if fault.component == "triton":
        tritons = {r.pod.node for r in cluster.pods.values() if r.pod.component == "triton"}
        if node not in tritons:
            raise KeyError(f"no Triton on {node}, where {fault.stream}'s {fault.stage} runs")
    return cluster.pod(fault.component, node).pod.name


def applicable(cluster: Cluster, fault: Fault) -> str:
    """Why the fault cannot run on this cluster ("" when it can): a kill of a pod the mesh lacks."""
    if fault.kind != "kill":
        return ""
    components = {r.pod.component for r in cluster.pods.values()}
    if fault.component not in components and not any(r.pod.workload == fault.component for r in cluster.pods.values()):
        return f"no {fault.component} pod in this mesh"
    return ""


async def run_fault(cluster: Cluster, probe: MeshProbe, fault: Fault, timing: Timing | None = None) -> FaultRun:
    """Runs one fault on a running cluster (see the module): notes where its streams' sequences are,
    waits for every affected stream to deliver a task within budget, injects the fault, lifts it (a
    kill: the supervisor's restart; else after fault.duration_s, always, even when cancelled),
    measures the recovery, and observes until at least timing.after_s after the lift. Accounting
    comes at the round's end. A failure (a pod not restarted in time, a component not answering) is
    kept in the run's `error`, with what the run had seen so far, and the round goes on."""
    timing = timing or Timing()
    check(cluster.config, fault)
    run = FaultRun(fault=fault, streams=affected_streams(cluster.config, fault))
    try:
        await _run_fault(cluster, probe, run, timing)
    except Exception as error:
        run.error = f"{type(error).__name__}: {error}"
    return run


async def _run_fault(cluster: Cluster, probe: MeshProbe, run: FaultRun, timing: Timing) -> None:
    fault = run.fault
    run.started_at = time.time()
    run.first = await probe.generated()
    await probe.read_decisions()
    # Steady: a task made since delivered within its budget, so that what an earlier fault left (a
    # scheduler's restart starting a stream over, too heavy for its node) is not taken for this one's.
    fresh, _ = await probe.wait_delivered(run.streams, run.started_at, timing.steady_timeout_s, in_budget=True)
    run.steady = all(value is not None for value in fresh.values())
    if not run.steady:
        late = sorted(s for s, v in fresh.items() if v is None)
        run.notes.append(f"not delivering within budget before the fault: {late}")
    await asyncio.sleep(max(0.0, run.started_at + timing.lead_s - time.time()))
    await probe.read_decisions()
    run.injected_count = await probe.generated()
    run.injected_at = time.time()
    if fault.kind == "kill":
        run.target = _target_pod(cluster, probe, fault)
        killed = await cluster.kill(run.target)
        run.injected_at = killed.at
        run.lifted_at = await cluster.wait_restarted(killed, timing.restart_timeout_s)
        run.restart_s = run.lifted_at - killed.at
    else:
        await _lasting(cluster, probe, fault, run)
    await probe.read_decisions()
    recovered, any_after = await probe.wait_delivered(run.streams, run.lifted_at, timing.recovery_timeout_s)
    run.recovered = {s: None if at is None else at - run.lifted_at for s, at in recovered.items()}
    run.recovery_s = None if None in run.recovered.values() else max(v for v in run.recovered.values() if v is not None)
    run.first_delivery_s = None if any_after is None else any_after - run.lifted_at
    await asyncio.sleep(max(0.0, run.lifted_at + timing.after_s - time.time()))
    await probe.read_decisions()
    run.ended_at = time.time()
    on_until = run.lifting_at or run.lifted_at  # a heal takes a moment: what happens meanwhile is after it
    run.decisions_during = probe.describe(run.streams, run.injected_at, on_until)
    run.reactions = probe.reactions(run.streams, run.injected_at, on_until)
    run.decisions_after = probe.describe(run.streams, on_until + 1e-6, run.ended_at)


async def _lasting(cluster: Cluster, probe: MeshProbe, fault: Fault, run: FaultRun) -> None:
    """A partition, bandwidth or CPU fault for its duration, lifted whatever happens meanwhile."""
    config = cluster.config
    inject: Callable[[], Awaitable[None]]
    lift: Callable[[], Awaitable[None]]
    if fault.kind == "partition":
        run.target = fault.node
        inject, lift = functools.partial(cluster.partition, fault.node), functools.partial(cluster.heal, fault.node)
    elif fault.kind == "bandwidth":
        run.target = f"{fault.node}<->{fault.peer}"
        rate = cluster.link_mbps(fault.node, fault.peer)
        inject = functools.partial(cluster.set_link, fault.node, fault.peer, fault.mbps)
        lift = functools.partial(cluster.set_link, fault.node, fault.peer, rate)
    elif fault.kind == "cpu":
        run.target = fault.node
        await probe.read_decisions()
        newest = {stream: d for (stream, _, _), d in sorted(probe.decisions.items()) if stream in run.streams}
        run.stages_there = any(fault.node in d.placement.values() for d in newest.values())
        cpus = config.nodes[fault.node].resources.cpus  # None: the machine's, no quota
        inject = functools.partial(cluster.set_cpus, fault.node, (cpus or float(os.cpu_count() or 1)) * fault.cpu_share)
        lift = functools.partial(cluster.set_cpus, fault.node, cpus)
    else:
        raise ValueError(f"fault {fault.name}: unknown kind {fault.kind!r}, expected one of {KINDS}")
    try:
        await inject()
        run.injected_at = time.time()
        deadline = run.injected_at + fault.duration_s
        while (left := deadline - time.time()) > 0:  # the decisions, while the history holds them
            await asyncio.sleep(min(left, 2.0))
            await probe.read_decisions()
    finally:
        run.lifting_at = time.time()
        await asyncio.shield(lift())
        run.lifted_at = time.time()


# -- a round ----------------------------------------------------------------------------------------


def account(records: Iterable[task_pb2.TaskRecord], ranges: dict[str, tuple[int, int]]) -> Accounting:
    """The accounting of the sequences [lo, hi) of each stream, from the records read back."""
    by_sequence: dict[tuple[str, int], list[task_pb2.TaskRecord]] = defaultdict(list)
    for record in records:
        by_sequence[record.task.stream_id, record.task.sequence].append(record)
    result = Accounting()
    for stream, (lo, hi) in sorted(ranges.items()):
        for sequence in range(lo, hi):
            result.generated += 1
            found = by_sequence.get((stream, sequence))
            if not found:
                result.unaccounted += 1
                continue
            if len(found) > 1:
                result.duplicated += 1
            first = min(found, key=lambda record: record.cursor)
            if first.outcome == task_pb2.TASK_OUTCOME_DELIVERED:
                result.delivered += 1
            else:
                result.dropped[reason_kind(first.reason)] += 1
    return result


def _made(records: Iterable[task_pb2.TaskRecord], counted: dict[str, int]) -> dict[str, int]:
    """Tasks made per stream: the generator's count, or more where records show later sequences."""
    made = dict(counted)
    for record in records:
        stream = record.task.stream_id
        made[stream] = max(made.get(stream, 0), record.task.sequence + 1)
    return made


async def end_round(cluster: Cluster, probe: MeshProbe, round_: Round, settle_s: float) -> None:
    """Stops the generators, waits until every task made has a record (or settle_s passed: the
    tasks in flight settle, the distributor's gap timeout passes), reads every record back, and
    accounts for the round and each fault's range of sequences. Not SettleStreams, which a run's end
    calls to record what never arrived as lost: what the mesh did not record itself stays unaccounted."""
    counted = await probe.generated()
    await cluster.stop_generators()
    stopped = time.monotonic()
    while True:
        try:
            await probe.refresh()
        except (grpc.aio.AioRpcError, TimeoutError):
            pass
        made = _made(probe.records, counted)
        seen = {(r.task.stream_id, r.task.sequence) for r in probe.records}
        missing = sum(1 for stream, n in made.items() for sequence in range(n) if (stream, sequence) not in seen)
        if not missing or time.monotonic() - stopped >= settle_s:
            break
        await asyncio.sleep(1.0)
    round_.settle_s = time.monotonic() - stopped
    records = await probe.read_all()
    made = _made(records, counted)
    runs = round_.runs
    for run in runs:  # a count seen before may be above the end's (a generator that started over)
        for stream, first in run.first.items():
            made[stream] = max(made.get(stream, 0), first)
    round_.generated_per_stream = made
    round_.total = account(records, {stream: (0, n) for stream, n in made.items()})
    counted_runs = [run for run in runs if run.first]
    starts = [run.first for run in counted_runs] + [made]
    round_.warmup = account(records, {s: (0, starts[0].get(s, 0)) for s in made})
    for run in counted_runs:  # a generator that numbers its tasks from 0 again shows here
        if not run.injected_at:
            continue
        for stream, count in sorted(run.injected_count.items()):
            reused = [
                r.task.sequence
                for r in records
                if r.task.stream_id == stream
                and r.task.sequence < count
                and _seconds(r.task.created_at) >= (run.lifted_at or run.injected_at)
            ]
            if reused:
                run.notes.append(
                    f"{stream}: {len(reused)} tasks made after the fault reuse sequences under {count}, the count "
                    f"before it (from {min(reused)}): its generator numbered them anew"
                )
    for index, run in enumerate(counted_runs):
        following = starts[index + 1]
        ranges = {}
        for stream in made:
            lo, hi = run.first.get(stream, 0), following.get(stream, 0)
            if hi < lo:
                run.notes.append(f"{stream}: the generator's count went back from {lo} to {hi} (it started over)")
            ranges[stream] = (lo, max(lo, hi))
        run.accounting = account(records, ranges)


async def run_round(
    config: MeshConfig,
    workdir: Path,
    selected: list[Fault],
    *,
    name: str = "dfault",
    timing: Timing | None = None,
    settle_s: float | None = None,
    progress: Callable[[str], None] = print,
) -> Round:
    """One cluster of the mesh; the faults in turn; the accounting (see the module). The cluster is
    torn down whatever happens (and what a crash left under its name removed)."""
    timing = timing or Timing()
    round_ = Round(name)
    settle = settle_s if settle_s is not None else config.join_timeout_s + gap_timeout_of(config) + 10
    for fault in selected:
        check(config, fault)
    cluster = Cluster(config, workdir, name=name, progress=lambda line: progress(f"  {line}"))
    cluster.reset()  # records, journals and sequence numbers an earlier round left in the workdir
    probe = MeshProbe(cluster)
    started = time.monotonic()
    try:
        await cluster.start()
        round_.timings["start_s"] = time.monotonic() - started
        streams = sorted(stream_nodes(config))
        warm = time.time()
        fresh, _ = await probe.wait_delivered(streams, warm, timing.steady_timeout_s * 2)
        if None in fresh.values():
            round_.notes.append(f"not delivering after start: {sorted(s for s, v in fresh.items() if v is None)}")
        progress(f"{name}: mesh up in {round_.timings['start_s']:.0f} s, delivering after {time.time() - warm:.0f} s")
        for fault in selected:
            why = applicable(cluster, fault)
            if why:
                round_.runs.append(FaultRun(fault=fault, skipped=why))
                progress(f"{name}: {fault.name}: skipped ({why})")
                continue
            run = await run_fault(cluster, probe, fault, timing)  # a failure is in run.error; the round goes on
            round_.runs.append(run)
            progress(f"{name}: {fault.name}: {_progress_line(run)}")
        progress(f"{name}: generators stop; waiting up to {settle:.0f} s for every task to settle")
        await end_round(cluster, probe, round_, settle)
        round_.timings["faults_s"] = time.monotonic() - started
    finally:
        await probe.close()
        await cluster.abort()
        round_.timings["round_s"] = time.monotonic() - started
        leftovers = await asyncio.to_thread(cleanup, name)
        if leftovers:
            round_.notes.append(f"left behind and removed: {leftovers}")
    return round_


def _progress_line(run: FaultRun) -> str:
    if run.error:
        return f"error: {run.error}"
    restart = "" if run.restart_s is None else f"restarted in {run.restart_s:.1f} s, "
    recovery = "not recovered" if run.recovery_s is None else f"recovered in {run.recovery_s:.1f} s"
    return f"{run.target}: {restart}{recovery}; {len(run.decisions_during)} decisions during"


def problems(run: FaultRun) -> list[str]:
    """What issue 14 asks of a fault that its run did not show (empty: it held): no task
    unaccounted, none stored twice; a kill's streams deliver a fresh task within RECOVERY_LIMIT_S of
    the restart; a partition, bandwidth or CPU fault shows in at least one scheduler decision made
    while it was on."""
    if run.skipped:
        return []
    if run.error:
        return [f"failed to run: {run.error}"]
    found = []
    if run.accounting.unaccounted:
        found.append(f"{run.accounting.unaccounted} of {run.accounting.generated} tasks unaccounted")
    if run.accounting.duplicated:
        found.append(f"{run.accounting.duplicated} sequences stored more than once")
    if run.fault.kind == "kill":
        if run.recovery_s is None:
            late = sorted(stream for stream, value in run.recovered.items() if value is None)
            found.append(f"{late} delivered no task made after the restart")
        elif run.recovery_s > RECOVERY_LIMIT_S:
            found.append(f"delivering again {run.recovery_s:.1f} s after the restart (over {RECOVERY_LIMIT_S:g} s)")
    elif run.stages_there and not run.decisions_during:
        found.append("no scheduler decision while the fault was on")
    return found


# -- reporting --------------------------------------------------------------------------------------

TABLE_HEADER = (
    "| fault | generated | delivered | dropped by reason | unaccounted | duplicated | recovery s |\n"
    "|---|---:|---:|---|---:|---:|---:|"
)


def short_kind(kind: str, width: int = 60) -> str:
    """A drop kind as a table cell shows it: up to its first ": " (the details after it, such as a
    gRPC status's message, are in `details` and the JSON), at most `width` characters, no `|`."""
    kind = kind.split(": ", 1)[0].replace("|", "/")
    return kind if len(kind) <= width else kind[: width - 1] + "…"


def _dropped_cell(dropped: Counter[str]) -> str:
    short: Counter[str] = Counter()
    for kind, count in dropped.items():
        short[short_kind(kind)] += count
    return "; ".join(f"{count} {kind}" for kind, count in short.most_common()) or "0"


def _recovery_cell(values: list[float | None], timeout_s: float | None = None) -> str:
    if not values:
        return "-"
    missing = sum(1 for value in values if value is None)
    seen = [value for value in values if value is not None]
    limit = f" in {timeout_s:g} s" if timeout_s else ""
    if not seen:
        return f"not recovered{limit}"
    text = f"{seen[0]:.1f}" if len(seen) == 1 else f"{statistics.median(seen):.1f} (max {max(seen):.1f})"
    return text + (f"; {missing} of {len(values)} not recovered{limit}" if missing else "")


def table(rounds: list[Round], timing: Timing | None = None) -> str:
    """The markdown table over rounds: per fault, summed accounting, recovery median (max); then the
    warm-up's and the round's totals."""
    order: list[str] = []
    per_fault: dict[str, list[FaultRun]] = defaultdict(list)
    for round_ in rounds:
        for run in round_.runs:
            if run.fault.name not in per_fault:
                order.append(run.fault.name)
            per_fault[run.fault.name].append(run)
    timing = timing or Timing()
    lines = [TABLE_HEADER]
    for fault_name in order:
        runs = [run for run in per_fault[fault_name] if not run.skipped]
        if not runs:
            lines.append(f"| {fault_name} | skipped: {per_fault[fault_name][0].skipped} | | | | | |")
            continue
        total = Accounting()
        for run in runs:
            total.add(run.accounting)
        errors = sum(1 for run in runs if run.error)
        recovery = _recovery_cell([run.recovery_s for run in runs if not run.error], timing.recovery_timeout_s)
        if errors:
            recovery += f"; {errors} failed to run"
        lines.append(_row(fault_name, total, recovery))
    warmup, overall = Accounting(), Accounting()
    for round_ in rounds:
        warmup.add(round_.warmup)
        overall.add(round_.total)
    lines.append(_row("(before the first fault)", warmup, "-"))
    lines.append(_row(f"**all ({len(rounds)} cluster{'s' if len(rounds) != 1 else ''})**", overall, "-"))
    return "\n".join(lines)


def _row(name: str, a: Accounting, recovery: str) -> str:
    return (
        f"| {name} | {a.generated} | {a.delivered} | {_dropped_cell(a.dropped)} | {a.unaccounted} | "
        f"{a.duplicated} | {recovery} |"
    )


def details(rounds: list[Round]) -> str:
    """Per round and fault: what was hit, the restart and recovery times, the scheduler's decisions
    during and after, notes and errors."""
    lines = []
    for round_ in rounds:
        timings = ", ".join(f"{key} {value:.0f} s" for key, value in round_.timings.items())
        lines.append(f"round {round_.name}: {timings}; settled in {round_.settle_s:.0f} s after the generators stopped")
        lines.extend(f"  note: {note}" for note in round_.notes)
        for run in round_.runs:
            if run.skipped:
                lines.append(f"- {run.fault.name}: skipped ({run.skipped})")
                continue
            if run.error:
                lines.append(f"- {run.fault.name}: failed: {run.error}")
                continue
            restart = "" if run.restart_s is None else f"listening again {run.restart_s:.1f} s after the kill; "
            per_stream = ", ".join(
                f"{stream} {'-' if value is None else f'{value:.1f} s'}" for stream, value in run.recovered.items()
            )
            first = "-" if run.first_delivery_s is None else f"{run.first_delivery_s:.1f} s"
            lines.append(
                f"- {run.fault.name} ({run.target}): {restart}fresh task delivered: {per_stream}; any delivery: {first}"
            )
            lines.extend(f"    note: {note}" for note in run.notes)
            lines.extend(f"    dropped {count}: {kind}" for kind, count in run.accounting.dropped.most_common())
            if run.fault.kind != "kill":
                lines.append(
                    f"    scheduler: {run.reactions} of {len(run.decisions_during)} decisions during it reacted"
                )
            idle = "no decision" if run.stages_there else "no decision (no stage of its streams ran there)"
            lines.extend(f"    during: {line}" for line in run.decisions_during or [idle])
            lines.extend(f"    after:  {line}" for line in run.decisions_after[:6])
            if len(run.decisions_after) > 6:
                lines.append(f"    after:  ... {len(run.decisions_after) - 6} more")
    return "\n".join(lines)
