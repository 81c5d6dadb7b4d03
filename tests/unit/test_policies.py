"""Each policy's decisions on scripted feedback."""

from __future__ import annotations

from dayu.scheduler.knobs import Feedback, Figures
from dayu.scheduler.policies import POLICIES, Needs, Proposal, StreamView
from dayu.scheduler.traces import HopKey, HopSamples
from dayu.v1 import decision_pb2, resources_pb2, task_pb2, types_pb2

from conftest import BOXES, LABELS, make_stream_spec, stage


def view() -> StreamView:
    return StreamView(make_stream_spec(), None, "cloud")  # budget 1 s, best 1280x720 at 30 fps, q90, 10 frames


def apply(v: StreamView, proposal: Proposal | None) -> decision_pb2.Decision:
    assert proposal is not None
    v.arrived_since_decision = v.arrived_made_under_current = 0
    version = (v.current.version if v.current else 0) + 1
    v.current = decision_pb2.Decision(
        version=version, configuration=proposal.configuration, placement=proposal.placement, reason=proposal.reason
    )
    return v.current


def feed(
    v: StreamView,
    latency: float,
    *,
    transfer: float = 0.0,
    process: float = 0.0,
    queue: float = 0.0,
    accuracy: float | None = None,
    size: int = 100_000,
    tasks: int = 2,
    version: int | None = None,
) -> None:
    """Records of `tasks` delivered tasks, made under the current decision unless `version` says otherwise."""
    assert v.current is not None
    for _ in range(tasks):
        task = task_pb2.Task(stream_id="stream-1", decision_version=v.current.version if version is None else version)
        stage = task.dag.stages.add()
        stage.spec.name = "detect"
        stage.timings.transfer_s, stage.timings.process_s, stage.timings.queue_s = transfer, process, queue
        task.hops.add(bytes=size)
        record = task_pb2.TaskRecord(task=task, outcome=task_pb2.TASK_OUTCOME_DELIVERED, latency_s=latency)
        if accuracy is not None:
            record.accuracy = accuracy
        v.recent.append(record)
        del v.recent[:-64]  # as many as the core keeps
        v.arrived_since_decision += 1
        v.arrived_made_under_current += task.decision_version == v.current.version


def policy(name: str, **params):  # type: ignore[no-untyped-def]
    """The policy; latency_budget (and learned, on it) starting at the best unless `start` is given: these
    tests are of what it does once tasks come back (its own default start is light)."""
    if name in ("latency_budget", "learned"):
        params.setdefault("start", {})
    return POLICIES.create(name, params)


def test_fixed_cloud_only_edge_only_propose_once() -> None:
    for name, node in (("fixed", "edge-1"), ("cloud_only", "cloud"), ("edge_only", "edge-1")):
        v, p = view(), policy(name, fps=10)
        decision = apply(v, p.decide(v))
        assert set(decision.placement.values()) == {node} and decision.configuration.fps == 10
        feed(v, latency=5.0)
        assert p.decide(v) is None


def test_random_is_seeded_and_draws_again_after_feedback() -> None:
    first = [policy("random", seed=3).decide(view()) for _ in range(2)]
    assert first[0].configuration == first[1].configuration and first[0].placement == first[1].placement
    v, p = view(), policy("random", seed=3, every_tasks=2)
    apply(v, p.decide(v))
    assert p.decide(v) is None
    feed(v, latency=0.5, tasks=2)
    assert p.decide(v) is not None


def test_feedback_control_steps_resolution_against_the_budget() -> None:
    v, p = view(), policy("feedback_control")
    assert apply(v, p.decide(v)).configuration.resolution.height == 720
    feed(v, latency=1.2)  # over 0.8 s target
    assert apply(v, p.decide(v)).configuration.resolution.height == 540
    feed(v, latency=0.9)
    assert apply(v, p.decide(v)).configuration.resolution.height == 480
    feed(v, latency=0.6)  # between target*slack (0.48) and target: hold
    assert p.decide(v) is None
    feed(v, latency=0.2, tasks=3)
    assert apply(v, p.decide(v)).configuration.resolution.height == 540


def test_bandwidth_profile_fits_the_measured_uplink() -> None:
    v, p = view(), policy("bandwidth_profile")
    start = apply(v, p.decide(v))
    assert start.configuration.resolution.height == 720 and set(start.placement.values()) == {"cloud"}
    # 10 frames of 1280x720 at q90 took 1.2 MB: ~1 bit per pixel-frame; 30 fps would need ~28 Mbit/s.
    report = resources_pb2.NodeResources(node="edge-1")
    report.links.add(from_node="edge-1", to_node="cloud", bandwidth_mbps=4.0)
    v.resources = {"edge-1": report}
    feed(v, latency=2.0, size=1_200_000)
    narrow = apply(v, p.decide(v)).configuration
    bits = 1_200_000 * 8 / (1280 * 720 * 10) * (narrow.quality / 90) ** 1.5  # the policy's model
    bitrate = bits * narrow.resolution.width * narrow.resolution.height * narrow.fps
    assert bitrate <= 4e6 * 0.8
    assert narrow.resolution.height < 720 or narrow.fps < 30
    report.links[0].bandwidth_mbps = 100.0
    feed(v, latency=0.3, size=int(1_200_000 * narrow.resolution.height**2 / 720**2))
    wide = apply(v, p.decide(v)).configuration
    assert (wide.resolution.height, wide.fps) == (720, 30)


def test_bandwidth_profile_backs_off_while_tasks_come_back_late() -> None:
    v, p = view(), policy("bandwidth_profile")
    apply(v, p.decide(v))
    report = resources_pb2.NodeResources(node="edge-1")
    report.links.add(from_node="edge-1", to_node="cloud", bandwidth_mbps=40.0)
    v.resources = {"edge-1": report}
    feed(v, latency=0.4, size=1_200_000)  # ~28 Mbit/s at 30 fps fits 80% of 40 Mbit/s: keep the best
    assert p.decide(v) is None
    feed(v, latency=1.5, size=1_200_000, tasks=3)  # yet the tasks come back late: the link queues
    lighter = apply(v, p.decide(v))
    assert "fits 60% of 40.0 Mbit/s" in lighter.reason
    config = lighter.configuration
    assert config.resolution.height < 720 or config.fps < 30 or config.quality < 90


def test_periodic_profiling_keeps_the_cheapest_accurate_enough() -> None:
    v, p = view(), policy("periodic_profiling", resolutions=2, frame_rates=2, period_tasks=4, tasks_per_candidate=2)
    golden = apply(v, p.decide(v)).configuration
    assert (golden.resolution.height, golden.fps) == (720, 30)
    accuracy = {(720, 30): 0.9, (720, 25): 0.88, (540, 30): 0.85, (540, 25): 0.7}
    for _ in range(3):
        config = v.current.configuration
        feed(v, latency=0.5, accuracy=accuracy[(config.resolution.height, int(config.fps))], tasks=1)
        assert p.decide(v) is None  # one task is not enough to judge a candidate on
        feed(v, latency=0.5, accuracy=accuracy[(config.resolution.height, int(config.fps))], tasks=1)
        apply(v, p.decide(v))
    config = v.current.configuration
    feed(v, latency=0.5, accuracy=accuracy[(config.resolution.height, int(config.fps))], tasks=2)
    chosen = apply(v, p.decide(v))
    assert (chosen.configuration.resolution.height, chosen.configuration.fps) == (540, 30)  # 0.85 >= 0.9 * 0.9
    feed(v, latency=0.5, accuracy=0.85, tasks=3)
    assert p.decide(v) is None
    feed(v, latency=0.5, accuracy=0.85, tasks=1)
    assert "profiling again" in apply(v, p.decide(v)).reason


def test_periodic_profiling_judges_candidates_on_their_mean_and_profiles_again_after_any_period() -> None:
    v, p = view(), policy("periodic_profiling", resolutions=2, frame_rates=1, period_tasks=100, tasks_per_candidate=4)
    apply(v, p.decide(v))  # golden: 720p
    for value in (0.9, 0.7, 0.9, 0.9):  # one poor task among good ones
        feed(v, latency=0.5, accuracy=value, tasks=1)
    apply(v, p.decide(v))  # the 540p candidate, judged on four tasks too
    for value in (0.95, 0.6, 0.6, 0.6):  # one lucky task among poor ones
        feed(v, latency=0.5, accuracy=value, tasks=1)
    chosen = apply(v, p.decide(v))
    assert chosen.configuration.resolution.height == 720, chosen.reason  # 0.69 < 0.9 x 0.85
    feed(v, latency=0.5, accuracy=0.85, tasks=99)  # past the 64 records kept
    assert p.decide(v) is None
    feed(v, latency=0.5, accuracy=0.85, tasks=1)
    assert "profiling again" in apply(v, p.decide(v)).reason


def test_bandwidth_profile_backs_off_however_long_its_decision_stood() -> None:
    v, p = view(), policy("bandwidth_profile")
    apply(v, p.decide(v))
    report = resources_pb2.NodeResources(node="edge-1")
    report.links.add(from_node="edge-1", to_node="cloud", bandwidth_mbps=40.0)
    v.resources = {"edge-1": report}
    for _ in range(100):  # the best fits: the decision stands for 100 tasks, past the 64 records kept
        feed(v, latency=0.4, size=1_200_000, tasks=1)
        assert p.decide(v) is None
    feed(v, latency=1.5, size=1_200_000, tasks=1)  # then the link queues: tasks come back late
    lighter = apply(v, p.decide(v))
    assert "fits 60% of 40.0 Mbit/s" in lighter.reason


def test_latency_budget_acts_on_what_dominates_the_delay() -> None:
    v, p = view(), policy("latency_budget")
    start = apply(v, p.decide(v))
    assert set(start.placement.values()) == {"edge-1"}
    feed(v, latency=1.5, process=1.2, transfer=0.1)  # processing on the edge dominates: offload
    moved = apply(v, p.decide(v))
    assert moved.placement["detect"] == "cloud"
    feed(v, latency=1.5, process=0.2, transfer=1.1)  # now the uplink dominates: bring it back
    back = apply(v, p.decide(v))
    assert back.placement["detect"] == "edge-1"
    feed(v, latency=1.0, process=0.3, queue=0.6)  # queueing: fewer frames per second
    assert apply(v, p.decide(v)).configuration.fps < 30
    feed(v, latency=2.5, process=0.5, transfer=0.1)  # far over, processing on edge but keep placement below
    p.params.offload = False
    lowered = apply(v, p.decide(v)).configuration
    assert lowered.resolution.height <= 480  # two steps down for a big miss
    feed(v, latency=0.1)
    assert apply(v, p.decide(v)).configuration.resolution.height > lowered.resolution.height


def test_latency_budget_offloads_only_where_the_traces_say_it_is_faster() -> None:
    v, p = view(), policy("latency_budget")
    apply(v, p.decide(v))
    slow_cloud, fast_edge = HopSamples(), HopSamples()
    slow_cloud.add(2.0)
    fast_edge.add(1.2)
    v.hops = {
        HopKey("processor.inference", "detect", "cloud"): slow_cloud,
        HopKey("processor.inference", "detect", "edge-1"): fast_edge,
    }
    feed(v, latency=1.5, process=1.2, transfer=0.1)  # processing dominates, but the cloud is slower for detect
    decision = apply(v, p.decide(v))
    assert decision.placement["detect"] == "edge-1" and "offload detect" not in decision.reason
    slow_cloud.add(0.2)
    slow_cloud.add(0.2)  # the cloud got faster
    feed(v, latency=1.5, process=1.2, transfer=0.1)
    assert apply(v, p.decide(v)).placement["detect"] == "cloud"


def test_latency_budget_judges_the_most_recent_tasks() -> None:
    v, p = view(), policy("latency_budget")
    apply(v, p.decide(v))
    feed(v, latency=0.6, tasks=20)  # a long, good history under this decision
    assert p.decide(v) is None
    feed(v, latency=3.0, transfer=0.1, process=2.5, tasks=3)  # then it goes bad
    assert p.decide(v) is not None


def test_latency_budget_waits_for_its_change_to_show() -> None:
    v, p = view(), policy("latency_budget", hold_tasks=4, offload=False)
    apply(v, p.decide(v))
    feed(v, latency=3.0, process=2.5)
    first = apply(v, p.decide(v))
    previous = first.version - 1
    feed(v, latency=3.0, process=2.5, tasks=3, version=previous)  # still draining from before the change
    assert p.decide(v) is None
    feed(v, latency=3.0, process=2.5, tasks=1, version=previous)  # hold_tasks arrivals and still over
    assert p.decide(v) is not None


def test_latency_budget_starts_within_its_part_of_the_uplink_once_it_is_measured() -> None:
    """Before its first task is back, a stream knows the uplink and its share of it, not its frames'
    bits: the start is fitted at 1 bit a pixel (JPEG at quality 85), at once when the uplink was
    measured before the stream registered, else when it is, unless tasks came back meanwhile."""
    light = {"fps": 1, "frames_per_segment": 1}
    for measured_first in (True, False):
        v, p = view(), policy("latency_budget", start=light)
        edge = resources_pb2.NodeResources(node="edge-1")  # every stage on the cloud: the frames cross
        v.resources = {"edge-1": edge}
        v.uplink_share_mbps = 0.5  # of 2 Mbit/s: three other streams of its node send over it
        if measured_first:
            edge.links.add(from_node="edge-1", to_node="cloud", bandwidth_mbps=2.0)
        decision = apply(v, p.decide(v))
        if not measured_first:
            assert decision.configuration.resolution.height == 720  # the configured start
            edge.links.add(from_node="edge-1", to_node="cloud", bandwidth_mbps=2.0)
            decision = apply(v, p.decide(v))
            assert decision.reason.startswith("restart at ")
        config = decision.configuration
        assert config.fps == 1 and "what 0.50 Mbit/s of the uplink carries" in decision.reason
        assert config.resolution.width * config.resolution.height / 1e6 <= 0.8 * 0.5  # 1 bit a pixel, 1 fps
        assert config.resolution.width * config.resolution.height > 0.8 * 0.5 * 1e6 / 2  # the largest that fits
        assert p.decide(v) is None  # once
    v, p = view(), policy("latency_budget", start=light)
    v.resources = {"edge-1": resources_pb2.NodeResources(node="edge-1")}
    apply(v, p.decide(v))
    feed(v, latency=0.3, transfer=0.1, size=100_000, tasks=1)  # its own tasks tell before the uplink is measured
    v.resources["edge-1"].links.add(from_node="edge-1", to_node="cloud", bandwidth_mbps=2.0)
    decision = p.decide(v)
    assert decision is None or not decision.reason.startswith("restart")


def test_latency_budget_fits_a_narrow_uplink_in_one_decision() -> None:
    v, p = view(), policy("latency_budget")
    edge = resources_pb2.NodeResources(node="edge-1")  # no processors on the edge: every stage on the cloud
    v.resources = {"edge-1": edge}
    start = apply(v, p.decide(v))  # at the best: the uplink is not measured yet
    assert set(start.placement.values()) == {"cloud"}
    edge.links.add(from_node="edge-1", to_node="cloud", bandwidth_mbps=4.0)
    # 10 frames of 1280x720 took 1.2 MB (~1 bit per pixel): 30 fps would need ~28 Mbit/s.
    feed(v, latency=3.0, transfer=2.5, process=0.2, size=1_200_000)
    narrow = apply(v, p.decide(v))
    config = narrow.configuration
    assert "fit the uplink" in narrow.reason
    bits_per_pixel = 1_200_000 * 8 / (1280 * 720 * 10)
    assert bits_per_pixel * config.resolution.width * config.resolution.height * config.fps <= 4e6 * 0.8
    pixels = config.resolution.width * config.resolution.height * config.frames_per_segment
    per_task = bits_per_pixel * pixels
    busy = bits_per_pixel * config.resolution.width * config.resolution.height * config.fps / 4e6
    transfer = per_task / 4e6 * (1 + busy / (2 * (1 - busy)))  # waiting behind its own earlier tasks too
    processing = 0.2 * pixels / (1280 * 720 * 10)
    assert transfer + 0.3 + processing <= 0.8 + 1e-9  # transfer + the rest fit the 0.8 s target
    assert config.resolution.height > 180  # no further down than it needs
    # Its first tasks wait behind the backlog of the old configuration: the model says they fit, so hold.
    feed(v, latency=3.0, transfer=2.7 - processing, process=processing, size=int(per_task / 8))
    assert p.decide(v) is None
    # Tasks of the new decision come back fast and the uplink is wide again: step up, one knob at a time.
    edge.links[0].bandwidth_mbps = 100.0
    feed(v, latency=0.2, transfer=0.1, size=int(per_task / 8))
    raised = apply(v, p.decide(v)).configuration

    def rank(c):  # type: ignore[no-untyped-def]  # what accuracy needs most first
        return (c.resolution.width * c.resolution.height, c.fps, c.frames_per_segment)

    assert rank(raised) > rank(config)


def test_latency_budget_refits_as_soon_as_the_uplink_falls() -> None:
    v, p = view(), policy("latency_budget")
    edge = resources_pb2.NodeResources(node="edge-1")  # no processors on the edge: every stage on the cloud
    edge.links.add(from_node="edge-1", to_node="cloud", bandwidth_mbps=100.0)
    v.resources = {"edge-1": edge}
    apply(v, p.decide(v))
    feed(v, latency=0.5, transfer=0.1, process=0.3, size=1_200_000)  # ~29 Mbit/s fits 100 Mbit/s
    assert p.decide(v) is None
    # The traces say the uplink fell to 4 Mbit/s; the tasks that came back so far were all in time.
    edge.links[0].bandwidth_mbps = 4.0
    refit = apply(v, p.decide(v))
    assert refit.reason.startswith("uplink now 4.0 Mbit/s")
    config = refit.configuration
    bits_per_pixel = 1_200_000 * 8 / (1280 * 720 * 10)
    assert bits_per_pixel * config.resolution.width * config.resolution.height * config.fps <= 4e6 * 0.8
    # Measured by the tasks' own transfers only (no traces, no probes), the policy waits for the tasks.
    v2, p2 = view(), policy("latency_budget")
    v2.resources = {"edge-1": resources_pb2.NodeResources(node="edge-1")}
    apply(v2, p2.decide(v2))
    feed(v2, latency=0.5, transfer=0.1, process=0.3, size=1_200_000)
    assert p2.decide(v2) is None


def test_latency_budget_places_stages_where_frames_cross_the_uplink_least() -> None:
    pipeline = types_pb2.Pipeline(
        name="plates",
        stages=[stage("detect", processor="detector"), stage("read", ("detect",), BOXES, LABELS, processor="reader")],
    )
    v, p = StreamView(make_stream_spec(pipeline), None, "cloud"), policy("latency_budget")
    edge = resources_pb2.NodeResources(node="edge-1", queue_lengths={"reader": 0})  # the edge cannot detect
    edge.links.add(from_node="edge-1", to_node="cloud", bandwidth_mbps=4.0)
    cloud = resources_pb2.NodeResources(node="cloud", queue_lengths={"detector": 0, "reader": 0})
    v.resources = {"edge-1": edge, "cloud": cloud}
    start = apply(v, p.decide(v))
    assert dict(start.placement) == {"detect": "cloud", "read": "edge-1"}  # frames go up, then back down
    feed(v, latency=3.0, transfer=2.5, process=0.2, size=1_200_000)
    moved = apply(v, p.decide(v))
    assert dict(moved.placement) == {"detect": "cloud", "read": "cloud"} and "run read on cloud" in moved.reason


def test_a_stale_node_can_run_nothing_and_gets_no_stages() -> None:
    v, p = view(), policy("latency_budget")
    v.resources = {"edge-1": resources_pb2.NodeResources(node="edge-1", queue_lengths={"noop": 0})}
    assert v.can_run("edge-1", "noop") and set(p.decide(v).placement.values()) == {"edge-1"}
    v.stale = frozenset({"edge-1"})  # its monitor fell silent: whatever it said last, nothing new goes there
    assert not v.can_run("edge-1", "noop") and v.can_run("cloud", "noop")
    assert set(p.decide(v).placement.values()) == {"cloud"}


def test_every_policy_is_registered() -> None:
    assert set(POLICIES.names()) >= {
        "fixed",
        "cloud_only",
        "edge_only",
        "random",
        "feedback_control",
        "bandwidth_profile",
        "periodic_profiling",
        "latency_budget",
        "learned",
    }


def test_latency_budget_fits_processing_to_the_time_there_is() -> None:
    """A busy machine (every node as slow): no placement helps, so the processing per task and per
    second is fitted to the budget and max_load at once, keeping the resolution while frame rate and
    segment length can give; tasks of the heavier decision still draining do not push it further, and
    steps back up stay within the processing time there is."""
    v, p = view(), policy("latency_budget", offload=False, max_load=0.8)
    apply(v, p.decide(v))  # 720p, 30 fps, 10 frames per segment
    feed(v, latency=3.0, process=2.5, queue=0.3)  # 0.25 s a frame: 7.5 s of processing a second
    fitted = apply(v, p.decide(v))
    config = fitted.configuration
    assert "processing 2.50 s" in fitted.reason and set(fitted.placement.values()) == {"edge-1"}
    assert (config.resolution.height, config.fps, config.frames_per_segment) == (720, 2, 1)
    heavy = view().spec.max_configuration
    feed(v, latency=3.5, process=2.5, queue=1.0, tasks=4, version=fitted.version - 1)  # the backlog drains
    for record in v.recent[-4:]:
        record.task.configuration.CopyFrom(heavy)
    assert p.decide(v) is None
    for _ in range(6):  # tasks of the fitted decision come back in time: spend it, within 0.8 s a second
        frames = v.current.configuration.frames_per_segment
        feed(v, latency=0.05 + 0.25 * frames, process=0.25 * frames)
        proposal = p.decide(v)
        if proposal is None:
            break
        config = apply(v, proposal).configuration
        assert 0.25 * config.fps <= 0.8 and config.resolution.height == 720
    assert config.fps == 3


def test_latency_budget_keeps_within_its_share_of_a_shared_processor() -> None:
    """Other streams' stages came to the processor this stream's detector runs on: its processing is
    refitted to its share there at once, before the queue shows it; without shares it is not."""
    for share_processors in (True, False):
        v, p = view(), policy("latency_budget", offload=False, share_processors=share_processors)
        apply(v, p.decide(v))  # 720p, 30 fps, 10 frames per segment
        feed(v, latency=0.5, process=0.2)  # 0.02 s a frame: 0.6 s of processing a second, under max_load
        v.load_shares = {"detect": 0.2}  # a third of that is its share now
        proposal = p.decide(v)
        if not share_processors:
            assert proposal is None
            continue
        assert proposal is not None and "over its share of shared processors (0.20)" in proposal.reason
        config = proposal.configuration
        assert 0.02 * config.fps * (config.resolution.width * config.resolution.height) / (1280 * 720) <= 0.2


def test_latency_budget_starts_light_by_default_and_climbs_while_tasks_leave_budget() -> None:
    v, p = view(), POLICIES.create("latency_budget", {})
    start = apply(v, p.decide(v))
    config = start.configuration
    assert (config.resolution.height, config.fps, config.frames_per_segment) == (720, 1, 1)
    feed(v, latency=0.1, process=0.02, size=20_000)
    assert apply(v, p.decide(v)).configuration.fps > 1


def test_latency_budget_starts_where_told() -> None:
    v, p = view(), policy("latency_budget", start={"height": 400, "fps": 4, "frames_per_segment": 2})
    start = apply(v, p.decide(v))
    config = start.configuration
    assert (config.resolution.height, config.fps, config.frames_per_segment) == (360, 3, 2)
    assert "configured start" in start.reason
    v.current = None  # a restart (fallback, then feedback again) keeps what it learned since
    p.levels = (1, 1, 1)
    assert apply(v, p.decide(v)).configuration.resolution.height == 540


def test_latency_budget_does_not_blame_the_uplink_for_slow_processing() -> None:
    v, p = view(), policy("latency_budget", offload=False)
    edge = resources_pb2.NodeResources(node="edge-1")
    edge.links.add(from_node="edge-1", to_node="cloud", bandwidth_mbps=50.0)
    v.resources = {"edge-1": edge}
    apply(v, p.decide(v))
    # Late because processing is slow; at the measured 50 Mbit/s the transfer barely changes (0.016 s).
    feed(v, latency=3.0, process=2.5, transfer=0.01)
    decision = apply(v, p.decide(v))
    assert not decision.reason.startswith("uplink now") and "processing 2.50 s" in decision.reason


def test_latency_budget_acts_on_one_task_that_alone_is_over_the_budget() -> None:
    """A decision's first task over the whole budget is enough to act on, when the decision asked for
    no less than the tasks before it (at a task every few seconds, a second one costs that much more);
    one late task of a lighter decision is the earlier backlog draining, and waits for a second."""
    v, p = view(), policy("latency_budget", offload=False)
    start = apply(v, p.decide(v))
    feed(v, latency=2.5, process=2.0, tasks=1)  # the startup decision's first task: far over 1 s
    lowered = apply(v, p.decide(v))
    work = lowered.configuration.resolution.height * lowered.configuration.fps
    assert work < 720 * 30 and "delay 2.50 s over" in lowered.reason
    feed(v, latency=1.8, process=1.5, tasks=1, version=start.version)  # the heavier one's, draining
    v.recent[-1].task.configuration.CopyFrom(start.configuration)
    feed(v, latency=1.2, process=0.9, tasks=1)  # the lighter one's first: over, but behind that backlog
    assert p.decide(v) is None


def test_latency_budget_does_not_climb_back_to_what_it_cut_for_ten_seconds() -> None:
    """A cut configuration is not climbed back to (as much work a second and a task) within COOLDOWN_S of
    the cut, by when the tasks were made: back and forth costs late tasks each time."""
    from dayu.scheduler.policies import COOLDOWN_S

    v, p = view(), policy("latency_budget", offload=False)
    apply(v, p.decide(v))

    def made_at(seconds: float) -> None:
        v.recent[-1].task.created_at.FromNanoseconds(round(seconds * 1e9))

    feed(v, latency=0.9, process=0.1, queue=0.6)  # over the 0.8 s target, queueing: fewer frames a second
    made_at(100.0)
    cut = apply(v, p.decide(v))
    assert cut.configuration.fps < 30
    feed(v, latency=0.1, process=0.01)  # leaves budget at once: the step back up is cooling
    made_at(105.0)
    proposal = p.decide(v)
    assert proposal is None or proposal.configuration.fps < 30 or proposal.configuration.resolution.height < 720
    feed(v, latency=0.1, process=0.01)
    made_at(100.0 + COOLDOWN_S + 1)
    assert apply(v, p.decide(v)).configuration.fps == 30  # long enough: it climbs back


def test_a_views_feedback_reads_each_record_once_and_follows_its_recent_records() -> None:
    """StreamView keeps each record's figures while the record is in `recent`: its feedback is what
    reading every record anew gives, however `recent` is trimmed or replaced, and its cache stays bounded."""
    v = view()
    apply(v, policy("fixed").decide(v))
    for i in range(300):
        feed(v, 0.1 + (i % 7) / 10, transfer=0.05 * (i % 3), process=0.2, accuracy=(i % 5) / 5, size=1000 + i, tasks=1)
        if i % 50 == 49:
            v.recent = list(v.recent[-10:])  # a new list of some of the same records
        fresh = Feedback.of([Figures.of(record) for record in v.recent[-8:]])
        assert v.feedback(1, last=8) == fresh
        assert len(v._figures) <= 2 * len(v.recent)


def test_a_views_feedback_asked_again_answers_as_if_asked_fresh() -> None:
    """A decision asks for the same feedback several times, and the view answers again what it read
    last while nothing it reads changed: whatever changes between asks (a record arriving, the
    decision, a node's CPU now or when a record arrived), the answer is what a fresh read gives, and
    so are the records' figures it reads, kept while the records are the same."""
    import random

    rng = random.Random(7)
    v = view()
    fixed = policy("fixed")
    apply(v, fixed.decide(v))
    asks = [(1, True, 0), (2, True, 8), (1, False, 0), (1, False, 8), (1, True, 1)]
    for i in range(400):
        change = rng.randrange(5)
        if change == 0:
            feed(v, 0.1 + (i % 7) / 10, process=0.2 + (i % 3) / 10, tasks=1)
            v.recent[-1].task.dag.stages[0].executed_on = rng.choice(["edge-1", "cloud"])
            v.recent_cpu_cores.append({"edge-1": rng.choice([1.0, 2.0]), "cloud": 4.0})
        elif change == 1:
            v.cpu_cores = {"edge-1": rng.choice([0.5, 1.0, 2.0]), "cloud": rng.choice([2.0, 4.0])}
        elif change == 2 and isinstance(v.cpu_cores, dict) and v.cpu_cores:
            v.cpu_cores["edge-1"] = rng.choice([0.5, 1.0, 2.0])  # in place, as the core's mapping changes
        elif change == 3:
            apply(v, Proposal(v.current.configuration, dict(v.current.placement), "again"))  # type: ignore[union-attr]
        else:  # the cores when each record arrived, without a record: the lists end together again shifted
            v.recent_cpu_cores.append({"edge-1": rng.choice([1.0, 2.0])})
        for ask in rng.sample(asks, 3):
            answered = v.feedback(*ask)
            v._feedback.clear()
            assert v.feedback(*ask) == answered, (i, ask)
        # What it read: the figures of the records there now (the same objects asked again, or others).
        assert v.figures() == [Figures.of(record) for record in v.recent], i
        assert v.figures(8) == [Figures.of(record) for record in v.recent[-8:]], i


def test_a_view_read_only_for_its_last_figures_keeps_them_right() -> None:
    """Between decisions the scheduler reads only a stream's last records (needs_now), while records
    keep arriving and `recent` drops its oldest: what it keeps of their figures is pruned while most
    of `recent` was never read, and every read still gives the figures of the records there now."""
    v = view()
    apply(v, policy("fixed").decide(v))
    for i in range(60):  # the 64 records the core keeps (feed) replaced several times over
        feed(v, 0.1 + (i % 7) / 10, process=0.2 + (i % 3) / 10, tasks=1 + i % 13)  # often more than are read
        assert v.figures(8) == [Figures.of(record) for record in v.recent[-8:]], i
        assert v.needs_now() == Needs.of(Feedback.of(v.figures(8)), v.current.configuration), i  # type: ignore[union-attr]
    assert v.figures() == [Figures.of(record) for record in v.recent]
    assert len(v._figures) <= 2 * len(v.recent)
