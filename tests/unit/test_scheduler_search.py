"""The policies' searches pick what a search of every candidate picks, on grids small enough to go
through whole: the latency-budget policy's bisection of each knob (LatencyBudgetPolicy._fit, _first)
and its placement with the fewest crossings, and the bandwidth-aware profiles' configuration."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dayu.scheduler.knobs import Feedback, configuration, frame_rates, ladders, qualities, resolutions
from dayu.scheduler.policies import (
    POLICIES,
    BandwidthProfilePolicy,
    LatencyBudgetPolicy,
    Levels,
    StreamView,
    _first,
    _Model,
    _Prediction,
)
from dayu.v1 import decision_pb2, resources_pb2, task_pb2, types_pb2

from conftest import make_stream_spec

SEARCHES = settings(max_examples=300, deadline=None)

levels_limits = st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5))


@st.composite
def upward_closed(draw: st.DrawFn) -> tuple[Levels, set[Levels]]:
    """Limits, and a set of levels that holds a step further down any knob once it holds: everything
    at or below (in quality) some drawn levels."""
    limits = draw(levels_limits)
    grid = list(itertools.product(*(range(limit + 1) for limit in limits)))
    seeds = draw(st.lists(st.sampled_from(grid), max_size=4))
    return limits, {g for g in grid if any(all(a >= b for a, b in zip(g, seed, strict=True)) for seed in seeds)}


@SEARCHES
@given(upward_closed())
def test_first_is_the_first_levels_in_accuracys_order_that_hold(case: tuple[Levels, set[Levels]]) -> None:
    limits, holding = case
    grid = sorted(itertools.product(*(range(limit + 1) for limit in limits)))
    expected = next((levels for levels in grid if levels in holding), None)  # tuples sort as accuracy ranks them
    assert _first(limits, lambda levels: levels in holding) == expected


def exhaustive_fit(
    policy: LatencyBudgetPolicy,
    view: StreamView,
    feedback: Feedback,
    target: float,
    best: types_pb2.Configuration,
    placement: dict[str, str] | None,
) -> Levels | None:
    """The search _fit replaced: every configuration predicted, the most accurate that fits kept, else
    the first of the fastest (the least delay, then load)."""
    limits = policy._limits(best)
    candidates = []
    for levels in itertools.product(*(range(limit + 1) for limit in limits)):
        predicted = policy._predict(view, feedback, best, levels, placement)
        if predicted is None:
            return None
        fits = policy._fits_prediction(predicted, target, policy.params.max_load)
        candidates.append((fits, policy._rank(best, levels), (predicted.delay_s, predicted.load), levels))
    fitting = [c for c in candidates if c[0]]
    if fitting:
        return max(fitting, key=lambda c: c[1])[3]
    return min(candidates, key=lambda c: c[2])[3]


# Sizes of best resolutions: common ones, one whose smaller rungs round to zero width (pixels tie), a tiny one.
SIZES = [(640, 360), (1280, 720), (1920, 1080), (1000, 1000), (2, 2160), (2, 2)]
seconds = st.one_of(st.just(0.0), st.floats(0.0, 10.0, allow_nan=False))


@st.composite
def fit_cases(draw: st.DrawFn) -> tuple[LatencyBudgetPolicy, StreamView, Feedback, float, dict[str, str] | None]:
    width, height = draw(st.sampled_from(SIZES))
    best = types_pb2.Configuration(
        resolution=types_pb2.Resolution(width=width, height=height),
        fps=draw(st.sampled_from([1.0, 5.0, 12.5, 29.97, 30.0, 60.0])),
        quality=85,
        frames_per_segment=draw(st.integers(1, 12)),
        codec=types_pb2.CODEC_JPEG,
    )
    spec = make_stream_spec()
    spec.max_configuration.CopyFrom(best)
    spec.latency_budget_s = draw(st.sampled_from([0.2, 1.0, 3.0]))
    policy = POLICIES.create(
        "latency_budget",
        {"max_load": draw(st.sampled_from([0.3, 0.8, 2.0])), "safety": draw(st.sampled_from([0.5, 0.8, 1.0]))},
    )
    limits = policy._limits(best)
    policy.levels = tuple(draw(st.integers(0, limit)) for limit in limits)  # type: ignore[assignment]
    current = decision_pb2.Decision(
        version=1,
        configuration=policy._config(best, policy.levels),
        placement={s.name: draw(st.sampled_from(["edge-1", "cloud"])) for s in spec.pipeline.stages},
    )
    view = StreamView(spec, current, "cloud")
    uplink = draw(st.sampled_from([None, 0.5, 4.0, 100.0]))
    if uplink is not None:
        edge = resources_pb2.NodeResources(node="edge-1")
        edge.links.add(from_node="edge-1", to_node="cloud", bandwidth_mbps=uplink)
        view.resources = {"edge-1": edge}
    transfer, process, queue = draw(seconds), draw(seconds), draw(seconds)
    feedback = Feedback(
        tasks=3,
        dropped=0,
        latency_s=draw(st.floats(0.0, 30.0)),
        transfer_s=transfer,
        process_s=process,
        queue_s=queue,
        accuracy=None,
        bytes_per_task=draw(st.sampled_from([1e3, 1e4, 1e6, 1e7])),
        stage_process_s={},
    )
    placement = draw(st.sampled_from([None, {s.name: "cloud" for s in spec.pipeline.stages}]))
    return policy, view, feedback, spec.latency_budget_s * policy.params.target, placement


@SEARCHES
@given(fit_cases())
def test_latency_budget_fits_the_levels_a_search_of_every_configuration_fits(
    case: tuple[LatencyBudgetPolicy, StreamView, Feedback, float, dict[str, str] | None],
) -> None:
    policy, view, feedback, target, placement = case
    best = view.spec.max_configuration
    assert policy._fit(view, feedback, target, best, placement) == exhaustive_fit(
        policy, view, feedback, target, best, placement
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("process_s", -0.5), ("queue_s", -1.0), ("transfer_s", -0.1), ("latency_s", math.nan), ("process_s", math.inf)],
)
def test_latency_budget_predicts_nothing_from_times_no_model_holds_for(field: str, value: float) -> None:
    """A garbled record (a negative or unknown time) makes no fit, rather than one from a model that
    no longer grows with the knobs."""
    policy = POLICIES.create("latency_budget", {})
    spec = make_stream_spec()
    best = spec.max_configuration
    view = StreamView(spec, decision_pb2.Decision(version=1, configuration=best, placement={"detect": "edge-1"}))
    figures = {"latency_s": 2.0, "transfer_s": 0.5, "process_s": 0.5, "queue_s": 0.5, field: value}
    feedback = Feedback(3, 0, accuracy=None, bytes_per_task=1e6, stage_process_s={}, **figures)
    assert policy._predict(view, feedback, best, (1, 1, 1)) is not None
    assert policy._fit(view, feedback, 0.8, best) is None


def test_latency_budget_fits_a_long_segment_of_4k_at_60_fps_in_few_predictions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search does not go through the grid (12 resolutions x 10 frame rates x 240 segment lengths):
    it bisects each knob, twice at most (what fits, else the fastest)."""
    spec = make_stream_spec()
    spec.max_configuration.resolution.width, spec.max_configuration.resolution.height = 3840, 2160
    spec.max_configuration.fps, spec.max_configuration.frames_per_segment = 60, 240
    policy = POLICIES.create("latency_budget", {})
    best = spec.max_configuration
    view = StreamView(spec, decision_pb2.Decision(version=1, configuration=best, placement={"detect": "edge-1"}))
    predictions = 0
    predict = _Model.predict

    def counted(model: _Model, pixels: int, fps: float, frames_per_segment: int) -> _Prediction:
        nonlocal predictions
        predictions += 1
        return predict(model, pixels, fps, frames_per_segment)

    monkeypatch.setattr(_Model, "predict", counted)
    for feedback in (
        Feedback(3, 0, 20.0, 0.5, 15.0, 4.0, None, 5e7, {}),
        Feedback(3, 0, 0.5, 0.1, 0.2, 0.0, None, 5e7, {}),
    ):
        predictions = 0
        fitted = policy._fit(view, feedback, 0.8, best)
        assert fitted is not None
        assert predictions <= 2 * (1 + 4 + 4 + 8) + 1  # log2 of 12, 10 and 240, rounded up


def exhaustive_profile(
    policy: BandwidthProfilePolicy, best: types_pb2.Configuration, frames: int, bandwidth_mbps: float
) -> types_pb2.Configuration:
    """The search the bandwidth-aware profiles made: a message for every configuration."""
    budget_bps = bandwidth_mbps * 1e6 * policy.safety
    candidates = []
    for resolution in resolutions(best.resolution):
        for fps in frame_rates(best.fps):
            for quality in qualities(best.quality):
                config = configuration(best, resolution, fps, quality, frames)
                pixels = config.resolution.width * config.resolution.height
                candidates.append(((pixels * fps, quality), policy._bits(quality) * pixels * fps, config))
    fitting = [c for c in candidates if c[1] <= budget_bps]
    return (max(fitting, key=lambda c: c[0]) if fitting else min(candidates, key=lambda c: c[1]))[2]


@SEARCHES
@given(
    size=st.sampled_from(SIZES),
    fps=st.sampled_from([5.0, 30.0, 60.0]),
    quality=st.sampled_from([90, 60, 30]),
    task_bytes=st.integers(1, 5_000_000),
    uplink=st.floats(0.01, 200.0),
    latency=st.floats(0.0, 3.0),
)
def test_bandwidth_profile_picks_what_a_search_of_every_configuration_picks(
    size: tuple[int, int], fps: float, quality: int, task_bytes: int, uplink: float, latency: float
) -> None:
    spec = make_stream_spec()
    spec.max_configuration.resolution.width, spec.max_configuration.resolution.height = size
    spec.max_configuration.fps, spec.max_configuration.quality = fps, quality
    view, policy = StreamView(spec, None, "cloud"), POLICIES.create("bandwidth_profile", {})
    proposal = policy.decide(view)
    view.current = decision_pb2.Decision(version=1, configuration=proposal.configuration, placement=proposal.placement)
    edge = resources_pb2.NodeResources(node="edge-1")
    edge.links.add(from_node="edge-1", to_node="cloud", bandwidth_mbps=uplink)
    view.resources = {"edge-1": edge}
    task = task_pb2.Task(stream_id="stream-1", decision_version=1)
    task.dag.stages.add().spec.name = "detect"
    task.hops.add(bytes=task_bytes)
    view.recent.append(task_pb2.TaskRecord(task=task, outcome=task_pb2.TASK_OUTCOME_DELIVERED, latency_s=latency))
    view.arrived_since_decision = 1
    decided = policy.decide(view)
    expected = exhaustive_profile(policy, spec.max_configuration, view.current.configuration.frames_per_segment, uplink)
    assert (decided.configuration if decided else view.current.configuration) == expected


def test_ladders_are_the_knobs_rungs() -> None:
    best = make_stream_spec().max_configuration
    ladder = ladders(best)
    assert [types_pb2.Resolution(width=w, height=h) for w, h in ladder.sizes] == resolutions(best.resolution)
    assert ladder.pixels == tuple(w * h for w, h in ladder.sizes)
    assert list(ladder.frame_rates) == frame_rates(best.fps) and list(ladder.qualities) == qualities(best.quality)
    assert ladders(best) is ladder  # made once per best configuration


@st.composite
def placements(draw: st.DrawFn) -> tuple[LatencyBudgetPolicy, StreamView]:
    """A random DAG of up to five stages, the processors each node runs, and a current placement."""
    stages = []
    for i in range(draw(st.integers(1, 5))):
        parents = draw(st.lists(st.sampled_from([f"s{j}" for j in range(i)]), unique=True)) if i else []
        stages.append(types_pb2.StageSpec(name=f"s{i}", processor=draw(st.sampled_from(["a", "b"])), parents=parents))
    spec = make_stream_spec(types_pb2.Pipeline(name="p", stages=stages))
    nodes = ["edge-1", "cloud", "edge-2"]
    current = {s.name: draw(st.sampled_from(nodes)) for s in stages}
    view = StreamView(spec, decision_pb2.Decision(version=1, configuration=spec.max_configuration, placement=current))
    for node in draw(st.lists(st.sampled_from(nodes), unique=True)):  # the others report nothing: may run all
        kinds = draw(st.lists(st.sampled_from(["a", "b"]), unique=True))
        view.resources[node] = resources_pb2.NodeResources(node=node, queue_lengths=dict.fromkeys(kinds, 0))
    return POLICIES.create("latency_budget", {}), view


@SEARCHES
@given(placements())
def test_the_fewest_crossings_are_those_of_every_placement_counted(
    case: tuple[LatencyBudgetPolicy, StreamView],
) -> None:
    policy, view = case
    current, stages = dict(view.current.placement), view.spec.pipeline.stages
    choices = [
        [n for n in dict.fromkeys((current[s.name], "edge-1", "cloud")) if view.can_run(n, s.processor)] or ["cloud"]
        for s in stages
    ]
    candidates = [dict(zip((s.name for s in stages), nodes, strict=True)) for nodes in itertools.product(*choices)]
    expected = min(candidates, key=lambda c: (policy._crossings(view, c), sum(c[n] != current[n] for n in c)))
    assert policy._fewest_crossings(view) == expected
