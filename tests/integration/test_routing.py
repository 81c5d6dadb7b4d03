"""Tasks through a DAG with a fork and a join spread over three logical nodes, on real servers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from dayu.mesh.embedded import Mesh
from dayu.mesh.model import MeshConfig
from dayu.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    decision_pb2,
    distributor_pb2,
    distributor_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)

from conftest import FORK_JOIN_PIPELINES, fork_join_pipeline, make_stream_spec, make_task


@pytest.fixture
async def mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "pipelines.yaml").write_text(FORK_JOIN_PIPELINES)
    config = MeshConfig.model_validate(
        {
            "nodes": {"cloud": {"processors": ["noop"]}, "edge-1": {"processors": ["noop"]}, "edge-2": {}},
            "links": [
                {"between": ["edge-1", "cloud"], "bandwidth_mbps": 50, "delay_ms": 5},
                {"between": ["edge-2", "cloud"], "bandwidth_mbps": 50, "delay_ms": 5},
                {"between": ["edge-1", "edge-2"], "bandwidth_mbps": 100, "delay_ms": 1},
            ],
            "pipelines_file": str(tmp_path / "pipelines.yaml"),
            "processors": {"noop": {"params": {"delay_s": 0.01}}},
            "join_timeout_s": 1.5,
        }
    )
    mesh = Mesh(config, tmp_path)
    await mesh.start()
    yield mesh
    await mesh.abort()


async def records(mesh: Mesh, expected: int) -> list[task_pb2.TaskRecord]:
    """Waits for `expected` records at the distributor, then makes sure no more arrive."""
    async with grpc.aio.insecure_channel(mesh.addresses["distributor"]) as channel:
        stub = distributor_pb2_grpc.DistributorServiceStub(channel)
        for _ in range(100):
            reply = await stub.QueryRecords(distributor_pb2.QueryRecordsRequest(), timeout=5)
            if len(reply.records) >= expected:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        reply = await stub.QueryRecords(distributor_pb2.QueryRecordsRequest(), timeout=5)
        return list(reply.records)


async def submit(mesh: Mesh, node: str, task: task_pb2.Task) -> None:
    async with grpc.aio.insecure_channel(mesh.addresses[f"controller@{node}"]) as channel:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        await stub.SubmitTask(controller_pb2.SubmitTaskRequest(task=task), timeout=5)


def place(task: task_pb2.Task, **nodes: str) -> task_pb2.Task:
    for stage in task.dag.stages:
        stage.node = nodes[stage.spec.name]
    return task


async def test_fork_and_join_over_three_nodes_deliver_exactly_once(mesh: Mesh) -> None:
    task = place(make_task(fork_join_pipeline()), detect="edge-1", classify="cloud", count="edge-2", merge="edge-1")
    await submit(mesh, "edge-1", task)
    (record,) = await records(mesh, 1)

    assert record.outcome == task_pb2.TASK_OUTCOME_DELIVERED, record.reason
    delivered = record.task
    assert delivered.task_id == task.task_id == delivered.root_id
    assert list(delivered.branch) == []
    executed = {s.spec.name: s.executed_on for s in delivered.dag.stages}
    # edge-2 runs no processor: its stage falls back to the cloud.
    assert executed == {"detect": "edge-1", "classify": "cloud", "count": "cloud", "merge": "edge-1"}
    for stage in delivered.dag.stages:
        assert stage.state == task_pb2.STAGE_STATE_DONE
        assert [r.frame_index for r in stage.results] == [0, 1]
        assert stage.timings.process_s > 0
    assert not delivered.segment.frames  # the distributor stores results, not frames
    assert record.latency_s > 0
    assert {h.node for h in delivered.hops} >= {"edge-1", "cloud"}

    async with grpc.aio.insecure_channel(mesh.addresses["controller@edge-1"]) as channel:
        stats = await controller_pb2_grpc.ControllerServiceStub(channel).GetLinkStats(
            controller_pb2.GetLinkStatsRequest(), timeout=5
        )
    sent = {link.to_node: link.bytes_sent for link in stats.links}
    assert sent["cloud"] > 0


async def test_many_tasks_are_each_delivered_once(mesh: Mesh) -> None:
    tasks = [
        place(make_task(fork_join_pipeline()), detect="edge-1", classify="edge-1", count="cloud", merge="cloud")
        for _ in range(10)
    ]
    await asyncio.gather(*(submit(mesh, "edge-1", task) for task in tasks))
    found = await records(mesh, 10)
    assert sorted(r.task.task_id for r in found) == sorted(t.task_id for t in tasks)
    assert all(r.outcome == task_pb2.TASK_OUTCOME_DELIVERED for r in found)


async def test_unrunnable_branch_records_the_task_dropped_once(mesh: Mesh) -> None:
    task = place(make_task(fork_join_pipeline()), detect="edge-1", classify="cloud", count="cloud", merge="cloud")
    task.dag.stages[2].spec.processor = "gpu_only"  # runs nowhere: the branch cannot go on
    await submit(mesh, "edge-1", task)
    (record,) = await records(mesh, 1)
    assert record.outcome == task_pb2.TASK_OUTCOME_DROPPED
    assert record.task.task_id == task.task_id
    assert "no processor 'gpu_only' for stage count on cloud" in record.reason


async def test_link_probes_measure_the_emulated_link(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.addresses["controller@edge-1"]) as channel:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        request = controller_pb2.MeasureLinkRequest(to_node="cloud", probe_bytes=512 * 1024)
        link = (await stub.MeasureLink(request, timeout=10)).link
        assert 30 < link.bandwidth_mbps < 60  # emulated at 50 Mbit/s
        assert link.rtt_ms >= 5  # emulated one-way delay
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.MeasureLink(controller_pb2.MeasureLinkRequest(to_node="mars"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with grpc.aio.insecure_channel(mesh.addresses["monitor@edge-1"]) as channel:
        stub = monitor_pb2_grpc.MonitorServiceStub(channel)
        for _ in range(50):
            report = (await stub.GetResources(monitor_pb2.GetResourcesRequest(), timeout=5)).resources
            if report.links:
                break
            await asyncio.sleep(0.1)
    assert {link.to_node for link in report.links} == {"cloud", "edge-2"}
    assert "noop" in report.queue_lengths and report.memory_total_bytes > 0


async def set_policy(mesh: Mesh, stream_id: str, name: str, **params: object) -> decision_pb2.Decision:
    """Switches the stream's policy and waits until edge-1's controller has the new decision (pushed)."""
    request = scheduler_pb2.SetPolicyRequest(stream_id=stream_id, policy=decision_pb2.PolicySpec(name=name))
    request.policy.params.update(params)
    async with grpc.aio.insecure_channel(mesh.addresses["scheduler"]) as channel:
        admin = (("authorization", f"Bearer {mesh.tokens.admin[0]}"),)  # the operator's token
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        decision = (await stub.SetPolicy(request, timeout=5, metadata=admin)).decision
    controller = mesh.servers["controller@edge-1"].component.core  # type: ignore[attr-defined]
    for _ in range(50):
        if controller.decisions[stream_id].version == decision.version:
            break
        await asyncio.sleep(0.1)
    assert controller.decisions[stream_id].version == decision.version
    return decision


async def submit_made_under(mesh: Mesh, version: int, count: int) -> task_pb2.TaskRecord:
    """Submits, at edge-1, a task made under decision `version` with every stage on edge-1; its record."""
    task = place(make_task(fork_join_pipeline()), detect="edge-1", classify="edge-1", count="edge-1", merge="edge-1")
    task.decision_version = version
    await submit(mesh, "edge-1", task)
    found = {r.task.task_id: r for r in await records(mesh, count)}
    record = found[task.task_id]
    assert record.outcome == task_pb2.TASK_OUTCOME_DELIVERED, record.reason
    return record


async def test_controllers_follow_pushed_decisions_for_tasks_in_flight(mesh: Mesh) -> None:
    """A new placement reaches the controllers by push; a task made under the older decision has its
    pending stages placed by the newer one."""
    spec = make_stream_spec(fork_join_pipeline())
    spec.policy.name = "edge_only"
    async with grpc.aio.insecure_channel(mesh.addresses["scheduler"]) as channel:
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        first = (await scheduler.RegisterStream(scheduler_pb2.RegisterStreamRequest(stream=spec), timeout=5)).decision
    assert set(first.placement.values()) == {"edge-1"}
    record = await submit_made_under(mesh, first.version, 1)  # the controller now follows the stream's decisions
    assert {s.executed_on for s in record.task.dag.stages} == {"edge-1"}

    await set_policy(mesh, spec.stream_id, "cloud_only")
    moved = await submit_made_under(mesh, first.version, 2)
    assert {s.executed_on for s in moved.task.dag.stages} == {"cloud"}
    assert moved.task.decision_version == first.version  # its configuration is still the one it was made with

    # A placement on a node without the processor: each stage falls back once to a node the decision's
    # deployment names for it (the stream's own node hosts them all, then the cloud), and stays there.
    on_edge_2 = {"detect": "edge-2", "classify": "edge-2", "count": "edge-2", "merge": "edge-2"}
    pinned = await set_policy(mesh, spec.stream_id, "fixed", placement=on_edge_2)
    assert {stage: list(nodes.nodes) for stage, nodes in pinned.deployment.items()} == {
        stage: ["edge-1", "cloud"] for stage in on_edge_2
    }
    fell_back = await submit_made_under(mesh, first.version, 3)
    assert {s.executed_on for s in fell_back.task.dag.stages} <= {"edge-1", "cloud"}
    assert fell_back.latency_s < 1.0  # each stage bounced off edge-2 once, not back and forth until dropped
