"""Routing of tasks through their DAG, without gRPC servers: run a ready stage on a local processor,
or forward the task to the controller of the node its placement names; fork at branches, join at
merges, deliver finished tasks to the distributor, and record every task given up on, with why.

Forks and joins. A task whose next ready stages are several is copied, one copy per stage (new
task id, same root id, `branch` naming the stage). A copy goes on as long as it can on its own;
when the next stage needs the results of other copies (a join), or when nothing is left for it,
it goes to the controller of the node running that join stage (for the end of the DAG, the cloud
node's), which merges the copies by root id and goes on once all parents are done. A join that
waits longer than the timeout records the task as dropped.

Decisions. The controller follows the scheduler's decisions of the streams it routes: a task made
under an older decision that has not left its source node yet has its pending stages placed by
the newest one, so a new placement also applies to tasks already made. (Only there: a stage that
another node ran or fell back from must not be sent back and forth.)

Traces. Routing on this node, each link transfer and each join wait are spans of the task's trace;
processors and peers continue it through gRPC metadata."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry import trace

from dayu.controller.links import Link, NotSent
from dayu.runtime.clock import timestamp
from dayu.runtime.errors import InvalidArgument, RemoteError, Unavailable
from dayu.runtime.logs import get_logger
from dayu.runtime.tracing import BYTES, DELAY, NO_TRACING, TO_NODE, Tracing, task_attributes
from dayu.runtime.validation import validate_task
from dayu.v1 import decision_pb2, resources_pb2, task_pb2

log = get_logger(__name__)

PENDING, DONE, FAILED = task_pb2.STAGE_STATE_PENDING, task_pb2.STAGE_STATE_DONE, task_pb2.STAGE_STATE_FAILED
END_OF_DAG = ""  # join key of the final merge of a forked task
DEFAULT_PROBE_BYTES, MIN_PROBE_BYTES, MAX_PROBE_BYTES = 64 * 1024, 1024, 16 * 1024 * 1024


class Dropped(Exception):
    """The task cannot go on; the message is the reason recorded with it."""


class Transport(Protocol):
    """How the controller reaches the rest of the mesh. Failures raise RemoteError."""

    async def process(self, kind: str, task: task_pb2.Task, stage: str) -> task_pb2.Task:
        """Runs `stage` of `task` on this node's processor of `kind`."""

    async def forward(self, node: str, task: task_pb2.Task) -> None:
        """Submits the task to the controller of `node`."""

    async def deliver(self, task: task_pb2.Task) -> None: ...

    async def probe(self, node: str, nbytes: int) -> None:
        """Sends nbytes of probe payload to the controller of `node`."""

    async def record_drop(self, task: task_pb2.Task, reason: str) -> None: ...


@dataclass
class _Join:
    merged: task_pb2.Task
    timer: asyncio.TimerHandle
    span: trace.Span
    arrived: int = 1


@dataclass
class RoutingStats:
    routed: int = 0
    delivered: int = 0
    dropped: int = 0
    forks: int = 0
    joins: int = 0
    replaced: int = 0  # tasks whose pending stages a newer decision placed again
    drop_reasons: dict[str, int] = field(default_factory=dict)


def _stage_map(task: task_pb2.Task) -> dict[str, task_pb2.TaskStage]:
    return {s.spec.name: s for s in task.dag.stages}


def _in_scope(task: task_pb2.Task, stage: task_pb2.TaskStage) -> bool:
    """A copy's scope: the stages it was forked for or has run (its branch) and their children. The
    original task (no branch) has the whole DAG."""
    return not task.branch or stage.spec.name in task.branch or any(p in task.branch for p in stage.spec.parents)


def ready_stages(task: task_pb2.Task) -> list[task_pb2.TaskStage]:
    """Pending stages of this copy whose parents are all done, in DAG order."""
    stages = _stage_map(task)
    return [
        s
        for s in task.dag.stages
        if s.state == PENDING and all(stages[p].state == DONE for p in s.spec.parents) and _in_scope(task, s)
    ]


def join_stage(task: task_pb2.Task) -> task_pb2.TaskStage | None:
    """For a copy that cannot go on: the first pending stage that waits on a stage of its branch."""
    for stage in task.dag.stages:
        if stage.state == PENDING and any(p in task.branch for p in stage.spec.parents):
            return stage
    return None


def merge_into(merged: task_pb2.Task, copy: task_pb2.Task) -> None:
    """Takes the stages that `copy` finished, its branch and its hops into `merged`."""
    stages = _stage_map(merged)
    for stage in copy.dag.stages:
        if stage.state != PENDING and stages[stage.spec.name].state == PENDING:
            stages[stage.spec.name].CopyFrom(stage)
    merged.branch.extend(b for b in copy.branch if b not in merged.branch)
    merged.hops.extend(copy.hops)


class ControllerCore:
    def __init__(
        self,
        node: str,
        cloud_node: str,
        nodes: set[str],
        local_kinds: set[str],
        links: Mapping[str, Link],
        transport: Transport,
        join_timeout_s: float = 10.0,
        late_factor: float = 0.0,
        tracing: Tracing = NO_TRACING,
        on_new_stream: Callable[[str], None] = lambda stream_id: None,
    ) -> None:
        self.node, self.cloud_node = node, cloud_node
        self.nodes = nodes | {node, cloud_node}
        self.local_kinds = local_kinds
        self.links = dict(links)  # node -> the link to it, for every other node
        self.transport = transport
        self.join_timeout_s = join_timeout_s
        self.late_factor = late_factor
        self.tracing = tracing
        self.on_new_stream = on_new_stream  # the service starts following the stream's decisions
        self.decisions: dict[str, decision_pb2.Decision] = {}  # stream -> newest decision seen
        self.stats = RoutingStats()
        self._joins: dict[tuple[str, str], _Join] = {}
        self._given_up: set[str] = set()  # root ids recorded as dropped: late copies are discarded
        self._work: set[asyncio.Task[None]] = set()

    # -- entry points ---------------------------------------------------------------------------

    def submit(self, task: task_pb2.Task, from_node: str) -> None:
        """Validates and accepts a task; routing goes on in the background."""
        validate_task(task, nodes=self.nodes)
        task.hops.add(component="controller", node=self.node, entered_at=timestamp())
        self.stats.routed += 1
        if task.stream_id not in self.decisions:
            self.decisions[task.stream_id] = decision_pb2.Decision(stream_id=task.stream_id)
            self.on_new_stream(task.stream_id)
        self._spawn(self._route(task))

    def apply_decision(self, decision: decision_pb2.Decision, *, force: bool = False) -> bool:
        """Takes a stream's newer decision (pushed by the scheduler); older versions are ignored
        unless forced."""
        known = self.decisions.get(decision.stream_id)
        if known is not None and known.version >= decision.version and not force:
            return False
        self.decisions[decision.stream_id] = decision
        return True

    def _place_by_newest(self, task: task_pb2.Task) -> None:
        """Pending stages of a task made under an older decision, still on its source node, go where
        the newest decision says."""
        newest = self.decisions.get(task.stream_id)
        if newest is None or newest.version <= task.decision_version:
            return
        if any(hop.node != self.node for hop in task.hops):
            return
        moved = False
        for stage in task.dag.stages:
            node = newest.placement.get(stage.spec.name)
            if stage.state == PENDING and node in self.nodes and node != stage.node:
                stage.node, moved = node, True
        self.stats.replaced += moved

    async def drain(self, timeout_s: float) -> None:
        """Waits for tasks being routed (shutdown), then records unfinished joins as dropped."""
        if self._work:
            await asyncio.wait(set(self._work), timeout=timeout_s)
        for (root, stage), join in list(self._joins.items()):
            join.timer.cancel()
            join.span.end()
            await self._drop(join.merged, f"controller on {self.node} shut down while joining at {stage or 'end'}")
            self._joins.pop((root, stage), None)

    # -- routing --------------------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _route(self, task: task_pb2.Task) -> None:
        try:
            with self.tracing.span("controller.route", **task_attributes(task.stream_id, task.root_id)):
                await self._advance(task)
        except Dropped as reason:
            await self._drop(task, str(reason))
        except Exception as error:  # never lose a task to a bug: record it with the error
            log.exception("routing failed", task_id=task.task_id)
            await self._drop(task, f"routing failed on {self.node}: {type(error).__name__}: {error}")

    async def _advance(self, task: task_pb2.Task) -> None:
        while True:
            if task.root_id in self._given_up:
                return
            failed = [s for s in task.dag.stages if s.state == FAILED]
            if failed:
                raise Dropped(f"stage {failed[0].spec.name} failed on {failed[0].executed_on}: {failed[0].error}")
            ready = ready_stages(task)
            if not ready:
                await self._finish_copy(task)
                return
            self._place_by_newest(task)
            if len(ready) > 1:
                self._fork(task, ready)
                return
            stage = ready[0]
            target = self._target(stage)
            if target != self.node:
                await self._send(target, task, stage.spec.name)
                return
            task = await self._process(task, stage)
            if task.branch and stage.spec.name not in task.branch:
                task.branch.append(stage.spec.name)

    def _target(self, stage: task_pb2.TaskStage) -> str:
        """The node that runs the stage: its placement, or the cloud when the placement names this
        node and no processor of the stage's kind runs here."""
        if stage.node == self.node and stage.spec.processor not in self.local_kinds:
            if self.node == self.cloud_node:
                raise Dropped(f"no processor {stage.spec.processor!r} for stage {stage.spec.name} on {self.node}")
            log.info("falling back to cloud", stage=stage.spec.name, kind=stage.spec.processor)
            stage.node = self.cloud_node
        return stage.node

    def _fork(self, task: task_pb2.Task, ready: list[task_pb2.TaskStage]) -> None:
        self.stats.forks += 1
        for stage in ready:
            copy = task_pb2.Task()
            copy.CopyFrom(task)
            copy.task_id = str(uuid.uuid4())
            del copy.branch[:]
            copy.branch.append(stage.spec.name)
            self._spawn(self._route(copy))

    async def _process(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> task_pb2.Task:
        try:
            return await self.transport.process(stage.spec.processor, task, stage.spec.name)
        except RemoteError as error:
            raise Dropped(
                f"processor {stage.spec.processor!r} on {self.node} failed stage {stage.spec.name}: "
                f"{error.code}: {error.details}"
            ) from None

    def _lateness(self, task: task_pb2.Task) -> str:
        """Better never than late: why a task is too far past its budget to be worth sending on (a
        backlog on a slow link then drains instead of delaying every task behind it); "" if it is not."""
        if not (self.late_factor and task.latency_budget_s and task.HasField("created_at")):
            return ""
        age = time.time() - task.created_at.ToNanoseconds() / 1e9
        if age <= self.late_factor * task.latency_budget_s:
            return ""
        budget = task.latency_budget_s
        return f"late: {age:.1f} s old at {self.node}, over {self.late_factor:g} times its {budget:g} s budget"

    async def _send(self, node: str, task: task_pb2.Task, stage: str) -> None:
        """Forwards the task over the link to `node`'s controller."""
        self._leave(task, stage)
        transfer_s = await self._over_link(node, task, lambda: self.transport.forward(node, task), "controller of")
        stages = _stage_map(task)
        if stage in stages:
            stages[stage].timings.transfer_s += transfer_s

    async def _over_link(
        self, node: str, task: task_pb2.Task, send: Callable[[], Awaitable[None]], refuser: str
    ) -> float:
        """Sends the task over the link to `node` with `send` (two spans of the task's trace: waiting
        for the link, then the bytes going); a task too late to be worth sending is dropped instead."""
        link = self._link(node)
        nbytes = task.ByteSize()
        attributes = {**task_attributes(task.stream_id, task.root_id), TO_NODE: node, BYTES: nbytes}
        waiting = self.tracing.start("link.queue", **attributes)
        sending: list[trace.Span] = []

        def start_sending() -> None:
            waiting.end()
            # With the link's own delay, so the scheduler can tell the link's rate from its queue.
            sending.append(self.tracing.start("link.transfer", **attributes, **{DELAY: link.delay_ms / 1000}))

        try:
            return await link.transmit(
                nbytes, send, still_wanted=lambda: not self._lateness(task), on_sending=start_sending
            )
        except NotSent:
            waiting.set_status(trace.StatusCode.ERROR, "too late to send")
            raise Dropped(self._lateness(task)) from None
        except RemoteError as error:
            (sending or [waiting])[0].set_status(trace.StatusCode.ERROR, error.code)
            raise Dropped(
                f"{refuser} {node} refused the task from {self.node}: {error.code}: {error.details}"
            ) from None
        finally:
            if sending:
                sending[0].end()
            else:
                waiting.end()

    # -- link measurement -------------------------------------------------------------------------

    async def measure_link(self, to_node: str, probe_bytes: int) -> resources_pb2.LinkBandwidth:
        """Bandwidth and round trip to `to_node`, by probes on the path tasks take."""
        if to_node == self.node or to_node not in self.nodes:
            others = sorted(self.nodes - {self.node})
            raise InvalidArgument("to_node", f"one of the other nodes {others}, got {to_node!r}")
        probe_bytes = probe_bytes or DEFAULT_PROBE_BYTES
        if not MIN_PROBE_BYTES <= probe_bytes <= MAX_PROBE_BYTES:
            raise InvalidArgument("probe_bytes", f"{MIN_PROBE_BYTES}..{MAX_PROBE_BYTES}, got {probe_bytes}")
        small = await self._probe(to_node, 1)
        large = await self._probe(to_node, probe_bytes)
        return resources_pb2.LinkBandwidth(
            from_node=self.node,
            to_node=to_node,
            bandwidth_mbps=probe_bytes * 8 / max(large - small, 1e-6) / 1e6,
            rtt_ms=small * 1000,
            measured_at=timestamp(),
        )

    async def _probe(self, node: str, nbytes: int) -> float:
        # A span of its own, outside any task's trace: every byte sent over a link is in a span.
        span = self.tracing.start("link.probe", **{TO_NODE: node, BYTES: nbytes})
        started = time.perf_counter()
        try:
            await self._link(node).transmit(nbytes, lambda: self.transport.probe(node, nbytes), probe=True)
        except RemoteError as error:
            span.set_status(trace.StatusCode.ERROR, error.code)
            raise Unavailable(f"controller of {node} unreachable: {error.code}") from None
        finally:
            span.end()
        return time.perf_counter() - started

    def _link(self, node: str) -> Link:
        """The link to `node`; one that the settings do not emulate only queues and counts."""
        if node not in self.links:
            self.links[node] = Link(self.node, node)
        return self.links[node]

    def _leave(self, task: task_pb2.Task, stage: str = "") -> None:
        hop = task.hops[-1] if task.hops and task.hops[-1].node == self.node else task.hops.add(node=self.node)
        hop.component, hop.stage = "controller", stage
        hop.left_at.CopyFrom(timestamp())
        hop.bytes = task.ByteSize()

    # -- joins and the end ------------------------------------------------------------------------

    async def _finish_copy(self, task: task_pb2.Task) -> None:
        if not task.branch:
            if any(s.state == PENDING for s in task.dag.stages):
                raise Dropped("DAG cannot progress: pending stages have unfinished parents")
            await self._deliver(task)
            return
        join = join_stage(task)
        key_stage, node = (join.spec.name, self._join_node(join)) if join else (END_OF_DAG, self.cloud_node)
        if node != self.node:
            await self._send(node, task, key_stage)
            return
        await self._join(task, key_stage)

    def _join_node(self, stage: task_pb2.TaskStage) -> str:
        if stage.node == self.node or stage.node not in self.nodes:
            return self._target(stage)
        return stage.node

    async def _join(self, copy: task_pb2.Task, stage: str) -> None:
        key = (copy.root_id, stage)
        join = self._joins.get(key)
        if join is None:
            merged = task_pb2.Task()
            merged.CopyFrom(copy)
            merged.task_id = str(uuid.uuid4())
            timer = asyncio.get_running_loop().call_later(self.join_timeout_s, self._join_timed_out, key)
            span = self.tracing.start("controller.join_wait", **task_attributes(copy.stream_id, copy.root_id, stage))
            self._joins[key] = _Join(merged, timer, span)
            return await self._maybe_release(key)
        join.arrived += 1
        merge_into(join.merged, copy)
        await self._maybe_release(key)

    async def _maybe_release(self, key: tuple[str, str]) -> None:
        join = self._joins[key]
        stages = _stage_map(join.merged)
        _, stage = key
        if any(s.state == FAILED for s in join.merged.dag.stages):
            complete = True
        elif stage == END_OF_DAG:
            complete = all(s.state != PENDING for s in join.merged.dag.stages)
        else:
            complete = all(stages[p].state == DONE for p in stages[stage].spec.parents)
        if not complete:
            return
        join.timer.cancel()
        join.span.end()
        del self._joins[key]
        self.stats.joins += 1
        if stage == END_OF_DAG:  # all copies are back: this is the original task again
            join.merged.task_id = join.merged.root_id
            del join.merged.branch[:]
        await self._advance_or_drop(join.merged)

    async def _advance_or_drop(self, task: task_pb2.Task) -> None:
        try:
            await self._advance(task)
        except Dropped as reason:
            await self._drop(task, str(reason))

    def _join_timed_out(self, key: tuple[str, str]) -> None:
        join = self._joins.pop(key, None)
        if join is None:
            return
        missing = sorted(s.spec.name for s in join.merged.dag.stages if s.state == PENDING)
        where = key[1] or "the end of the DAG"
        reason = f"join at {where} on {self.node} timed out after {self.join_timeout_s:g} s; missing {missing}"
        join.span.set_status(trace.StatusCode.ERROR, reason)
        join.span.end()
        self._spawn(self._drop(join.merged, reason))

    async def _deliver(self, task: task_pb2.Task) -> None:
        # Results are what the distributor keeps. Frames go on only for a segment without ground
        # truth: the distributor may score it against the golden configuration (it samples).
        if task.segment.ground_truth:
            del task.segment.frames[:]
            task.segment.stream = b""
        self._leave(task)
        if self.node != self.cloud_node:  # the distributor is on the cloud node, over the link
            await self._over_link(self.cloud_node, task, lambda: self.transport.deliver(task), "distributor on")
        else:
            try:
                await self.transport.deliver(task)
            except RemoteError as error:
                raise Dropped(f"distributor refused the task from {self.node}: {error.code}: {error.details}") from None
        self.stats.delivered += 1

    async def _drop(self, task: task_pb2.Task, reason: str) -> None:
        """Records the original task (root id) as dropped, once; the drop is never lost silently."""
        if task.root_id in self._given_up:
            return
        self._given_up.add(task.root_id)
        self.stats.dropped += 1
        self.stats.drop_reasons[reason] = self.stats.drop_reasons.get(reason, 0) + 1
        log.warning("task dropped", task_id=task.root_id, stream_id=task.stream_id, reason=reason)
        dropped = task_pb2.Task()
        dropped.CopyFrom(task)
        dropped.task_id = dropped.root_id
        del dropped.segment.frames[:]
        dropped.segment.stream = b""
        try:  # the transport already retries with backoff
            await self.transport.record_drop(dropped, reason)
        except RemoteError as error:
            log.error("cannot record drop", task_id=task.root_id, reason=reason, code=error.code)
