"""The core's indexes by node stand for scans over every stream: after any sequence of calls they hold
what a scan finds, and a change on a node decides again its streams only."""

from __future__ import annotations

import asyncio
import random

import pytest

from dayu.scheduler import core as core_module
from dayu.scheduler.core import Admission, SchedulerCore
from dayu.v1 import decision_pb2, resources_pb2, task_pb2

from conftest import latency_budget_from_best, make_stream_spec, transfer_spans


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fixed(placement: dict[str, str]) -> decision_pb2.PolicySpec:
    spec = decision_pb2.PolicySpec(name="fixed")
    spec.params.update({"placement": placement})
    return spec


def stream(stream_id: str, node: str, policy: decision_pb2.PolicySpec | None = None) -> decision_pb2.StreamSpec:
    spec = make_stream_spec()
    spec.stream_id, spec.node = stream_id, node
    if policy is not None:
        spec.policy.CopyFrom(policy)
    return spec


def scanned(core: SchedulerCore) -> dict[str, object]:
    """The indexes, worked out from every stream and node as the loops over them did."""
    homes: dict[str, set[str]] = {}
    involved: dict[str, set[str]] = {}
    running: dict[str, set[str]] = {}
    for stream_id, registered in core._streams.items():
        current, plan, home = registered.view.current, registered.plan, registered.view.spec.node
        placed = set(current.placement.values()) if current else set()
        planned = set(plan.placement.values()) if plan else set()
        homes.setdefault(home, set()).add(stream_id)
        for node in placed | planned | {home}:
            involved.setdefault(node, set()).add(stream_id)
        for node in placed if not registered.paused_because else ():
            running.setdefault(node, set()).add(stream_id)
    resources = core.resources
    return {
        "homes": homes,
        "involved": involved,
        "running": running,
        "paused": {stream_id for stream_id, s in core._streams.items() if s.paused_because},
        "link_changed": {stream_id for stream_id, s in core._streams.items() if s.link_changed},
        "stale": {node for node, report in resources.items() if report.stale},
        "fresh": {node: report for node, report in resources.items() if not report.stale},
        "cores": {node: report.cpu_limit_cores or float(report.cpu_count) for node, report in resources.items()},
        "overloaded": {node for node in resources if core._queued(node) > core.admission.max_queue},
    }


def indexed(core: SchedulerCore) -> dict[str, object]:
    def sets(index: dict[str, dict[str, None]]) -> dict[str, set[str]]:
        return {node: set(streams) for node, streams in index.items()}

    return {
        "homes": sets(core._homes),
        "involved": sets(core._involved),
        "running": sets(core._running),
        "paused": set(core._paused),
        "link_changed": set(core._link_changed),
        "stale": set(core._stale_nodes),
        "fresh": core._fresh,
        "cores": core._cores,
        "overloaded": core._overloaded,
    }


NODES = ("edge-1", "edge-2", "edge-3", "cloud")


@pytest.mark.parametrize("seed", range(12))
async def test_the_indexes_hold_what_a_scan_of_every_stream_finds(seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock()
    core = SchedulerCore(fixed({}), admission=Admission(max_queue=10, resume_queue=2), stale_after_s=10, clock=clock)
    for _ in range(80):
        action = rng.random()
        stream_id = f"stream-{rng.randint(1, 6)}"
        if action < 0.3:  # (re-)register, maybe on another node, with stages placed anywhere
            placement = {rng.choice(("detect", "merge")): rng.choice(NODES)}
            await core.register(stream(stream_id, rng.choice(NODES[:3]), fixed(placement)))
        elif action < 0.4:
            await core.unregister(stream_id)
        elif action < 0.5 and stream_id in core._streams:
            await core.set_policy(stream_id, fixed({"count": rng.choice(NODES)}))
        elif action < 0.8:
            queued = rng.choice((0, 1, 5, 11, 30))
            report = resources_pb2.NodeResources(
                node=rng.choice(NODES),
                cpu_count=4,
                cpu_limit_cores=rng.choice((0.0, 1.0, 4.0)),
                queue_lengths={"noop": queued},
            )
            await core.report_resources(report)
        else:
            clock.now += rng.choice((1.0, 6.0, 11.0))
            await core.check_nodes()
        assert indexed(core) == scanned(core)


async def test_a_links_move_decides_again_the_streams_on_its_nodes_only() -> None:
    core = SchedulerCore(latency_budget_from_best(), decision_interval_s=0.0)
    starts = {}
    for stream_id, node in (("near", "edge-1"), ("far", "edge-2")):
        starts[stream_id] = await core.register(stream(stream_id, node))
        for _ in range(2):  # in time, 1.2 MB per task: about 29 Mbit/s at 30 fps
            task = task_pb2.Task(stream_id=stream_id, decision_version=starts[stream_id].version)
            task.dag.stages.add().timings.transfer_s = 0.1
            task.hops.add(bytes=1_200_000)
            await core.feedback(task_pb2.TaskRecord(task=task, outcome=task_pb2.TASK_OUTCOME_DELIVERED, latency_s=0.4))
    await core.receive_spans(transfer_spans("edge-1", "cloud", [(250_000, 0.51)]))  # edge-1's uplink: 4 Mbit/s
    assert core.decision("near").reason.startswith("traces: uplink now 4.0 Mbit/s")
    assert core.decision("far").version == starts["far"].version


async def test_a_link_move_within_the_decision_interval_is_decided_on_once_due() -> None:
    clock = Clock()
    core = SchedulerCore(latency_budget_from_best(), decision_interval_s=1.0, clock=clock)
    start = await core.register(stream("stream-1", "edge-1"))
    clock.now += 1.0
    for _ in range(2):
        task = task_pb2.Task(stream_id="stream-1", decision_version=start.version)
        task.dag.stages.add().timings.transfer_s = 0.1
        task.hops.add(bytes=1_200_000)
        await core.feedback(task_pb2.TaskRecord(task=task, outcome=task_pb2.TASK_OUTCOME_DELIVERED, latency_s=0.4))
    decided = core.decision("stream-1").version
    await core.receive_spans(transfer_spans("edge-1", "cloud", [(250_000, 0.51)]))  # just decided: not due
    assert core.decision("stream-1").version == decided
    clock.now += 1.0
    await core.receive_spans(transfer_spans("edge-3", "cloud", [(250_000, 0.51)]))  # another link; now due
    assert core.decision("stream-1").reason.startswith("traces: uplink now 4.0 Mbit/s")


async def test_the_streams_waiting_to_decide_on_a_link_move_are_looked_at_once_due_and_stay_bounded() -> None:
    """Streams whose link moved wait in a heap by when they are due: every one is decided once due, in
    the order their links moved, and the heap keeps no more than one entry per stream and decision."""
    clock = Clock()
    core = SchedulerCore(latency_budget_from_best(), decision_interval_s=1.0, clock=clock)
    nodes = ("edge-1", "edge-2", "edge-3")
    for i in range(9):
        await core.register(stream(f"stream-{i}", nodes[i % 3]))
    rng = random.Random(0)
    for step in range(200):
        clock.now += rng.choice((0.1, 0.3, 0.7))
        node = rng.choice(nodes)
        await core.receive_spans(transfer_spans(node, "cloud", [(250_000 * rng.choice((1, 2, 4)), 0.51)]))
        for stream_id, registered in core._streams.items():  # none is left waiting past its due time
            waited = clock.now - registered.decided_at
            assert not (registered.link_changed and waited >= 1.0), (step, stream_id)
        assert len(core._link_due) <= 2 * len(core._streams)


async def test_a_cpu_cut_decides_again_the_streams_with_stages_on_the_node_only() -> None:
    core = SchedulerCore(latency_budget_from_best(), decision_interval_s=0.0)
    processors = {"noop": 0}
    for node in ("edge-1", "edge-2"):
        await core.report_resources(resources_pb2.NodeResources(node=node, cpu_count=4, queue_lengths=processors))
    for stream_id, node in (("cut", "edge-1"), ("other", "edge-2")):
        await core.register(stream(stream_id, node))  # every stage on its node

    def asked(stream_id: str) -> int:  # the times the policy was asked to decide
        return len(core._streams[stream_id].decision_times)

    cut = resources_pb2.NodeResources(node="edge-1", cpu_count=4, cpu_limit_cores=1.0, queue_lengths=processors)
    await core.report_resources(cut)
    assert (asked("cut"), asked("other")) == (2, 1)


async def test_a_record_is_kept_without_its_detections_and_with_the_cores_of_its_nodes_only() -> None:
    core = SchedulerCore(decision_pb2.PolicySpec(name="cloud_only"))
    for node in ("edge-1", "edge-2", "cloud"):
        await core.report_resources(resources_pb2.NodeResources(node=node, cpu_count=8))
    await core.register(make_stream_spec())
    task = task_pb2.Task(stream_id="stream-1", decision_version=1, task_id="task-1", branch=["detect"])
    task.configuration.fps = 30
    task.hops.add(component="controller", bytes=2048)
    stage = task.dag.stages.add(executed_on="cloud", node="cloud", state=task_pb2.STAGE_STATE_DONE)
    stage.spec.name = "detect"
    stage.timings.process_s = 0.25
    stage.results.add().detections.add(label="car", score=0.9)
    task.segment.frames.append(b"\xff" * 1000)
    record = task_pb2.TaskRecord(task=task, outcome=task_pb2.TASK_OUTCOME_DELIVERED, latency_s=0.5, accuracy=0.0)
    await core.feedback(record)
    view = core._streams["stream-1"].view
    (kept,) = view.recent
    assert kept is not record and record.task.dag.stages[0].results  # a copy; the caller's message is untouched
    lean = task_pb2.TaskRecord()
    lean.CopyFrom(record)
    lean.task.ClearField("segment")
    lean.task.dag.stages[0].ClearField("results")
    assert kept == lean and kept.task.dag.stages[0].timings.process_s == 0.25
    assert view.recent_cpu_cores == [{"cloud": 8.0}]


async def test_a_loop_over_many_streams_lets_other_calls_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_module, "PACE_S", 0.0)  # a breath after every stream
    others = 0

    async def other_call() -> None:
        nonlocal others
        while True:
            others += 1
            await asyncio.sleep(0)

    seen = []
    running = asyncio.create_task(other_call())
    await asyncio.sleep(0)
    async for _ in core_module._paced(range(5)):
        seen.append(others)
    running.cancel()
    assert seen == sorted(seen) and seen[-1] - seen[0] >= 4  # the other call ran between the items


async def test_a_stale_cloud_moves_the_stages_refuged_there_home() -> None:
    """The plans to follow when the cloud turns stale include those with stages on other stale nodes
    (whose stages it took in), found through the stale nodes' streams."""
    clock = Clock()
    core = SchedulerCore(fixed({"detect": "edge-2"}), stale_after_s=10, clock=clock)
    for node in ("edge-2", "cloud"):
        await core.report_resources(resources_pb2.NodeResources(node=node, cpu_count=4))
    await core.register(stream("stream-1", "edge-1"))
    clock.now += 6
    await core.report_resources(resources_pb2.NodeResources(node="cloud", cpu_count=4))
    clock.now += 6
    await core.check_nodes()  # edge-2 silent: detect refuged on the cloud
    assert core.decision("stream-1").placement["detect"] == "cloud"
    clock.now += 6
    await core.check_nodes()  # the cloud silent too: detect goes home
    assert core.decision("stream-1").placement["detect"] == "edge-1"
    await core.report_resources(resources_pb2.NodeResources(node="cloud", cpu_count=4))
    assert core.decision("stream-1").placement["detect"] == "cloud"
