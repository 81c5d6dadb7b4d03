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
import math
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any

import simpy

from dayu.controller.core import PREVIEW_EVERY_S
from dayu.distributor.core import first_detector
from dayu.media.frames import FrameRateFilter
from dayu.runtime.retry import RETRY_S
from dayu.runtime.tracing import BYTES, DELAY, STAGE, STREAM, TASK, TO_NODE
from dayu.scheduler.core import MAX_STREAMS, Admission, SchedulerCore
from dayu.simulator.costs import Profile
from dayu.simulator.network import Network, NotSent
from dayu.simulator.scenario import Scenario, StreamModel
from dayu.simulator.telemetry import EXPORT_INTERVAL_S, SpanExporter
from dayu.v1 import decision_pb2, resources_pb2, task_pb2, types_pb2

CHECK_INTERVAL_S = 1.0  # the scheduler service's feedback and node checks
EPOCH = 1  # the core's epoch: fixed, so that runs repeat exactly
DECISION_CALLS_KEPT = 100_000  # wall times of decision-making calls kept (the latest)
DELIVERED, DROPPED = task_pb2.TASK_OUTCOME_DELIVERED, task_pb2.TASK_OUTCOME_DROPPED
PATIENCE_S = 30.0  # the controller's wait for a full processor when a task has no budget


class Dropped(Exception):
    """The task cannot go on; the message is the reason recorded with it."""


@dataclass
class _Stage:
    spec: types_pb2.StageSpec
    node: str  # where it is placed (moved by fallbacks and newer decisions)
    executed_on: str = ""
    queue_s: float = 0.0
    process_s: float = 0.0
    transfer_s: float = 0.0
    done: bool = False
    fell_back_from: set[str] = field(default_factory=set)


@dataclass
class _Stream:
    model: StreamModel
    last_preview: float = -math.inf
    made: int = 0

    @property
    def spec(self) -> decision_pb2.StreamSpec:
        return self.model.spec


@dataclass
class _Task:
    stream: _Stream
    sequence: int
    made_at: float
    decision: decision_pb2.Decision
    frames: int
    frame_bytes: float  # mean JPEG bytes of one of its frames
    stages: list[_Stage]
    at: str  # the node it is on
    hops: list[list[Any]] = field(default_factory=list)  # [node, bytes when it left]
    left_source: bool = False
    delivery_s: float = 0.0  # its transfer to the distributor

    @property
    def task_id(self) -> str:
        return f"{self.stream.spec.stream_id}#{self.sequence}"


@dataclass
class TaskOutcome:
    """What the results keep of a task (a row of the run's tasks.csv)."""

    made_s: float
    stream_id: str
    decision_version: int
    configuration: types_pb2.Configuration
    placement: str
    delivered: bool
    latency_s: float
    budget_s: float
    accuracy: float | None
    reason: str
    transfer_s: float  # over links, its stages' and its delivery's, queueing included

    @property
    def in_budget(self) -> bool:
        return self.delivered and self.latency_s <= self.budget_s


@dataclass
class RunResults:
    policy: str
    duration_s: float
    tasks: list[TaskOutcome] = field(default_factory=list)
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
    dropped: int = 0


class _Processor:
    def __init__(self, env: simpy.Environment, node: str, name: str, workers: int, capacity: int) -> None:
        self.node, self.name, self.capacity = node, name, capacity
        self.workers = simpy.Resource(env, capacity=workers)

    @property
    def queued(self) -> int:
        return len(self.workers.queue)


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
    ) -> None:
        scenario.check_against(profile.processors, "--profile")
        self.scenario, self.profile, self.duration_s = scenario, profile, duration_s
        budgets = [s.spec.latency_budget_s for s in scenario.streams] or [1.0]
        self.drain_s = drain_s if drain_s is not None else max(30.0, 2 * scenario.late_factor * max(budgets))
        self.on_second = on_second
        self.env = simpy.Environment()
        self.rng = random.Random(seed)
        self.loop = asyncio.new_event_loop()
        section = scenario.scheduler
        self.core = SchedulerCore(
            section.default_policy.spec(),
            scenario.cloud_node,
            section.decision_interval_s,
            Admission(section.max_queue, section.resume_queue),
            section.fallback_after_s,
            section.stale_after_s,
            epoch=EPOCH,
            clock=lambda: self.env.now,
            # A simulated scheduler may hold more streams than a real one should: all the scenario's.
            max_streams=max(MAX_STREAMS, len(scenario.streams)),
        )
        self.network = Network(self.env, scenario.channels)
        self.processors = {
            (node.name, p.name): _Processor(self.env, node.name, p.name, p.workers, p.queue_capacity)
            for node in scenario.nodes.values()
            for p in node.processors.values()
        }
        self.spans = SpanExporter()
        self.streams = {s.spec.stream_id: _Stream(s) for s in scenario.streams}
        self.results = RunResults(
            policy, duration_s, uplinks=[c.spec.name for c in self.network.channels if c.spec.uplink]
        )
        self.in_flight: dict[str, _Task] = {}
        self.generating = True
        self._published: list[decision_pb2.Decision] = []  # by the core call under way
        self._count_published()
        self._measured_links: dict[str, dict[str, resources_pb2.LinkBandwidth]] = {n: {} for n in scenario.nodes}
        self._settled = self.env.event()

    # -- the core, on its own loop -----------------------------------------------------------------

    def _call(self, call: Coroutine[Any, Any, Any]) -> Any:
        """Runs a core call to its end; counts the decisions it published and, when it published any,
        its wall time."""
        started = time.perf_counter()
        result = self.loop.run_until_complete(call)
        elapsed = time.perf_counter() - started
        if self._published:
            self.results.decisions += len(self._published)
            self.results.policy_decide_s.extend(d.decision_time_s for d in self._published)
            self.results.decision_call_s.append(elapsed)
            self._published.clear()
        return result

    def _count_published(self) -> None:
        """Hears of each decision the core publishes from its meter (what counts dayu_decisions_total), so
        that no call has to look at every stream to find the ones it decided."""
        count = self.core.meter.decision

        def published(decision: decision_pb2.Decision) -> None:
            count(decision)
            self._published.append(decision)

        self.core.meter.decision = published  # type: ignore[method-assign]

    # -- the run -------------------------------------------------------------------------------------

    def run(self) -> RunResults:
        started = time.perf_counter()
        try:
            for node in self.scenario.nodes:  # monitors report from the start, before streams register
                self._call(self.core.report_resources(self._report(node)))
            for stream in self.streams.values():
                self._call(self.core.register(stream.spec))
            for stream in self.streams.values():
                self.env.process(self._generate(stream))
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
            self.on_second(self)

    def _maybe_settled(self) -> None:
        if not self.generating and not self.in_flight and not self._settled.triggered:
            self._settled.succeed()

    # -- generators ----------------------------------------------------------------------------------

    def _generate(self, stream: _Stream) -> Generator[simpy.Event, Any, None]:
        source_fps = stream.model.source_fps
        every = 1 / source_fps
        rates = FrameRateFilter(source_fps, source_fps)
        yield self.env.timeout(self.rng.uniform(0, every))  # cameras are not in step
        kept = 0
        while self.env.now < self.duration_s:
            decision = self.core.decision(stream.spec.stream_id)
            config = decision.configuration
            if decision.paused:
                kept = 0
            else:
                target = min(config.fps, source_fps)
                if rates.target_fps != target:
                    rates.target_fps = target
                if rates.keep():
                    kept += 1
                    if kept >= config.frames_per_segment:
                        self._make_task(stream, decision, kept)
                        kept = 0
            yield self.env.timeout(every)

    def _make_task(self, stream: _Stream, decision: decision_pb2.Decision, frames: int) -> None:
        spec, config = stream.spec, decision.configuration
        size = config.resolution
        task = _Task(
            stream,
            stream.made,
            self.env.now,
            decision,
            frames,
            self.profile.frame_bytes(size.width, size.height, config.quality),
            [_Stage(stage, decision.placement.get(stage.name, spec.node)) for stage in spec.pipeline.stages],
            spec.node,
        )
        stream.made += 1
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
                    if stage.node == node and stage.spec.processor not in self.scenario.nodes[node].processors:
                        refuge = self._fallback(task, stage, avoid=node)
                        if refuge is None:
                            raise Dropped(
                                f"no processor {stage.spec.processor!r} for stage {stage.spec.name} on {node}"
                            )
                        stage.node = refuge
                        stage.fell_back_from.add(node)
                    if stage.node != node:
                        yield from self._send(task, stage.node, stage)
                        continue
                    yield from self._process(task, stage)
            yield from self._deliver(task)
        except Dropped as reason:
            self._settle(task, DROPPED, str(reason))

    def _place_by_newest(self, task: _Task) -> None:
        """Pending stages of a task made under an older decision, still on its source node, go where
        the newest decision says (ControllerCore._place_by_newest)."""
        newest = self.core.decision(task.stream.spec.stream_id)
        if (newest.epoch, newest.version) <= (task.decision.epoch, task.decision.version):
            return
        for stage in task.stages:
            node = newest.placement.get(stage.spec.name)
            if not stage.done and node in self.scenario.nodes and node != stage.node:
                stage.node = node

    def _fallback(self, task: _Task, stage: _Stage, avoid: str) -> str | None:
        """Another node for the stage: those the decision deploys it on, then the cloud; never `avoid`,
        nor a node the stage fell back from (ControllerCore._fallback)."""
        tried = stage.fell_back_from | {avoid}
        decision = self.core.decision(task.stream.spec.stream_id)
        name = stage.spec.name
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
            try:
                sent = yield from channel.transmit(self.env, nbytes, still_wanted=lambda: not self._lateness(task))
            except NotSent:
                raise Dropped(self._lateness(task)) from None
            attributes = {STREAM: task.stream.spec.stream_id, TASK: task.task_id, TO_NODE: to, BYTES: nbytes}
            attributes[DELAY] = channel.delay_s
            self.spans.add("controller", here, "link.transfer", sent.sending_at, sent.arrived_at, **attributes)
        if stage is not None:
            stage.transfer_s += self.env.now - left
        else:
            task.delivery_s += self.env.now - left
        task.at, task.left_source = to, True
        task.hops.append([to, 0])

    def _process(self, task: _Task, stage: _Stage) -> Generator[simpy.Event, Any, None]:
        """Runs the stage on this node's processor; a full queue sends it elsewhere (stage.node moves)
        or, with nowhere to go, is tried again until the task would be late (ControllerCore._process)."""
        node, name = task.at, stage.spec.processor
        processor = self.processors[(node, name)]
        factor, budget = self.scenario.late_factor, task.stream.spec.latency_budget_s
        patience = max(0.0, factor * budget - (self.env.now - task.made_at)) if factor and budget else PATIENCE_S
        give_up_at, wait = self.env.now + patience, RETRY_S[0]
        while processor.queued >= processor.capacity:
            refuge = self._fallback(task, stage, avoid=node)
            if refuge is not None:
                stage.node = refuge
                stage.fell_back_from.add(node)
                self.results.fallbacks += 1
                return
            if self.env.now + wait > give_up_at:
                raise Dropped(
                    f"processor {name!r} on {node} failed stage {stage.spec.name}: RESOURCE_EXHAUSTED: "
                    f"{name} queue on {node} is full ({processor.capacity} tasks)"
                )
            yield self.env.timeout(wait)
            wait = min(wait * 2, RETRY_S[1])
        config = task.decision.configuration
        seconds = self.profile.processing_s(name, config.resolution.width, config.resolution.height, task.frames)
        spread = self.profile.spread(name)
        if spread:
            seconds *= self.rng.lognormvariate(0.0, spread)
        queued_at = self.env.now
        with processor.workers.request() as turn:
            yield turn
            started = self.env.now
            yield self.env.timeout(seconds)
        attributes = {STREAM: task.stream.spec.stream_id, TASK: task.task_id, STAGE: stage.spec.name}
        self.spans.add("processor", node, "processor.queue", queued_at, started, **attributes)
        self.spans.add("processor", node, "processor.inference", started, self.env.now, **attributes)
        stage.queue_s, stage.process_s = started - queued_at, self.env.now - started
        stage.executed_on, stage.done = node, True

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
            size = config.resolution
            score = self.profile.accuracy(size.width, size.height, config.quality, task.frames)
            record.accuracy = score
        self._call(self.core.feedback(record))
        self.results.dropped += outcome == DROPPED
        self.results.tasks.append(
            TaskOutcome(
                made_s=task.made_at,
                stream_id=spec.stream_id,
                decision_version=task.decision.version,
                configuration=config,
                placement=" ".join(f"{s.spec.name}@{s.executed_on or s.node}" for s in task.stages),
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
        for name in spec.processors:
            report.queue_lengths[name] = self.processors[(node, name)].queued
        report.links.extend(self._measured_links[node][peer] for peer in sorted(self._measured_links[node]))
        return report

    def _monitor(self, node: str) -> Generator[simpy.Event, Any, None]:
        while True:
            yield self.env.timeout(self.scenario.monitor_interval_s)
            self._call(self.core.report_resources(self._report(node)))

    def _probe_links(self, node: str) -> Generator[simpy.Event, Any, None]:
        """Every interval, each link from the node measured with a small and a large probe through its
        FIFO, one link at a time (ControllerCore.measure_link)."""
        while True:
            started = self.env.now
            for peer in self.network.peers(node):
                channel = self.network.channel(node, peer)
                assert channel is not None
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

    def _export(self) -> Generator[simpy.Event, Any, None]:
        while True:
            yield self.env.timeout(EXPORT_INTERVAL_S)
            self._flush_spans()

    def _flush_spans(self) -> None:
        for request in self.spans.requests():
            self._call(self.core.receive_spans(request))

    @property
    def made_tasks(self) -> int:
        return sum(stream.made for stream in self.streams.values())
