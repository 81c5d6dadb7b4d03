"""Malformed and invalid requests get INVALID_ARGUMENT naming the field; the server keeps serving."""

from __future__ import annotations

import grpc
import pytest

from dayu.runtime.config import ComponentSettings
from dayu.runtime.server import Binding, Component, ComponentServer
from dayu.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    decision_pb2,
    distributor_pb2,
    distributor_pb2_grpc,
    processor_pb2,
    processor_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
    types_pb2,
)

from conftest import BOXES, FRAMES, LABELS, fork_join_pipeline, make_stream_spec, make_task, operator_channel, stage


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


async def test_unimplemented_rpc_says_so() -> None:
    from dayu.v1 import monitor_pb2  # noqa: F401  (the service's descriptor, which the server looks up)

    class Bare(Component):  # serves the monitor's service, implementing none of it
        name = "bare"

        def bindings(self) -> list[Binding]:
            return [Binding("dayu.v1.MonitorService", object())]

    server = ComponentServer(Bare(), ComponentSettings(server={"listen": "127.0.0.1:0"}))
    address = await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(
                "/dayu.v1.MonitorService/GetResources", request_serializer=None, response_deserializer=None
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"", timeout=10)
    finally:
        await server.stop(grace=0)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "dayu.v1.MonitorService.GetResources is not implemented" in (caught.value.details() or "")


def test_fork_join_pipeline_is_valid() -> None:
    from dayu.runtime.validation import validate_pipeline

    order = validate_pipeline(fork_join_pipeline())
    assert order[0] == "detect" and order[-1] == "merge"


async def test_message_size_limit_is_enforced(serve) -> None:  # type: ignore[no-untyped-def]
    address = await serve("controller", node="cloud", server={"max_message_bytes": 4096})
    async with grpc.aio.insecure_channel(address) as channel:
        probe = controller_pb2_grpc.ControllerServiceStub(channel).Probe
        assert (await probe(controller_pb2.ProbeRequest(payload=b"x" * 1000), timeout=10)).received_bytes == 1000
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await probe(controller_pb2.ProbeRequest(payload=b"x" * 10_000), timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await probe(controller_pb2.ProbeRequest(payload=b"x"), timeout=10)).received_bytes == 1


async def test_an_enum_outside_the_contract_and_a_huge_id_are_refused_without_echoing_it(serve) -> None:  # type: ignore[no-untyped-def]
    address = await serve("distributor", distributor={"database": ":memory:"})
    async with grpc.aio.insecure_channel(address) as channel:
        stub = distributor_pb2_grpc.DistributorServiceStub(channel)
        task = make_task()
        task.dag.stages[1].spec.output_type = 77  # no such DataType: proto3 would keep the number
        details = await expect_invalid(stub.RecordDrop, distributor_pb2.RecordDropRequest(task=task, reason="x"))
        assert details.startswith("task.dag.stages[1].spec.output_type: one of ["), details
        assert "got 77" in details

        task = make_task()
        task.stream_id = "s" * (1 << 20)  # 1 MiB: the answer must stay far under a client's metadata limit
        details = await expect_invalid(stub.RecordDrop, distributor_pb2.RecordDropRequest(task=task, reason="x"))
        assert details.startswith("task.stream_id:") and len(details) < 400, details[:400]
        # Still serving, and nothing of either was stored.
        reply = await stub.QueryRecords(distributor_pb2.QueryRecordsRequest(), timeout=10)
        assert list(reply.records) == []


async def expect_exhausted(call, request) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
    return caught.value.details() or ""


async def test_a_40_mb_dropped_task_is_refused_and_nothing_of_it_is_stored(serve) -> None:  # type: ignore[no-untyped-def]
    address = await serve("distributor", distributor={"database": ":memory:"})
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = distributor_pb2_grpc.DistributorServiceStub(channel)
        task = make_task()
        task.segment.stream = b"\0" * (40 << 20)
        details = await expect_exhausted(stub.RecordDrop, distributor_pb2.RecordDropRequest(task=task, reason="x"))
        assert details.startswith("request: a dayu.v1.RecordDropRequest of at most 4194304 bytes, got 4194"), details
        # Under the request limit but over a field's: the field is named.
        task = make_task()
        for _ in range(1025):
            task.hops.add(component="controller", node="edge-1")
        details = await expect_invalid(stub.RecordDrop, distributor_pb2.RecordDropRequest(task=task, reason="x"))
        assert details == "task.hops: at most 1024 items, got 1025"
        details = await expect_invalid(
            stub.RecordDrop, distributor_pb2.RecordDropRequest(task=make_task(), reason="r" * 5000)
        )
        assert details == "reason: at most 4096 characters, got 5000"
        assert list((await stub.QueryRecords(distributor_pb2.QueryRecordsRequest(), timeout=10)).records) == []
        # A dropped task is stored without its frames, whatever the sender left in it.
        task = make_task()
        await stub.RecordDrop(distributor_pb2.RecordDropRequest(task=task, reason="x"), timeout=10)
        (record,) = (await stub.QueryRecords(distributor_pb2.QueryRecordsRequest(), timeout=10)).records
        assert list(record.task.segment.frames) == [] and record.task.task_id == task.task_id


async def test_oversized_pipelines_and_policies_are_refused_and_lists_keep_working(serve) -> None:  # type: ignore[no-untyped-def]
    from dayu.v1 import backend_pb2, backend_pb2_grpc, decision_pb2

    backend = await serve("backend")
    scheduler = await serve("scheduler")
    options = [("grpc.max_send_message_length", 64 << 20)]
    async with (
        operator_channel(backend, options=options) as to_backend,
        operator_channel(scheduler, options=options) as to_scheduler,
    ):
        pipelines = backend_pb2_grpc.BackendServiceStub(to_backend)
        huge = fork_join_pipeline()
        huge.stages[0].model = "x" * (50 << 20)
        details = await expect_exhausted(pipelines.PutPipeline, backend_pb2.PutPipelineRequest(pipeline=huge))
        assert "dayu.v1.PutPipelineRequest of at most 65536 bytes" in details and len(details) < 200
        wide = with_stages(*[stage(f"s{i}") for i in range(65)])
        details = await expect_invalid(pipelines.PutPipeline, backend_pb2.PutPipelineRequest(pipeline=wide))
        assert details == "pipeline.stages: at most 64 items, got 65"
        await pipelines.PutPipeline(backend_pb2.PutPipelineRequest(pipeline=fork_join_pipeline()), timeout=10)
        listed = await pipelines.ListPipelines(backend_pb2.ListPipelinesRequest(), timeout=10)
        assert [p.name for p in listed.pipelines] == ["fork-join"]

        decisions = scheduler_pb2_grpc.SchedulerServiceStub(to_scheduler)
        await decisions.RegisterStream(scheduler_pb2.RegisterStreamRequest(stream=make_stream_spec()), timeout=10)
        request = scheduler_pb2.SetPolicyRequest(stream_id="stream-1", policy=decision_pb2.PolicySpec(name="fixed"))
        request.policy.params.update({f"k{i}": i for i in range(20_000)})  # 300 KB of parameters
        assert "SetPolicyRequest of at most 65536 bytes" in await expect_exhausted(decisions.SetPolicy, request)
        request.policy.params.Clear()
        request.policy.params.update({"name": "n" * 2000})
        details = await expect_invalid(decisions.SetPolicy, request)
        assert details == "policy.params.fields['name'].string_value: at most 1024 characters, got 2000"
        stats = await decisions.GetSchedulerStats(scheduler_pb2.GetSchedulerStatsRequest(), timeout=10)
        assert [s.stream_id for s in stats.streams] == ["stream-1"]


# Found by the fuzz (tests/integration/test_fuzz.py, docs/testing.md "Fuzzing"): each minimal request
# below answered INTERNAL, outlived its deadline, or echoed kilobytes of its input.


async def test_fuzz_findings_get_short_actionable_answers(serve) -> None:  # type: ignore[no-untyped-def]
    nul = "\x00" * 1000  # within the field limit; its repr is 4 KB
    controller = await serve("controller", node="cloud", controller={"peers": {"edge-1": "127.0.0.1:9"}})
    processor = await serve("processor")
    scheduler = await serve("scheduler")
    distributor = await serve("distributor")
    async with (
        grpc.aio.insecure_channel(controller) as to_controller,
        grpc.aio.insecure_channel(processor) as to_processor,
        operator_channel(scheduler) as to_scheduler,
        grpc.aio.insecure_channel(distributor) as to_distributor,
    ):
        measure = controller_pb2_grpc.ControllerServiceStub(to_controller).MeasureLink
        details = await expect_invalid(measure, controller_pb2.MeasureLinkRequest(to_node=nul))
        assert details.startswith("to_node: one of the other nodes ['edge-1'], got") and len(details) < 300
        task = make_task()
        task.created_at.nanos = -(2**31)  # taken, the distributor could store neither the task nor its drop
        submit = controller_pb2_grpc.ControllerServiceStub(to_controller).SubmitTask
        details = await expect_invalid(submit, controller_pb2.SubmitTaskRequest(task=task))
        assert details.startswith("task.created_at: a time of years 1 to 9999"), details

        process = processor_pb2_grpc.ProcessorServiceStub(to_processor).Process
        details = await expect_invalid(process, processor_pb2.ProcessRequest(task=make_task(), stage=nul))
        assert details.startswith("stage: a stage of the task's DAG") and len(details) < 300

        stub = scheduler_pb2_grpc.SchedulerServiceStub(to_scheduler)
        spec = make_stream_spec()
        spec.policy.name = nul
        details = await expect_invalid(stub.RegisterStream, scheduler_pb2.RegisterStreamRequest(stream=spec))
        assert details.startswith("stream.policy.name: one of the registered policys") and len(details) < 400
        await stub.RegisterStream(scheduler_pb2.RegisterStreamRequest(stream=make_stream_spec()), timeout=10)
        deep = scheduler_pb2.SetPolicyRequest(stream_id="stream-1", policy=decision_pb2.PolicySpec(name="fixed"))
        nested: list[object] = []
        deep.policy.params.update({"deep": nested})
        inner = deep.policy.params.fields["deep"].list_value
        for _ in range(200):  # past protobuf's nesting limit of 100
            inner = inner.values.add().list_value
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SetPolicy(deep, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()

        records = distributor_pb2_grpc.DistributorServiceStub(to_distributor)
        for where, field in (
            (distributor_pb2.RecordFilter(after_cursor=2**63), "filter.after_cursor"),
            (distributor_pb2.RecordFilter(since={"seconds": -(2**63)}), "filter.since"),
        ):
            details = await expect_invalid(records.QueryRecords, distributor_pb2.QueryRecordsRequest(filter=where))
            assert details.startswith(f"{field}:"), details
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in records.WatchRecords(distributor_pb2.WatchRecordsRequest(filter=where), timeout=10):
                    pass
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        task = make_task()
        for stage in task.dag.stages:
            stage.state = task_pb2.STAGE_STATE_DONE
        task.dag.stages[0].timings.started_at.nanos = -30843  # stored, it failed every later export
        details = await expect_invalid(records.Deliver, distributor_pb2.DeliverRequest(task=task))
        assert details.startswith("task.dag.stages[0].timings.started_at: a time of years 1 to 9999"), details
        chunks = [r.chunk async for r in records.ExportRecords(distributor_pb2.ExportRecordsRequest(), timeout=10)]
        assert chunks  # the export still works
        # 170,000 lost records at once outlived the caller's deadline: now the first 10,000, the rest later
        # (and no more than 100,000 past the stream's highest sequence).
        settle = distributor_pb2.SettleStreamsRequest(generated={"t__z": 70_614})
        assert (await records.SettleStreams(settle, timeout=10)).recorded == 10_000
        settle = distributor_pb2.SettleStreamsRequest(generated={"other": 2**63 - 1})
        details = await expect_invalid(records.SettleStreams, settle)
        assert details.startswith("generated[other]: a number of tasks, 0 to 100000 "), details
