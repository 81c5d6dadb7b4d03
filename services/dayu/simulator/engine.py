"""The discrete-event simulation of a mesh (simpy) around the scheduler's real core and policies.

What runs in simulated time, as the components do in the real mesh:
- generators: each stream takes its source's frames at the source's rate, keeps those the current
  decision's frame rate keeps (the generator's own FrameRateFilter) and makes a task every
  frames_per_segment kept frames (none while the decision pauses the stream);
- controllers: a task's stages run where the placement puts them, in pipeline order; a stage placed
  on a node without its processor, or whose processor's queue is full, falls back as the controller
  does (the decision's deployment, then the cloud; never a node it fell back from); a task that has
  not left its node yet follows the newest decision's placement; moving between nodes is a transfer
  over the link between them, and a task too late once the link is free is dropped, with the
  controller's reason; finished tasks go to the cloud (the distributor), frames left behind except for
  a preview every PREVIEW_EVERY_S per stream;
- processors: a queue (bounded, as queue_capacity) before `workers` workers; a segment's processing
  time is the profile's at its resolution and length, with the profile's spread;
- the distributor: each delivered or dropped task becomes a TaskRecord (latency: its age; accuracy:
  the profile's F1 at its configuration) given to the core as feedback;
- the exporters: spans (processor.queue, processor.inference, link.transfer) go to the core in OTLP
  batches every EXPORT_INTERVAL_S;
- monitors: every node reports its processors' queues, its CPU and its links as its probes measured
  them (two probes through the link's FIFO, as the controller measures) every monitor interval;
- the scheduler service: check_feedback and check_nodes every CHECK_INTERVAL_S.

The core runs on a private asyncio loop, its clock the simulation's. Every task made is delivered or
dropped with a reason by the end: generators stop at the duration, then the mesh drains for at most
drain_s; what is still in flight then is dropped ("simulation ended")."""

from __future__ import annotations

import asyncio
import gc
import heapq
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import simpy
from simpy.core import NORMAL

from dayu.controller.core import PREVIEW_EVERY_S, called_off, on_the_link, superseded
from dayu.distributor.core import first_detector
from dayu.media.frames import frame_rate
from dayu.runtime.retry import RETRY_S
from dayu.runtime.tracing import BYTES, DELAY, STAGE, STREAM, TASK, TO_NODE
from dayu.scheduler.core import MAX_STREAMS
from dayu.simulator.compute import Machine
from dayu.simulator.costs import Profile
from dayu.simulator.network import CalledOff, Network, NotSent
from dayu.simulator.scenario import MODEL_BYTES, MODEL_LOAD_S, Scenario, StreamModel
from dayu.simulator.tasklog import TaskLog, TaskOutcome
from dayu.simulator.telemetry import EXPORT_INTERVAL_S, SpanExporter
from dayu.v1 import decision_pb2, resources_pb2, task_pb2, types_pb2

CHECK_INTERVAL_S = 1.0  # the scheduler service's feedback and node checks
EPOCH = 1  # the core's epoch: fixed, so that runs repeat exactly
DECISION_CALLS_KEPT = 100_000  # wall times of decision-making calls kept (the latest)
DELIVERED, DROPPED = task_pb2.TASK_OUTCOME_DELIVERED, task_pb2.TASK_OUTCOME_DROPPED
PATIENCE_S = 30.0  # the controller's wait for a full processor when a task has no budget
LOOKUPS_KEPT = 1 << 16  # the profile's answers kept (by configuration; past it, forgotten and asked again)
# The garbage collector while a mesh runs: collections of the young generation every this many new
# objects (not 700: a run makes millions a simulated second), of the older ones as rarely; what the mesh
# holds once its streams are registered is frozen (never gone through again) until the run ends.
GC_THRESHOLDS = (50_000, 20, 10)
KEEP_TASKS_UP_TO = 8  # streams: up to this many, RunResults.tasks keeps every task (the timeline plot's)


class Dropped(Exception):
    """The task cannot go on; the message is the reason recorded with it."""


@dataclass(slots=True)
class _Stage:
    spec: types_pb2.StageSpec
    node: str  # where it is placed (moved by fallbacks and newer decisions)
    name: str  # the spec's, read once
    processor: str
    executed_on: str = ""
    queue_s: float = 0.0
    process_s: float = 0.0
    transfer_s: float = 0.0
    done: bool = False
    fell_back_from: frozenset[str] = frozenset()


@dataclass(slots=True)
class _Stream:
    model: StreamModel
    spec: decision_pb2.StreamSpec = field(init=False)
    stream_id: str = field(init=False)
    stages: list[tuple[types_pb2.StageSpec, str, str]] = field(init=False)  # (spec, name, processor)
    last_preview: float = -math.inf
    made: int = 0

    def __post_init__(self) -> None:
        self.spec = self.model.spec
        self.stream_id = self.spec.stream_id
        self.stages = [(stage, stage.name, stage.processor) for stage in self.spec.pipeline.stages]


@dataclass(slots=True)
class _Task:
    stream: _Stream
    sequence: int
    made_at: float
    decision: decision_pb2.Decision
    frames: int
    frame_bytes: float  # mean JPEG bytes of one of its frames
    stages: list[_Stage]
    at: str  # the node it is on
    size: tuple[int, int, int]  # its configuration's width, height and quality
    task_id: str = ""
    hops: list[list[Any]] = field(default_factory=list)  # [node, bytes when it left]
    left_source: bool = False
    delivery_s: float = 0.0  # its transfer to the distributor

    def __post_init__(self) -> None:
        self.task_id = f"{self.stream.stream_id}#{self.sequence}"


@dataclass
class RunResults:
    policy: str
    duration_s: float
    log: TaskLog = field(default_factory=TaskLog)  # every task's outcome, summed (and its row written)
    decisions: int = 0
    decision_call_s: deque[float] = field(default_factory=lambda: deque(maxlen=DECISION_CALLS_KEPT))
    policy_decide_s: deque[float] = field(default_factory=lambda: deque(maxlen=DECISION_CALLS_KEPT))
    channel_bytes: dict[str, int] = field(default_factory=dict)
    uplinks: list[str] = field(default_factory=list)
    probe_bytes: int = 0
    fallbacks: int = 0
    spans_exported: int = 0
    spans_dropped: int = 0
    simulated_s: float = 0.0
    wall_s: float = 0.0
    unfinished: int = 0  # in flight when the drain ended (recorded as dropped)
    model_loads: int = 0  # deployable processors loaded by the deployment plan
    model_unloads: int = 0
    dropped: int = 0

    @property
    def tasks(self) -> list[TaskOutcome]:
        """Every task, in the order they settled, when the run kept them (TaskLog.keep_tasks); else none."""
        return self.log.tasks


class _Workers(simpy.Resource):
    """simpy's Resource, its users in a dict: a worker of thousands (a cloud's) is released without a
    scan of them all (simpy's list.remove), in the same order of events."""

    def __init__(self, env: simpy.Environment, capacity: int) -> None:
        super().__init__(env, capacity)
        self.users: dict[simpy.resources.resource.Request, None] = {}  # type: ignore[assignment]

    def _do_put(self, event: simpy.resources.resource.Request) -> None:
        if len(self.users) < self.capacity:
            self.users[event] = None
            event.usage_since = self._env.now
            event.succeed()

    def _do_get(self, event: simpy.resources.resource.Release) -> None:  # type: ignore[override]
        self.users.pop(event.request, None)
        event.succeed()


class _Processor:
    def __init__(self, env: simpy.Environment, node: str, name: str, workers: int, capacity: int) -> None:
        self.node, self.name, self.capacity = node, name, capacity
        self.workers = _Workers(env, capacity=workers)

    @property
    def queued(self) -> int:
        return len(self.workers.queue)


class _Generator:
    """A stream's generator (StreamRunner._capture): it goes over its source's frames at the source's
    rate, keeps those its FrameRateFilter keeps at the current decision's frame rate (none while the
    decision pauses the stream) and makes a task every frames_per_segment kept frames, at the current
    decision. It goes over them without an event each: the frames where nothing but its filter's credit
    and its count of kept frames change are gone over when it wakes, at the frame where it makes its
    next task at the current decision (planned ahead), or when the stream's decision changes (the frames
    before the change under the decision they had). The filter's arithmetic is FrameRateFilter's, in
    integers (the same exact fractions); a frame's time adds the frame interval to the last one, as the
    generator's timeouts do."""

    __slots__ = (
        "_source",
        "_wake",
        "credit",
        "decision",
        "den",
        "every",
        "frame_bytes",
        "kept",
        "mesh",
        "next_s",
        "num",
        "placement",
        "size",
        "source_fps",
        "stream",
        "target",
    )  # fmt: skip

    def __init__(self, mesh: SimulatedMesh, stream: _Stream, first_s: float) -> None:
        self.mesh, self.stream = mesh, stream
        self.source_fps = stream.model.source_fps
        self.every = 1 / self.source_fps
        self._source = frame_rate(self.source_fps, "source_fps")
        self.next_s = first_s  # the time of the next frame not gone over
        self.kept = 0
        # FrameRateFilter(source, source): its ratio (num / den) 1, its credit (credit / den) 1 - 1.
        self.target, self.num, self.den, self.credit = self.source_fps, 1, 1, 0
        self.decision: decision_pb2.Decision | None = None
        self.placement: dict[str, str] = {}
        self.frame_bytes = 0.0
        self.size = (0, 0, 0)
        self._wake: simpy.Event | None = None

    def _ratio(self, target_fps: float) -> Fraction:
        """FrameRateFilter._ratio_for."""
        return min(Fraction(1), frame_rate(target_fps, "target_fps") / self._source)

    def _frames(self, until_s: float, state: list[Any], decision: decision_pb2.Decision) -> float | None:
        """Goes over the frames before until_s (and before the generator stops) at `decision`, on
        `state` ([next_s, kept, target, num, den, credit]); stops after the first frame that makes a
        task, returning its time (None when no frame before until_s does)."""
        t, kept, target, num, den, credit = state
        end = min(until_s, self.mesh.duration_s)
        every = self.every
        made_at = None
        if decision.paused:
            while t < end:
                kept = 0
                t += every
        else:
            config = decision.configuration
            wanted = min(config.fps, self.source_fps)
            per_segment = config.frames_per_segment
            while t < end:
                if target != wanted:  # FrameRateFilter.target_fps = wanted: the credit stays
                    ratio = self._ratio(wanted)
                    common = den * ratio.denominator // math.gcd(den, ratio.denominator)
                    credit, num, den = credit * (common // den), ratio.numerator * (common // ratio.denominator), common
                    target = wanted
                credit += num
                frame_s = t
                t += every
                if credit >= den:
                    credit -= den
                    kept += 1
                    if kept >= per_segment:
                        made_at = frame_s
                        break
        state[:] = [t, kept, target, num, den, credit]
        return made_at

    def _state(self) -> list[Any]:
        return [self.next_s, self.kept, self.target, self.num, self.den, self.credit]

    def _set(self, state: list[Any]) -> None:
        self.next_s, self.kept, self.target, self.num, self.den, self.credit = state

    def start(self) -> None:
        self._follow(self.mesh.core.decision(self.stream.stream_id))

    def _follow(self, decision: decision_pb2.Decision) -> None:
        """Takes the decision from now on; wakes at the frame where it makes its next task."""
        if decision is not self.decision:
            self.decision = decision
            self.placement = dict(decision.placement)
            config = decision.configuration
            self.size = (config.resolution.width, config.resolution.height, config.quality)
            self.frame_bytes = self.mesh.profile.frame_bytes(*self.size)
        self._wake = None
        if decision.paused:  # no task until it changes
            return
        made_at = self._frames(math.inf, self._state(), decision)  # on a copy: nothing is gone over yet
        if made_at is not None:
            self._wake = self.mesh.wake_at(made_at, self._woken)

    def changed(self, now: float) -> None:
        """The stream's decision changed at `now` (a core call published one): the frames before now
        had the old one."""
        decision = self.mesh.core.decision(self.stream.stream_id)
        if decision is self.decision:
            return
        if self.decision is not None:
            state = self._state()
            made_at = self._frames(now, state, self.decision)
            if made_at is not None:  # its wake is due at this very time: it makes its task now
                self._set(state)
                self._make(made_at)
            else:
                self._set(state)
        self._follow(decision)

    def _woken(self, event: simpy.Event) -> None:
        if event is not self._wake or self.decision is None:
            return  # planned at a decision that changed since
        now = self.mesh.env.now
        state = self._state()
        made_at = self._frames(math.inf, state, self.decision)
        assert made_at == now, (made_at, now)
        self._set(state)
        self._make(now)
        self._follow(self.decision)

    def _make(self, now: float) -> None:
        frames, self.kept = self.kept, 0
        assert self.decision is not None
        self.mesh._make_task(self.stream, self.decision, frames, self.placement, self.frame_bytes, self.size)


class _Passed:
    """Awaiting it yields `value` to the task as is: what a coroutine yielded (a future, blocking)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self.value)


async def _finish(call: Coroutine[Any, Any, Any], waiting: Any) -> Any:
    """The rest of a core call that yielded `waiting` (a future it waits for) in its first steps, as a
    task of the loop: what it yields goes to the task, as when the task ran it from the start."""
    while True:
        await _Passed(waiting)
        try:
            waiting = call.send(None)
        except StopIteration as done:
            return done.value


class SimulatedMesh:
    def __init__(
        self,
        scenario: Scenario,
        profile: Profile,
        policy: str,
        duration_s: float,
        seed: int = 0,
        drain_s: float | None = None,
        on_second: Callable[[SimulatedMesh], None] = lambda mesh: None,
        tasks_csv: Path | None = None,
        keep_tasks: bool | None = None,
    ) -> None:
        """`tasks_csv`: where each task's row goes as it settles (none when not given); `keep_tasks`:
        whether RunResults.tasks keeps every task (None: when the scenario has KEEP_TASKS_UP_TO streams
        or fewer)."""
        scenario.check_against(profile.processors, "--profile")
        self.scenario, self.profile, self.duration_s = scenario, profile, duration_s
        budgets = [s.spec.latency_budget_s for s in scenario.streams] or [1.0]
        self.drain_s = drain_s if drain_s is not None else max(30.0, 2 * scenario.late_factor * max(budgets))
        self.on_second = on_second
        self.env = simpy.Environment()
        self.rng = random.Random(seed)
        self.loop = asyncio.new_event_loop()
        self.core = scenario.scheduler.core(
            epoch=EPOCH,
            clock=lambda: self.env.now,
            # A simulated scheduler may hold more streams than a real one should: all the scenario's.
            max_streams=max(MAX_STREAMS, len(scenario.streams)),
        )
        self.network = Network(self.env, scenario.channels)
        self.machine = Machine(self.env, scenario.machine) if scenario.machine is not None else None
        self.processors = {
            (node.name, p.name): _Processor(self.env, node.name, p.name, p.workers, p.queue_capacity)
            for node in scenario.nodes.values()
            for p in (*node.processors.values(), *node.deployable.values())
        }
        self.loaded: set[tuple[str, str]] = set()  # deployable (node, processor) with their models loaded
        self._loading: set[tuple[str, str]] = set()
        self.spans = SpanExporter()
        self.streams = {s.spec.stream_id: _Stream(s) for s in scenario.streams}
        if keep_tasks is None:
            keep_tasks = len(self.streams) <= KEEP_TASKS_UP_TO
        self.results = RunResults(
            policy,
            duration_s,
            log=TaskLog(tasks_csv, keep_tasks, seed),
            uplinks=[c.spec.name for c in self.network.channels if c.spec.uplink],
        )
        self.in_flight: dict[str, _Task] = {}  # in the order they were made
        self._on_link: Counter[tuple[str, ...]] = Counter()  # (from, to, stream) -> its tasks at the link (on_the_link)
        self.made_tasks = 0
        self.generating = True
        self._generators: dict[str, _Generator] = {}
        # The profile's answers: (processor, width, height, frames) -> (seconds, spread); (width,
        # height, quality, frames) -> F1.
        self._lookups: dict[tuple[str, int, int, int], tuple[float, float]] = {}
        self._accuracies: dict[tuple[int, int, int, int], float] = {}
        self._published: list[decision_pb2.Decision] = []  # by the core call under way
        self._count_published()
        self._measured_links: dict[str, dict[str, resources_pb2.LinkBandwidth]] = {n: {} for n in scenario.nodes}
        self._settled = self.env.event()
        self._deployable = [(n.name, p) for n in scenario.nodes.values() for p in n.deployable]

    # -- the core, on its own loop -----------------------------------------------------------------

    def _call(self, call: Coroutine[Any, Any, Any]) -> Any:
        """Runs a core call to its end, on the core's loop; counts the decisions it published and, when
        it published any, its wall time. Its steps run at once, as the loop's task would run them
        (nothing else runs on that loop), with the loop set as the running one; a call that waits for a
        future (a thread's result) goes on as a task of the loop until it ends."""
        started = time.perf_counter()
        finished, result, waiting = False, None, None
        asyncio.events._set_running_loop(self.loop)
        try:
            try:
                waiting = call.send(None)
                while waiting is None:  # a bare yield (asyncio.sleep(0)): nothing else to let run
                    waiting = call.send(None)
            except StopIteration as done:
                finished, result = True, done.value
        finally:
            asyncio.events._set_running_loop(None)
        if not finished:
            result = self.loop.run_until_complete(_finish(call, waiting))
        elapsed = time.perf_counter() - started
        if self._published:
            self.results.decisions += len(self._published)
            self.results.policy_decide_s.extend(d.decision_time_s for d in self._published)
            self.results.decision_call_s.append(elapsed)
            published, self._published = self._published, []
            now = self.env.now
            for decision in published:  # the generators follow the stream's new decision
                generator = self._generators.get(decision.stream_id)
                if generator is not None:
                    generator.changed(now)
        return result

    def _count_published(self) -> None:
        """Hears of each decision the core publishes from its meter (what counts dayu_decisions_total), so
        that no call has to look at every stream to find the ones it decided."""
        count = self.core.meter.decision

        def published(decision: decision_pb2.Decision) -> None:
            count(decision)
            self._published.append(decision)

        self.core.meter.decision = published  # type: ignore[method-assign]

    def wake_at(self, when: float, callback: Callable[[simpy.Event], None]) -> simpy.Event:
        """An event at the simulated time `when` exactly (a timeout's time is now + its delay, which
        may round otherwise), calling `callback`."""
        event = simpy.Event(self.env)
        event._ok, event._value = True, None
        event.callbacks.append(callback)  # type: ignore[union-attr]
        heapq.heappush(self.env._queue, (when, NORMAL, next(self.env._eid), event))  # type: ignore[attr-defined]
        return event

    # -- the run -------------------------------------------------------------------------------------

    def run(self) -> RunResults:
        started = time.perf_counter()
        thresholds = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            for node in self.scenario.nodes:  # monitors report from the start, before streams register
                self._call(self.core.report_resources(self._report(node)))
            for stream in self.streams.values():
                self._call(self.core.register(stream.spec))
            for stream in self.streams.values():  # cameras are not in step
                first_s = self.rng.uniform(0, 1 / stream.model.source_fps)
                self._generators[stream.stream_id] = _Generator(self, stream, first_s)
            for generator in self._generators.values():
                generator.start()
            gc.collect()
            gc.freeze()
            for node in self.scenario.nodes:
                self.env.process(self._monitor(node))
                if self.network.peers(node):
                    self.env.process(self._probe_links(node))
            self.env.process(self._check())
            self.env.process(self._export())
            self.env.process(self._clock())
            self.env.run(until=self._settled | self.env.timeout(self.duration_s + self.drain_s))
            for task in list(self.in_flight.values()):  # what the drain left: never lost silently
                self.results.unfinished += 1
                self._settle(task, DROPPED, f"simulation ended with the task unfinished at {task.at}")
            self._flush_spans()
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)
            self.results.log.close()
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()
        results = self.results
        results.simulated_s = self.env.now
        results.wall_s = time.perf_counter() - started
        results.channel_bytes = {c.spec.name: c.bytes_sent for c in self.network.channels}
        results.probe_bytes = sum(c.probe_bytes_sent for c in self.network.channels)
        results.spans_exported, results.spans_dropped = self.spans.exported, self.spans.dropped
        return results

    def _clock(self) -> Generator[simpy.Event, Any, None]:
        while True:
            yield self.env.timeout(1.0)
            if self.generating and self.env.now >= self.duration_s:
                self.generating = False
                self._maybe_settled()
            # Rows of tasks made before the oldest in flight (and before now) are final.
            oldest = next(iter(self.in_flight.values()), None)
            self.results.log.flush(min(self.env.now, oldest.made_at) if oldest else self.env.now)
            self.on_second(self)

    def _maybe_settled(self) -> None:
        if not self.generating and not self.in_flight and not self._settled.triggered:
            self._settled.succeed()

    # -- generators (_Generator) -------------------------------------------------------------------

    def _make_task(
        self,
        stream: _Stream,
        decision: decision_pb2.Decision,
        frames: int,
        placement: dict[str, str],
        frame_bytes: float,
        size: tuple[int, int, int],
    ) -> None:
        """A task of `frames` frames at `decision` (whose placement, frame bytes and size, width, height
        and quality, the generator keeps)."""
        spec = stream.spec
        task = _Task(
            stream,
            stream.made,
            self.env.now,
            decision,
            frames,
            frame_bytes,
            [_Stage(stage, placement.get(name, spec.node), name, kind) for stage, name, kind in stream.stages],
            spec.node,
            size,
        )
        stream.made += 1
        self.made_tasks += 1
        self.in_flight[task.task_id] = task
        self.env.process(self._route(task))

    # -- controllers ---------------------------------------------------------------------------------

    def _route(self, task: _Task) -> Generator[simpy.Event, Any, None]:
        task.hops.append([task.at, 0])
        try:
            for stage in task.stages:
                while not stage.done:
                    if not task.left_source:
                        self._place_by_newest(task)
                    node = task.at
                    if stage.node == node and not self._hosts(node, stage.processor):
                        refuge = self._fallback(task, stage, avoid=node)
                        if refuge is None:
                            raise Dropped(f"no processor {stage.processor!r} for stage {stage.name} on {node}")
                        stage.node = refuge
                        stage.fell_back_from |= {node}
                    if stage.node != node:
                        yield from self._send(task, stage.node, stage)
                        continue
                    yield from self._process(task, stage)
            yield from self._deliver(task)
        except Dropped as reason:
            self._settle(task, DROPPED, str(reason))

    def _hosts(self, node: str, processor: str) -> bool:
        """Whether the node runs the processor now: always, or deployable and loaded (an unloaded one
        refuses tasks with FAILED_PRECONDITION, and the controller falls back)."""
        return processor in self.scenario.nodes[node].processors or (node, processor) in self.loaded

    def _place_by_newest(self, task: _Task) -> None:
        """Pending stages of a task made under an older decision, still on its source node, go where
        the newest decision says (ControllerCore._place_by_newest)."""
        newest = self.core.decision(task.stream.stream_id)
        if (newest.epoch, newest.version) <= (task.decision.epoch, task.decision.version):
            return
        for stage in task.stages:
            node = newest.placement.get(stage.name)
            if not stage.done and node in self.scenario.nodes and node != stage.node:
                stage.node = node

    def _fallback(self, task: _Task, stage: _Stage, avoid: str) -> str | None:
        """Another node for the stage: those the decision deploys it on, then the cloud; never `avoid`,
        nor a node the stage fell back from (ControllerCore._fallback)."""
        tried = stage.fell_back_from | {avoid}
        decision = self.core.decision(task.stream.stream_id)
        name = stage.name
        deployed = list(decision.deployment[name].nodes) if name in decision.deployment else []
        for node in (*deployed, self.scenario.cloud_node):
            if node in self.scenario.nodes and node not in tried:
                return node
        return None

    def _lateness(self, task: _Task) -> str:
        """Better never than late (ControllerCore._lateness): why the task is too late to send on."""
        factor, budget = self.scenario.late_factor, task.stream.spec.latency_budget_s
        age = self.env.now - task.made_at
        if not (factor and budget) or age <= factor * budget:
            return ""
        return f"late: {age:.1f} s old at {task.at}, over {factor:g} times its {budget:g} s budget"

    def _superseded(self, task: _Task, to: str, nbytes: int, delay_s: float) -> str:
        """ControllerCore._superseded: by the scheduler's current decision and the node's last probe."""
        return superseded(
            *self._versions(task),
            task.stream.spec.latency_budget_s,
            self.env.now - task.made_at,
            nbytes,
            self._measured_links[task.at].get(to),
            delay_s,
        )

    def _called_off(self, task: _Task, to: str) -> str:
        """ControllerCore._called_off: by the scheduler's current decision and the stream's tasks behind
        it on the link."""
        behind = self._on_link[(task.at, to, task.stream.stream_id)] - 1
        return called_off(*self._versions(task), task.stream.spec.latency_budget_s, self.env.now - task.made_at, behind)

    def _versions(self, task: _Task) -> tuple[tuple[int, int], tuple[int, int]]:
        """ControllerCore._versions: the task's decision and the scheduler's current one, (epoch, version)."""
        current = self.core.decision(task.stream.stream_id)
        return (task.decision.epoch, task.decision.version), (current.epoch, current.version)

    def _send(
        self, task: _Task, to: str, stage: _Stage | None, with_frames: bool = True
    ) -> Generator[simpy.Event, Any, None]:
        """Moves the task to `to` over the link between the nodes (for `stage`, or its delivery)."""
        here = task.at
        nbytes = self.profile.task_bytes(task.frames, task.frame_bytes, with_frames)
        task.hops[-1][1] = nbytes
        left = self.env.now
        channel = self.network.channel(here, to)
        if channel is not None:
            unwanted = [""]

            def still_wanted() -> bool:  # ControllerCore._over_link's check, once the link is free
                unwanted[0] = self._lateness(task) or (
                    self._superseded(task, to, nbytes, channel.delay_s) if stage else ""
                )
                return not unwanted[0]

            def keep_going() -> bool:  # ControllerCore._over_link's check while the bytes go
                unwanted[0] = self._called_off(task, to)
                return not unwanted[0]

            attributes = {STREAM: task.stream.stream_id, TASK: task.task_id, TO_NODE: to}
            try:
                with on_the_link(self._on_link, (here, to, task.stream.stream_id)):
                    sent = yield from channel.transmit(
                        self.env, nbytes, still_wanted=still_wanted, keep_going=keep_going if stage else None
                    )
            except CalledOff as off:  # its span says what went, as ControllerCore._over_link's does
                self.spans.add(
                    "controller", here, "link.transfer", off.sending_at, self.env.now, **attributes, **{BYTES: off.sent}
                )
                raise Dropped(unwanted[0]) from None
            except NotSent:
                raise Dropped(unwanted[0]) from None
            attributes[DELAY] = channel.delay_s
            self.spans.add(
                "controller", here, "link.transfer", sent.sending_at, sent.arrived_at, **attributes, **{BYTES: nbytes}
            )
        if stage is not None:
            stage.transfer_s += self.env.now - left
        else:
            task.delivery_s += self.env.now - left
        task.at, task.left_source = to, True
        task.hops.append([to, 0])

    def _process(self, task: _Task, stage: _Stage) -> Generator[simpy.Event, Any, None]:
        """Runs the stage on this node's processor; a full queue sends it elsewhere (stage.node moves)
        or, with nowhere to go, is tried again until the task would be late (ControllerCore._process)."""
        node, name = task.at, stage.processor
        processor = self.processors[(node, name)]
        factor, budget = self.scenario.late_factor, task.stream.spec.latency_budget_s
        patience = max(0.0, factor * budget - (self.env.now - task.made_at)) if factor and budget else PATIENCE_S
        give_up_at, wait = self.env.now + patience, RETRY_S[0]
        while processor.queued >= processor.capacity:
            refuge = self._fallback(task, stage, avoid=node)
            if refuge is not None:
                stage.node = refuge
                stage.fell_back_from |= {node}
                self.results.fallbacks += 1
                return
            if self.env.now + wait > give_up_at:
                raise Dropped(
                    f"processor {name!r} on {node} failed stage {stage.name}: RESOURCE_EXHAUSTED: "
                    f"{name} queue on {node} is full ({processor.capacity} tasks)"
                )
            yield self.env.timeout(wait)
            wait = min(wait * 2, RETRY_S[1])
        seconds, spread = self._processing(name, task)
        if spread:
            seconds *= self.rng.lognormvariate(0.0, spread)
        queued_at = self.env.now
        with processor.workers.request() as turn:
            yield turn
            started = self.env.now
            if self.machine is None:
                yield self.env.timeout(seconds)
            else:  # the nodes share a machine's cores (compute.py)
                yield from self.machine.run(node, seconds)
        attributes = {STREAM: task.stream.stream_id, TASK: task.task_id, STAGE: stage.name}
        self.spans.add("processor", node, "processor.queue", queued_at, started, **attributes)
        self.spans.add("processor", node, "processor.inference", started, self.env.now, **attributes)
        stage.queue_s, stage.process_s = started - queued_at, self.env.now - started
        stage.executed_on, stage.done = node, True

    def _processing(self, processor: str, task: _Task) -> tuple[float, float]:
        """The profile's median seconds for the task's segment on the processor, and its spread (the
        profile's lookups, kept per processor, decision and segment length)."""
        width, height, _ = task.size
        key = (processor, width, height, task.frames)
        found = self._lookups.get(key)
        if found is None:
            seconds = self.profile.processing_s(processor, width, height, task.frames)
            if len(self._lookups) >= LOOKUPS_KEPT:
                self._lookups.clear()
            found = self._lookups[key] = (seconds, self.profile.spread(processor))
        return found

    def _deliver(self, task: _Task) -> Generator[simpy.Event, Any, None]:
        """To the distributor on the cloud: the frames stay behind, except, for a source with ground
        truth, a preview every PREVIEW_EVERY_S per stream (without, for golden scoring: always)."""
        stream = task.stream
        keeps = not stream.model.has_ground_truth or self.env.now - stream.last_preview >= PREVIEW_EVERY_S
        if keeps:
            stream.last_preview = self.env.now
        if task.at != self.scenario.cloud_node:
            yield from self._send(task, self.scenario.cloud_node, None, with_frames=keeps)
        else:
            task.hops[-1][1] = self.profile.task_bytes(task.frames, task.frame_bytes, keeps)
        self._settle(task, DELIVERED)

    # -- the distributor -----------------------------------------------------------------------------

    def _settle(self, task: _Task, outcome: int, reason: str = "") -> None:
        """The task's record, as feedback to the scheduler, and in the results."""
        if self.in_flight.pop(task.task_id, None) is None:
            return
        spec, config = task.stream.spec, task.decision.configuration
        latency = self.env.now - task.made_at
        made = task_pb2.Task(
            stream_id=spec.stream_id,
            sequence=task.sequence,
            task_id=task.task_id,
            root_id=task.task_id,
            latency_budget_s=spec.latency_budget_s,
            decision_version=task.decision.version,
            decision_epoch=task.decision.epoch,
            age_s=latency,
            configuration=config,
        )
        made.created_at.FromNanoseconds(round(task.made_at * 1e9))
        made.dag.pipeline = spec.pipeline.name
        for stage in task.stages:
            timings = task_pb2.StageTimings(
                queue_s=stage.queue_s, process_s=stage.process_s, transfer_s=stage.transfer_s
            )
            state = task_pb2.STAGE_STATE_DONE if stage.done else task_pb2.STAGE_STATE_UNSPECIFIED
            made.dag.stages.add(
                spec=stage.spec, node=stage.node, executed_on=stage.executed_on, state=state, timings=timings
            )
        for node, nbytes in task.hops:
            made.hops.add(component="controller", node=node, bytes=nbytes)
        record = task_pb2.TaskRecord(task=made, outcome=outcome, reason=reason, latency_s=latency)
        score = None
        if outcome == DELIVERED and task.stream.model.has_ground_truth and first_detector(made) is not None:
            key = (*task.size, task.frames)
            score = self._accuracies.get(key)
            if score is None:
                score = self.profile.accuracy(*task.size, task.frames)
                if len(self._accuracies) >= LOOKUPS_KEPT:
                    self._accuracies.clear()
                self._accuracies[key] = score
            record.accuracy = score
        self._call(self.core.feedback(record))
        self.results.dropped += outcome == DROPPED
        self.results.log.add(
            TaskOutcome(
                made_s=task.made_at,
                stream_id=spec.stream_id,
                decision_version=task.decision.version,
                configuration=config,
                placement=" ".join(f"{s.name}@{s.executed_on or s.node}" for s in task.stages),
                delivered=outcome == DELIVERED,
                latency_s=latency,
                budget_s=spec.latency_budget_s,
                accuracy=score,
                reason=reason,
                transfer_s=sum(stage.transfer_s for stage in task.stages) + task.delivery_s,
            )
        )
        self._maybe_settled()

    # -- monitors, exporters and the scheduler service's checks -------------------------------------

    def _report(self, node: str) -> resources_pb2.NodeResources:
        spec = self.scenario.nodes[node]
        report = resources_pb2.NodeResources(
            node=node, cpu_count=math.ceil(spec.cpu_cores), cpu_limit_cores=spec.cpu_cores
        )
        for name in (*spec.processors, *spec.deployable):
            processor = self.processors[(node, name)]
            if name in spec.deployable:
                loaded = (node, name) in self.loaded
                report.deployable.add(kind=name, loaded=loaded, load_s=MODEL_LOAD_S, model_bytes=MODEL_BYTES)
                if not loaded:  # runs nothing: not in the queues, so not runnable (as the monitor reports it)
                    continue
            report.queue_lengths[name] = processor.queued
            report.workers[name] = processor.workers.capacity
        report.memory_total_bytes = spec.memory_bytes
        report.memory_used_bytes = MODEL_BYTES * sum(1 for n, _ in self.loaded if n == node)
        report.links.extend(self._measured_links[node][peer] for peer in sorted(self._measured_links[node]))
        return report

    def _monitor(self, node: str) -> Generator[simpy.Event, Any, None]:
        while True:
            yield self.env.timeout(self.scenario.monitor_interval_s)
            self._call(self.core.report_resources(self._report(node)))

    def _probe_links(self, node: str) -> Generator[simpy.Event, Any, None]:
        """Every interval, each link from the node measured with a small and a large probe through its
        FIFO, one link at a time, or by the task transfer going when the link fell under it
        (ControllerCore.measure_link)."""
        while True:
            started = self.env.now
            for peer in self.network.peers(node):
                channel = self.network.channel(node, peer)
                assert channel is not None
                last = self._measured_links[node].get(peer)
                fell_to = channel.link.fell_to_mbps(last.bandwidth_mbps if last is not None else None)
                if last is not None and fell_to is not None:  # as ControllerCore.measure_link says it
                    last.bandwidth_mbps = fell_to
                    continue
                small = yield from channel.transmit(self.env, 1, probe=True)
                large = yield from channel.transmit(self.env, self.scenario.probe_bytes, probe=True)
                small_s = small.arrived_at - small.queued_at
                large_s = large.arrived_at - large.queued_at
                self._measured_links[node][peer] = resources_pb2.LinkBandwidth(
                    from_node=node,
                    to_node=peer,
                    bandwidth_mbps=self.scenario.probe_bytes * 8 / max(large_s - small_s, 1e-6) / 1e6,
                    rtt_ms=small_s * 1000,
                )
            yield self.env.timeout(max(0.0, self.scenario.monitor_interval_s - (self.env.now - started)))

    def _check(self) -> Generator[simpy.Event, Any, None]:
        while True:
            yield self.env.timeout(CHECK_INTERVAL_S)
            self._call(self.core.check_feedback())
            self._call(self.core.check_nodes())
            if self._deployable:
                self._call(self.core.check_deployment())
                self._apply_deployment()

    def _apply_deployment(self) -> None:
        """Each deployable processor follows the plan, as it polls it in the mesh: a load takes
        MODEL_LOAD_S (then the next report says it is loaded); an unload stops new tasks at once, those
        queued finishing."""
        plans = self.core.deployment.kinds
        for node, name in self._deployable:
            plan = plans.get(node, {}).get(name)
            if plan is None:
                continue
            key = (node, name)
            if plan.load and key not in self.loaded and key not in self._loading:
                self._loading.add(key)
                self.env.process(self._load(key))
            elif not plan.load and key in self.loaded:
                self.loaded.discard(key)
                self.results.model_unloads += 1

    def _load(self, key: tuple[str, str]) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(MODEL_LOAD_S)
        self._loading.discard(key)
        self.loaded.add(key)
        self.results.model_loads += 1

    def _export(self) -> Generator[simpy.Event, Any, None]:
        while True:
            yield self.env.timeout(EXPORT_INTERVAL_S)
            self._flush_spans()

    def _flush_spans(self) -> None:
        for request in self.spans.requests():
            self._call(self.core.receive_spans(request))
