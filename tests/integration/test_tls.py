"""Mutual TLS on real component servers, with certificates made by dayu.runtime.certs: strangers are
refused at the handshake, members get in, the health port answers in plaintext and serves nothing
else, and a member's certificate cannot speak for another node or another component."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dayu.components import COMPONENTS
from dayu.processor.inference import TritonUnavailable
from dayu.processor.kinds import PROCESSORS
from dayu.processor.repository import assemble
from dayu.processor.triton_server import TritonServer
from dayu.runtime.certs import Authority, issue, make_ca
from dayu.runtime.client import Channels
from dayu.runtime.config import load_settings
from dayu.runtime.server import ComponentServer
from dayu.runtime.tls import TARGET_NAME_OPTION, TlsSettings
from dayu.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    processor_pb2,
    processor_pb2_grpc,
    resources_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)

from conftest import make_stream_spec, make_task, stage
from plates import draw_scene, run_stage, scene_task

STATS = scheduler_pb2.GetSchedulerStatsRequest()


class Pki:
    """A mesh's CA and certificates issued on demand into tmp_path, and a stranger CA."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca: Authority = make_ca()
        self.other_ca: Authority = make_ca()

    def cert(self, component: str, node: str, ca: Authority | None = None) -> TlsSettings:
        which = "other" if ca is not None else "mesh"
        return issue(ca or self.ca, component, node).write(self.folder / which / f"{component}-{node}")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
async def tls_serve() -> AsyncIterator[Callable[..., Any]]:
    """Starts a component in this process with the given settings; returns its ComponentServer."""
    servers: list[ComponentServer] = []

    async def start(name: str, **settings: Any) -> ComponentServer:
        component_class = COMPONENTS.entry(name).factory
        settings.setdefault("server", {}).setdefault("listen", "127.0.0.1:0")
        loaded = load_settings(component_class.settings_class, None, **settings)  # type: ignore[attr-defined]
        server = ComponentServer(component_class(loaded), loaded)  # type: ignore[call-arg]
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.stop(grace=0)


@pytest.fixture
async def channels() -> AsyncIterator[Callable[[TlsSettings], Channels]]:
    made: list[Channels] = []

    def make(tls: TlsSettings) -> Channels:
        made.append(Channels(64 * 1024 * 1024, tls))
        return made[-1]

    yield make
    for each in made:
        await each.close()


def scheduler(channel: grpc.aio.Channel) -> scheduler_pb2_grpc.SchedulerServiceStub:
    return scheduler_pb2_grpc.SchedulerServiceStub(channel)


async def refused(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await scheduler(channel).GetSchedulerStats(STATS, timeout=5)
    return caught.value


async def test_strangers_are_refused_at_the_handshake_and_members_get_in(pki: Pki, tls_serve, channels) -> None:  # type: ignore[no-untyped-def]
    server = await tls_serve("scheduler", tls=pki.cert("scheduler", "cloud").model_dump())
    address, ca = server.address, pki.ca.pem
    name = [TARGET_NAME_OPTION]

    plaintext = await refused(grpc.aio.insecure_channel(address))
    no_certificate = await refused(
        grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca), options=name)
    )
    stranger = pki.cert("operator", "admin", ca=pki.other_ca).material()
    credentials = grpc.ssl_channel_credentials(ca, private_key=stranger.key, certificate_chain=stranger.cert)
    other_ca = await refused(grpc.aio.secure_channel(address, credentials, options=name))
    for error in (plaintext, no_certificate, other_ca):
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()

    # A member verifies the server as dayu-mesh, whatever address it dials (here 127.0.0.1).
    member = channels(pki.cert("operator", "admin"))
    reply = await scheduler(member.get(address)).GetSchedulerStats(STATS, timeout=5)
    assert reply.spans_received == 0


async def test_a_server_of_another_ca_is_refused_by_a_member(pki: Pki, tls_serve, channels) -> None:  # type: ignore[no-untyped-def]
    impostor = await tls_serve("scheduler", tls=pki.cert("scheduler", "cloud", ca=pki.other_ca).model_dump())
    member = channels(pki.cert("operator", "admin"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scheduler(member.get(impostor.address)).GetSchedulerStats(STATS, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_health_port_answers_health_in_plaintext_and_nothing_else(pki: Pki, tls_serve, channels) -> None:  # type: ignore[no-untyped-def]
    server = await tls_serve(
        "scheduler",
        server={"listen": "127.0.0.1:0", "health_listen": "127.0.0.1:0"},
        tls=pki.cert("scheduler", "cloud").model_dump(),
    )
    assert server.health_port and server.health_port != server.port
    async with grpc.aio.insecure_channel(server.health_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "dayu.v1.SchedulerService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await scheduler(channel).GetSchedulerStats(STATS, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # The same servicer: a drain (held open by a call in flight) shows there as NOT_SERVING.
        gate = asyncio.Event()

        async def reports() -> AsyncIterator[scheduler_pb2.ReportResourcesRequest]:
            yield report("cloud")
            await gate.wait()

        monitor = scheduler(channels(pki.cert("monitor", "cloud")).get(server.address))
        in_flight = asyncio.ensure_future(monitor.ReportResources(reports(), timeout=10))
        await asyncio.sleep(0.3)
        draining = asyncio.create_task(server.stop(grace=5))
        await asyncio.sleep(0.3)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        gate.set()
        assert (await in_flight).received == 1
        await draining


def report(node: str, *links: str) -> scheduler_pb2.ReportResourcesRequest:
    resources = resources_pb2.NodeResources(node=node, cpu_count=2)
    resources.measured_at.GetCurrentTime()
    for to_node in links:
        resources.links.add(from_node=node, to_node=to_node, bandwidth_mbps=10)
    return scheduler_pb2.ReportResourcesRequest(resources=resources)


async def test_a_monitor_reports_its_own_node_only(pki: Pki, tls_serve, channels) -> None:  # type: ignore[no-untyped-def]
    server = await tls_serve("scheduler", tls=pki.cert("scheduler", "cloud").model_dump())
    monitor = scheduler(channels(pki.cert("monitor", "edge-1")).get(server.address))

    reply = await monitor.ReportResources(iter([report("edge-1", "cloud")]), timeout=5)
    assert reply.received == 1

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await monitor.ReportResources(iter([report("edge-2")]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = caught.value.details() or ""
    assert "NodeResources.node" in details and "'edge-2'" in details and "monitor.edge-1" in details, details

    # Another component of edge-1 may not report resources at all.
    generator = scheduler(channels(pki.cert("generator", "edge-1")).get(server.address))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generator.ReportResources(iter([report("edge-1")]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "ReportResources: only monitor" in (caught.value.details() or "")


async def test_feedback_only_from_the_distributor_and_streams_from_their_own_node(
    pki: Pki, tls_serve, channels
) -> None:  # type: ignore[no-untyped-def]
    server = await tls_serve("scheduler", tls=pki.cert("scheduler", "cloud").model_dump())
    spec = make_stream_spec()  # on edge-1
    other = scheduler(channels(pki.cert("generator", "edge-2")).get(server.address))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await other.RegisterStream(scheduler_pb2.RegisterStreamRequest(stream=spec), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = caught.value.details() or ""
    assert "stream.node" in details and "'edge-1'" in details and "generator.edge-2" in details, details
    own = scheduler(channels(pki.cert("generator", "edge-1")).get(server.address))
    reply = await own.RegisterStream(scheduler_pb2.RegisterStreamRequest(stream=spec), timeout=5)
    assert reply.decision.stream_id == spec.stream_id

    record = task_pb2.TaskRecord(task=make_task(node="edge-1"), outcome=task_pb2.TASK_OUTCOME_DELIVERED)
    feedback = scheduler_pb2.ReportFeedbackRequest(record=record)
    for holder in (("monitor", "edge-1"), ("controller", "cloud"), ("operator", "admin")):
        stub = scheduler(channels(pki.cert(*holder)).get(server.address))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReportFeedback(feedback, timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, holder
        assert "ReportFeedback: only distributor" in (caught.value.details() or "")
    distributor = scheduler(channels(pki.cert("distributor", "cloud")).get(server.address))
    reply = await distributor.ReportFeedback(feedback, timeout=5)
    assert (reply.accepted, reply.unknown_stream) == (1, 0)
    stats = await distributor.GetSchedulerStats(STATS, timeout=5)
    assert [s.stream_id for s in stats.streams] == [spec.stream_id]
    assert stats.streams[0].feedback_received == 1

    # A batch, as the distributor sends what was stored while its last call was under way: records of
    # a stream the scheduler does not know are counted and left out; the others are taken.
    stranger = task_pb2.TaskRecord()
    stranger.CopyFrom(record)
    stranger.task.stream_id = "not-registered"
    batch = scheduler_pb2.ReportFeedbackRequest(records=[record, stranger, record])
    reply = await distributor.ReportFeedback(batch, timeout=5)
    assert (reply.accepted, reply.unknown_stream) == (2, 1)
    stats = await distributor.GetSchedulerStats(STATS, timeout=5)
    assert stats.streams[0].feedback_received == 3
    # One bad id refuses the whole batch, naming the record, before any record is taken.
    stranger.task.stream_id = "no spaces"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await distributor.ReportFeedback(scheduler_pb2.ReportFeedbackRequest(records=[record, stranger]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "records[1].task.stream_id" in (caught.value.details() or "")
    assert (await distributor.GetSchedulerStats(STATS, timeout=5)).streams[0].feedback_received == 3


async def test_members_export_their_spans_to_the_scheduler_over_tls(pki: Pki, tls_serve, channels) -> None:  # type: ignore[no-untyped-def]
    """A processor's OTLP exporter (its own channel, not Channels) reaches the TLS scheduler."""
    scheduler_server = await tls_serve("scheduler", tls=pki.cert("scheduler", "cloud").model_dump())
    processor = await tls_serve(
        "processor",
        node="edge-1",
        tls=pki.cert("processor", "edge-1").model_dump(),
        tracing={"export_to": [scheduler_server.address], "schedule_delay_ms": 50},
    )
    operator = channels(pki.cert("operator", "admin"))
    task = make_task(node="edge-1")
    task.dag.stages[0].spec.CopyFrom(stage("detect"))
    stub = processor_pb2_grpc.ProcessorServiceStub(operator.get(processor.address))
    await stub.Process(processor_pb2.ProcessRequest(task=task, stage="detect"), timeout=10)
    received = 0
    for _ in range(100):
        received = (
            await scheduler(operator.get(scheduler_server.address)).GetSchedulerStats(STATS, timeout=5)
        ).spans_received
        if received:
            break
        await asyncio.sleep(0.05)
    assert received > 0


async def test_a_processor_reaches_its_triton_over_mutual_tls(pki: Pki, tls_serve, channels, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Triton (the wheel's tritonserver) with the mesh's certificate and --grpc-use-ssl-mutual: the
    processor, given only its own tls settings, shows Triton its certificate; a client without one is
    refused."""
    triton = TritonServer(
        assemble(tmp_path / "models"), tmp_path / "triton", startup_timeout_s=60, tls=pki.cert("triton", "edge-1")
    )
    await triton.start()
    try:
        processor = await tls_serve(
            "processor",
            node="edge-1",
            tls=pki.cert("processor", "edge-1").model_dump(),
            processor={"kind": "text_detector", "params": {"backend": "triton", "triton": {"address": triton.address}}},
        )
        stub = processor_pb2_grpc.ProcessorServiceStub(channels(pki.cert("operator", "admin")).get(processor.address))
        reply = await stub.Process(
            processor_pb2.ProcessRequest(task=scene_task([draw_scene(640, 360)]), stage="detect"), timeout=30
        )
        detected = reply.stage  # the stage that ran, not the task (its frames stay with the caller)
        assert detected.state == task_pb2.STAGE_STATE_DONE, detected.error
        assert [d.label for d in detected.results[0].detections] == ["plate", "plate"]

        plaintext = PROCESSORS.create(
            "text_detector", {"backend": "triton", "triton": {"address": triton.address, "attempts": 1}}
        )
        with pytest.raises(TritonUnavailable):
            await run_stage(plaintext, scene_task([draw_scene(320, 180)]), "detect")
        await plaintext.aclose()  # type: ignore[attr-defined]
    finally:
        await triton.stop()


async def test_a_controller_takes_tasks_from_its_own_node_s_generator_and_probes_for_its_own_monitor(
    pki: Pki, tls_serve, channels
) -> None:  # type: ignore[no-untyped-def]
    server = await tls_serve("controller", node="edge-1", tls=pki.cert("controller", "edge-1").model_dump())

    def controller(*holder: str) -> controller_pb2_grpc.ControllerServiceStub:
        return controller_pb2_grpc.ControllerServiceStub(channels(pki.cert(*holder)).get(server.address))

    cases = [
        (controller("generator", "edge-2").SubmitTask, controller_pb2.SubmitTaskRequest(task=make_task()), "own node"),
        (
            controller("controller", "cloud").SubmitTask,
            controller_pb2.SubmitTaskRequest(task=make_task(), from_node="edge-2"),
            "from_node: node 'edge-2' claimed by a certificate of node 'cloud' (controller.cloud)",
        ),
        (
            controller("monitor", "edge-2").MeasureLink,
            controller_pb2.MeasureLinkRequest(to_node="cloud"),
            "monitor.edge-2",
        ),
        (
            controller("distributor", "cloud").MeasureLink,
            controller_pb2.MeasureLinkRequest(to_node="cloud"),
            "MeasureLink: only monitor, operator",
        ),
    ]
    for call, request, expected in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, expected
        assert expected in (caught.value.details() or ""), caught.value.details()
