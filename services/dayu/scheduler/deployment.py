"""Deployment decisions, without gRPC: which deployable processor kinds each node holds loaded.

A node's deployable processors (the mesh file's `nodes.NODE.deployable`) exist there but hold their
models unloaded until the plan loads them; their monitor reports them (NodeResources.deployable: loaded
or not, how long their last load took, the bytes of their models). The planner weighs, per node and
kind, what loading would save against what it costs, from the tasks of the node's own streams:

- demand: the records (feedback) of streams whose generator is on the node, for the stages of the kind.
  A stage that ran on another node carried the task's bytes over the node's uplink (the task's size
  when it left the node, from its hops); `uplink_mbps` is that traffic over the last window_s, and
  `uplink_share` the share of the uplink's time it takes (its bandwidth from the traces, else the
  monitor's probe).
- load when, for settle_s without a break, the node's streams sent the kind's stages over the uplink,
  the uplink time that saves over horizon_s (uplink_share x horizon_s) exceeds the load's cost (the
  load time last measured on the node, default_load_s before the first), and the node's free memory
  holds memory_margin times the model's bytes. A node whose uplink bandwidth is not known yet loads on
  sustained demand alone.
- unload when loaded for at least min_hold_s and no task of the node's streams needed the kind for
  idle_after_s (its streams went away, paused, or now use other kinds).

Hysteresis: a change needs demand sustained for settle_s, or idleness for idle_after_s, and a kind
loaded stays min_hold_s at least, so a burst or a pause does not flap a model in and out. Stale nodes
(their monitor silent) keep their plan. What is kept is bounded: MAX_EVENTS per node and kind, in
time order, older than the window dropped.

Decisions carry `deployment` (stage -> nodes hosting its kind): of the stream's own node and the
cloud, those whose monitor reports the kind runnable (unloaded kinds are left out of its queues) and
whose plan does not unload it; controllers fall back to them, then the cloud.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import pydantic

from dayu.runtime.clock import timestamp
from dayu.runtime.config import StrictModel
from dayu.runtime.logs import get_logger
from dayu.v1 import decision_pb2, resources_pb2, scheduler_pb2, task_pb2

log = get_logger(__name__)

MAX_EVENTS = 4096  # task events kept per node and kind (the window's, at most this many)
MIB = 1024 * 1024


class DeploymentSettings(StrictModel):
    """The planner's thresholds (the scheduler's `deployment` section)."""

    window_s: float = pydantic.Field(10.0, gt=0, description="demand is the tasks of this last window")
    settle_s: float = pydantic.Field(
        3.0, ge=0, description="a kind is loaded once its streams' stages crossed the uplink this long without a break"
    )
    horizon_s: float = pydantic.Field(
        60.0, gt=0, description="a load must pay back within this long: uplink time saved over it > load time"
    )
    idle_after_s: float = pydantic.Field(30.0, gt=0, description="a kind no task needed this long is unloaded")
    min_hold_s: float = pydantic.Field(20.0, ge=0, description="a kind loaded stays loaded at least this long")
    memory_margin: float = pydantic.Field(
        2.0, ge=1, description="a load needs this many times its model bytes free in the node's memory"
    )
    default_load_s: float = pydantic.Field(5.0, ge=0, description="load time assumed before one is measured")


@dataclass
class _Event:
    at: float
    crossed_bits: float  # bits the task carried over the uplink for the kind's stage; 0 when it ran here
    transfer_s: float  # their time on the uplink at its bandwidth (0 when unknown or local)


@dataclass
class KindPlan:
    """The plan for one deployable kind on one node, and what it was made from."""

    load: bool = False
    reason: str = "no task needed it yet"
    since: float = 0.0  # the planner's clock
    since_wall: float = 0.0  # time.time(), for the API
    loaded: bool = False  # as the node last reported
    load_s: float = 0.0
    model_bytes: int = 0
    events: deque[_Event] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    crossing_since: float | None = None  # start of the current unbroken run of crossing tasks
    last_needed: float | None = None  # the latest task of the node's streams that needed it
    uplink_mbps: float = 0.0
    tasks_per_s: float = 0.0


def task_bytes_leaving(task: task_pb2.Task, node: str) -> int:
    """The task's size when it left `node` (the largest of its hops there: its frames went with it)."""
    return max((hop.bytes for hop in task.hops if hop.node == node), default=0)


class DeploymentPlanner:
    """Plans node -> deployable kinds loaded. Fed task records (observe), the monitors' reports
    (report) and the links' bandwidth; plan() applies the thresholds and returns the nodes whose plan
    changed. The clock is the caller's (monotonic seconds)."""

    def __init__(self, cloud_node: str, settings: DeploymentSettings | None = None) -> None:
        self.cloud_node = cloud_node
        self.settings = settings or DeploymentSettings()
        self.kinds: dict[str, dict[str, KindPlan]] = {}  # node -> kind -> plan, deployable kinds only
        self.reports: dict[str, resources_pb2.NodeResources] = {}  # nodes with deployable kinds

    # -- inputs ---------------------------------------------------------------------------------

    def report(self, report: resources_pb2.NodeResources, now: float, wall: float = 0.0) -> bool:
        """A node's monitor report: its deployable kinds, whether loaded, their cost. True when a kind
        was loaded or unloaded there since the node's last report."""
        if not report.deployable and report.node not in self.kinds:
            return False
        self.reports[report.node] = report
        kinds = self.kinds.setdefault(report.node, {})
        changed = False
        for deployable in report.deployable:
            plan = kinds.get(deployable.kind)
            if plan is None:
                plan = kinds[deployable.kind] = KindPlan(since=now, since_wall=wall or time.time())
            changed |= plan.loaded != deployable.loaded
            plan.loaded = deployable.loaded
            plan.load_s = deployable.load_s or plan.load_s
            plan.model_bytes = deployable.model_bytes
        return changed

    def observe(
        self, record: task_pb2.TaskRecord, home: str, now: float, bandwidth: Mapping[tuple[str, str], float]
    ) -> None:
        """A task record of a stream whose generator is on `home`: demand for the kinds of its stages
        that are deployable there."""
        kinds = self.kinds.get(home)
        if not kinds:
            return
        task = record.task
        leaving_bits = None
        for stage in task.dag.stages:
            plan = kinds.get(stage.spec.processor)
            if plan is None:
                continue
            crossed = transfer = 0.0
            if stage.executed_on and stage.executed_on != home:  # its input crossed the uplink
                if leaving_bits is None:
                    leaving_bits = 8.0 * task_bytes_leaving(task, home)
                crossed = leaving_bits
                mbps = self._bandwidth(home, stage.executed_on, bandwidth)
                transfer = crossed / (mbps * 1e6) if mbps else 0.0
                if plan.crossing_since is None:
                    plan.crossing_since = now
            elif stage.executed_on:
                plan.crossing_since = None  # it ran here: the run of crossing tasks is broken
            plan.events.append(_Event(now, crossed, transfer))
            plan.last_needed = now

    def forget_node(self, node: str) -> None:
        self.kinds.pop(node, None)
        self.reports.pop(node, None)

    def _bandwidth(self, a: str, b: str, traced: Mapping[tuple[str, str], float]) -> float | None:
        if (a, b) in traced:
            return traced[(a, b)]
        report = self.reports.get(a)
        for link in report.links if report else ():
            if link.to_node == b and link.bandwidth_mbps > 0:
                return link.bandwidth_mbps
        return None

    # -- planning -------------------------------------------------------------------------------

    def plan(self, now: float, stale: frozenset[str] | set[str] = frozenset(), wall: float = 0.0) -> list[str]:
        """Applies the thresholds to every deployable kind; returns the nodes whose plan changed."""
        changed = []
        for node in sorted(self.kinds):
            if node in stale:
                continue
            for kind, plan in sorted(self.kinds[node].items()):
                load, reason = self._judge(node, kind, plan, now)
                if load != plan.load:
                    plan.since, plan.since_wall = now, wall or time.time()
                    # Demand for the next change runs from here: a straggler that crossed while it
                    # was loaded (a task of a stream gone, the node's processor still loading) is
                    # not a run of settle_s that reloads it the moment it is unloaded.
                    plan.crossing_since = None
                    log.info("deployment changed", node=node, kind=kind, load=load, reason=reason)
                    if node not in changed:
                        changed.append(node)
                plan.load, plan.reason = load, reason
        return changed

    def _judge(self, node: str, kind: str, plan: KindPlan, now: float) -> tuple[bool, str]:
        """Whether the kind should be loaded on the node, and why, in words."""
        settings = self.settings
        while plan.events and plan.events[0].at < now - settings.window_s:
            plan.events.popleft()
        window = settings.window_s
        if plan.events:  # since the first task kept, and one gap between tasks before it
            events = plan.events
            gap = (events[-1].at - events[0].at) / (len(events) - 1) if len(events) > 1 else 1.0
            window = min(window, max(now - events[0].at + gap, 1.0))
        crossed_bits = sum(event.crossed_bits for event in plan.events)
        uplink_share = sum(event.transfer_s for event in plan.events) / window
        plan.uplink_mbps = crossed_bits / window / 1e6
        plan.tasks_per_s = len(plan.events) / window
        if plan.load:
            idle_s = now - max(plan.last_needed or 0.0, plan.since)
            held_s = now - plan.since
            if idle_s >= settings.idle_after_s and held_s >= settings.min_hold_s:
                return False, f"idle: no task of {node}'s streams needed it for {idle_s:.0f} s"
            return True, plan.reason
        if plan.crossing_since is None or not plan.events:
            if not plan.events or plan.events[-1].at < plan.since:  # nothing new since the last change
                return False, plan.reason
            if plan.events:
                return False, f"its streams' {plan.tasks_per_s:.2f} tasks/s ran it on {node}, or not at all"
            return False, "no task of its streams needed it lately" if plan.last_needed else "no task needed it yet"
        crossing_s = now - plan.crossing_since
        if crossing_s < settings.settle_s:
            settling = f"settles after {settings.settle_s:g} s"
            return False, f"{plan.uplink_mbps:.2f} Mbit/s over the uplink for {crossing_s:.0f} s ({settling})"
        load_s = plan.load_s or settings.default_load_s
        saved_s = uplink_share * settings.horizon_s
        known = any(event.transfer_s for event in plan.events)
        if known and saved_s <= load_s:
            return False, (
                f"not worth a load: {plan.uplink_mbps:.2f} Mbit/s takes {uplink_share:.1%} of the uplink, "
                f"{saved_s:.1f} s over {settings.horizon_s:g} s, under a {load_s:.1f} s load"
            )
        report = self.reports.get(node)
        free = report.memory_total_bytes - report.memory_used_bytes if report else 0
        needed = int(plan.model_bytes * settings.memory_margin)
        if report is None or (report.memory_total_bytes and free < needed):
            return False, f"memory: it needs {needed / MIB:.0f} MiB free, {node} has {free / MIB:.0f} MiB"
        gain = f"{uplink_share:.1%} of the uplink, {saved_s:.1f} s over {settings.horizon_s:g} s"
        gain = gain if known else "uplink bandwidth unknown"
        return True, (
            f"its streams send {plan.uplink_mbps:.2f} Mbit/s over the uplink for it ({gain}; load {load_s:.1f} s, "
            f"{plan.model_bytes / MIB:.0f} MiB)"
        )

    # -- outputs --------------------------------------------------------------------------------

    def unloaded(self, node: str, kind: str) -> bool:
        """Whether the plan holds the kind unloaded on the node (false for a kind it does not manage)."""
        plan = self.kinds.get(node, {}).get(kind)
        return plan is not None and not plan.load

    def deployment(
        self, spec: decision_pb2.StreamSpec, resources: Mapping[str, resources_pb2.NodeResources]
    ) -> dict[str, decision_pb2.NodeList]:
        """Stage -> nodes hosting its kind, of the stream's own node and the cloud: those whose fresh
        report has the kind runnable (in its queues) and whose plan does not unload it."""
        nodes = [spec.node] if spec.node == self.cloud_node else [spec.node, self.cloud_node]
        found = {}
        for stage in spec.pipeline.stages:
            kind = stage.processor
            hosting = [
                node
                for node in nodes
                if node in resources and kind in resources[node].queue_lengths and not self.unloaded(node, kind)
            ]
            if hosting:
                found[stage.name] = decision_pb2.NodeList(nodes=hosting)
        return found

    def node_plans(self, only: str = "") -> list[scheduler_pb2.NodeDeployment]:
        """The plan, as GetDeploymentPlan answers it."""
        out = []
        for node in sorted(self.kinds) if not only else [only] if only in self.kinds else []:
            entry = scheduler_pb2.NodeDeployment(node=node)
            for kind, plan in sorted(self.kinds[node].items()):
                entry.kinds.add(
                    kind=kind,
                    load=plan.load,
                    loaded=plan.loaded,
                    reason=plan.reason,
                    since=timestamp(plan.since_wall),
                    uplink_mbps=plan.uplink_mbps,
                    tasks_per_s=plan.tasks_per_s,
                    load_s=plan.load_s,
                    model_bytes=plan.model_bytes,
                )
            out.append(entry)
        return out
