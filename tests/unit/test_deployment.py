"""The deployment planner (dayu.scheduler.deployment) and its hooks in the scheduler's core."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dayu.mesh.model import CONFIGS, load_mesh_config
from dayu.mesh.plan import Instance, instances, settings
from dayu.runtime.errors import InvalidArgument
from dayu.scheduler.core import SchedulerCore
from dayu.scheduler.deployment import DeploymentPlanner, DeploymentSettings
from dayu.scheduler.service import SchedulerServicer
from dayu.v1 import decision_pb2, resources_pb2, scheduler_pb2, task_pb2, types_pb2

MIB = 1024 * 1024
SETTINGS = DeploymentSettings(window_s=10, settle_s=3, horizon_s=60, idle_after_s=30, min_hold_s=20)
FRAMES, BOXES = types_pb2.DATA_TYPE_FRAMES, types_pb2.DATA_TYPE_BOXES
UPLINK = {("edge-2", "cloud"): 8.0}  # Mbit/s, as the traces show it


def report(
    loaded: bool = False, free_mb: int = 1500, model_mb: int = 5, load_s: float = 0.0, node: str = "edge-2"
) -> resources_pb2.NodeResources:
    made = resources_pb2.NodeResources(
        node=node, memory_total_bytes=2048 * MIB, memory_used_bytes=(2048 - free_mb) * MIB
    )
    made.deployable.add(kind="text_detector", loaded=loaded, load_s=load_s, model_bytes=model_mb * MIB)
    made.queue_lengths["text_recognizer"] = 0
    if loaded:
        made.queue_lengths["text_detector"] = 0
    return made


def record(executed_on: str, task_bytes: int = 200_000, home: str = "edge-2") -> task_pb2.TaskRecord:
    task = task_pb2.Task(stream_id="cam-2")
    task.hops.add(component="controller", node=home, bytes=task_bytes)
    stage = task.dag.stages.add(executed_on=executed_on, node=executed_on)
    stage.spec.name, stage.spec.processor = "detect", "text_detector"
    read = task.dag.stages.add(executed_on="cloud")
    read.spec.name, read.spec.processor = "read", "text_recognizer"
    return task_pb2.TaskRecord(task=task, outcome=task_pb2.TASK_OUTCOME_DELIVERED)


def feed(planner: DeploymentPlanner, start: float, until: float, executed_on: str, per_s: float = 2.0) -> float:
    """Records at per_s from `start` to `until`, planning after each; returns `until`."""
    now = start
    while now < until:
        planner.observe(record(executed_on), "edge-2", now, UPLINK)
        planner.plan(now)
        now += 1 / per_s
    return until


def kind(planner: DeploymentPlanner):  # type: ignore[no-untyped-def]
    return planner.kinds["edge-2"]["text_detector"]


def test_loads_a_kind_once_its_streams_cross_the_uplink_for_settle_s() -> None:
    planner = DeploymentPlanner("cloud", SETTINGS)
    planner.report(report(), now=0.0)
    assert planner.plan(0.0) == [] and not kind(planner).load
    assert kind(planner).reason == "no task needed it yet"
    feed(planner, 0.0, 2.5, "cloud")  # 2.5 s of crossing: not yet (settle_s 3)
    assert not kind(planner).load and "settles after 3 s" in kind(planner).reason
    feed(planner, 2.5, 3.5, "cloud")
    plan = kind(planner)
    assert plan.load, plan.reason
    # 2 tasks/s x 200 kB = 3.2 Mbit/s, 40% of the 8 Mbit/s uplink: 24 s saved over 60 s, under a 5 s load
    assert 3.0 < plan.uplink_mbps < 3.4, plan.uplink_mbps
    assert "Mbit/s over the uplink" in plan.reason and "40." in plan.reason, plan.reason
    (entry,) = planner.node_plans("edge-2")
    assert entry.kinds[0].load and not entry.kinds[0].loaded and entry.kinds[0].model_bytes == 5 * MIB
    assert planner.node_plans("edge-1") == []


def test_a_load_must_pay_back_within_the_horizon() -> None:
    planner = DeploymentPlanner("cloud", SETTINGS)
    planner.report(report(load_s=20.0), now=0.0)  # a slow load, measured before
    now = 0.0
    while now < 10:  # 0.5 task/s x 100 kB = 0.4 Mbit/s: 5% of the uplink, 3 s over 60 s < 20 s
        planner.observe(record("cloud", task_bytes=100_000), "edge-2", now, UPLINK)
        planner.plan(now)
        now += 2
    assert not kind(planner).load and "not worth a load" in kind(planner).reason, kind(planner).reason
    # The same traffic on a slower uplink takes more of its time: worth it there.
    slow = {("edge-2", "cloud"): 0.5}
    for step in range(10):
        planner.observe(record("cloud", task_bytes=100_000), "edge-2", now + step, slow)
    planner.plan(now + 10)
    assert kind(planner).load, kind(planner).reason


def test_never_loads_beyond_the_nodes_memory() -> None:
    planner = DeploymentPlanner("cloud", SETTINGS)
    planner.report(report(free_mb=100, model_mb=80), now=0.0)  # 80 MiB x 2 does not fit in 100 MiB
    feed(planner, 0.0, 10.0, "cloud")
    assert not kind(planner).load and kind(planner).reason.startswith("memory: it needs 160 MiB free"), kind(
        planner
    ).reason
    planner.report(report(free_mb=400, model_mb=80), now=10.0)
    feed(planner, 10.0, 11.0, "cloud")
    assert kind(planner).load


def test_unloads_when_idle_and_not_before_min_hold() -> None:
    planner = DeploymentPlanner("cloud", SETTINGS)
    planner.report(report(), now=0.0)
    feed(planner, 0.0, 4.0, "cloud")
    assert kind(planner).load
    loaded_at = kind(planner).since
    assert planner.report(report(loaded=True, load_s=1.2), now=5.0)  # applied: a change
    assert not planner.report(report(loaded=True, load_s=1.2), now=6.0)
    feed(planner, 6.0, 40.0, "edge-2")  # its tasks run there now
    assert kind(planner).load and kind(planner).load_s == 1.2
    assert planner.plan(69.0) == []  # 29 s without a task: still loaded
    assert planner.plan(70.5) == ["edge-2"]
    assert not kind(planner).load and kind(planner).reason.startswith("idle: no task of edge-2's streams")
    assert kind(planner).since > loaded_at
    # Loaded, and its streams gone at once: min_hold_s (20 s) holds it, then idle_after_s (30 s).
    quick = DeploymentPlanner("cloud", SETTINGS.model_copy(update={"idle_after_s": 1.0}))
    quick.report(report(), now=0.0)
    feed(quick, 0.0, 4.0, "cloud")
    assert kind(quick).load
    assert quick.plan(15.0) == [] and kind(quick).load
    assert quick.plan(24.0) == ["edge-2"] and not kind(quick).load


def test_a_straggler_after_an_idle_unload_does_not_reload_at_once() -> None:
    """Loaded while its stream's tasks still crossed (none ran on the node), then idle and unloaded: one
    late task crossing is a new run of demand, which must last settle_s like any."""
    planner = DeploymentPlanner("cloud", SETTINGS.model_copy(update={"idle_after_s": 1.0}))
    planner.report(report(), now=0.0)
    feed(planner, 0.0, 4.0, "cloud")
    assert kind(planner).load
    assert planner.plan(24.0) == ["edge-2"] and not kind(planner).load  # min_hold_s, then idle
    planner.observe(record("cloud"), "edge-2", 25.0, UPLINK)
    assert planner.plan(25.0) == [] and not kind(planner).load
    assert "settles after 3 s" in kind(planner).reason


def test_no_flapping_with_bursts_and_pauses() -> None:
    planner = DeploymentPlanner("cloud", SETTINGS)
    planner.report(report(), now=0.0)
    # Bursts of crossing tasks shorter than settle_s, each broken by a task that ran at home: no load.
    now = 0.0
    for _ in range(10):
        now = feed(planner, now, now + 2.0, "cloud")
        planner.observe(record("edge-2"), "edge-2", now, UPLINK)
        now += 1
    assert not kind(planner).load
    now = feed(planner, now, now + 4.0, "cloud")
    assert kind(planner).load
    changes = 0
    for _ in range(20):  # 20 s of tasks, 20 s without: pauses shorter than idle_after_s keep it loaded
        now = feed(planner, now, now + 20.0, "edge-2")
        changes += len(planner.plan(now + 20.0))
        now += 20.0
    assert changes == 0 and kind(planner).load


def test_stale_nodes_keep_their_plan() -> None:
    planner = DeploymentPlanner("cloud", SETTINGS)
    planner.report(report(), now=0.0)
    for step in range(8):
        planner.observe(record("cloud"), "edge-2", step * 0.5, UPLINK)
    assert planner.plan(4.0, stale={"edge-2"}) == [] and not kind(planner).load
    assert planner.plan(4.0) == ["edge-2"]


def test_events_are_bounded_and_windowed() -> None:
    planner = DeploymentPlanner("cloud", SETTINGS)
    planner.report(report(), now=0.0)
    for step in range(10_000):
        planner.observe(record("cloud"), "edge-2", step * 0.001, UPLINK)
    assert len(kind(planner).events) <= 4096
    planner.plan(100.0)
    assert len(kind(planner).events) == 0


def pipeline() -> types_pb2.Pipeline:
    return types_pb2.Pipeline(
        name="plates",
        stages=[
            types_pb2.StageSpec(name="detect", processor="text_detector", input_type=FRAMES, output_type=BOXES),
            types_pb2.StageSpec(
                name="read", processor="text_recognizer", parents=["detect"], input_type=BOXES, output_type=BOXES
            ),
        ],
    )


def spec() -> decision_pb2.StreamSpec:
    return decision_pb2.StreamSpec(
        stream_id="cam-2",
        source_id="street-2",
        node="edge-2",
        pipeline=pipeline(),
        latency_budget_s=2.0,
        max_configuration=types_pb2.Configuration(
            resolution=types_pb2.Resolution(width=960, height=540),
            fps=4,
            quality=85,
            frames_per_segment=4,
            codec=types_pb2.CODEC_JPEG,
        ),
        policy=decision_pb2.PolicySpec(name="fixed"),
    )


async def test_core_publishes_the_deployment_and_serves_the_plan() -> None:
    clock = [0.0]
    core = SchedulerCore(
        decision_pb2.PolicySpec(name="fixed"), deployment=SETTINGS, clock=lambda: clock[0], decision_interval_s=100
    )
    cloud = resources_pb2.NodeResources(node="cloud", memory_total_bytes=6144 * MIB, memory_used_bytes=MIB)
    cloud.queue_lengths["text_detector"] = cloud.queue_lengths["text_recognizer"] = 0
    await core.report_resources(cloud)
    await core.report_resources(report())
    first = await core.register(spec())
    # text_detector is unloaded on edge-2: its stage is hosted on the cloud only; the recogniser on both.
    assert list(first.deployment["detect"].nodes) == ["cloud"]
    assert list(first.deployment["read"].nodes) == ["edge-2", "cloud"]
    for step in range(10):
        clock[0] = step * 0.5
        await core.feedback(record("cloud"))
    await core.check_deployment()
    planned = core.decision("cam-2")
    assert planned.version > first.version and "deployment on edge-2 planned" in planned.reason
    assert list(planned.deployment["detect"].nodes) == ["cloud"]  # planned, not loaded yet
    servicer = SchedulerServicer(core)
    reply = await servicer.GetDeploymentPlan(scheduler_pb2.GetDeploymentPlanRequest(node="edge-2"), None)
    (node,) = reply.nodes
    assert node.node == "edge-2" and node.kinds[0].kind == "text_detector" and node.kinds[0].load
    assert not node.kinds[0].loaded and node.kinds[0].since.seconds > 0
    await core.report_resources(report(loaded=True, load_s=0.8))  # edge-2 applied it
    applied = core.decision("cam-2")
    assert "deployment on edge-2 applied" in applied.reason
    assert list(applied.deployment["detect"].nodes) == ["edge-2", "cloud"]
    every = await servicer.GetDeploymentPlan(scheduler_pb2.GetDeploymentPlanRequest(), None)
    assert [n.node for n in every.nodes] == ["edge-2"] and every.nodes[0].kinds[0].load_s == 0.8


def _faces(tmp_path: Path, edge: dict[str, list[str]]) -> Path:
    data = yaml.safe_load((CONFIGS / "faces.yaml").read_text())
    data.update(pipelines_file=str(CONFIGS / "pipelines.yaml"), processors_file=str(CONFIGS / "processors.yaml"))
    data["nodes"]["edge-1"] = edge
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class _Wiring:  # one Triton for every node, as the embedded mesh's
    pipelines_file, database, emulated_links, models_dir = "p.yaml", "d.sqlite", True, "/models"

    def address(self, target: Instance, seen_from: Instance) -> str:
        return f"{target.key}:1"

    def triton(self, node: str) -> str:
        return "127.0.0.1:2"

    def state_dir(self, node: str) -> str:
        return "/state"


def test_the_mesh_file_names_deployable_processors_and_their_node_runs_them(tmp_path: Path) -> None:
    config = load_mesh_config(_faces(tmp_path, {"processors": ["gender_classifier"], "deployable": ["face_detector"]}))
    assert config.nodes["edge-1"].hosted == ["gender_classifier", "face_detector"]
    assert Instance("processor", "edge-1", "face_detector") in instances(config)
    wiring = _Wiring()
    section = settings(config, Instance("processor", "edge-1", "face_detector"), wiring)["processor"]  # type: ignore[arg-type]
    # On the Triton the cloud's always-loaded face_detector shares: unloading only stops its tasks.
    assert section["deployable"] == {"scheduler": "scheduler:1", "release_models": False}
    assert "deployable" not in settings(config, Instance("processor", "cloud", "face_detector"), wiring)["processor"]  # type: ignore[arg-type]
    monitor = settings(config, Instance("monitor", "edge-1"), wiring)["monitor"]  # type: ignore[arg-type]
    controller = settings(config, Instance("controller", "edge-1"), wiring)["controller"]  # type: ignore[arg-type]
    assert "face_detector" in monitor["processors"] and "face_detector" in controller["processors"]


@pytest.mark.parametrize(
    ("edge", "message"),
    [
        (
            {"processors": ["face_detector"], "deployable": ["face_detector"]},
            "nodes.edge-1.deployable: processors not in nodes.edge-1.processors (those are always loaded), "
            "got ['face_detector'] in both",
        ),
        ({"deployable": ["face_detector", "face_detector"]}, "nodes.edge-1.deployable: each processor once"),
        ({"deployable": ["no_such_kind"]}, "nodes.edge-1.deployable: processors of the processors section"),
    ],
)
def test_bad_deployable_processors_are_named(tmp_path: Path, edge: dict[str, list[str]], message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        load_mesh_config(_faces(tmp_path, edge))
