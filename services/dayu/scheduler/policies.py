"""Scheduling policies, selected per stream by name with typed parameters.

A policy looks at the stream and at the feedback of its current decision and proposes the next
configuration and placement, or None to keep the current one. The scheduler versions, records
and pushes what it proposes. Policies keep their own state between calls (one instance per
stream)."""

from __future__ import annotations

import itertools
import math
import operator
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import pydantic

from dayu.runtime.registry import Registry
from dayu.scheduler.knobs import Feedback, Figures, configuration, frame_rates, ladders, qualities, resolutions
from dayu.scheduler.traces import HopKey, HopKeyTuple, HopSamples
from dayu.v1 import decision_pb2, resources_pb2, task_pb2, types_pb2

FEEDBACK_ASKS_KEPT = 16  # StreamView.feedback's answers kept (a policy asks with a few sets of arguments)


@dataclass
class StreamView:
    """What a policy may look at."""

    spec: decision_pb2.StreamSpec
    current: decision_pb2.Decision | None
    cloud_node: str = "cloud"
    recent: list[task_pb2.TaskRecord] = field(default_factory=list)
    resources: dict[str, resources_pb2.NodeResources] = field(default_factory=dict)  # latest reports, stale left out
    stale: frozenset[str] = frozenset()  # nodes whose monitor fell silent: nothing new goes there
    arrived_since_decision: int = 0  # records received since the current decision was published
    # Of those, the records of tasks made under it: a count, where `recent` keeps the latest only.
    arrived_made_under_current: int = 0
    hops: Mapping[HopKeyTuple, HopSamples] = field(default_factory=dict)  # the stream's hop latency, from traces
    traced_bandwidth: Mapping[tuple[str, str], float] = field(default_factory=dict)  # link -> Mbit/s, from traces
    # CPU of each node, in cores: now, and when each of `recent` arrived (same order). Processing
    # measured on a node whose CPU was cut since is scaled up by the ratio, so policies react to
    # the cut before slow tasks come back.
    cpu_cores: Mapping[str, float] = field(default_factory=dict)
    recent_cpu_cores: list[Mapping[str, float]] = field(default_factory=list)
    # The stream's share of its node's uplink to the cloud, in Mbit/s, when other streams of the node
    # send over it too (dayu.scheduler.shares: decided for all of them together); None when alone.
    uplink_share_mbps: float | None = None
    # The stream's share of each processor its stages run on that other streams' stages run on too, by
    # stage, in seconds of processing a second (its workers' time, divided the same way); empty when
    # it shares none.
    load_shares: Mapping[str, float] = field(default_factory=dict)
    # `recent`'s figures by each record's id, with the record (held, so that its id stays its own).
    _figures: dict[int, tuple[task_pb2.TaskRecord, Figures]] = field(default_factory=dict, repr=False, compare=False)
    # The last figures() of all of `recent`: the records (the objects) and their figures.
    _all_figures: tuple[list[task_pb2.TaskRecord], list[Figures]] = field(
        default_factory=lambda: ([], []), repr=False, compare=False
    )
    # feedback()'s answers by its arguments, each with what it read (a decision asks the same several times).
    _feedback: dict[tuple[int, bool, int], tuple[tuple[object, ...], Feedback | None]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def figures(self, last: int = 0) -> list[Figures]:
        """`recent`'s figures (what Feedback reads of them), each record's read once; only the `last`
        most recent when given."""
        records = self.recent[-last:] if last else self.recent
        seen, was = self._all_figures
        if not last and len(seen) == len(records) and all(map(operator.is_, seen, records)):
            return list(was)  # asked again before a record came: the same records
        cache, read = self._figures, []
        for record in records:
            kept = cache.get(id(record))
            if kept is None or kept[0] is not record:
                kept = cache[id(record)] = (record, Figures.of(record))
            read.append(kept[1])
        if len(cache) > 2 * len(self.recent):  # the records gone from `recent` are forgotten
            # Only those read: a read of the `last` few leaves the older records of `recent` unread.
            self._figures = {
                id(record): kept
                for record in self.recent
                if (kept := cache.get(id(record))) is not None and kept[0] is record
            }
        if not last:
            self._all_figures = (list(records), read[:])
        return read

    def feedback(self, min_tasks: int = 1, made_under_current: bool = True, last: int = 0) -> Feedback | None:
        """Feedback of the tasks made under the current decision (what that configuration costs),
        or, with made_under_current False, of every task that arrived since it was published (how
        the mesh behaves now, even while tasks made before are still draining); only the `last`
        most recent of them when given (so a long-standing decision is judged on now, not on its
        whole history). None until there are min_tasks of them."""
        recent, cores = self.figures(), self.recent_cpu_cores
        if made_under_current:
            version = self.current.version if self.current else 0
            chosen: list[int] = []
            for i in reversed(range(len(recent))):  # the newest first, as many as needed
                if last and len(chosen) == last:
                    break
                if recent[i].version == version:
                    chosen.append(i)
            chosen.reverse()
        else:
            chosen = list(range(len(recent) - min(self.arrived_since_decision, len(recent)), len(recent)))
            chosen = chosen[-last:] if last else chosen
        # The cores when each record arrived: the two lists end together; the first records' may be unknown.
        unknown = len(recent) - min(len(cores), len(recent))
        records = [recent[i] for i in chosen]
        cores_then = [cores[len(cores) - len(recent) + i] if i >= unknown else {} for i in chosen]
        # What Feedback.of reads: the records, the cores then, and now on the nodes they ran on. The
        # same as last asked (the objects themselves, or equal ones) gives the same answer.
        nodes = {stage[1] for record in records for stage in record.stages}
        read = (*records, *cores_then, *sorted((node, self.cpu_cores.get(node)) for node in nodes))
        asked = (min_tasks, made_under_current, last)
        kept = self._feedback.get(asked)
        if kept is not None and kept[0] == read:
            return kept[1]
        summary = Feedback.of(records, cores_then, self.cpu_cores)
        answer = summary if summary and summary.tasks >= min_tasks else None
        if len(self._feedback) >= FEEDBACK_ASKS_KEPT:
            self._feedback.clear()
        self._feedback[asked] = (read, answer)
        return answer

    def bandwidth_mbps(self, from_node: str, to_node: str) -> float | None:
        """A link's bandwidth: from the latest task transfers in the traces (what tasks get now),
        else the monitors' latest probe, else None."""
        if (from_node, to_node) in self.traced_bandwidth:
            return self.traced_bandwidth[(from_node, to_node)]
        report = self.resources.get(from_node)
        for link in report.links if report else []:
            if link.to_node == to_node:
                return link.bandwidth_mbps
        return None

    def uplink_mbps(self, shared: bool = True) -> float | None:
        """The bandwidth of the stream's uplink to the cloud; with `shared`, what of it is the stream's
        own when other streams of its node send over it too."""
        whole = self.bandwidth_mbps(self.spec.node, self.cloud_node)
        if shared and whole is not None and self.uplink_share_mbps is not None:
            return min(whole, self.uplink_share_mbps)
        return whole

    def needs_now(self, last: int = 8) -> Needs:
        """What the stream uses now, from its latest tasks: their size over their segments' duration
        (Mbit/s) and each stage's processing over it (seconds a second). Unknown before any was
        delivered."""
        return Needs.of(Feedback.of(self.figures(last)), self.current.configuration if self.current else None)

    def stage_cost_s(self, stage: str, node: str) -> float | None:
        """Median queueing plus inference of a stage on a node, from the stream's traces; None if
        the stage has not run there lately."""
        inference = self.hops.get(HopKey("processor.inference", stage, node))
        if inference is None:
            return None
        queue = self.hops.get(HopKey("processor.queue", stage, node))
        return inference.p50_s + (queue.p50_s if queue else 0.0)

    def faster_on(self, stage: str, node: str, than: str) -> bool:
        """Whether the traces say the stage runs faster on `node` than on `than`; unknown counts as yes."""
        there, here = self.stage_cost_s(stage, node), self.stage_cost_s(stage, than)
        return there is None or here is None or there < here

    def can_run(self, node: str, kind: str) -> bool:
        """Whether `node` has a processor of `kind`, by its monitor's report; unknown counts as yes,
        a stale node as no."""
        if node in self.stale:
            return False
        report = self.resources.get(node)
        return report is None or kind in report.queue_lengths

    def placement(self, node: str) -> dict[str, str]:
        return {stage.name: node for stage in self.spec.pipeline.stages}


@dataclass(frozen=True)
class Needs:
    """What a stream would use of what it shares with other streams, had it each to itself: Mbit/s of
    its uplink (None: unknown), and seconds of processing a second on each stage's processor (a
    stage left out: unknown)."""

    uplink_mbps: float | None = None
    loads: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, feedback: Feedback | None, config: types_pb2.Configuration | None) -> Needs:
        """What tasks like these use under `config`: their size over their segments' duration
        (Mbit/s) and each stage's processing over it (seconds a second); unknown without both."""
        if feedback is None or config is None or not config.fps or not config.frames_per_segment:
            return cls()
        segments_a_second = config.fps / config.frames_per_segment
        return cls(
            feedback.bytes_per_task * 8 * segments_a_second / 1e6,
            {stage: process_s * segments_a_second for stage, process_s in feedback.stage_process_s.items()},
        )


@dataclass
class Proposal:
    configuration: types_pb2.Configuration
    placement: dict[str, str]
    reason: str


class Policy(Protocol):
    def decide(self, view: StreamView) -> Proposal | None:
        """The next decision, or None to keep the current one. Must propose when view.current is None."""

    # A policy may also say what it would use of a shared uplink and processors had it each to itself,
    # as `needs(view) -> Needs`: the core divides them by it (dayu.scheduler.shares). The needs of a
    # policy that does not are what it uses now (StreamView.needs_now).


POLICIES: Registry[type[Policy]] = Registry("policy")


class Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class FixedParams(Strict):
    width: int | None = pydantic.Field(None, gt=0, description="resolution width; the source's when unset")
    height: int | None = pydantic.Field(None, gt=0, description="resolution height; the source's when unset")
    fps: float | None = pydantic.Field(None, gt=0, description="frame rate; the source's when unset")
    quality: int | None = pydantic.Field(None, ge=1, le=100)
    frames_per_segment: int | None = pydantic.Field(None, ge=1)
    placement: dict[str, str] = pydantic.Field(
        default_factory=dict, description="stage -> node; stages not named run on the stream's node"
    )

    def configuration(self, view: StreamView) -> types_pb2.Configuration:
        best = view.spec.max_configuration
        resolution = types_pb2.Resolution(width=self.width, height=self.height) if self.width and self.height else None
        fps = min(self.fps, best.fps) if self.fps else None
        return configuration(best, resolution, fps, self.quality, self.frames_per_segment)


@POLICIES.register("fixed", params=FixedParams)
class FixedPolicy:
    """Always the same configuration and placement: the baseline the adaptive policies beat."""

    def __init__(self, params: FixedParams) -> None:
        self.params = params

    def decide(self, view: StreamView) -> Proposal | None:
        if view.current is not None:
            return None
        placement = {**view.placement(view.spec.node), **self.params.placement}
        return Proposal(self.params.configuration(view), placement, "fixed configuration and placement")


@POLICIES.register("cloud_only", params=FixedParams)
class CloudOnlyPolicy(FixedPolicy):
    """Every stage on the cloud node, the configuration fixed."""

    def decide(self, view: StreamView) -> Proposal | None:
        if view.current is not None:
            return None
        return Proposal(self.params.configuration(view), view.placement(view.cloud_node), "every stage on the cloud")


@POLICIES.register("edge_only", params=FixedParams)
class EdgeOnlyPolicy(FixedPolicy):
    """Every stage on the stream's edge node, the configuration fixed."""

    def decide(self, view: StreamView) -> Proposal | None:
        if view.current is not None:
            return None
        return Proposal(self.params.configuration(view), view.placement(view.spec.node), "every stage on the edge")


class RandomParams(Strict):
    seed: int = 0
    every_tasks: int = pydantic.Field(5, ge=1, description="draw again after this many tasks of feedback")


@POLICIES.register("random", params=RandomParams)
class RandomPolicy:
    """A random configuration and placement (edge or cloud per stage), drawn again every few tasks."""

    def __init__(self, params: RandomParams) -> None:
        self.params = params
        self.rng = random.Random(params.seed)

    def decide(self, view: StreamView) -> Proposal | None:
        if view.current is not None and not view.feedback(self.params.every_tasks):
            return None
        best = view.spec.max_configuration
        config = configuration(
            best,
            self.rng.choice(resolutions(best.resolution)),
            self.rng.choice(frame_rates(best.fps)),
            self.rng.choice(qualities(best.quality)),
        )
        nodes = [view.spec.node, view.cloud_node]
        placement = {stage.name: self.rng.choice(nodes) for stage in view.spec.pipeline.stages}
        return Proposal(config, placement, "random draw")


class FeedbackControlParams(Strict):
    target: float = pydantic.Field(0.8, gt=0, le=1, description="aim at this share of the latency budget")
    slack: float = pydantic.Field(0.6, gt=0, lt=1, description="step up below target*slack of the budget")
    min_tasks: int = pydantic.Field(2, ge=1, description="feedback needed before a step")
    window: int = pydantic.Field(3, ge=1, description="judge the delay on this many most recent tasks")
    placement: dict[str, str] = pydantic.Field(default_factory=dict)


@POLICIES.register("feedback_control", params=FeedbackControlParams)
class FeedbackControlPolicy:
    """Feedback control of resolution against the latency budget ("Better never than late"): one
    step down the resolution ladder when the delay exceeds the target, one step up when it is
    comfortably below."""

    def __init__(self, params: FeedbackControlParams) -> None:
        self.params = params
        self.level = 0  # index on the resolution ladder, 0 = the best

    def decide(self, view: StreamView) -> Proposal | None:
        ladder = resolutions(view.spec.max_configuration.resolution)
        placement = {**view.placement(view.spec.node), **self.params.placement}
        if view.current is None:
            return Proposal(configuration(view.spec.max_configuration), placement, "start at the best resolution")
        window = max(self.params.window, self.params.min_tasks)
        feedback = view.feedback(self.params.min_tasks, made_under_current=False, last=window)
        if feedback is None:
            return None
        target = view.spec.latency_budget_s * self.params.target
        # Stepping up waits for the current decision's own tasks.
        settled = view.feedback(self.params.min_tasks, last=window)
        if feedback.latency_s > target and self.level < len(ladder) - 1:
            self.level += 1
            why = f"delay {feedback.latency_s:.2f} s over target {target:.2f} s: lower resolution"
        elif settled and settled.latency_s < target * self.params.slack and self.level > 0:
            self.level -= 1
            why = f"delay {feedback.latency_s:.2f} s well under target {target:.2f} s: raise resolution"
        else:
            return None
        config = configuration(view.current.configuration, ladder[self.level])
        return Proposal(config, dict(view.current.placement) or placement, why)


def _pixels(config: types_pb2.Configuration) -> int:
    return config.resolution.width * config.resolution.height


def _moves(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """What a placement change moves, for a decision's reason: "run read on cloud"."""
    moved = [f"{stage} on {node}" for stage, node in after.items() if before.get(stage) != node]
    return "run " + ", ".join(moved)


class BandwidthProfileParams(Strict):
    safety: float = pydantic.Field(0.8, gt=0, le=1, description="use at most this share of the bandwidth")
    min_safety: float = pydantic.Field(
        0.3, gt=0, le=1, description="the least share it backs off to while tasks come back over the budget"
    )
    min_tasks: int = pydantic.Field(1, ge=1)
    placement: dict[str, str] = pydantic.Field(
        default_factory=dict, description="stage -> node; stages not named run on the cloud"
    )


@POLICIES.register("bandwidth_profile", params=BandwidthProfileParams)
class BandwidthProfilePolicy:
    """Bandwidth-aware profiles (as AWStream): the most accurate configuration whose bitrate fits the
    measured bandwidth of the stream's uplink. Accuracy ranks configurations by pixels x frames
    (then quality); the bitrate of each is predicted from the bits per pixel-frame observed at
    each quality (learned online from the tasks' sizes, scaled by quality^1.5 where unobserved).
    Bandwidth comes from the traces' transfers or the monitors' probes, else from the tasks' own
    transfer times. As AWStream reacts to congestion, the share of the bandwidth it uses backs off
    (x0.75) while the tasks come back over the latency budget (a link run near its rate queues), and
    creeps back (+0.05) while they come back well within it."""

    def __init__(self, params: BandwidthProfileParams) -> None:
        self.params = params
        self.bits_per_pixel_frame: dict[int, float] = {}
        self.safety = params.safety
        self._judged: tuple[int, int] = (0, 0)  # (decision version, its tasks) the safety last moved on

    def _bits(self, quality: int) -> float:
        """Bits per pixel-frame at a quality: observed, else from the nearest observed (one must be)."""
        if quality in self.bits_per_pixel_frame:
            return self.bits_per_pixel_frame[quality]
        known, bits = min(self.bits_per_pixel_frame.items(), key=lambda kv: abs(kv[0] - quality))
        return bits * (quality / known) ** 1.5

    def decide(self, view: StreamView) -> Proposal | None:
        best = view.spec.max_configuration
        placement = {**view.placement(view.cloud_node), **self.params.placement}
        if view.current is None:
            return Proposal(configuration(best), placement, "start at the best configuration to learn its bitrate")
        feedback = view.feedback(self.params.min_tasks)
        if feedback is None:
            return None
        current = view.current.configuration
        frames = _pixels(current) * current.frames_per_segment
        if feedback.bytes_per_task and frames:
            self.bits_per_pixel_frame[current.quality] = feedback.bytes_per_task * 8 / frames
        bandwidth = view.bandwidth_mbps(view.spec.node, view.cloud_node)
        if bandwidth is None and feedback.transfer_s > 0:
            bandwidth = feedback.bytes_per_task * 8 / feedback.transfer_s / 1e6
        if bandwidth is None:
            return None
        # Once per fresh batch of the decision's tasks, judged on that batch: counted, not read off the
        # records kept (the latest 64), so a decision that stands for any number of tasks goes on adapting.
        version, arrived = view.current.version, view.arrived_made_under_current
        judged_version, judged_tasks = self._judged
        fresh = arrived - judged_tasks if version == judged_version else arrived
        if fresh >= self.params.min_tasks:
            self._judged = (version, arrived)
            batch = view.feedback(1, last=fresh) or feedback
            if batch.latency_s > view.spec.latency_budget_s:
                self.safety = max(self.params.min_safety, self.safety * 0.75)
            elif batch.latency_s < 0.6 * view.spec.latency_budget_s:
                self.safety = min(self.params.safety, self.safety + 0.05)
        budget_bps = bandwidth * 1e6 * self.safety
        if not self.bits_per_pixel_frame:
            return None  # no task's size known yet to predict a bitrate from
        ladder = ladders(best)
        bits = {quality: self._bits(quality) for quality in ladder.qualities}
        # Every configuration, as numbers (at most 12 x 11 x 7): a message is made for the chosen one only.
        candidates = [
            ((pixels * fps, quality), bits[quality] * pixels * fps, (size, fps, quality))
            for size, pixels in zip(ladder.sizes, ladder.pixels, strict=True)
            for fps in ladder.frame_rates
            for quality in ladder.qualities
        ]
        fitting = [c for c in candidates if c[1] <= budget_bps]
        _rank, bitrate, (size, fps, quality) = (
            max(fitting, key=lambda c: c[0]) if fitting else min(candidates, key=lambda c: c[1])
        )
        resolution = types_pb2.Resolution(width=size[0], height=size[1])
        chosen = configuration(best, resolution, fps, quality, current.frames_per_segment)
        if chosen == current:
            return None
        fit = "fits" if fitting else "is the least over"
        why = f"{bitrate / 1e6:.1f} Mbit/s {fit} {self.safety:.0%} of {bandwidth:.1f} Mbit/s"
        return Proposal(chosen, dict(view.current.placement) or placement, why)


class PeriodicProfilingParams(Strict):
    period_tasks: int = pydantic.Field(30, ge=1, description="tasks between two profiling rounds")
    tasks_per_candidate: int = pydantic.Field(
        4, ge=1, description="tasks each candidate of a round is judged on (their mean accuracy)"
    )
    accuracy_share: float = pydantic.Field(0.9, gt=0, le=1, description="keep this share of the golden accuracy")
    resolutions: int = pydantic.Field(4, ge=1, description="how many steps of the resolution ladder to profile")
    frame_rates: int = pydantic.Field(3, ge=1, description="how many steps of the frame-rate ladder to profile")
    placement: dict[str, str] = pydantic.Field(default_factory=dict)


@POLICIES.register("periodic_profiling", params=PeriodicProfilingParams)
class PeriodicProfilingPolicy:
    """Periodic profiling against the golden configuration (as Chameleon): every period_tasks tasks
    (made under the chosen configuration), run the golden configuration (best resolution, every
    frame) and cheaper candidates for tasks_per_candidate tasks each, then keep the cheapest whose
    mean accuracy is within accuracy_share of the golden one's."""

    def __init__(self, params: PeriodicProfilingParams) -> None:
        self.params = params
        self.profiling = True
        self.queue: list[types_pb2.Configuration] = []
        self.measured: list[tuple[types_pb2.Configuration, float]] = []

    def _start_round(self, best: types_pb2.Configuration) -> types_pb2.Configuration:
        self.profiling = True
        self.queue = [
            configuration(best, resolution, fps)
            for resolution in resolutions(best.resolution)[: self.params.resolutions]
            for fps in frame_rates(best.fps)[: self.params.frame_rates]
        ]  # the golden configuration comes first
        self.measured = []
        return self.queue.pop(0)

    def decide(self, view: StreamView) -> Proposal | None:
        placement = {**view.placement(view.spec.node), **self.params.placement}
        if view.current is None:
            return Proposal(self._start_round(view.spec.max_configuration), placement, "profiling: golden")
        placement = dict(view.current.placement) or placement
        # Counted, not read off the records kept (the latest 64): rounds come for any period.
        arrived = view.arrived_made_under_current
        if not self.profiling:
            if arrived < self.params.period_tasks:
                return None
            return Proposal(self._start_round(view.spec.max_configuration), placement, "profiling again: golden")
        if arrived < self.params.tasks_per_candidate:  # dropped tasks count: they come back too
            return None
        feedback = view.feedback(1, last=self.params.tasks_per_candidate)
        if feedback is not None and feedback.accuracy is not None:
            self.measured.append((view.current.configuration, feedback.accuracy))
        if self.queue:
            return Proposal(self.queue.pop(0), placement, f"profiling: candidate {len(self.measured) + 1}")
        self.profiling = False
        if not self.measured:
            return Proposal(configuration(view.spec.max_configuration), placement, "no accuracy feedback: golden")
        golden = self.measured[0][1]
        good = [(c, a) for c, a in self.measured if a >= golden * self.params.accuracy_share]
        config, accuracy = min(good, key=lambda ca: _pixels(ca[0]) * ca[0].fps)
        share = self.params.accuracy_share
        return Proposal(
            config, placement, f"cheapest with accuracy {accuracy:.2f} >= {share:.0%} of golden {golden:.2f}"
        )


class StartParams(Strict):
    height: int | None = pydantic.Field(None, gt=0, description="resolution height (the ladder's rung at or under it)")
    fps: float | None = pydantic.Field(None, gt=0, description="frame rate (the ladder's rung at or under it)")
    frames_per_segment: int | None = pydantic.Field(None, ge=1)


class LatencyBudgetParams(Strict):
    target: float = pydantic.Field(0.8, gt=0, le=1, description="aim at this share of the latency budget")
    slack: float = pydantic.Field(0.6, gt=0, lt=1, description="spend spare budget below target*slack")
    window: int = pydantic.Field(3, ge=1, description="judge the delay on this many most recent tasks")
    hold_tasks: int = pydantic.Field(
        4, ge=1, description="after a change, arrivals to wait for when no task made under it has arrived yet"
    )
    safety: float = pydantic.Field(0.8, gt=0, le=1, description="use at most this share of the uplink")
    max_load: float = pydantic.Field(
        0.8,
        gt=0,
        description="keep the stream's processing under this many seconds per second (over 1, its tasks queue "
        "without end); lower it when streams share the same processors",
    )
    offload: bool = pydantic.Field(True, description="may move stages between the edge and the cloud")
    share_uplink: bool = pydantic.Field(
        True,
        description="fit the stream to its share of an uplink that other streams of its node send over too "
        "(decided for all of them together), not to the whole link",
    )
    share_processors: bool = pydantic.Field(
        True,
        description="keep the stream's processing within its share of a processor that other streams' stages "
        "run on too (decided for all of them together), as well as under max_load",
    )
    start: StartParams = pydantic.Field(
        default_factory=lambda: StartParams(fps=1, frames_per_segment=1),
        description="the startup configuration, before any task came back (the best where a knob is unset): "
        "by default light, at full resolution but 1 frame a second in segments of 1, climbing as the budget "
        "allows; a stream that starts at its best on nodes that cannot carry it builds a backlog before the "
        "first task says so, and every task behind it is late",
    )


Levels = tuple[int, int, int]  # steps down from the best: resolution, frame rate, frames per segment
OVER_SHARE = 1.1  # processing this far over its share of a shared processor is refitted at once
# Bits a pixel of a frame before the stream's own tasks tell: a JPEG street scene at quality 85 (configs/
# profile.yaml: 115 KB at 720p, 1.0) and raw BGR; none for H.264 (a segment's frames share their bits).
START_BITS_PER_PIXEL = {types_pb2.CODEC_JPEG: 1.0, types_pb2.CODEC_RAW_BGR: 24.0}
# After a cut, no climb back to as much work (per second and per task) as what was cut, for this long
# (by when the tasks were made): a climb that failed once is likely to fail again, and back and forth
# is late tasks each time.
COOLDOWN_S = 10.0


@dataclass(frozen=True)
class _Prediction:
    """What the model predicts for a configuration: the delay (and its queueing), whether its bitrate
    fits the uplink, and its processing load (seconds of processing per second of the stream)."""

    delay_s: float
    queue_s: float
    transfer_s: float
    rate_fits: bool
    load: float


@dataclass(frozen=True)
class _Model:
    """The latency-budget policy's model of a configuration's delay, from the feedback of the current
    one, with what all configurations share worked out once. Transfer scales with the bits per pixel
    over the uplink's bandwidth (the measured one, else the tasks' own transfers; else the transfer the
    tasks saw, by pixels), processing with pixels per task, the load with pixels per second, and
    queueing with the load: in proportion while the stream keeps up, else as a single server's (M/D/1)
    at the predicted load, since the queue of a stream that does not keep up is a backlog that only
    grows."""

    feedback: Feedback
    current_pixels: int  # pixels of a task of the current configuration
    bits_per_pixel: float
    bandwidth: float | None  # Mbit/s
    crossings: int  # times a task's frames cross between nodes under the placement predicted for
    safety: float
    load_now: float
    share: float | None = None  # Mbit/s of the bandwidth that are the stream's, when streams share the link

    def predict(self, pixels: int, fps: float, frames_per_segment: int) -> _Prediction:
        """For a configuration of `pixels` a frame."""
        feedback, current_pixels = self.feedback, self.current_pixels
        task_pixels = pixels * frames_per_segment
        if self.bandwidth:
            sending = self.bits_per_pixel * task_pixels * self.crossings / (self.bandwidth * 1e6)
            rate = self.bandwidth if self.share is None else min(self.share, self.bandwidth)
            busy = self.bits_per_pixel * pixels * fps / (rate * 1e6)  # the share of its rate the stream fills
            rate_fits = busy <= self.safety
            # The uplink queues too: a task waits behind the stream's earlier ones, busy / (2 (1 - busy))
            # of a transfer (M/D/1): at 80% busy, twice its own transfer's time before it starts.
            transfer = sending * (1 + busy / (2 * (1 - busy))) if busy < 1 else math.inf
        else:
            transfer, rate_fits = feedback.transfer_s * task_pixels / current_pixels, True
        process = feedback.process_s * task_pixels / current_pixels
        # process x fps / frames_per_segment, with the frames (which cancel) left out: the same for any
        # segment length to the last bit, which the search relies on.
        load = feedback.process_s * (pixels * fps) / current_pixels
        if self.load_now < 1:
            queue = feedback.queue_s * load / self.load_now if self.load_now > 0 else feedback.queue_s
        else:
            queue = process * load / (2 * (1 - load)) if load < 1 else math.inf
        other = max(feedback.latency_s - feedback.transfer_s - feedback.process_s - feedback.queue_s, 0.0)
        return _Prediction(other + queue + process + transfer, queue, transfer, rate_fits, load)

    @property
    def monotone(self) -> bool:
        """Whether predictions only grow with pixels, frame rate and segment length: with times that
        are finite and not negative, and a bandwidth that is unknown or positive (a garbled record or
        probe may say otherwise)."""
        feedback, bandwidth = self.feedback, self.bandwidth
        times = (feedback.process_s, feedback.queue_s, feedback.transfer_s)
        return (
            all(math.isfinite(t) and t >= 0 for t in times)
            and not math.isnan(feedback.latency_s)
            and (not bandwidth or bandwidth > 0)  # not NaN either
        )


def _first(limits: Levels, holds: Callable[[Levels], bool]) -> Levels | None:
    """The first levels, in accuracy's order (resolution, then frame rate, then segment length, each
    from the best down), for which `holds`, when what holds for levels holds a step further down any
    knob too; None when it holds for none. Each knob in turn is bisected with the later ones at their
    lowest: the first resolution for which some levels hold is the first for which the lowest do."""
    if not holds(limits):
        return None
    levels = list(limits)
    for knob in range(3):
        low, high = 0, levels[knob]  # holds at high
        while low < high:
            middle = (low + high) // 2
            trial = list(levels)
            trial[knob] = middle
            if holds((trial[0], trial[1], trial[2])):
                high = middle
            else:
                low = middle + 1
        levels[knob] = high
    return levels[0], levels[1], levels[2]


def _same_cost(predicted: _Prediction, fastest: _Prediction) -> bool:
    return predicted.delay_s == fastest.delay_s and predicted.load == fastest.load


@POLICIES.register("latency_budget", params=LatencyBudgetParams)
class LatencyBudgetPolicy:
    """A latency-budget controller over resolution, frame rate, frames per segment and placement
    together, split as Hier-EI does. The macro level picks the knob from where the delay goes
    (transfer, processing, queueing) and how far to move at once: a model (bits per pixel and
    processing seconds per pixel learned from the tasks, the uplink's measured bandwidth, the link
    crossings of the placement) picks the most accurate resolution, frame rate and segment length
    predicted to fit the budget, the uplink's rate and the processing time there is (max_load: a
    stream whose processing takes more seconds than the stream lasts queues without end, which no
    placement fixes when every node is busy). The micro level is negative feedback on the delay of
    the most recent tasks: a step down (two for a big miss) over the target, a step up when the
    current decision's own tasks leave budget and the model says the step still fits. After a
    change it waits for tasks made under it (or hold_tasks arrivals), so tasks still draining from
    before do not push it further than needed."""

    def __init__(self, params: LatencyBudgetParams) -> None:
        self.params = params
        self.levels: Levels = (0, 0, 0)
        self._started = False
        self._fit_start = False  # the start is to be fitted to the uplink once it is measured (_start_within_uplink)
        self._crossings_of: dict[tuple[str, ...], int] = {}  # placement -> _crossings, within one decide
        self._aimed = params.target  # the share of the budget the last decision aimed at
        self._cut: tuple[tuple[int, int], float] | None = None  # the work of the levels last cut, and when

    def decide(self, view: StreamView) -> Proposal | None:
        before = self.levels
        proposal = self._decide(view)
        best = view.spec.max_configuration
        now = self._now(view)
        if proposal is not None and now is not None and self._lighter(best, self.levels, before):
            self._cut = (self._work(best, before), now)
        return proposal

    def _work(self, best: types_pb2.Configuration, levels: Levels) -> tuple[int, int]:
        """Pixels a second and pixels a task of the levels."""
        pixels, fps, frames = self._knobs(best, levels)
        return round(pixels * fps), pixels * frames

    def _lighter(self, best: types_pb2.Configuration, levels: Levels, than: Levels) -> bool:
        work, other = self._work(best, levels), self._work(best, than)
        return work != other and all(a <= b for a, b in zip(work, other, strict=True))

    @staticmethod
    def _now(view: StreamView) -> float | None:
        """When the newest task that came back was made (the mesh's clock, or the simulator's); None
        before any came back with the time it was made."""
        made = view.recent[-1].task.created_at.ToNanoseconds() if view.recent else 0
        return made / 1e9 if made else None

    def _cooling(self, view: StreamView, best: types_pb2.Configuration, levels: Levels) -> bool:
        """Whether the levels ask for as much work as the levels last cut, within COOLDOWN_S of the cut."""
        now = self._now(view)
        if self._cut is None or now is None or now - self._cut[1] > COOLDOWN_S:
            return False
        return all(a >= b for a, b in zip(self._work(best, levels), self._cut[0], strict=True))

    @staticmethod
    def _limits(best: types_pb2.Configuration) -> Levels:
        ladder = ladders(best)
        return len(ladder.sizes) - 1, len(ladder.frame_rates) - 1, best.frames_per_segment - 1

    @staticmethod
    def _knobs(best: types_pb2.Configuration, levels: Levels) -> tuple[int, float, int]:
        """Pixels a frame, frames a second and frames a segment of the levels."""
        ladder, (resolution, fps, segment) = ladders(best), levels
        return ladder.pixels[resolution], ladder.frame_rates[fps], best.frames_per_segment - segment

    @staticmethod
    def _config(best: types_pb2.Configuration, levels: Levels) -> types_pb2.Configuration:
        resolution, fps, segment = levels
        ladder = ladders(best)
        width, height = ladder.sizes[resolution]
        return configuration(
            best,
            types_pb2.Resolution(width=width, height=height),
            ladder.frame_rates[fps],
            frames_per_segment=best.frames_per_segment - segment,
        )

    def _start_levels(self, best: types_pb2.Configuration) -> Levels:
        """The levels of the `start` parameter: each knob's rung at or under it (the best when unset)."""
        start, limits = self.params.start, self._limits(best)
        heights = [r.height for r in resolutions(best.resolution)]
        rates = frame_rates(best.fps)
        resolution = next((i for i, h in enumerate(heights) if h <= start.height), limits[0]) if start.height else 0
        fps = next((i for i, f in enumerate(rates) if f <= start.fps), limits[1]) if start.fps else 0
        frames = start.frames_per_segment
        segment = best.frames_per_segment - min(frames, best.frames_per_segment) if frames else 0
        return resolution, fps, segment

    def _start_within_uplink(self, view: StreamView, best: types_pb2.Configuration, placement: dict[str, str]) -> str:
        """Lowers the start's resolution until its frames, at START_BITS_PER_PIXEL, fit the stream's
        part of its uplink (`safety` of its share; of the link when the uplink is its own), when its
        first stage runs on the cloud and the uplink was measured: many streams starting at once behind
        one uplink would otherwise fill its queue before the first task says so, and every task behind
        them is late. What it says of the start ("" when it kept it)."""
        prior = START_BITS_PER_PIXEL.get(best.codec)
        first = view.spec.pipeline.stages[0].name if view.spec.pipeline.stages else ""
        uplink = view.uplink_mbps(shared=self.params.share_uplink)
        crosses = placement.get(first) == view.cloud_node != view.spec.node  # the frames go over the uplink
        if prior is None or uplink is None or not crosses:
            return ""
        self._fit_start, before = False, self.levels
        while True:
            pixels, fps, _ = self._knobs(best, self.levels)
            if prior * pixels * fps / 1e6 <= self.params.safety * uplink or not self._step(0, 1, best):
                break
        if self.levels == before:
            return ""
        height = ladders(best).sizes[self.levels[0]][1]
        return f" at {height}p, what {uplink:.2f} Mbit/s of the uplink carries"

    def _step(self, knob: int, steps: int, best: types_pb2.Configuration) -> bool:
        levels = list(self.levels)
        levels[knob] = max(0, min(self._limits(best)[knob], levels[knob] + steps))
        changed = tuple(levels) != self.levels
        self.levels = (levels[0], levels[1], levels[2])
        return changed

    def _decide(self, view: StreamView) -> Proposal | None:
        self._crossings_of.clear()  # which nodes run what may have changed since the last decision
        best = view.spec.max_configuration
        if view.current is None:
            placement = {
                s.name: view.spec.node if view.can_run(view.spec.node, s.processor) else view.cloud_node
                for s in view.spec.pipeline.stages
            }
            first = not self._started  # a restart (fallback, feedback resumed) keeps the levels it learned
            if first:
                self.levels, self._started, self._fit_start = self._start_levels(best), True, True
            start = "start at the best" if self.levels == (0, 0, 0) else "start at the configured start"
            if first:
                start += self._start_within_uplink(view, best, placement)
            return Proposal(self._config(best, self.levels), placement, f"{start}, on the edge where it can")
        if self._fit_start and not view.recent and view.uplink_mbps() is not None:
            # The uplink measured after the start, before any task came back: the start fitted to it now.
            fitted = self._start_within_uplink(view, best, dict(view.current.placement))
            if fitted:
                return Proposal(self._config(best, self.levels), dict(view.current.placement), f"restart{fitted}")
        own = view.feedback(2, last=self.params.window) or self._late_alone(view)
        target = view.spec.latency_budget_s * self._aim(view)
        if own is not None and self._uplink_fell(view, own, target, best):
            # Macro, ahead of the tasks: the uplink's measured rate (from the traces, within a second
            # of a change) no longer carries the current configuration; refit now instead of waiting
            # for the late tasks to come back and say so.
            change = self._fit_transfer(view, own, target, best)
            if change is not None:
                placement, why = change
                return Proposal(self._config(best, self.levels), placement, f"{self._uplink_now(view)}: {why}")
        if own is not None and view.load_shares:
            # Macro, ahead of the queue: other streams' stages came to a processor this one uses, and
            # its processing no longer fits its share there.
            limit = self._max_load(view, own)
            predicted = self._predict(view, own, best, self.levels)
            fitted = self._fit(view, own, target, best) if predicted and predicted.load > limit * OVER_SHARE else None
            if fitted is not None and self._rank(best, fitted) < self._rank(best, self.levels):
                self.levels = fitted
                assert predicted is not None
                why = f"processing {predicted.load:.2f} s a second is over its share of shared processors ({limit:.2f})"
                return Proposal(
                    self._config(best, fitted), dict(view.current.placement), f"{why}: {self._describe(best, fitted)}"
                )
        # Without the current decision's own tasks, those that arrived since it (made under earlier ones).
        held = view.arrived_since_decision >= self.params.hold_tasks
        judged = own or (view.feedback(1, made_under_current=False, last=self.params.window) if held else None)
        if judged is None:
            return None
        if judged.latency_s > target:
            change = self._reduce(view, judged, target, best, own is None)
            if change is None:
                return None
            placement, why = change
            why = f"delay {judged.latency_s:.2f} s over {target:.2f} s: {why}"
            return Proposal(self._config(best, self.levels), placement, why)
        if own is not None and own.latency_s < target * self.params.slack:
            for knob in range(3):  # resolution first: it is what accuracy needs most
                before = self.levels
                if (
                    self._step(knob, -1, best)
                    and not self._cooling(view, best, self.levels)
                    and self._fits(view, own, target, best, self.levels)
                ):
                    why = f"delay {own.latency_s:.2f} s leaves budget: spend it on accuracy"
                    return Proposal(self._config(best, self.levels), dict(view.current.placement), why)
                self.levels = before
        return None

    def _reduce(
        self,
        view: StreamView,
        feedback: Feedback,
        target: float,
        best: types_pb2.Configuration,
        draining: bool = False,
    ) -> tuple[dict[str, str], str] | None:
        """Macro: act on what dominates the delay. `draining`: the feedback is of tasks made under
        earlier decisions. Returns the placement and why, or None."""
        assert view.current is not None
        placement = dict(view.current.placement)
        node, cloud = view.spec.node, view.cloud_node
        kinds = {stage.name: stage.processor for stage in view.spec.pipeline.stages}
        total = max(feedback.transfer_s + feedback.process_s + feedback.queue_s, 1e-9)
        if feedback.transfer_s / total >= 0.4:
            change = self._fit_transfer(view, feedback, target, best)
            if change is not None:
                placement, why = change
                return placement, f"transfer dominates ({feedback.transfer_s:.2f} s): {why}"
            if self._predict(view, feedback, best, self.levels) is not None:
                # No change while the model says the current configuration fits: the excess is a
                # backlog from before still draining, and stepping further down would overshoot.
                return None
        elif feedback.process_s / total >= 0.5 and self.params.offload and self._cloud_is_near(view):
            heavy = sorted(
                (
                    s
                    for s in kinds
                    if placement.get(s) != cloud and view.can_run(cloud, kinds[s]) and view.faster_on(s, cloud, node)
                ),
                key=lambda s: -feedback.stage_process_s.get(s, 0.0),
            )
            if heavy:
                placement[heavy[0]] = cloud
                return placement, f"processing dominates ({feedback.process_s:.2f} s): offload {heavy[0]} to {cloud}"
        if (feedback.process_s + feedback.queue_s) / total >= 0.5 and feedback.process_s > 0:
            # Processing and queueing dominate and no placement helps (none allowed, or none faster):
            # the stream asks for more processing than there is. Fit the levels to the time there is.
            if draining and self._lighter_than_drained(view):
                return None  # the tasks of the lighter current decision have not come back yet
            fitted = self._fit(view, feedback, target, best)
            if fitted is not None and self._rank(best, fitted) < self._rank(best, self.levels):
                self.levels = fitted
                load = feedback.process_s * view.current.configuration.fps
                load /= max(view.current.configuration.frames_per_segment, 1)
                return placement, (
                    f"processing {feedback.process_s:.2f} s and queueing {feedback.queue_s:.2f} s a task"
                    f" (load {load:.0%}): {self._describe(best, fitted)} fit the budget and the processing time"
                )
        if feedback.queue_s / total >= 0.3 and self._step(1, 1, best):
            return placement, f"queueing dominates ({feedback.queue_s:.2f} s): fewer frames per second"
        steps = 1 if feedback.latency_s - target < 0.5 * view.spec.latency_budget_s else 2  # micro
        if self._step(0, steps, best) or self._step(2, steps, best) or self._step(1, 1, best):
            return placement, "lower resolution (or shorter segments, fewer frames per second)"
        return None

    def _late_alone(self, view: StreamView) -> Feedback | None:
        """The current decision's first task when it alone is over the whole budget, and the decision
        asks for no less than the tasks before it (their backlog cannot be what made it late): at a
        task every second or two, waiting for a second one costs as much again, out of budget."""
        first = view.feedback(1, last=1)
        late = first is not None and first.latency_s > view.spec.latency_budget_s
        return first if late and not self._lighter_than_drained(view) else None

    @staticmethod
    def _lighter_than_drained(view: StreamView) -> bool:
        """Whether the current decision asks for less processing (pixels x frames per second) than
        the tasks that came back since it was made, which earlier decisions made."""
        assert view.current is not None
        arrived = view.recent[len(view.recent) - min(view.arrived_since_decision, len(view.recent)) :]
        made_before = [r.task.configuration for r in arrived if r.task.decision_version != view.current.version]
        current = view.current.configuration
        return bool(made_before) and all(_pixels(c) * c.fps > _pixels(current) * current.fps for c in made_before)

    def _aim(self, view: StreamView) -> float:
        """The share of the latency budget to aim at in this decision: `target` (a learned macro level
        may choose it from the view instead, dayu.scheduler.learned)."""
        self._aimed = self.params.target
        return self._aimed

    def _uplink(self, view: StreamView) -> float | None:
        """The uplink's bandwidth as this stream may use it: its share, when streams share it."""
        return view.uplink_mbps(shared=self.params.share_uplink)

    def _uplink_now(self, view: StreamView) -> str:
        whole, own = view.uplink_mbps(shared=False), self._uplink(view)
        text = f"uplink now {whole:.1f} Mbit/s" if whole is not None else "uplink unknown"
        return text if own is None or own == whole else f"{text}, {own:.1f} of it this stream's share"

    def needs(self, view: StreamView) -> Needs:
        """What the stream would use with its uplink and processors to itself: the bitrate of the most
        accurate levels fitting its budget and max_load there, over `safety` (the share of a link it
        leaves free), and their processing on each stage's processor. Unknown without feedback."""
        self._crossings_of.clear()  # asked outside decide too: the placement may have changed
        if view.current is None:
            return Needs()
        own = view.feedback(2, last=self.params.window) or view.feedback(1, made_under_current=False)
        model = None if own is None else self._model(view, own, shared=False)
        if own is None or model is None or not model.monotone:
            return Needs()
        best = view.spec.max_configuration
        target = view.spec.latency_budget_s * self._aimed
        fitted = self._fit(view, own, target, best, shared=False) or self._limits(best)
        pixels, fps, frames = self._knobs(best, fitted)
        load = model.predict(pixels, fps, frames).load
        return Needs(
            model.bits_per_pixel * pixels * fps / 1e6 / self.params.safety,
            {stage: load * share for stage, share in self._processing_shares(own).items()},
        )

    @staticmethod
    def _processing_shares(feedback: Feedback) -> dict[str, float]:
        """The share of the stream's processing each stage takes."""
        total = sum(feedback.stage_process_s.values())
        return {stage: s / total for stage, s in feedback.stage_process_s.items()} if total > 0 else {}

    def _max_load(self, view: StreamView, feedback: Feedback, shared: bool = True) -> float:
        """The most processing a second the stream may ask for: max_load, and, with `shared`, no more
        on any processor shared with other streams than its share there."""
        limit = self.params.max_load
        if shared and self.params.share_processors and view.load_shares:
            for stage, part in self._processing_shares(feedback).items():
                if stage in view.load_shares and part > 0:
                    limit = min(limit, view.load_shares[stage] / part)
        return limit

    def _describe(self, best: types_pb2.Configuration, levels: Levels) -> str:
        config = self._config(best, levels)
        return f"{config.resolution.height}p at {config.fps:g} fps, {config.frames_per_segment} frames per segment"

    def _uplink_fell(self, view: StreamView, feedback: Feedback, target: float, best: types_pb2.Configuration) -> bool:
        """Whether the uplink's measured bandwidth (traces or probes, not the tasks' own transfers)
        no longer carries the current configuration: its bitrate does not fit, or the delay predicted
        at that bandwidth (the rest as the tasks saw it) is over the target and worse than what the
        tasks saw, by a transfer grown by over a tenth of the budget (a late task whose transfer
        barely changed is late for another reason, which the feedback handles)."""
        if self._uplink(view) is None:
            return False
        predicted = self._predict(view, feedback, best, self.levels)
        if predicted is None:
            return False
        seen = max(feedback.latency_s - feedback.transfer_s, feedback.queue_s + feedback.process_s)
        delay = seen + predicted.transfer_s
        grown = predicted.transfer_s - feedback.transfer_s > 0.1 * view.spec.latency_budget_s
        return not predicted.rate_fits or (grown and delay > max(target, feedback.latency_s))

    def _fit_transfer(
        self, view: StreamView, feedback: Feedback, target: float, best: types_pb2.Configuration
    ) -> tuple[dict[str, str], str] | None:
        """Macro, when the uplink is what the delay needs: the placement whose frames cross it the
        fewest times (when offloading is allowed), then the most accurate levels predicted to fit
        there. Returns the placement and what changed, or None when neither improves on the current."""
        assert view.current is not None
        placement = dict(view.current.placement)
        fewer = self._fewest_crossings(view) if self.params.offload else placement
        fitted = self._fit(view, feedback, target, best, fewer)
        lower = fitted is not None and self._rank(best, fitted) < self._rank(best, self.levels)
        if fewer == placement and not lower:
            return None
        changes = [_moves(placement, fewer)] if fewer != placement else []
        if lower:
            assert fitted is not None
            self.levels = fitted
            changes.append(f"{self._describe(best, fitted)} fit the uplink")
        return fewer, ", ".join(changes)

    def _crossings(self, view: StreamView, placement: Mapping[str, str]) -> int:
        """Times a task's frames cross between nodes under `placement`: once for every stage whose
        input (a parent's output, or the stream's frames) is on another node. Counted once a decision
        for each placement (every prediction needs the current one's)."""
        stages = view.spec.pipeline.stages
        key = tuple(placement.get(stage.name, view.spec.node) for stage in stages)
        if key not in self._crossings_of:
            where: dict[str, str] = {}
            crossings = 0
            for stage, node in zip(stages, key, strict=True):
                if not view.can_run(node, stage.processor):
                    node = view.cloud_node  # where the controller falls back to
                where[stage.name] = node
                inputs = [where[parent] for parent in stage.parents] or [view.spec.node]
                crossings += sum(source != node for source in inputs)
            self._crossings_of[key] = crossings
        return self._crossings_of[key]

    def _fewest_crossings(self, view: StreamView) -> dict[str, str]:
        """The placement, over the stream's node and the cloud, whose frames cross between nodes the
        fewest times; of those, the one that moves the fewest stages from the current placement.
        Every combination is tried: pipelines are a handful of stages (2^n placements)."""
        assert view.current is not None
        current = dict(view.current.placement)
        stages = view.spec.pipeline.stages
        choices = [
            [
                n
                for n in dict.fromkeys((current.get(s.name, view.spec.node), view.spec.node, view.cloud_node))
                if view.can_run(n, s.processor)
            ]
            or [view.cloud_node]
            for s in stages
        ]
        # Every choice runs its stage (or is the cloud, where the controller falls back to): the
        # crossings are those of _crossings, counted over the stages' inputs as indexes.
        index = {s.name: i for i, s in enumerate(stages)}
        inputs = [[index[p] for p in s.parents] or [-1] for s in stages]  # -1: the stream's frames
        was = [current.get(s.name, view.spec.node) for s in stages]

        def cost(nodes: tuple[str, ...]) -> tuple[int, int]:
            crossings = sum(
                (nodes[i] if i >= 0 else view.spec.node) != node
                for node, sources in zip(nodes, inputs, strict=True)
                for i in sources
            )
            return crossings, sum(node != before for node, before in zip(nodes, was, strict=True))

        fewest = min(itertools.product(*choices), key=cost)  # the first of the fewest, as the choices come
        return dict(zip((s.name for s in stages), fewest, strict=True))

    def _model(
        self, view: StreamView, feedback: Feedback, placement: Mapping[str, str] | None = None, shared: bool = True
    ) -> _Model | None:
        """The delay model (_predict) under `placement` (else the current one), from the feedback of the
        current configuration; None without task sizes to go on. With `shared`, over the stream's share
        of an uplink other streams send over too: its bitrate must fit the share (a task's transfer still
        goes at the link's rate once its turn comes: the shares keep the link from filling up, and the
        feedback says what waiting there is)."""
        assert view.current is not None
        current = view.current.configuration
        crossings_now = max(self._crossings(view, view.current.placement), 1)
        crossings = crossings_now if placement is None else max(self._crossings(view, placement), 1)
        bandwidth = view.uplink_mbps(shared=False)
        share = self._uplink(view) if shared else None
        if bandwidth is None and feedback.transfer_s > 0:  # the tasks' own transfers, queueing included
            bandwidth = feedback.bytes_per_task * 8 * crossings_now / feedback.transfer_s / 1e6
        current_pixels = _pixels(current) * current.frames_per_segment
        if not feedback.bytes_per_task or not current_pixels:
            return None
        return _Model(
            feedback,
            current_pixels,
            feedback.bytes_per_task * 8 / current_pixels,
            bandwidth,
            crossings,
            self.params.safety,
            feedback.process_s * current.fps / current.frames_per_segment,
            share if share != bandwidth else None,
        )

    def _predict(
        self,
        view: StreamView,
        feedback: Feedback,
        best: types_pb2.Configuration,
        levels: Levels,
        placement: Mapping[str, str] | None = None,
    ) -> _Prediction | None:
        """Predicted delay of the levels' configuration (under `placement`, else the current one),
        whether its bitrate fits the uplink and its processing load; None without task sizes to go on
        (_Model says how)."""
        model = self._model(view, feedback, placement)
        return None if model is None else model.predict(*self._knobs(best, levels))

    @staticmethod
    def _fits_prediction(predicted: _Prediction, target: float, max_load: float) -> bool:
        return predicted.delay_s <= target and predicted.rate_fits and predicted.load <= max_load

    def _fits(
        self, view: StreamView, feedback: Feedback, target: float, best: types_pb2.Configuration, levels: Levels
    ) -> bool:
        predicted = self._predict(view, feedback, best, levels)
        return predicted is None or self._fits_prediction(predicted, target, self._max_load(view, feedback))

    def _fit(
        self,
        view: StreamView,
        feedback: Feedback,
        target: float,
        best: types_pb2.Configuration,
        placement: Mapping[str, str] | None = None,
        shared: bool = True,
    ) -> Levels | None:
        """The most accurate levels (pixels, then frame rate, then segment length) predicted to fit
        the target, the uplink and max_load under `placement` (else the current one); if none does,
        the fastest (the least delay, then load; of those, the most accurate). None without a
        prediction, or with figures no prediction holds for (negative or not finite).

        The model's delay, bitrate and load only grow with each knob (pixels, frames a second, frames
        a segment), so "fits" and "as fast as the fastest" hold, once they do, for every cheaper
        configuration; and accuracy ranks levels in the order of the knobs' ladders. The answer is
        then the first levels in that order for which they hold, found by bisecting each knob's
        ladder in turn: a few dozen predictions, however long the ladders (a search of every
        configuration made thousands for a 4K stream's)."""
        model = self._model(view, feedback, placement, shared)
        if model is None or not model.monotone:
            return None

        def predict(levels: Levels) -> _Prediction:
            return model.predict(*self._knobs(best, levels))

        limits = self._limits(best)
        max_load = self._max_load(view, feedback, shared)
        fitting = _first(limits, lambda levels: self._fits_prediction(predict(levels), target, max_load))
        if fitting is not None:
            return fitting
        fastest = predict(limits)  # the cheapest configuration has the least delay and load of all
        return _first(limits, lambda levels: _same_cost(predict(levels), fastest))

    def _rank(self, best: types_pb2.Configuration, levels: Levels) -> tuple[int, float, int]:
        """What accuracy needs most first: pixels, then frame rate, then frames per segment."""
        return self._knobs(best, levels)

    @staticmethod
    def _cloud_is_near(view: StreamView) -> bool:
        """Offloading helps only when the uplink is fast enough; unknown counts as fast."""
        bandwidth = view.uplink_mbps(shared=False)
        return bandwidth is None or bandwidth >= 10


from dayu.scheduler import learned  # noqa: E402, F401  registers "learned" (it builds on latency_budget)
