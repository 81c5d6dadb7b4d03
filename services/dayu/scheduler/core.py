"""Per-stream policies, decisions and their watchers, without gRPC.

Every decision carries the core's epoch (its start time in ns): versions count from 1 again after a
restart, and (epoch, version) orders decisions across restarts. Nodes whose monitor stopped
reporting for stale_after_s (on the core's own clock) are stale: policies do not see their figures,
and no published placement puts a stage on them. What the core keeps per stream and node is bounded.

What a record, a span or a node's report costs does not grow with the streams registered: streams are
indexed by the nodes they involve (their own, where their stages run and are planned), so a change on a
node (its CPU, its queues, its staleness, a link's bandwidth) looks at that node's streams only, and a
decision's view of the nodes and links is shared by every stream, not copied into each. A loop that
decides or publishes for many streams lets the event loop run other calls every PACE_S.

A stream unregistered (its generator stopped it) is forgotten, its watchers' streams end, and the
loops over every stream (plans, feedback checks, admission) skip it from then on, even when it goes
in the middle of one; only its last version is remembered, so that a stream registered again under
its id goes on with newer versions (generators keep a decision only when it is newer than theirs)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import statistics
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from dayu.runtime.clock import timestamp
from dayu.runtime.errors import InvalidArgument, NotFound, ResourceExhausted
from dayu.runtime.logs import get_logger
from dayu.runtime.metrics import Meter
from dayu.runtime.paging import next_token, page
from dayu.runtime.registry import Registry
from dayu.runtime.validation import require_id, validate_stream_spec
from dayu.scheduler.deployment import DeploymentPlanner, DeploymentSettings
from dayu.scheduler.knobs import configuration, resolutions
from dayu.scheduler.policies import POLICIES, Needs, Policy, StreamView
from dayu.scheduler.shares import Resource, Shares
from dayu.scheduler.traces import HopLatencies, TaskTraces, spans_of
from dayu.v1 import decision_pb2, resources_pb2, scheduler_pb2, task_pb2

RECENT_RECORDS = 64
LINK_CHANGE = 0.1  # a link's traced bandwidth moving by more than this share is news to its streams
PROBE_CHANGE = 0.5  # a monitor's probes are noisier than transfers: a move by half is news
DECISION_TIMES = 1000
DECISION_HISTORY = 32  # decisions kept per stream for GetSchedulerStats (what was decided, and why)
MAX_STREAMS = 4096  # registered streams; a new one past this is refused (which bounds its metrics' `stream` label)
STATS_BYTES = 32 * 1024 * 1024  # GetSchedulerStats: streams past this many bytes of figures are left out
MAX_NODES = 1024  # nodes reporting resources; a new one past this is refused (forgetting a stale one would trust it)
SHARES_REFRESH_S = 1.0  # a shared resource's shares follow changed needs within this long
PROCESSOR_BUSY = 0.8  # a processor shared by streams is divided up to this share of its workers' time
PACE_S = 0.01  # a loop over many streams lets the event loop run other calls this often

log = get_logger(__name__)
T = TypeVar("T")


async def _paced(items: Iterable[T]) -> AsyncIterator[T]:
    """The items, letting the event loop run other calls every PACE_S: a loop that decides or
    publishes for thousands of streams must not hold up every other call until it ends."""
    resume_at = time.perf_counter() + PACE_S
    for item in items:
        if time.perf_counter() >= resume_at:
            await asyncio.sleep(0)
            resume_at = time.perf_counter() + PACE_S
        yield item


def _refile(index: dict[str, dict[str, None]], stream_id: str, before: Collection[str], after: Collection[str]) -> None:
    """Moves a stream in an index by node from the nodes `before` to those `after`."""
    for node in before:
        if node not in after:
            streams = index[node]
            del streams[stream_id]
            if not streams:
                del index[node]
    for node in after:
        if node not in before:
            index.setdefault(node, {})[stream_id] = None


def _kept(record: task_pb2.TaskRecord) -> task_pb2.TaskRecord:
    """What is kept of a record: a message of its own (a part of a request keeps all of the request
    alive), without its segment and its stages' detections (most of its bytes, up to megabytes, which
    no policy reads)."""
    kept, task = task_pb2.TaskRecord(), record.task
    if not task.HasField("segment") and not any(stage.results for stage in task.dag.stages):
        kept.CopyFrom(record)
        return kept
    _copy_except(record, kept, ("task",))
    _copy_except(task, kept.task, ("segment", "dag"))
    _copy_except(task.dag, kept.task.dag, ("stages",))
    for stage in task.dag.stages:
        _copy_except(stage, kept.task.dag.stages.add(), ("results",))
    return kept


def _copy_except(source: Message, target: Message, left_out: Collection[str]) -> None:
    """Sets the fields of `target` as they are in `source`, but those `left_out`: a field cleared in a
    copy still takes its memory (the copy's arena keeps it), one never copied does not."""
    for descriptor, value in source.ListFields():
        if descriptor.name in left_out:
            continue
        if descriptor.message_type is not None or descriptor.is_repeated:
            getattr(target, descriptor.name).MergeFrom(value)
        else:
            setattr(target, descriptor.name, value)


def build_policy(spec: decision_pb2.PolicySpec, field: str, registry: Registry[type[Policy]] = POLICIES) -> Policy:
    """A policy from its name and its parameters (a Struct: JSON's values, numbers as floats, which the
    policy's parameter model takes as the integers they stand for)."""
    try:
        params = json_format.MessageToDict(spec.params) if spec.HasField("params") else {}
    except ValueError:  # a Struct holds any double; JSON, and so parameters, no NaN or infinity
        raise InvalidArgument(f"{field}.params", "numbers JSON can hold, got NaN or an infinity") from None
    return registry.create(spec.name, params, name_field=f"{field}.name", params_field=f"{field}.params")  # type: ignore[no-any-return]


@dataclass
class _Stream:
    view: StreamView
    policy_name: str
    policy: Policy
    last_feedback: float
    decisions: int = 0
    feedback: int = 0
    last_version: int = 0
    decided_at: float = 0.0
    registered: int = 0  # registration order: admission pauses the newest first
    paused_because: str = ""
    in_fallback: bool = False
    link_changed: bool = False  # a link of the stream's node changed bandwidth since its last decision
    shared: frozenset[Resource] = frozenset()  # the shared resources it is filed under (shares.py)
    needs_told_at: float = -math.inf  # when its policy last told what it needs of them
    plan: decision_pb2.Decision | None = None  # the last plan published, before stages were moved off stale nodes
    involved: frozenset[str] = frozenset()  # nodes it is indexed under: its own, its plan's and its placement's
    running_on: frozenset[str] = frozenset()  # the nodes of its placement, while it is not paused
    decision_times: deque[float] = field(default_factory=lambda: deque(maxlen=DECISION_TIMES))
    history: deque[decision_pb2.Decision] = field(default_factory=lambda: deque(maxlen=DECISION_HISTORY))
    registered_at: Timestamp = field(default_factory=timestamp)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


CPU_CHANGE = 0.25  # a node's CPU cores changing by more than this share is a change worth deciding on


def _cores(report: resources_pb2.NodeResources) -> float:
    """The CPU a node may use: its cgroup's limit, else all its cores."""
    return report.cpu_limit_cores or float(report.cpu_count)


@dataclass(frozen=True)
class Admission:
    """When the mesh is overloaded: a node whose processor queues hold more than max_queue tasks
    pauses the newest stream using it; the stream resumes once every node it uses is under
    resume_queue."""

    max_queue: int = 48
    resume_queue: int = 16


class SchedulerCore:
    def __init__(
        self,
        default_policy: decision_pb2.PolicySpec,
        cloud_node: str = "cloud",
        decision_interval_s: float = 0.5,
        admission: Admission = Admission(),
        fallback_after_s: float = 5.0,
        stale_after_s: float = 15.0,
        epoch: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_streams: int | None = None,
        deployment: DeploymentSettings | None = None,
        shared_uplinks: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """`max_streams`: streams registered at most (None: MAX_STREAMS), as many traced; a simulation
        of more streams than a real scheduler should hold raises it. `shared_uplinks`: uplink name ->
        the nodes whose links to the cloud all cross it (a site's one WAN link): their streams share
        its bandwidth together, not each node's streams theirs alone."""
        self.default_policy = default_policy
        self.max_streams = MAX_STREAMS if max_streams is None else max_streams
        self.cloud_node = cloud_node
        self.meter = Meter("scheduler", cloud_node)  # the scheduler runs on the cloud node
        self.decision_interval_s = decision_interval_s
        self.admission = admission
        self.fallback_after_s = fallback_after_s
        self.stale_after_s = stale_after_s
        self.epoch = time.time_ns() if epoch is None else epoch  # this incarnation, stamped on its decisions
        self._clock = clock  # monotonic seconds: feedback, decision intervals, staleness
        self._most_cores: dict[str, float] = {}  # node -> the most CPU it reported (bounded like resources)
        self._registrations = 0
        self._streams: dict[str, _Stream] = {}
        # The last version of each stream unregistered (bounded like the streams): a registration
        # under its id again goes on from there.
        self._forgotten: OrderedDict[str, int] = OrderedDict()
        # Each node's latest report, `stale` set by the core, and when it arrived on the core's clock
        # (never the monitor's measured_at: another machine's clock).
        self.resources: dict[str, resources_pb2.NodeResources] = {}
        self._reported_at: dict[str, float] = {}
        # Kept up to date as reports come and nodes turn stale, and shared by every stream's view: the
        # stale nodes, the reports of the others (what policies see), every node's CPU cores, and the
        # nodes whose queues are over admission.max_queue.
        self._stale_nodes: frozenset[str] = frozenset()
        self._fresh: dict[str, resources_pb2.NodeResources] = {}
        self._cores: dict[str, float] = {}
        self._overloaded: set[str] = set()
        # Streams by node (ids, as ordered sets): by their own node; by every node they involve (their
        # own, their plan's and their placement's); by the nodes of their placement, while not paused.
        self._homes: dict[str, dict[str, None]] = {}
        self._involved: dict[str, dict[str, None]] = {}
        self._running: dict[str, dict[str, None]] = {}
        self._paused: dict[str, None] = {}
        # Streams with link_changed set -> the order it was set in; a heap of them by when each may
        # decide again (decided_at + decision_interval_s: an entry whose order is no longer the
        # stream's is left behind by a decision, and dropped when it comes up); those due but paused
        # or in fallback, looked at on every call. So a call looks at the streams due, not at every
        # stream waiting.
        self._link_changed: dict[str, int] = {}
        self._link_due: list[tuple[float, int, str]] = []
        self._link_blocked: dict[str, int] = {}
        self._link_orders = itertools.count()
        self.hops = HopLatencies(self.max_streams)  # from the spans received over OTLP
        self.traces = TaskTraces()  # the spans of the latest tasks, for their timelines
        self.deployment = DeploymentPlanner(cloud_node, deployment)  # deployable kinds per node (deployment.py)
        self.shares = Shares(clock, SHARES_REFRESH_S)  # the uplinks and processors streams share, and their shares
        self._uplinks = {name: tuple(nodes) for name, nodes in (shared_uplinks or {}).items()}
        self._uplink_of = {node: name for name, nodes in self._uplinks.items() for node in nodes}

    def _stream(self, stream_id: str, field: str = "stream_id") -> _Stream:
        require_id(stream_id, field)
        try:
            return self._streams[stream_id]
        except KeyError:
            raise NotFound(f"stream {stream_id!r} is not registered") from None

    def _registered(self, stream: _Stream) -> bool:
        """Whether the stream is still registered (a loop that waited meanwhile may hold one forgotten)."""
        return self._streams.get(stream.view.spec.stream_id) is stream

    def _check_room(self, stream_id: str) -> None:
        if stream_id not in self._streams and len(self._streams) >= self.max_streams:
            limit = self.max_streams
            raise ResourceExhausted(f"stream.stream_id: {stream_id!r} is new and {limit} streams are registered")

    async def register(self, spec: decision_pb2.StreamSpec) -> decision_pb2.Decision:
        """Registers (or re-registers) a stream and returns its startup decision."""
        validate_stream_spec(spec)
        self._check_room(spec.stream_id)
        policy_spec = spec.policy if spec.policy.name else self.default_policy
        policy = await asyncio.to_thread(build_policy, policy_spec, "stream.policy")  # a large Struct: off the loop
        # What is registered now: other calls may have registered or unregistered it meanwhile.
        self._check_room(spec.stream_id)
        previous = self._streams.get(spec.stream_id)
        view = StreamView(spec, None, self.cloud_node)
        self._registrations += 1
        stream = _Stream(view, policy_spec.name, policy, self._clock(), registered=self._registrations)
        if previous:  # versions, and the history they make, go on from the previous registration
            stream.last_version = previous.last_version
            stream.changed = previous.changed
            stream.history = previous.history
            stream.registered_at = previous.registered_at
            self._unindex(previous)
        else:  # versions go on after an unregistration too, the rest starts over
            stream.last_version = self._forgotten.pop(spec.stream_id, 0)
        self._streams[spec.stream_id] = stream
        self._homes.setdefault(spec.node, {})[spec.stream_id] = None
        return await self._decide(stream, "startup plan")

    async def unregister(self, stream_id: str) -> bool:
        """Forgets a stream: its policy, decisions, history, feedback, hop latencies and admission
        state; its watchers' streams end. False when it was not registered."""
        require_id(stream_id, "stream_id")
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return False
        self._forgotten[stream_id] = stream.last_version
        while len(self._forgotten) > self.max_streams:
            self._forgotten.popitem(last=False)
        self._unindex(stream)
        self.hops.forget(stream_id)
        self.shares.forget(stream_id)
        async with stream.changed:
            stream.changed.notify_all()  # its watchers find it gone and end
        log.info("stream unregistered", stream_id=stream_id, decisions=stream.decisions)
        return True

    def decision(self, stream_id: str) -> decision_pb2.Decision:
        current = self._stream(stream_id).view.current
        assert current is not None  # a registered stream always has its startup decision
        return current

    async def watch(self, stream_id: str) -> AsyncIterator[decision_pb2.Decision]:
        """Yields the stream's current decision, then each newer one as it is made. The current one
        comes first whatever version the caller knows: versions count from 1 again in every epoch, so
        a version of an older epoch says nothing here. Callers keep the greater (epoch, version). Ends
        when the stream is unregistered (a re-registration goes on with the same watchers)."""
        changed = self._stream(stream_id).changed
        last_sent = -1

        def live() -> _Stream | None:
            """The registration watched: gone once unregistered, even if registered anew since."""
            stream = self._streams.get(stream_id)
            return stream if stream is not None and stream.changed is changed else None

        def newer_or_gone() -> bool:
            stream = live()
            if stream is None:
                return True
            current = stream.view.current
            return current is not None and current.version > last_sent

        while True:
            async with changed:
                await changed.wait_for(newer_or_gone)
                stream = live()
                if stream is None:
                    return
                current = stream.view.current
            assert current is not None
            last_sent = current.version
            yield current

    async def set_policy(self, stream_id: str, spec: decision_pb2.PolicySpec) -> decision_pb2.Decision:
        stream = self._stream(stream_id)
        policy = await asyncio.to_thread(build_policy, spec, "policy")  # a large Struct: off the loop
        if not self._registered(stream):
            raise NotFound(f"stream {stream_id!r} was unregistered meanwhile")
        stream.policy = policy
        stream.policy_name = spec.name
        stream.view.current = None  # the new policy starts from its own startup plan
        return await self._decide(stream, f"policy switched to {spec.name}")

    async def feedback(self, record: task_pb2.TaskRecord) -> None:
        """Takes a record, and lets the policy decide again (at most every decision_interval_s)."""
        stream = self._stream(record.task.stream_id, "record.task.stream_id")
        stream.feedback += 1
        stream.last_feedback = self._clock()
        stream.view.recent.append(_kept(record))
        self.deployment.observe(record, stream.view.spec.node, self._clock(), self.hops.bandwidth)
        # The cores of the nodes its stages ran on, the only ones Feedback looks at (not every node's).
        nodes = {stage.executed_on for stage in record.task.dag.stages}
        stream.view.recent_cpu_cores.append({node: self._cores[node] for node in nodes if node in self._cores})
        stream.view.arrived_since_decision += 1
        current = stream.view.current
        if current is not None and record.task.decision_version == current.version:
            stream.view.arrived_made_under_current += 1
        del stream.view.recent[:-RECENT_RECORDS]
        del stream.view.recent_cpu_cores[:-RECENT_RECORDS]
        if stream.in_fallback:  # feedback is back: the policy starts over from its own plan
            stream.in_fallback = False
            stream.view.current = None
            await self._decide(stream, "feedback resumed")
        elif self._clock() - stream.decided_at >= self.decision_interval_s and not stream.paused_because:
            await self._decide(stream, "feedback")

    async def receive_spans(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        """Takes spans exported over OTLP. When a link's bandwidth in them changes, the streams on
        its nodes are decided again (at most every decision_interval_s) before the tasks that crossed
        the link come back."""
        spans = list(spans_of(request))
        ignored = self.hops.add_spans(spans)
        self.meter.spans_received(len(spans) - ignored, ignored)
        self.traces.add_spans(spans)
        await self._after_link_rates(self.hops.moved_links(), "traces")

    def task_trace(self, root_id: str) -> list[scheduler_pb2.TaskSpan]:
        """The spans kept of a task, by start time."""
        require_id(root_id, "root_id")
        spans = self.traces.spans(root_id)
        if not spans:
            raise NotFound(
                f"no span of task {root_id!r} is kept (the scheduler keeps the spans of its latest "
                f"{self.traces.max_tasks} tasks only)"
            )
        return spans

    async def _after_link_rates(self, moved: Mapping[tuple[str, str], float | None], why: str) -> None:
        """Decides again for the streams on the nodes of each link whose bandwidth moved from what
        `moved` says it was (HopLatencies.moved_links), on all the nodes behind a shared uplink whose
        capacity moved (their shares of it follow), and for those still to decide on an earlier move
        (it came within decision_interval_s of their last decision)."""
        now = self.hops.bandwidth
        changed = {
            node
            for link, was in moved.items()
            if link in now and (was is None or abs(now[link] - was) > LINK_CHANGE * was)
            for node in link
        }
        for name in {self._uplink_of[node] for node in changed if node in self._uplink_of}:
            # The shares of a shared uplink follow its capacity (the most its nodes measure): when that
            # moved, every node behind it decides again, else only those whose own link moved.
            links = [(node, self.cloud_node) for node in self._uplinks[name]]
            before = max((moved[link] if link in moved else now.get(link)) or 0.0 for link in links)
            if abs(max(now.get(link, 0.0) for link in links) - before) > LINK_CHANGE * before:
                changed.update(self._uplinks[name])
        for node in changed:
            for stream_id in self._homes.get(node, ()):
                stream = self._streams[stream_id]
                stream.link_changed = True
                if stream_id not in self._link_changed:
                    order = self._link_changed[stream_id] = next(self._link_orders)
                    due_at = stream.decided_at + self.decision_interval_s
                    heapq.heappush(self._link_due, (due_at, order, stream_id))
        async for stream_id in _paced(self._due_for_links()):
            stream = self._streams.get(stream_id)
            order = self._link_changed.get(stream_id)
            if stream is None or not stream.link_changed or order is None:
                continue
            if self._clock() - stream.decided_at < self.decision_interval_s:  # not quite (rounding)
                heapq.heappush(self._link_due, (stream.decided_at + self.decision_interval_s, order, stream_id))
            elif stream.paused_because or stream.in_fallback:
                self._link_blocked[stream_id] = order
            else:
                await self._decide(stream, why)

    def _due_for_links(self) -> list[str]:
        """The streams of _link_changed that may decide again now, in the order their links moved."""
        due = {
            stream_id: order
            for stream_id, order in self._link_blocked.items()
            if self._link_changed.get(stream_id) == order
        }
        self._link_blocked.clear()
        now = self._clock()
        while self._link_due and self._link_due[0][0] <= now + 1e-9:
            _, order, stream_id = heapq.heappop(self._link_due)
            if self._link_changed.get(stream_id) == order:
                due[stream_id] = order
        return sorted(due, key=due.__getitem__)

    async def report_resources(self, report: resources_pb2.NodeResources) -> None:
        """Takes a node's report; a stale node that reports again is trusted again, and the stages
        moved off it go back where their plans put them."""
        require_id(report.node, "node")
        previous = self.resources.get(report.node)
        if previous is None and len(self.resources) >= MAX_NODES:
            raise ResourceExhausted(f"node: {report.node!r} is new and {MAX_NODES} nodes report already")
        report.stale = False  # the scheduler's judgement, not the monitor's
        self.resources[report.node] = self._fresh[report.node] = report
        self._cores[report.node] = _cores(report)
        self._most_cores[report.node] = max(self._most_cores.get(report.node, 0.0), _cores(report))
        self._reported_at[report.node] = self._clock()
        if self.deployment.report(report, self._clock()):  # a kind loaded or unloaded there
            await self.deployment_changed(report.node, f"deployment on {report.node} applied")
        if self._queued(report.node) > self.admission.max_queue:
            self._overloaded.add(report.node)
        else:
            self._overloaded.discard(report.node)
        if previous is not None and previous.stale:
            self._stale_nodes -= {report.node}
            log.info("node reporting again: trusted again", node=report.node)
            await self._follow_plans({report.node}, f"{report.node} reporting again")
        elif previous is not None and abs(_cores(report) - _cores(previous)) > CPU_CHANGE * _cores(previous):
            await self._cpu_changed(report.node, _cores(previous), _cores(report))
        if previous is not None:
            await self._probed(previous, report)
        await self._admit({report.node})

    async def _probed(self, previous: resources_pb2.NodeResources, report: resources_pb2.NodeResources) -> None:
        """A link whose probe moved by more than PROBE_CHANGE since the node's last report (or that it
        reports for the first time) counts as a transfer at the new rate, as a task's would: a collapse
        is acted on before the slow tasks' spans come (which a collapsed link holds back too), and a
        stream that started before its uplink was measured fits its start to it."""
        before = {link.to_node: link.bandwidth_mbps for link in previous.links}

        def moved_much(link: resources_pb2.LinkBandwidth) -> bool:  # or measured for the first time
            was = before.get(link.to_node)
            return was is None or (was > 0 and abs(link.bandwidth_mbps - was) > PROBE_CHANGE * was)

        moved = [link for link in report.links if moved_much(link)]
        if not moved:
            return
        for link in moved:
            self.hops.add_link_rate((link.from_node or report.node, link.to_node), link.bandwidth_mbps)
        await self._after_link_rates(self.hops.moved_links(), "probes")

    def _cpu_cut(self, node: str, reported_since: float) -> bool:
        """Whether the node reported since then with less CPU than it has had."""
        report = self.resources.get(node)
        if report is None or self._reported_at[node] < reported_since:
            return False
        return _cores(report) < (1 - CPU_CHANGE) * self._most_cores.get(node, 0.0)

    async def _cpu_changed(self, node: str, before: float, now: float) -> None:
        """A node's CPU was cut or restored (its cgroup's quota, live): the streams with stages there
        are decided again at once, their processing there scaled by the change (StreamView)."""
        log.info("node CPU changed", node=node, cores_before=before, cores_now=now)
        async for stream_id in _paced(list(self._running.get(node, ()))):
            stream = self._streams.get(stream_id)
            if stream is None:
                continue
            current = stream.view.current
            placed = set(current.placement.values()) if current else {stream.view.spec.node}
            if self._registered(stream) and node in placed and not stream.paused_because and not stream.in_fallback:
                await self._decide(stream, f"{node} CPU {before:g} -> {now:g} cores")

    async def check_nodes(self) -> None:
        """Marks the nodes whose monitor has not reported for stale_after_s stale (once: until they
        report again), and moves the stages placed on them elsewhere."""
        now = self._clock()
        silent = sorted(
            node
            for node, report in self.resources.items()
            if not report.stale and now - self._reported_at[node] > self.stale_after_s
        )
        for node in silent:
            self.resources[node].stale = True
            del self._fresh[node]
            self._overloaded.discard(node)  # its queues are old news
            silent_s = round(now - self._reported_at[node], 1)
            log.warning("node stale: its monitor stopped reporting", node=node, silent_s=silent_s)
        if silent:
            self._stale_nodes |= set(silent)
            await self._follow_plans(set(silent), f"no report from {', '.join(silent)} for {self.stale_after_s:g} s")
            await self._admit(silent)

    def _stale(self) -> frozenset[str]:
        return self._stale_nodes

    def _queued(self, node: str) -> int:
        """Tasks queued on the node; none known when it is stale (its figures are old)."""
        report = self.resources.get(node)
        return sum(report.queue_lengths.values()) if report and not report.stale else 0

    def _off_stale(self, placement: Mapping[str, str], home: str) -> tuple[dict[str, str], str]:
        """The placement with the stages on stale nodes moved to the cloud node (the controllers'
        own fallback), or to the stream's node when the cloud is stale too (left where they are
        when both are), and what moved, for the decision's reason."""
        stale = self._stale()
        placed = dict(placement)
        refuge = next((node for node in (self.cloud_node, home) if node not in stale), None)
        moved = [stage for stage, node in placed.items() if node in stale] if refuge else []
        if not moved:
            return placed, ""
        nodes = ", ".join(sorted({placed[stage] for stage in moved}))
        placed.update(dict.fromkeys(moved, refuge))
        return placed, f" (stale {nodes}: {', '.join(moved)} on {refuge})"

    async def _follow_plans(self, flipped: set[str], why: str) -> None:
        """Publishes again each plan whose placement changes with the nodes that are stale now, after
        the nodes `flipped` turned stale or fresh. Only streams involving them can change: a plan's
        placement moves with its own nodes, and with the cloud and the stream's node (where stages on
        stale nodes go), when it has a stage on a stale node."""
        nodes = flipped | self._stale_nodes if self.cloud_node in flipped else flipped
        candidates = dict.fromkeys(stream_id for node in nodes for stream_id in self._involved.get(node, ()))
        async for stream_id in _paced(candidates):
            stream = self._streams.get(stream_id)
            if stream is None:
                continue
            current, plan = stream.view.current, stream.plan
            if current is None or plan is None:
                continue
            if self._off_stale(plan.placement, stream.view.spec.node)[0] != dict(current.placement):
                await self._publish(stream, plan, why)

    async def _admit(self, nodes: Collection[str]) -> None:
        """Pauses the newest stream on each overloaded node of `nodes` (those whose queues changed: a
        report, a node turned stale); resumes the paused streams involving them whose nodes all
        recovered. Only those: the others' figures did not change, and a report costs the streams of
        its node, not every stream."""
        involved = [self._involved.get(node, {}) for node in nodes]
        candidates = {
            stream_id
            for streams in involved
            for stream_id in (streams if len(streams) < len(self._paused) else self._paused)
            if stream_id in self._paused and stream_id in streams
        }
        paused = sorted((self._streams[stream_id] for stream_id in candidates), key=lambda s: s.registered)
        async for stream in _paced(paused):
            if not self._registered(stream):
                continue
            nodes = set(stream.view.current.placement.values()) if stream.view.current else set()
            if stream.paused_because and all(self._queued(n) < self.admission.resume_queue for n in nodes):
                self._pause(stream, "")
                await self._publish(stream, stream.plan, "admission: queues drained, stream resumed")
        for node in sorted(self._overloaded.intersection(nodes)):
            queued = self._queued(node)
            if queued <= self.admission.max_queue:
                continue
            running = [
                s
                for s in (self._streams[stream_id] for stream_id in self._running.get(node, ()))
                if not s.paused_because and s.view.current and node in s.view.current.placement.values()
            ]
            if running:
                newest = max(running, key=lambda s: s.registered)
                self._pause(newest, f"{queued} tasks queued on {node} (over {self.admission.max_queue})")
                await self._publish(newest, newest.plan, f"admission: paused, {newest.paused_because}")

    def _pause(self, stream: _Stream, because: str) -> None:
        """Pauses the stream (resumes it when `because` is empty)."""
        stream.paused_because = because
        self._reindex(stream)

    def _reindex(self, stream: _Stream) -> None:
        """Files the stream under the nodes it involves now: its own, its plan's and its placement's."""
        if not self._registered(stream):  # unregistered (or registered anew) while it was published
            return
        stream_id, current, plan = stream.view.spec.stream_id, stream.view.current, stream.plan
        placed = frozenset(current.placement.values()) if current else frozenset()
        involved = placed | frozenset(plan.placement.values() if plan else ()) | {stream.view.spec.node}
        running = frozenset() if stream.paused_because else placed
        _refile(self._involved, stream_id, stream.involved, involved)
        _refile(self._running, stream_id, stream.running_on, running)
        stream.involved, stream.running_on = involved, running
        if stream.paused_because:
            self._paused[stream_id] = None
        else:
            self._paused.pop(stream_id, None)

    def _unindex(self, stream: _Stream) -> None:
        """Takes a stream (unregistered, or registered anew) out of every index."""
        stream_id = stream.view.spec.stream_id
        _refile(self._homes, stream_id, (stream.view.spec.node,), ())
        _refile(self._involved, stream_id, stream.involved, ())
        _refile(self._running, stream_id, stream.running_on, ())
        stream.involved = stream.running_on = frozenset()
        self._paused.pop(stream_id, None)
        self._link_changed.pop(stream_id, None)

    async def check_feedback(self) -> None:
        """Switches running streams whose feedback stopped to the fallback plan: every stage on the
        stream's own node, a lighter configuration, until feedback comes back (what an edge cut off
        from the cloud, or behind a collapsed uplink, can still do). Not when the node still reports
        with its CPU cut: its tasks are slow there, the policy moves work off it, and a fallback
        onto it would undo that."""
        now = self._clock()
        async for stream in _paced(list(self._streams.values())):  # a copy: streams come and go while it publishes
            silent_s = now - stream.last_feedback
            if not self._registered(stream) or stream.paused_because or stream.in_fallback:
                continue
            if silent_s < self._feedback_patience(stream):
                continue
            if self._cpu_cut(stream.view.spec.node, now - silent_s / 2):
                continue
            stream.in_fallback = True
            spec = stream.view.spec
            best = spec.max_configuration
            ladder = resolutions(best.resolution)
            plan = decision_pb2.Decision(
                configuration=configuration(best, ladder[min(2, len(ladder) - 1)], max(1.0, best.fps / 2)),
                placement={stage.name: spec.node for stage in spec.pipeline.stages},
            )
            await self._publish(stream, plan, f"fallback: no feedback for {silent_s:.1f} s")

    def _feedback_patience(self, stream: _Stream) -> float:
        """How long a stream may go without feedback: fallback_after_s, or three of its segments and
        its budget where those are longer (a slow stream's records come seldom)."""
        current = stream.view.current
        config = current.configuration if current else stream.view.spec.max_configuration
        segment_s = config.frames_per_segment / config.fps if config.fps else 0.0
        return max(self.fallback_after_s, 3 * segment_s + stream.view.spec.latency_budget_s)

    async def _publish(self, stream: _Stream, plan: decision_pb2.Decision | None, reason: str) -> decision_pb2.Decision:
        """A new version of the stream's decision: the plan's configuration and placement (no stage
        on a stale node), the pause flag from admission control, the core's epoch."""
        assert plan is not None
        stream.plan = plan
        placement, moved = self._off_stale(plan.placement, stream.view.spec.node)
        stream.last_version += 1
        decision = decision_pb2.Decision(
            stream_id=stream.view.spec.stream_id,
            version=stream.last_version,
            epoch=self.epoch,
            configuration=plan.configuration,
            placement=placement,
            reason=reason + moved,
            policy=stream.policy_name,
            made_at=timestamp(),
            decision_time_s=plan.decision_time_s,
            paused=bool(stream.paused_because),
            deployment=self.deployment.deployment(stream.view.spec, self._fresh),
        )
        stream.decisions += 1
        self.meter.decision(decision)
        stream.history.append(decision)
        stream.view.arrived_since_decision = stream.view.arrived_made_under_current = 0
        async with stream.changed:
            stream.view.current = decision
            stream.changed.notify_all()
        self._reindex(stream)
        self._note_needs(stream)
        return decision

    def _uplink(self, node: str) -> Resource:
        """The resource a node's tasks to the cloud share: the shared uplink it is behind, else its link."""
        name = self._uplink_of.get(node)
        return ("link", node, self.cloud_node) if name is None else ("uplink", name)

    def _shared(self, stream: _Stream) -> dict[Resource, str]:
        """What the stream uses under its current decision that other streams may use too: the link
        to the cloud its frames go over (`_uplink`, if any) and the processor of each of its
        stages (("processor", node, kind)); with, for a processor, the stage on it (the first: a second
        stage of the same kind on the same node is not counted, which no shipped pipeline has)."""
        spec, current = stream.view.spec, stream.view.current
        if current is None or stream.paused_because:
            return {}
        used: dict[Resource, str] = {}
        if spec.node != self.cloud_node and self.cloud_node in current.placement.values():
            used[self._uplink(spec.node)] = ""
        for stage in spec.pipeline.stages:
            node = current.placement.get(stage.name, spec.node)
            used.setdefault(("processor", node, stage.processor), stage.name)
        return used

    def _note_needs(self, stream: _Stream) -> None:
        """Files the stream under what it shares, with what its policy says it needs of each (asked
        only when another stream uses one of them: alone, a stream has it all). A need it cannot tell
        (no task made under a new decision is back yet) leaves the last one it told. Its policy is
        asked at most every SHARES_REFRESH_S while it uses the same resources: the shares follow
        needs no faster (a processor thousands of streams use would otherwise cost a search a
        decision for each)."""
        stream_id, used = stream.view.spec.stream_id, self._shared(stream)
        now = self._clock()
        if stream.shared == used.keys() and now - stream.needs_told_at < SHARES_REFRESH_S:
            return
        stream.shared = frozenset(used)
        needs: dict[Resource, float | None] = dict.fromkeys(used)
        if any(self.shares.others(stream_id, resource) for resource in used):
            stream.needs_told_at = now
            ask = getattr(stream.policy, "needs", None)
            told: Needs = ask(stream.view) if ask is not None else stream.view.needs_now()
            for resource, stage in used.items():
                need = told.loads.get(stage) if stage else told.uplink_mbps
                needs[resource] = self.shares.on(resource).get(stream_id) if need is None else need
        self.shares.set_needs(stream_id, needs)

    def _capacity(self, stream: _Stream, resource: Resource) -> float | None:
        """A shared resource's capacity: a link's bandwidth (Mbit/s; a shared uplink's, the most any
        node behind it measured), a processor's workers' time at most PROCESSOR_BUSY busy (seconds a
        second); None when unknown."""
        if resource[0] == "uplink":  # what the nodes behind it measured: the most, the others' being shared
            measured = [stream.view.bandwidth_mbps(node, self.cloud_node) for node in self._uplinks[resource[1]]]
            return max((mbps for mbps in measured if mbps is not None), default=None)
        what, node, other = resource
        if what == "link":
            return stream.view.bandwidth_mbps(node, other)
        report = self._fresh.get(node)
        return PROCESSOR_BUSY * ((report.workers.get(other) if report else 0) or 1)

    def _share_views(self, stream: _Stream) -> None:
        """Tells the stream's view its shares of what other streams use too."""
        view, stream_id = stream.view, stream.view.spec.stream_id
        view.uplink_share_mbps, loads = None, {}
        link = self._uplink(view.spec.node)
        if self.shares.others(stream_id, link) and (capacity := self._capacity(stream, link)) is not None:
            view.uplink_share_mbps = self.shares.share(stream_id, link, capacity)
        for resource, stage in self._shared(stream).items():
            if stage and self.shares.others(stream_id, resource) and (capacity := self._capacity(stream, resource)):
                loads[stage] = self.shares.share(stream_id, resource, capacity)
        view.load_shares = loads

    async def check_deployment(self) -> None:
        """Plans which deployable kinds each node holds loaded (deployment.py)."""
        for node in self.deployment.plan(self._clock(), self._stale_nodes):
            await self.deployment_changed(node, f"deployment on {node} planned")

    async def deployment_changed(self, node: str, why: str) -> None:
        """The streams of `node` are decided again (their policies see what runs there now) and their
        decisions carry the new deployment."""
        async for stream_id in _paced(list(self._homes.get(node, ()))):
            stream = self._streams.get(stream_id)
            if stream is None or stream.view.current is None or stream.plan is None:
                continue
            version = stream.view.current.version
            if not stream.paused_because and not stream.in_fallback:
                await self._decide(stream, why)
            if self._registered(stream) and stream.view.current.version == version:
                await self._publish(stream, stream.plan, why)

    async def _decide(self, stream: _Stream, why: str) -> decision_pb2.Decision:
        """Asks the policy; publishes a new version when it proposes something. Returns the current."""
        # The one place policies get node figures: stale nodes' are old, so they are left out. The
        # mappings are the core's own, kept current and shared by every view (policies only read them).
        stream.view.resources = self._fresh
        stream.view.stale = self._stale_nodes
        stream.view.hops = self.hops.of(stream.view.spec.stream_id)
        stream.view.traced_bandwidth = self.hops.bandwidth
        stream.view.cpu_cores = self._cores
        self._share_views(stream)
        stream.link_changed = False
        self._link_changed.pop(stream.view.spec.stream_id, None)
        started = time.perf_counter()
        proposal = stream.policy.decide(stream.view)
        elapsed = time.perf_counter() - started
        stream.decision_times.append(elapsed)
        self.meter.decision_time(stream.policy_name, elapsed)
        stream.decided_at = self._clock()
        if proposal is None:
            assert stream.view.current is not None, "a policy must propose a startup plan"
            self._note_needs(stream)  # what it needs may have moved with the feedback
            return stream.view.current
        made = decision_pb2.Decision(
            configuration=proposal.configuration, placement=proposal.placement, decision_time_s=elapsed
        )
        return await self._publish(stream, made, f"{why}: {proposal.reason}")

    def stats(
        self, only: str = "", page_size: int = 0, page_token: str = "", budget_bytes: int = STATS_BYTES
    ) -> tuple[list[scheduler_pb2.StreamSchedulingStats], str]:
        """A page of the streams' figures (or `only` this one's), in stream id order, ended early when
        the next would pass budget_bytes; and the next page's token ("" at the end)."""
        if only:
            self._stream(only, "stream_id")  # NOT_FOUND for a stream never registered
        chosen, token = page([only] if only else sorted(self._streams), str, page_size, page_token)
        out: list[scheduler_pb2.StreamSchedulingStats] = []
        size = 0
        for stream_id in chosen:
            stream = self._streams[stream_id]
            times = sorted(stream.decision_times)
            stats = scheduler_pb2.StreamSchedulingStats(
                stream_id=stream_id,
                policy=stream.policy_name,
                decisions=stream.decisions,
                decision_time_p50_s=statistics.median(times) if times else 0.0,
                decision_time_p95_s=times[min(len(times) - 1, int(0.95 * len(times)))] if times else 0.0,
                feedback_received=stream.feedback,
                current=stream.view.current,
                hop_latencies=self.hops.stats(stream_id),
                history=list(stream.history),
                registered_at=stream.registered_at,
            )
            size += stats.ByteSize()
            if out and size > budget_bytes:
                return out, next_token(out[-1].stream_id)  # the rest on the next page
            out.append(stats)
        return out, token
