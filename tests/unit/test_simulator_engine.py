"""The simulator's engine on small hand-made scenarios and a hand-made profile: shared links, overloaded
processors, every task accounted for, and runs that repeat with their seed."""

from __future__ import annotations

import random
import statistics

import pytest
import simpy

from dayu.mesh.model import CONFIGS
from dayu.runtime.errors import InvalidArgument
from dayu.scheduler.service import SchedulerSection
from dayu.simulator.costs import Profile, ProfileFile
from dayu.simulator.engine import SimulatedMesh, _Workers
from dayu.simulator.scenario import (
    ChannelSpec,
    GeneratedParams,
    NodeSpec,
    ProcessorSpec,
    Scenario,
    StreamModel,
    generate,
)
from dayu.v1 import decision_pb2, types_pb2

DETECT = types_pb2.StageSpec(
    name="detect",
    processor="text_detector",
    input_type=types_pb2.DATA_TYPE_FRAMES,
    output_type=types_pb2.DATA_TYPE_BOXES,
)
PIPELINE = types_pb2.Pipeline(name="plates", stages=[DETECT])


def profile(seconds_per_frame: float = 0.1) -> Profile:
    """Processing linear in frames at two resolutions, 50 KB a 720p frame, F1 0.9 at 720p."""
    return Profile(
        ProfileFile.model_validate(
            {
                "processors": {
                    "text_detector": {
                        "kind": "text_detector",
                        "fit": {"fixed_s": 0.0, "per_frame_s": seconds_per_frame, "per_frame_pixel_s": 0.0},
                        "spread": 0.05,
                        "measured": [
                            {"width": w, "height": h, "frames": n, "seconds": seconds_per_frame * n, "repeats": 3}
                            for w, h in ((1280, 720), (640, 360))
                            for n in (1, 4)
                        ],
                    }
                },
                "frame_bytes": [
                    {"width": 1280, "height": 720, "quality": 85, "bytes": 50_000},
                    {"width": 640, "height": 360, "quality": 85, "bytes": 15_000},
                ],
                "accuracy": [
                    {"width": 1280, "height": 720, "quality": 85, "frames_per_segment": 1, "f1": 0.9, "segments": 9},
                    {"width": 640, "height": 360, "quality": 85, "frames_per_segment": 1, "f1": 0.6, "segments": 9},
                ],
                "task_overhead": {"fixed_bytes": 300, "per_frame_bytes": 100},
            }
        )
    )


def stream(stream_id: str, node: str, placement: dict[str, str] | None = None, budget_s: float = 1.5) -> StreamModel:
    policy = decision_pb2.PolicySpec(name="fixed")
    if placement:
        policy.params.update({"placement": placement})
    spec = decision_pb2.StreamSpec(
        stream_id=stream_id,
        source_id=f"street-{stream_id}",
        node=node,
        pipeline=PIPELINE,
        latency_budget_s=budget_s,
        max_configuration=types_pb2.Configuration(
            resolution=types_pb2.Resolution(width=1280, height=720),
            fps=2,
            quality=85,
            frames_per_segment=2,
            codec=types_pb2.CODEC_JPEG,
        ),
        policy=policy,
    )
    return StreamModel(spec, source_fps=8.0, has_ground_truth=True)


def scenario(
    streams: list[StreamModel], uplink_mbps: float = 2.0, edge_detector: bool = False, kernel: bool = False
) -> Scenario:
    """A cloud with two detector workers, two edges behind one shared uplink (and downlink); `kernel`:
    links the kernel carries (the cluster's), not the controllers' emulator."""
    edges = ("edge-1", "edge-2")
    nodes = {"cloud": NodeSpec("cloud", {"text_detector": ProcessorSpec("text_detector", 2, 64)})}
    for edge in edges:
        local = {"text_detector": ProcessorSpec("text_detector", 1, 64)} if edge_detector else {}
        nodes[edge] = NodeSpec(edge, local)
    channels = [
        ChannelSpec("uplink", tuple((e, "cloud") for e in edges), uplink_mbps, 10.0, uplink=True, kernel=kernel),
        ChannelSpec("downlink", tuple(("cloud", e) for e in edges), uplink_mbps, 10.0, kernel=kernel),
    ]
    return Scenario("test", "cloud", nodes, channels, streams, SchedulerSection(), late_factor=4.0)


def run(s: Scenario, duration_s: float = 20.0, seed: int = 0, costs: Profile | None = None) -> SimulatedMesh:
    mesh = SimulatedMesh(s, costs or profile(), "fixed", duration_s, seed)
    mesh.run()
    return mesh


def test_two_streams_sharing_an_uplink_take_longer_per_transfer_than_one_alone() -> None:
    on_cloud = {"detect": "cloud"}
    alone = run(scenario([stream("a", "edge-1", on_cloud)]))
    shared = run(scenario([stream("a", "edge-1", on_cloud), stream("b", "edge-2", on_cloud)]))

    def transfer_s(mesh: SimulatedMesh, stream_id: str) -> float:
        return statistics.median(t.transfer_s for t in mesh.results.tasks if t.stream_id == stream_id and t.delivered)

    # A task of 2 x 50 KB takes 0.4 s at 2 Mbit/s: one stream (a task a second) leaves the link idle
    # most of the time, two queue behind each other.
    assert transfer_s(shared, "a") > transfer_s(alone, "a")
    assert shared.results.channel_bytes["uplink"] > 1.8 * alone.results.channel_bytes["uplink"]
    assert shared.results.uplinks == ["uplink"]


def test_a_transfer_is_called_off_on_an_emulated_link_and_goes_to_its_end_on_a_kernel_link() -> None:
    """An uplink that carries a task (2 x 50 KB) in 1.6 s when the stream makes one a second: on the
    controllers' emulator, a task over its budget with others of its stream behind it is called off
    while its bytes go (ControllerCore._called_off); where the kernel carries the bytes, the controller
    cannot, and its tasks are given up only before they take the link, when late (Link.transmit)."""

    def reasons(kernel: bool) -> set[str]:
        mesh = run(scenario([stream("a", "edge-1", {"detect": "cloud"})], uplink_mbps=0.5, kernel=kernel))
        return {reason.split(":")[0] for reason in mesh.results.log.drop_reasons}

    assert "overtaken" in reasons(kernel=False)
    assert reasons(kernel=True) == {"late"}


def test_a_processor_slower_than_its_arrivals_queues_and_its_tasks_are_dropped_late_with_a_reason() -> None:
    # On the edge, 0.6 s a frame: a segment of 2 frames takes 1.2 s and one comes every second.
    mesh = run(scenario([stream("a", "edge-1")], edge_detector=True), duration_s=30, costs=profile(0.6))
    tasks = mesh.results.tasks
    dropped = [t for t in tasks if not t.delivered]
    assert dropped, "an overloaded processor's backlog must be dropped once too late"
    assert all(t.reason.startswith("late: ") and "over 4 times its 1.5 s budget" in t.reason for t in dropped)
    assert all(t.latency_s > 4 * 1.5 for t in dropped)
    delivered = [t.latency_s for t in tasks if t.delivered]
    assert delivered[-1] > delivered[0]  # the queue grew while it ran
    assert all(t.placement == "detect@edge-1" for t in tasks)


def test_every_task_made_is_delivered_or_dropped_with_a_reason() -> None:
    mesh = run(scenario([stream("a", "edge-1", {"detect": "cloud"}), stream("b", "edge-2")], uplink_mbps=1.0))
    tasks = mesh.results.tasks
    assert len(tasks) == mesh.made_tasks > 20
    assert not mesh.in_flight
    assert len({(t.stream_id, t.made_s) for t in tasks}) == len(tasks)
    assert all(t.delivered or t.reason for t in tasks)
    assert all(t.accuracy == pytest.approx(0.9) for t in tasks if t.delivered)
    # Stream b's edge has no detector: the controller falls back to the cloud.
    assert {t.placement for t in tasks if t.stream_id == "b" and t.delivered} == {"detect@cloud"}


def test_the_same_seed_gives_the_same_run() -> None:
    def outcome(seed: int) -> list[tuple[object, ...]]:
        mesh = run(scenario([stream("a", "edge-1", {"detect": "cloud"}), stream("b", "edge-2")]), seed=seed)
        return [(t.stream_id, t.made_s, t.latency_s, t.delivered, t.reason) for t in mesh.results.tasks]

    assert outcome(3) == outcome(3)
    assert outcome(3) != outcome(4)


def test_a_generated_scenario_runs_its_streams_on_the_edges_behind_shared_uplinks() -> None:
    params = GeneratedParams.parse("cloud_workers=2,edges=4,uplinks=2,streams=6,uplink_mbps=20")
    s = generate(params, "latency_budget", seed=1)
    assert {c.name for c in s.channels} == {"uplink-1", "uplink-2", "downlink-1", "downlink-2"}
    assert sorted(len(c.pairs) for c in s.channels if c.uplink) == [2, 2]
    # The scheduler is told which edges each uplink carries (their streams share it together)...
    assert s.scheduler.shared_uplinks == {"uplink-1": ["edge-1", "edge-3"], "uplink-2": ["edge-2", "edge-4"]}
    unknown = generate(GeneratedParams.parse("edges=4,uplinks=2,streams=6,uplinks_known=0"), "latency_budget", seed=1)
    assert unknown.scheduler.shared_uplinks == {}  # ... or not: each edge's streams divide what it sees
    mesh = SimulatedMesh(s, Profile.load(CONFIGS / "profile.yaml"), "latency_budget", 10.0, seed=1)  # the shipped one
    results = mesh.run()
    assert results.tasks and not mesh.in_flight
    assert results.decisions >= len(s.streams)  # a startup decision each at least


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("streams=0", "--generate streams"),
        ("edges=2,uplinks=3", "--generate uplinks"),
        ("clouds=3", "--generate"),
        ("edges=many", "--generate edges"),
        ("uplinks_known=2", "--generate uplinks_known"),
    ],
)
def test_bad_generator_parameters_name_the_field(text: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        GeneratedParams.parse(text)
    assert error.value.field == field


def test_a_stream_whose_processor_the_profile_lacks_is_refused() -> None:
    s = scenario([stream("a", "edge-1")])
    other = profile()
    other.data.processors["text_recognizer"] = other.data.processors.pop("text_detector")
    with pytest.raises(InvalidArgument, match="text_detector"):
        SimulatedMesh(s, Profile(other.data), "fixed", 1.0)


def test_profile_lookups_interpolate_and_hold_outside_the_measured_points() -> None:
    costs = profile(0.1)
    assert costs.processing_s("text_detector", 1280, 720, 2) == pytest.approx(0.2)
    assert costs.processing_s("text_detector", 960, 540, 3) == pytest.approx(0.3)
    assert costs.frame_bytes(640, 360, 85) == pytest.approx(15_000)
    assert costs.frame_bytes(320, 180, 85) == pytest.approx(15_000 / 4)  # bytes per pixel held
    assert costs.accuracy(1280, 720, 30, 8) == pytest.approx(0.9)
    assert costs.task_bytes(2, 50_000) == 300 + 200 + 100_000
    assert costs.task_bytes(2, 50_000, with_frames=False) == 500


def test_a_collapse_is_measured_under_the_transfer_and_the_old_decisions_tasks_give_way() -> None:
    """configs/experiment.yaml on the floor trace (15 to 0.5 Mbit/s at 15 s): the probe says the link
    fell while a task is still going (as ControllerCore.measure_link), and the tasks made under the
    decision before the fall, which would arrive past their budget, are dropped as superseded before
    they take the link (as ControllerCore._over_link) instead of holding it for seconds each."""
    from dayu.simulator.scenario import from_mesh

    scenario = from_mesh(CONFIGS / "experiment.yaml", "latency_budget", CONFIGS / "traces" / "floor.txt")
    mesh = SimulatedMesh(scenario, Profile.load(CONFIGS / "profile.yaml"), "latency_budget", 30.0, seed=0)
    log = mesh.run().log
    superseded = {r: n for r, n in log.drop_reasons.items() if r.startswith("superseded: its decision replaced")}
    assert superseded, log.drop_reasons
    within = [t for t in log.tasks if 15 <= t.made_s < 30 and t.delivered and t.latency_s <= 1.5]
    assert len(within) >= 20  # the lighter tasks of the new decision get through within the floor (12 without)


def test_a_processors_workers_serve_in_simpys_order() -> None:
    """_Workers keeps its users in a dict (a cloud's thousands of workers released without a scan):
    the same random arrivals and service times on it and on simpy's Resource are served alike."""

    def served(make: type[simpy.Resource]) -> list[tuple[int, float, float]]:
        env, rng, log = simpy.Environment(), random.Random(7), []
        workers = make(env, capacity=3)

        def job(i: int, arrive_s: float, service_s: float):  # type: ignore[no-untyped-def]
            yield env.timeout(arrive_s)
            with workers.request() as turn:
                yield turn
                started = env.now
                yield env.timeout(service_s)
            log.append((i, started, env.now))

        for i in range(300):
            env.process(job(i, rng.uniform(0, 60), rng.choice((0.5, 1.0, rng.expovariate(1.0)))))
        env.run()
        assert workers.count == 0 and not workers.queue
        return log

    assert served(_Workers) == served(simpy.Resource)
    assert len(served(_Workers)) == 300
