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

Durability. Every task this node holds is in its journal (journal.py) from before it is acknowledged
until the next node holds it or its drop is recorded; a restarted controller resumes what it finds
there, and a retry of a task it holds or passed on is acknowledged without being routed twice.

Failures. A call to a peer or the distributor that fails for a transient reason is tried again
until the task would be too late (or PATIENCE_S passes); a processor that is full, gone or not loaded
(FAILED_PRECONDITION: a deployable one the deployment plan holds unloaded), or a peer that stays
unreachable, sends the stage to another node that hosts it (the placement's
fallback: the decision's deployment, then the cloud), never to a node the task already tried for
that stage.

Age. A task's age (Task.age_s) grows by the time it spends on each node, measured by that node's
clock from its hop's arrival, and by each link's transfer as its sender expects it; lateness and
latency use it, never the difference of two machines' clocks.

Traces. Routing on this node, each link transfer and each join wait are spans of the task's trace;
processors and peers continue it through gRPC metadata."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from opentelemetry import trace

from dayu.controller.journal import TaskJournal, task_key
from dayu.controller.links import CalledOff, Link, NotSent
from dayu.runtime.clock import timestamp
from dayu.runtime.errors import InvalidArgument, RemoteError, Unavailable, shown
from dayu.runtime.logs import get_logger
from dayu.runtime.retry import TRANSIENT, Backoff
from dayu.runtime.tracing import BYTES, DELAY, NO_TRACING, TO_NODE, Tracing, task_attributes
from dayu.runtime.validation import validate_segment, validate_task
from dayu.v1 import decision_pb2, resources_pb2, task_pb2

log = get_logger(__name__)
T = TypeVar("T")

PENDING, DONE, FAILED = task_pb2.STAGE_STATE_UNSPECIFIED, task_pb2.STAGE_STATE_DONE, task_pb2.STAGE_STATE_FAILED
END_OF_DAG = ""  # join key of the final merge of a forked task
PREVIEW_EVERY_S = 2.0  # a stream's delivered frames, for the console, at most this often
DEFAULT_PROBE_BYTES, MIN_PROBE_BYTES, MAX_PROBE_BYTES = 64 * 1024, 1024, 4 * 1024 * 1024
PATIENCE_S = 30.0  # longest a task without a budget waits for a peer or the distributor to come back
# A processor that does not run the stage here (a deployable one held unloaded by the deployment plan):
# the stage goes to another node that hosts it at once, or is dropped with the processor's reason.
NOT_HERE = "FAILED_PRECONDITION"
FALLBACK = "controller (fallback)"  # the component of a hop that left a node because the stage could not run there
RECENT_ROOTS = 10_000  # root ids remembered (drops, to discard their late copies; ages)
MAX_STREAMS = 4096  # streams followed (as many as the scheduler registers); the least recent is forgotten


class Dropped(Exception):
    """The task cannot go on; the message is the reason recorded with it."""


class Transport(Protocol):
    """How the controller reaches the rest of the mesh. Failures raise RemoteError."""

    async def process(self, kind: str, task: task_pb2.Task, stage: str) -> task_pb2.TaskStage:
        """Runs `stage` of `task` on this node's processor of `kind`; returns that stage as the
        processor finished it (the task itself is not sent back)."""

    async def forward(self, node: str, task: task_pb2.Task, timeout_s: float) -> None:
        """Submits the task to the controller of `node`, in one attempt of at most timeout_s."""

    async def deliver(self, task: task_pb2.Task, timeout_s: float) -> None: ...

    async def probe(self, node: str, nbytes: int) -> None:
        """Sends nbytes of probe payload to the controller of `node`."""

    async def record_drop(self, task: task_pb2.Task, reason: str) -> None: ...


def newer(decision: decision_pb2.Decision, epoch: int, version: int) -> bool:
    """Whether `decision` comes after (epoch, version): a restarted scheduler's epoch is newer."""
    return (decision.epoch, decision.version) > (epoch, version)


@dataclass
class _Join:
    merged: task_pb2.Task
    timer: asyncio.TimerHandle
    span: trace.Span
    copies: list[str]  # journaled ids of the copies merged so far


@dataclass
class RoutingStats:
    routed: int = 0
    delivered: int = 0
    dropped: int = 0
    forks: int = 0
    joins: int = 0
    replaced: int = 0  # tasks whose pending stages a newer decision placed again
    duplicates: int = 0  # retries of tasks held or passed on already, acknowledged again
    fallbacks: int = 0  # stages sent to another node because theirs was full or gone
    resumed: int = 0  # tasks found in the journal at start
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
    if not has_frames(merged) and has_frames(copy):  # the copy that brought the frames to the join
        merged.segment.frames.extend(copy.segment.frames)
        merged.segment.stream = copy.segment.stream


def has_frames(task: task_pb2.Task) -> bool:
    return bool(task.segment.frames or task.segment.stream)


def first_waiting_on(task: task_pb2.Task, stages: Collection[str]) -> task_pb2.TaskStage | None:
    """The first pending stage, other than `stages`, that waits on one of them: where a copy that runs
    them meets its siblings, if they end its branch (None: at the end of the DAG)."""
    for stage in task.dag.stages:
        if stage.state == PENDING and stage.spec.name not in stages and any(p in stages for p in stage.spec.parents):
            return stage
    return None


def take_outcome(stage: task_pb2.TaskStage, done: task_pb2.TaskStage) -> None:
    """Puts what a processor made of `stage` (`done`, its reply) in the task's own stage: state,
    results, scenario, error, the node it ran on and its timings. The spec and the placement stay
    the task's, and so does the transfer time, which the controllers measure."""
    stage.state, stage.error, stage.executed_on = done.state, done.error, done.executed_on
    del stage.results[:]
    stage.results.extend(done.results)
    stage.scenario.CopyFrom(done.scenario)
    transfer_s = stage.timings.transfer_s
    stage.timings.CopyFrom(done.timings)
    stage.timings.transfer_s = transfer_s


class Unreachable(Dropped):
    """The node stayed unreachable for as long as the task could wait."""


# A superseded task is dropped only when it would hold the link at least this share of its budget:
# one that a fast link carries in moments costs the tasks behind it nothing, late result or not.
HOLDS_SHARE = 0.05


def superseded(
    made_under: tuple[int, int],
    current: tuple[int, int] | None,
    budget_s: float,
    age_s: float,
    nbytes: int,
    measured: resources_pb2.LinkBandwidth | None,
    delay_s: float,
) -> str:
    """Why a task waiting for a link is not worth its turn on it ("" when it is): made under a decision
    (epoch, version) that its stream's scheduler has since replaced (`current`), it would arrive past
    its budget at the link's last `measured` rate, and would hold the link a while doing so (at least
    HOLDS_SHARE of its budget). The policy moved on because such tasks no longer fit; sent, they hold
    the link while the new decision's lighter tasks queue behind them (two 720p frames take 3.7 s at
    0.5 Mbit/s). Tasks of the current decision always go: they are the policy's feedback on it. The
    simulator applies the same rule."""
    if current is None or current <= made_under or not budget_s:
        return ""
    if measured is None or measured.bandwidth_mbps <= 0:
        return ""
    holds_s = nbytes * 8 / (measured.bandwidth_mbps * 1e6) + delay_s
    arrival = age_s + holds_s
    if holds_s < HOLDS_SHARE * budget_s or arrival <= budget_s:
        return ""
    return (
        f"superseded: its decision replaced, at {measured.bandwidth_mbps:.2f} Mbit/s to {measured.to_node} it "
        f"would arrive {arrival:.1f} s old, over its {budget_s:g} s budget"
    )


def called_off(
    made_under: tuple[int, int], current: tuple[int, int] | None, budget_s: float, age_s: float, behind: int = 0
) -> str:
    """Why a task whose bytes are going over a link is called off before they are through ("" when
    not): older than its budget, it arrives late however the rest of its bytes go, and it holds up
    others: the tasks of the decision that replaced the one it was made under (on a link that fell
    under it, for seconds), or other tasks of its stream waiting behind it on the link (`behind`: a
    link that stopped for 2 s holds two tasks of a stream; the first cannot make it any more, the
    second can if the first gives way). A task at its turn is not dropped for those behind it: on a
    link that moves, a late task delivered costs them little, and the policy reads its lateness.
    Only where the link emulator holds the bytes (the receiver has none of them yet); the simulator
    applies the same rule."""
    if not budget_s or age_s <= budget_s:
        return ""
    if current is not None and current > made_under:
        late = f"{age_s:.1f} s old, over its {budget_s:g} s budget"
        return f"superseded: its decision replaced, called off on the link {late}"
    return _overtaken(age_s, budget_s) if behind > 0 else ""


class on_the_link:
    """Counts a task of a stream waiting for a link or going over it under `key` (the link and the
    stream) while the block runs; a key at 0 is forgotten, so the count holds only what is under way.
    called_off's `behind` is the count less the task itself. The simulator counts the same way (a class,
    not a generator: it runs for every transfer of tens of thousands of simulated streams)."""

    __slots__ = ("_key", "_on_link")

    def __init__(self, on_link: Counter[tuple[str, ...]], key: tuple[str, ...]) -> None:
        self._on_link, self._key = on_link, key

    def __enter__(self) -> None:
        self._on_link[self._key] += 1

    def __exit__(self, *exc_info: object) -> None:
        on_link, key = self._on_link, self._key
        on_link[key] -= 1
        if not on_link[key]:
            del on_link[key]


def _overtaken(age_s: float, budget_s: float) -> str:
    return (
        f"overtaken: {age_s:.1f} s old, over its {budget_s:g} s budget, other tasks of its stream behind it on the link"
    )


class ControllerCore:
    def __init__(
        self,
        node: str,
        cloud_node: str,
        nodes: set[str],
        local_kinds: set[str],
        links: Mapping[str, Link],
        transport: Transport,
        journal: TaskJournal | None = None,
        join_timeout_s: float = 10.0,
        late_factor: float = 0.0,
        patience_s: float = PATIENCE_S,
        tracing: Tracing = NO_TRACING,
        on_new_stream: Callable[[str], None] = lambda stream_id: None,
        on_forgotten_stream: Callable[[str], None] = lambda stream_id: None,
    ) -> None:
        self.node, self.cloud_node = node, cloud_node
        self.nodes = nodes | {node, cloud_node}
        self.local_kinds = local_kinds
        self.links = dict(links)  # node -> the link to it, for every other node
        self.measured_links: dict[str, resources_pb2.LinkBandwidth] = {}  # node -> the last measure_link
        self.transport = transport
        self.journal = journal or TaskJournal()
        self.join_timeout_s = join_timeout_s
        self.late_factor = late_factor
        self.patience_s = patience_s
        self.tracing = tracing
        self.on_new_stream = on_new_stream  # the service starts following the stream's decisions
        self.on_forgotten_stream = on_forgotten_stream  # and stops
        # Stream -> newest decision seen, least recently routed first: callers name the streams, so
        # the table is bounded (MAX_STREAMS).
        self.decisions: OrderedDict[str, decision_pb2.Decision] = OrderedDict()
        self.stats = RoutingStats()
        self._joins: dict[tuple[str, str], _Join] = {}
        # Recent root ids, bounded: recorded as dropped (their late copies are discarded), and when
        # each task's life began on this machine's clock (its age on arrival, subtracted from then).
        self._given_up: OrderedDict[str, None] = OrderedDict()
        self._born: OrderedDict[str, float] = OrderedDict()
        self._work: set[asyncio.Task[None]] = set()
        self._previewed: OrderedDict[str, float] = OrderedDict()  # stream -> when frames last went on
        # "root|join stage|node": a copy of the root took the frames to that node, where it meets its
        # siblings at that join; the siblings that this node sends to the same join go without them.
        self._frames_sent: OrderedDict[str, None] = OrderedDict()
        self._frames_going: dict[str, asyncio.Event] = {}  # the same, while the copy is on its way
        # (node, stream) -> the stream's tasks waiting for the link to that node or going over it.
        self._on_link: Counter[tuple[str, ...]] = Counter()

    # -- entry points ---------------------------------------------------------------------------

    async def submit(self, task: task_pb2.Task, from_node: str) -> bool:
        """Validates and journals a task, and routes it in the background; returns once the journal
        has it on the disk (routing starts as soon as it is written, while the disk syncs). False for a
        retry of a task this node holds or passed on already: acknowledged again, not routed twice."""
        validate_task(task, nodes=self.nodes, with_data=False)
        if not task.branch or ready_stages(task):  # a copy on its way to a join may come without its frames
            validate_segment(task.segment, "task.segment")
        if from_node:
            self._count_transfer(task)
        task.hops.add(component="controller", node=self.node, entered_at=timestamp())
        arrived_at = time.time()
        written, durable = self.journal.admit(task)
        if not await written:
            await durable
            self.stats.duplicates += 1
            log.info("duplicate task acknowledged", task_id=task.task_id, from_node=from_node or "generator")
            return False
        # Its later journal writes (progress, release) are committed after this one, in order; should
        # this commit fail, the sender tries again and the receivers de-duplicate what this routed.
        self._accept(task, arrived_at)
        await durable
        return True

    def _count_transfer(self, task: task_pb2.Task) -> None:
        """A task from a peer: the time since it left the peer's controller (its last hop) is the
        transfer of the stages it came here to run (StageTimings.transfer_s)."""
        if not task.hops or not task.hops[-1].HasField("left_at"):
            return
        transfer_s = max(0.0, time.time() - task.hops[-1].left_at.ToNanoseconds() / 1e9)
        for stage in ready_stages(task):
            if stage.node == self.node:
                stage.timings.transfer_s += transfer_s

    async def resume(self) -> int:
        """Routes again what the journal holds (after a restart), and records the drops it had not
        recorded yet; returns how many tasks it found."""
        held = await self.journal.held()
        for entry in held:
            if entry.drop_reason:
                self._bounded_add(self._given_up, entry.task.root_id, None)
                self._spawn(self._record_drop(entry.task, entry.drop_reason, entry.key))
            else:
                arrived = [h for h in entry.task.hops if h.node == self.node and h.component == "controller"]
                since = arrived[-1].entered_at.ToNanoseconds() / 1e9 if arrived else time.time()
                self._accept(entry.task, since)
        self.stats.resumed = len(held)
        if held:
            log.info("resumed tasks from the journal", count=len(held), journal=self.journal.path)
        return len(held)

    def _accept(self, task: task_pb2.Task, arrived_at: float) -> None:
        self.stats.routed += 1
        self._bounded_add(self._born, task.root_id, arrived_at - task.age_s, keep=True)
        if task.stream_id in self.decisions:
            self.decisions.move_to_end(task.stream_id)
        else:
            self.decisions[task.stream_id] = decision_pb2.Decision(stream_id=task.stream_id)
            self.on_new_stream(task.stream_id)
            if len(self.decisions) > MAX_STREAMS:
                forgotten, _ = self.decisions.popitem(last=False)
                self.on_forgotten_stream(forgotten)
        self._spawn(self._route(task))

    @staticmethod
    def _bounded_add(table: OrderedDict[str, T], key: str, value: T, keep: bool = False) -> None:
        if keep and key in table:
            table.move_to_end(key)
            return
        table[key] = value
        if len(table) > RECENT_ROOTS:
            table.popitem(last=False)

    def apply_decision(self, decision: decision_pb2.Decision) -> bool:
        """Takes a stream's newer decision (pushed by the scheduler); older ones are ignored."""
        known = self.decisions.get(decision.stream_id)
        if known is not None and not newer(decision, known.epoch, known.version):
            return False
        self.decisions[decision.stream_id] = decision
        return True

    def _place_by_newest(self, task: task_pb2.Task) -> None:
        """Pending stages of a task made under an older decision, still on its source node, go where
        the newest decision says."""
        newest = self.decisions.get(task.stream_id)
        if newest is None or not newer(newest, task.decision_epoch, task.decision_version):
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
        """Waits for tasks being routed (shutdown). With a durable journal what is left stays there
        for the next start; without one it is recorded as dropped, never lost silently."""
        if self._work:
            await asyncio.wait(set(self._work), timeout=timeout_s)
        for join in self._joins.values():
            join.timer.cancel()
            join.span.end()
        self._joins.clear()
        for work in list(self._work):
            work.cancel()
        await asyncio.gather(*self._work, return_exceptions=True)
        if self.journal.durable:
            if left := await self.journal.count():
                log.info("tasks kept in the journal for the next start", count=left, journal=self.journal.path)
            return
        patience_s = min(timeout_s, 5.0)
        for entry in await self.journal.held():
            if entry.drop_reason:  # given up already, its record not sent yet
                await self._record_drop(entry.task, entry.drop_reason, entry.key, patience_s)
            else:
                reason = f"controller on {self.node} shut down with the task unfinished"
                await self._drop(entry.task, reason, patience_s=patience_s)

    # -- routing --------------------------------------------------------------------------------

    @staticmethod
    def _later(write: asyncio.Future[None]) -> None:
        """A journal write not waited for: the journal commits writes in the order they are asked, so
        whatever this node does next is journaled after it; a failure is logged."""

        def failed(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.error("journal write failed", error=str(done.exception()))

        write.add_done_callback(failed)

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
        except asyncio.CancelledError:
            raise
        except Exception as error:  # never lose a task to a bug: record it with the error
            log.exception("routing failed", task_id=task.task_id)
            await self._drop(task, f"routing failed on {self.node}: {type(error).__name__}: {error}")

    async def _advance(self, task: task_pb2.Task) -> None:
        while True:
            if task.root_id in self._given_up:
                await self.journal.release(task_key(task))  # a copy of a task given up: discarded
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
                await self._fork(task, ready)
                return
            stage = ready[0]
            target, fell_back = self._target(task, stage)
            if target != self.node:
                await self._send(target, task, stage.spec.name, fallback=fell_back)
                return
            if not await self._process(task, stage):  # the stage went to another node
                return
            if task.branch and stage.spec.name not in task.branch:
                task.branch.append(stage.spec.name)
            self._later(self.journal.progress(task, stage))  # a restart goes on from here, not from before the stage

    def _target(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> tuple[str, bool]:
        """The node that runs the stage, and whether it is a fallback: its placement, or, when the
        placement names this node and no processor of the stage's kind runs here, the fallback."""
        if stage.node == self.node and stage.spec.processor not in self.local_kinds:
            node = self._fallback(task, stage, avoid=self.node)
            if node is None:
                raise Dropped(f"no processor {stage.spec.processor!r} for stage {stage.spec.name} on {self.node}")
            log.info("stage not hosted here: falling back", stage=stage.spec.name, kind=stage.spec.processor, to=node)
            stage.node = node
            return node, True
        return stage.node, False

    def _fallback(self, task: task_pb2.Task, stage: task_pb2.TaskStage, avoid: str) -> str | None:
        """Another node for the stage: this one if it hosts the kind, the nodes the decision deploys
        the stage on, then the cloud; never `avoid`, nor a node the task already fell back from for
        the stage (so each node fails a stage at most once and a task cannot bounce between two)."""
        name = stage.spec.name
        tried = {hop.node for hop in task.hops if hop.stage == name and hop.component == FALLBACK} | {avoid}
        decision = self.decisions.get(task.stream_id)
        deployed = list(decision.deployment[name].nodes) if decision and name in decision.deployment else []
        here = [self.node] if stage.spec.processor in self.local_kinds else []
        for node in (*here, *deployed, self.cloud_node):
            if node in self.nodes and node not in tried:
                return node
        return None

    async def _fork(self, task: task_pb2.Task, ready: list[task_pb2.TaskStage]) -> None:
        """A copy per ready stage, each routed on its own; but the stages placed on one other node go
        there together, as one copy whose branch names them all (the task itself when they are all the
        ready stages), and that node forks it: the frames cross the link once."""
        groups: dict[str, list[str]] = {}
        for stage in ready:
            elsewhere = stage.node != self.node and stage.node in self.nodes
            groups.setdefault(stage.node if elsewhere else f"\0{stage.spec.name}", []).append(stage.spec.name)
        if len(groups) == 1:  # every branch runs on one other node: the fork is made there
            ((node, names),) = groups.items()
            await self._send(node, task, names[0], branches=names)
            return
        self.stats.forks += 1
        copies = [self._copy(task, names) for names in groups.values()]
        self._later(self.journal.replace([task_key(task)], copies))
        for copy in copies:
            self._spawn(self._route(copy))

    @staticmethod
    def _copy(task: task_pb2.Task, branch: Sequence[str]) -> task_pb2.Task:
        copy = task_pb2.Task()
        copy.CopyFrom(task)
        copy.task_id = str(uuid.uuid4())
        del copy.branch[:]
        copy.branch.extend(branch)
        return copy

    async def _process(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> bool:
        """Runs the stage here and puts its outcome in the task: True; False when the processor was
        full or gone and the stage went to another node. With no other node for it, a gone processor
        (restarting) is waited for as long as the task can wait."""
        backoff = Backoff(self._patience(task))
        while True:
            try:
                take_outcome(stage, await self.transport.process(stage.spec.processor, task, stage.spec.name))
                return True
            except RemoteError as error:
                why = f"processor {stage.spec.processor!r} on {self.node} failed stage {stage.spec.name}: "
                why += f"{error.code}: {error.details}"
                if error.code not in TRANSIENT and error.code != NOT_HERE:
                    raise Dropped(why) from None
                node = self._fallback(task, stage, avoid=self.node)
                if node is None and (backoff.exhausted() or error.code == NOT_HERE):
                    raise Dropped(why) from None
            if node is not None:
                break
            log.info("processor away; trying again", stage=stage.spec.name, task_id=task.task_id, wait_s=backoff.wait)
            await backoff.sleep()
        log.info("processor full or gone: falling back", stage=stage.spec.name, to=node, why=why)
        self.stats.fallbacks += 1
        stage.node = node
        await self._send(node, task, stage.spec.name, fallback=True)
        return False

    # -- age and lateness -----------------------------------------------------------------------

    def _age(self, task: task_pb2.Task) -> float:
        """Seconds since the task was made: its age on arrival, plus the time since, on this clock."""
        born = self._born.get(task.root_id)
        return task.age_s if born is None else time.time() - born

    def _lateness(self, task: task_pb2.Task) -> str:
        """Better never than late: why a task is too far past its budget to be worth sending on (a
        backlog on a slow link then drains instead of delaying every task behind it); "" if it is not."""
        if not (self.late_factor and task.latency_budget_s):
            return ""
        age = self._age(task)
        if age <= self.late_factor * task.latency_budget_s:
            return ""
        budget = task.latency_budget_s
        return f"late: {age:.1f} s old at {self.node}, over {self.late_factor:g} times its {budget:g} s budget"

    def _superseded(self, task: task_pb2.Task, node: str, nbytes: int) -> str:
        """superseded() for a task waiting for the link to `node`, by this node's latest decision of its
        stream and its latest measurement of the link."""
        return superseded(
            *self._versions(task),
            task.latency_budget_s,
            self._age(task),
            nbytes,
            self.measured_links.get(node),
            self._link(node).delay_ms / 1000,
        )

    def _called_off(self, task: task_pb2.Task, node: str) -> str:
        """called_off() for a task whose bytes are going over the link to `node`, by this node's latest
        decision of its stream and the stream's tasks behind it there."""
        behind = self._on_link[(node, task.stream_id)] - 1
        return called_off(*self._versions(task), task.latency_budget_s, self._age(task), behind)

    def _versions(self, task: task_pb2.Task) -> tuple[tuple[int, int], tuple[int, int] | None]:
        """The (epoch, version) of the decision the task was made under, and of its stream's latest
        decision on this node (None before any)."""
        current = self.decisions.get(task.stream_id)
        return (task.decision_epoch, task.decision_version), (
            (current.epoch, current.version) if current is not None else None
        )

    def _patience(self, task: task_pb2.Task) -> float:
        """How long the task may wait for a node to come back: until it would be late, else PATIENCE_S."""
        if self.late_factor and task.latency_budget_s:
            return max(0.0, self.late_factor * task.latency_budget_s - self._age(task))
        return self.patience_s

    # -- sending --------------------------------------------------------------------------------

    async def _send(
        self,
        node: str,
        task: task_pb2.Task,
        stage: str,
        fallback: bool = False,
        branches: Sequence[str] = (),
    ) -> None:
        """Forwards the task to `node`'s controller, for `stage` (or for the ready stages `branches`,
        all placed on `node`, which forks the task there), or for the join `stage` (END_OF_DAG: the
        end) of a copy whose branch is done: without its frames when a sibling copy took them from
        here to that join. `fallback`: because the stage could not run here. A node that stays
        unreachable makes the stages fall back to other nodes (the task then goes there)."""
        held = task_key(task)
        names = list(branches) or [stage]
        joining = bool(task.branch) and not ready_stages(task)
        meets = self._meets_siblings(task, node, names, stage if joining else None)
        taken: tuple[list[bytes], bytes] | None = None
        going: asyncio.Event | None = None
        if meets is not None:
            while meets in self._frames_going:  # a sibling takes the frames there now: did it?
                await self._frames_going[meets].wait()
            if joining and meets in self._frames_sent:
                taken = (list(task.segment.frames), task.segment.stream)
                del task.segment.frames[:]
                task.segment.stream = b""
            else:
                going = self._frames_going[meets] = asyncio.Event()
        try:
            self._leave(task, stage, FALLBACK if fallback else "controller")
            link = self._link(node)
            try:
                transfer_s = await self._over_link(
                    node,
                    task,
                    lambda: self.transport.forward(node, task, self._deadline(link, task)),
                    f"controller of {node}",
                    self._patience(task),
                    give_way=True,
                )
            except Unreachable as error:
                if taken is not None:  # its sibling went to `node` with the frames: it takes its own elsewhere
                    task.segment.frames.extend(taken[0])
                    task.segment.stream = taken[1]
                await self._fall_back(task, held, node, names, error)
                return
            if going is not None and meets is not None:  # its siblings may follow it there without frames
                self._bounded_add(self._frames_sent, meets, None)
        finally:
            if going is not None and meets is not None:
                del self._frames_going[meets]
                going.set()
        self._later(self.journal.release(held))
        stages = _stage_map(task)
        for name in names:
            if name in stages:
                stages[name].timings.transfer_s += transfer_s

    def _meets_siblings(self, task: task_pb2.Task, node: str, names: list[str], join: str | None) -> str | None:
        """For a copy with its frames going to `node`, to run the stages `names` or to its `join` there:
        the key of the join at `node` where it meets its sibling copies ("root|join stage|node"), which
        the siblings this node sends there may then reach without frames; None when it meets them
        elsewhere, or is no copy. After its stages it meets them at the first pending stage waiting on
        its branch (the end of the DAG, on the cloud, when none)."""
        if not task.branch or not (task.segment.frames or task.segment.stream):
            return None
        if join is None:
            waiting = first_waiting_on(task, {*names, *task.branch})
            join = END_OF_DAG if waiting is None else waiting.spec.name
            if (waiting.node if waiting is not None else self.cloud_node) != node:
                return None
        return f"{task.root_id}|{join}|{node}"

    async def _fall_back(
        self, task: task_pb2.Task, held: str, unreachable: str, names: list[str], error: Unreachable
    ) -> None:
        """The stages `names` of a task that could not reach `unreachable` go to other nodes (raises
        `error` when one has none): together when they all fall back to one node, else each in a copy."""
        stages = _stage_map(task)
        moving = [name for name in names if name in stages]
        to = {name: self._fallback(task, stages[name], avoid=unreachable) for name in moving}
        if not moving or any(node is None or node == unreachable for node in to.values()):
            raise error
        targets = sorted({node for node in to.values() if node is not None})
        log.warning("node unreachable: falling back", stage=moving, unreachable=unreachable, to=targets, why=str(error))
        self.stats.fallbacks += len(moving)
        for name, node in to.items():
            stages[name].node = node or ""
        if len(targets) == 1:
            if targets[0] == self.node:
                self._spawn(self._route(task))  # hosted here after all: route it again on this node
            else:
                await self._send(targets[0], task, moving[0], fallback=True, branches=moving if len(moving) > 1 else ())
            return
        # Branches that fall back to different nodes: the fork is made here after all.
        copies = [self._copy(task, [name]) for name in moving]
        await self.journal.replace([held], copies)
        for copy, name in zip(copies, moving, strict=True):
            self._spawn(self._route(copy) if to[name] == self.node else self._send_or_drop(to[name] or "", copy, name))

    async def _send_or_drop(self, node: str, task: task_pb2.Task, stage: str) -> None:
        try:
            await self._send(node, task, stage, fallback=True)
        except Dropped as reason:
            await self._drop(task, str(reason))

    @staticmethod
    def _deadline(link: Link, task: task_pb2.Task) -> float:
        """Time one attempt may take: a few times what the link is expected to need, at least 5 s."""
        return 5.0 + 4 * link.expected_rpc_s(task.ByteSize())

    async def _over_link(
        self,
        node: str,
        task: task_pb2.Task,
        send: Callable[[], Awaitable[None]],
        receiver: str,
        patience_s: float,
        give_way: bool = False,
    ) -> float:
        """Sends the task over the link to `node` with `send` (two spans of the task's trace: waiting
        for the link, then the bytes going), trying again while the receiver is unreachable for up to
        `patience_s`; a task too late to be worth sending (or, with `give_way`, one `_superseded`) is
        dropped instead, once its turn on the link comes, and, with `give_way`, one `_called_off` while
        the link emulator holds its bytes."""
        link = self._link(node)
        nbytes = task.ByteSize()
        unwanted = [""]

        def still_wanted() -> bool:
            unwanted[0] = self._lateness(task) or (self._superseded(task, node, nbytes) if give_way else "")
            return not unwanted[0]

        def keep_going() -> bool:
            unwanted[0] = self._called_off(task, node)
            return not unwanted[0]

        attributes = {**task_attributes(task.stream_id, task.root_id), TO_NODE: node, BYTES: nbytes}

        async def stamped() -> None:  # the age it will have on arrival, as this link expects it
            before = task.age_s
            task.age_s = self._age(task) + link.expected_rpc_s(nbytes) + link.delay_ms / 1000
            try:
                await send()
            except BaseException:
                task.age_s = before
                raise

        with on_the_link(self._on_link, (node, task.stream_id)):
            backoff = Backoff(patience_s)
            while True:
                waiting = self.tracing.start("link.queue", **attributes)
                sending: list[trace.Span] = []

                def start_sending(waiting: trace.Span = waiting, sending: list[trace.Span] = sending) -> None:
                    waiting.end()
                    # With the link's own delay, so the scheduler can tell the link's rate from its queue.
                    sending.append(self.tracing.start("link.transfer", **attributes, **{DELAY: link.delay_ms / 1000}))

                try:
                    return await link.transmit(
                        nbytes,
                        stamped,
                        still_wanted=still_wanted,
                        on_sending=start_sending,
                        keep_going=keep_going if give_way else None,
                    )
                except CalledOff as off:
                    # What went of it, at the link's rate (and nothing arrived, so no delay): the scheduler
                    # reads the rate from the span.
                    sending[0].set_attributes({BYTES: off.sent, DELAY: 0.0})
                    sending[0].set_status(trace.StatusCode.ERROR, "called off")
                    raise Dropped(unwanted[0]) from None
                except NotSent:
                    waiting.set_status(trace.StatusCode.ERROR, "too late to send")
                    raise Dropped(unwanted[0]) from None
                except RemoteError as error:
                    (sending or [waiting])[0].set_status(trace.StatusCode.ERROR, error.code)
                    why = f"{receiver} refused the task from {self.node}: {error.code}: {error.details}"
                    if error.code not in TRANSIENT:
                        raise Dropped(why) from None
                    if backoff.exhausted():
                        raise Unreachable(f"{why} (tried for {patience_s:.1f} s)") from None
                finally:
                    (sending or [waiting])[0].end()
                log.info(
                    "receiver unreachable; trying again", receiver=receiver, task_id=task.task_id, wait_s=backoff.wait
                )
                await backoff.sleep()

    async def _patiently(self, call: Callable[[], Awaitable[None]], what: str, patience_s: float) -> None:
        """Runs `call`, trying again while it fails for a transient reason, for up to `patience_s`."""
        backoff = Backoff(patience_s)
        while True:
            try:
                return await call()
            except RemoteError as error:
                why = f"{what}: {error.code}: {error.details}"
                if error.code not in TRANSIENT:
                    raise Dropped(why) from None
                if backoff.exhausted():
                    raise Unreachable(f"{why} (tried for {patience_s:.1f} s)") from None
            await backoff.sleep()

    # -- link measurement -------------------------------------------------------------------------

    async def measure_link(self, to_node: str, probe_bytes: int) -> resources_pb2.LinkBandwidth:
        """Bandwidth and round trip to `to_node`, by probes on the path tasks take."""
        if to_node == self.node or to_node not in self.nodes:
            others = sorted(self.nodes - {self.node})
            raise InvalidArgument("to_node", f"one of the other nodes {others}, got {shown(to_node)}")
        probe_bytes = probe_bytes or DEFAULT_PROBE_BYTES
        if not MIN_PROBE_BYTES <= probe_bytes <= MAX_PROBE_BYTES:
            raise InvalidArgument("probe_bytes", f"{MIN_PROBE_BYTES}..{MAX_PROBE_BYTES}, got {probe_bytes}")
        last = self.measured_links.get(to_node)
        fell_to = self._link(to_node).fell_to_mbps(last.bandwidth_mbps if last is not None else None)
        if last is not None and fell_to is not None:
            bandwidth_mbps, rtt_ms = fell_to, last.rtt_ms
        else:
            small = await self._probe(to_node, 1)
            large = await self._probe(to_node, probe_bytes)
            bandwidth_mbps, rtt_ms = probe_bytes * 8 / max(large - small, 1e-6) / 1e6, small * 1000
        measured = self.measured_links[to_node] = resources_pb2.LinkBandwidth(
            from_node=self.node,
            to_node=to_node,
            bandwidth_mbps=bandwidth_mbps,
            rtt_ms=rtt_ms,
            measured_at=timestamp(),
        )
        return measured

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

    def _leave(self, task: task_pb2.Task, stage: str = "", component: str = "controller") -> None:
        hop = task.hops[-1] if task.hops and task.hops[-1].node == self.node else task.hops.add(node=self.node)
        hop.component, hop.stage = component, stage
        hop.left_at.CopyFrom(timestamp())
        hop.bytes = task.ByteSize()

    # -- joins and the end ------------------------------------------------------------------------

    async def _finish_copy(self, task: task_pb2.Task) -> None:
        if task.branch and all(s.state != PENDING for s in task.dag.stages):
            # Every branch has joined this copy already: it is the original task again, delivered from
            # here rather than through a join of one copy on the cloud.
            held = task_key(task)
            task.task_id = task.root_id
            del task.branch[:]
            self._later(self.journal.replace([held], [task]))
        if not task.branch:
            if any(s.state == PENDING for s in task.dag.stages):
                raise Dropped("DAG cannot progress: pending stages have unfinished parents")
            await self._deliver(task)
            return
        join = join_stage(task)
        key_stage, node = (join.spec.name, self._join_node(task, join)) if join else (END_OF_DAG, self.cloud_node)
        if node != self.node:
            if key_stage == END_OF_DAG and has_frames(task) and not self._keeps_frames(task):
                # Only the delivery follows, which would leave the frames behind: they stay here.
                del task.segment.frames[:]
                task.segment.stream = b""
            await self._send(node, task, key_stage)
            return
        await self._join(task, key_stage)

    def _join_node(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> str:
        if stage.node == self.node or stage.node not in self.nodes:
            return self._target(task, stage)[0]
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
            self._joins[key] = _Join(merged, timer, span, [task_key(copy)])
            return await self._maybe_release(key)
        if task_key(copy) in join.copies:  # the same copy again (resumed after a restart)
            return
        join.copies.append(task_key(copy))
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
        self._later(self.journal.replace(join.copies, [join.merged]))
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
        self._spawn(self._drop(join.merged, reason, held=join.copies))

    def _keeps_frames(self, task: task_pb2.Task) -> bool:
        """Results are what the distributor keeps. Frames go on for a segment without ground truth (the
        distributor may score it against the golden configuration: it samples), and for one task of
        each stream every PREVIEW_EVERY_S, the frame the console shows with its boxes."""
        if not task.segment.ground_truth:
            return True
        now = time.monotonic()
        if now - self._previewed.get(task.stream_id, -PREVIEW_EVERY_S) < PREVIEW_EVERY_S:
            return False
        self._previewed[task.stream_id] = now
        self._previewed.move_to_end(task.stream_id)
        if len(self._previewed) > MAX_STREAMS:
            self._previewed.popitem(last=False)
        return True

    async def _deliver(self, task: task_pb2.Task) -> None:
        if has_frames(task) and not self._keeps_frames(task):
            del task.segment.frames[:]
            task.segment.stream = b""
        held = task_key(task)
        self._leave(task)
        # The distributor keeps tasks for good: worth waiting for it to come back, late or not.
        if self.node != self.cloud_node:  # the distributor is on the cloud node, over the link
            link = self._link(self.cloud_node)
            await self._over_link(
                self.cloud_node,
                task,
                lambda: self.transport.deliver(task, self._deadline(link, task)),
                "distributor on",
                self.patience_s,
            )
        else:

            async def deliver_here() -> None:  # on this node: its age is this clock's, at each try
                task.age_s = self._age(task)
                await self.transport.deliver(task, 10.0)

            refused = f"distributor refused the task from {self.node}"
            await self._patiently(deliver_here, refused, self.patience_s)
        self._later(self.journal.release(held))
        self.stats.delivered += 1

    async def _drop(
        self, task: task_pb2.Task, reason: str, held: list[str] | None = None, patience_s: float | None = None
    ) -> None:
        """Records the original task (root id) as dropped, once; the drop is never lost silently: it
        is journaled (replacing the `held` tasks, default the task itself) before it is recorded."""
        held = [task_key(task)] if held is None else held
        if task.root_id in self._given_up:
            await self.journal.release(*held)
            return
        self._bounded_add(self._given_up, task.root_id, None)
        self.stats.dropped += 1
        self.stats.drop_reasons[reason] = self.stats.drop_reasons.get(reason, 0) + 1
        log.warning("task dropped", task_id=task.root_id, stream_id=task.stream_id, reason=reason)
        dropped = task_pb2.Task()
        dropped.CopyFrom(task)
        dropped.task_id = dropped.root_id
        dropped.age_s = self._age(task)
        del dropped.segment.frames[:]
        dropped.segment.stream = b""
        key = await self.journal.give_up(held, dropped, reason)
        await self._record_drop(dropped, reason, key, patience_s)

    async def _record_drop(
        self, dropped: task_pb2.Task, reason: str, key: str, patience_s: float | None = None
    ) -> None:
        """Records a drop with the distributor, trying again while it is unreachable (for
        `patience_s`, default as long as this controller runs); the journal keeps it until then."""
        try:
            await self._patiently(
                lambda: self.transport.record_drop(dropped, reason),
                "distributor refused the drop",
                float("inf") if patience_s is None else patience_s,
            )
        except Dropped as error:
            log.error("cannot record drop", task_id=dropped.root_id, reason=reason, error=str(error))
            return
        await self.journal.release(key)
