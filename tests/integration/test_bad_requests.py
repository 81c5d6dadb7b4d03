"""Malformed and invalid requests get INVALID_ARGUMENT naming the field; the server keeps serving."""

from __future__ import annotations

import grpc
import pytest

from dayu.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    distributor_pb2,
    distributor_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    types_pb2,
)

from conftest import BOXES, FRAMES, LABELS, fork_join_pipeline, make_stream_spec, make_task, stage


async def expect_invalid(call, request) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return caught.value.details() or ""


def with_stages(*stages: types_pb2.StageSpec) -> types_pb2.Pipeline:
    return types_pb2.Pipeline(name="p", stages=stages)


@pytest.mark.parametrize(
    ("pipeline", "field", "expected"),
    [
        (
            with_stages(stage("a"), stage("b", ("a", "c"), BOXES, BOXES), stage("c", ("b",), BOXES, BOXES)),
            "stream.pipeline.stages",
            "cycle",
        ),
        (
            with_stages(stage("a"), stage("b", ("nope",), BOXES, LABELS)),
            "stream.pipeline.stages[1].parents[0]",
            "'nope'",
        ),
        (
            with_stages(stage("a"), stage("b", ("a",), FRAMES, LABELS)),
            "stream.pipeline.stages[1].input_type",
            "DATA_TYPE_BOXES",
        ),
        (with_stages(stage("a"), stage("a", (), FRAMES, LABELS)), "stream.pipeline.stages[1].name", "twice"),
        (with_stages(), "stream.pipeline.stages", "at least one stage"),
    ],
)
async def test_invalid_pipeline_is_refused_with_its_field(serve, pipeline, field, expected) -> None:  # type: ignore[no-untyped-def]
    address = await serve("scheduler")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        details = await expect_invalid(
            stub.RegisterStream, scheduler_pb2.RegisterStreamRequest(stream=make_stream_spec(pipeline))
        )
        assert details.startswith(f"{field}:"), details
        assert expected in details
        # The server is still serving, and a valid request works.
        reply = await stub.RegisterStream(scheduler_pb2.RegisterStreamRequest(stream=make_stream_spec()), timeout=10)
        assert reply.decision.version == 1


async def test_invalid_task_fields_are_named(serve) -> None:  # type: ignore[no-untyped-def]
    address = await serve("controller", node="edge-1", controller={"peers": {"cloud": "127.0.0.1:9"}})
    async with grpc.aio.insecure_channel(address) as channel:
        submit = controller_pb2_grpc.ControllerServiceStub(channel).SubmitTask

        task = make_task()
        task.stream_id = ""
        assert (await expect_invalid(submit, controller_pb2.SubmitTaskRequest(task=task))).startswith("task.stream_id:")

        task = make_task()
        task.dag.stages[3].spec.parents.append("merge")  # merge waits for itself: a cycle
        details = await expect_invalid(submit, controller_pb2.SubmitTaskRequest(task=task))
        assert details.startswith("task.dag.stages:") and "cycle" in details, details

        task = make_task()
        task.dag.stages[2].node = "edge-9"
        details = await expect_invalid(submit, controller_pb2.SubmitTaskRequest(task=task))
        assert details.startswith("task.dag.stages[2].node:") and "edge-9" in details, details

        task = make_task()
        del task.segment.frames[0]
        assert (await expect_invalid(submit, controller_pb2.SubmitTaskRequest(task=task))).startswith(
            "task.segment.frames:"
        )


async def test_malformed_bytes_are_invalid_argument_and_server_keeps_serving(serve) -> None:  # type: ignore[no-untyped-def]
    address = await serve("scheduler")
    async with grpc.aio.insecure_channel(address) as channel:
        raw_call = channel.unary_unary(
            "/dayu.v1.SchedulerService/GetDecision", request_serializer=None, response_deserializer=None
        )
        details = await expect_invalid(raw_call, b"\x0a\xff\xff\xff\xff")  # field 1, length far past the end
        assert details.startswith("request: a serialized dayu.v1.GetDecisionRequest"), details
        stats = await scheduler_pb2_grpc.SchedulerServiceStub(channel).GetSchedulerStats(
            scheduler_pb2.GetSchedulerStatsRequest(), timeout=10
        )
        assert list(stats.streams) == []


async def test_unimplemented_rpc_says_so(serve) -> None:  # type: ignore[no-untyped-def]
    address = await serve("backend")
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(
            "/dayu.v1.BackendService/GetSystemStatus", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "dayu.v1.BackendService.GetSystemStatus" in (caught.value.details() or "")


def test_fork_join_pipeline_is_valid() -> None:
    from dayu.runtime.validation import validate_pipeline

    order = validate_pipeline(fork_join_pipeline())
    assert order[0] == "detect" and order[-1] == "merge"


async def test_message_size_limit_is_enforced(serve) -> None:  # type: ignore[no-untyped-def]
    address = await serve("monitor", server={"max_message_bytes": 4096})
    async with grpc.aio.insecure_channel(address) as channel:
        probe = monitor_pb2_grpc.MonitorServiceStub(channel).Probe
        assert (await probe(monitor_pb2.ProbeRequest(payload=b"x" * 1000), timeout=10)).received_bytes == 1000
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await probe(monitor_pb2.ProbeRequest(payload=b"x" * 10_000), timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await probe(monitor_pb2.ProbeRequest(payload=b"x"), timeout=10)).received_bytes == 1


async def test_an_enum_outside_the_contract_and_a_huge_id_are_refused_without_echoing_it(serve) -> None:  # type: ignore[no-untyped-def]
    address = await serve("distributor", distributor={"database": ":memory:"})
    async with grpc.aio.insecure_channel(address) as channel:
        stub = distributor_pb2_grpc.DistributorServiceStub(channel)
        task = make_task()
        task.dag.stages[1].spec.output_type = 77  # no such DataType: proto3 would keep the number
        details = await expect_invalid(stub.RecordDrop, distributor_pb2.RecordDropRequest(task=task, reason="x"))
        assert details.startswith("request.task.dag.stages[1].spec.output_type: one of ["), details
        assert "got 77" in details

        task = make_task()
        task.stream_id = "s" * (1 << 20)  # 1 MiB: the answer must stay far under a client's metadata limit
        details = await expect_invalid(stub.RecordDrop, distributor_pb2.RecordDropRequest(task=task, reason="x"))
        assert details.startswith("task.stream_id:") and len(details) < 400, details[:400]
        # Still serving, and nothing of either was stored.
        reply = await stub.QueryRecords(distributor_pb2.QueryRecordsRequest(), timeout=10)
        assert list(reply.records) == []
