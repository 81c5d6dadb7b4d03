"""The monitor's loops against real gRPC peers on loopback: a scheduler that records the reports, a
processor, and peers that are down or silent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from dayu.monitor import service as monitor_service
from dayu.monitor.service import MonitorComponent, MonitorSettings
from dayu.runtime.config import load_settings
from dayu.runtime.server import free_port
from dayu.v1 import controller_pb2, controller_pb2_grpc, resources_pb2, scheduler_pb2, scheduler_pb2_grpc


class RecordingScheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Keeps every report; the first `silent` streams are never read nor answered (a partition)."""

    def __init__(self, silent: int = 0) -> None:
        self.reports: list[resources_pb2.NodeResources] = []
        self.streams = self.answered = 0
        self.silent = silent

    async def ReportResources(
        self, request_iterator: AsyncIterator[scheduler_pb2.ReportResourcesRequest], context: object
    ) -> scheduler_pb2.ReportResourcesResponse:
        self.streams += 1
        if self.streams <= self.silent:
            await asyncio.Event().wait()  # until the caller's deadline cancels it
        received = 0
        async for request in request_iterator:
            self.reports.append(request.resources)
            received += 1
        self.answered += 1
        return scheduler_pb2.ReportResourcesResponse(received=received)


class SilentController(controller_pb2_grpc.ControllerServiceServicer):
    """Takes link measurements and never answers, as a peer behind a partition makes it do."""

    async def MeasureLink(
        self, request: controller_pb2.MeasureLinkRequest, context: object
    ) -> controller_pb2.MeasureLinkResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


Peer = Callable[[Callable[[Any, grpc.aio.Server], None], Any], Awaitable[str]]


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    """Serves a servicer on loopback: `address = await peer(add_XServicer_to_server, servicer)`."""
    servers: list[grpc.aio.Server] = []

    async def start(add: Callable[[Any, grpc.aio.Server], None], servicer: Any) -> str:
        server = grpc.aio.server()
        add(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(0)


@pytest.fixture
async def monitor() -> AsyncIterator[Callable[..., Awaitable[MonitorComponent]]]:
    """Starts a monitor's loops (no server needed: it reaches out, and is looked at directly)."""
    started: list[MonitorComponent] = []

    async def start(**section: Any) -> MonitorComponent:
        component = MonitorComponent(load_settings(MonitorSettings, node="edge-1", monitor=section))
        await component.start()
        started.append(component)
        return component

    yield start
    for component in started:
        await component.cancel_background()
        await component.stop()


async def until(condition: Callable[[], bool], tries: int = 250) -> None:
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not met within {tries * 0.02:g} s")


async def test_peers_that_are_down_or_silent_leave_the_other_figures_in_the_reports(
    serve: Callable[..., Awaitable[str]],
    peer: Peer,
    monitor: Callable[..., Awaitable[MonitorComponent]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(monitor_service, "LINK_TIMEOUT_S", 1.0)
    recording = RecordingScheduler()
    scheduler = await peer(scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server, recording)
    controller = await peer(controller_pb2_grpc.add_ControllerServiceServicer_to_server, SilentController())
    processor = await serve("processor", node="edge-1")
    with capture_logs() as logs:
        await monitor(
            interval_s=0.1,
            scheduler=scheduler,
            processors={"noop": processor, "detector": f"127.0.0.1:{free_port()}"},  # nothing listens there
            controller=controller,
            peers=["cloud"],
        )
        # Reports go on every interval while the link's measurement waits for its deadline.
        await until(lambda: sum("noop" in r.queue_lengths for r in recording.reports) >= 3)
        assert not any(e["event"] == "left out of the reports" and "link" in e["peer"] for e in logs)
        await until(lambda: any(e["event"] == "left out of the reports" and "link" in e["peer"] for e in logs))
    measured = [r for r in recording.reports if "noop" in r.queue_lengths]
    assert all(r.node == "edge-1" and r.memory_total_bytes > 0 for r in measured)
    assert all("detector" not in r.queue_lengths and not r.links for r in recording.reports)
    left_out = sorted(e["peer"] for e in logs if e["event"] == "left out of the reports")
    assert left_out[0] == "link to cloud" and left_out[1].startswith("processor detector at")
    assert len(left_out) == 2  # once each, not at every report


async def test_a_failed_measurement_is_logged_and_the_next_one_comes(
    peer: Peer, monitor: Callable[..., Awaitable[MonitorComponent]]
) -> None:
    recording = RecordingScheduler()
    scheduler = await peer(scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server, recording)
    with capture_logs() as logs:
        component = await monitor(interval_s=0.1, scheduler=scheduler)
        sample, failures = component.monitor.sampler.sample, iter([OSError("cgroup file vanished")])

        def failing_once() -> resources_pb2.NodeResources:
            for error in failures:
                raise error
            return sample()

        component.monitor.sampler.sample = failing_once  # type: ignore[method-assign]
        await until(lambda: len(recording.reports) >= 3)
    assert next(failures, None) is None  # it did fail
    assert any(e["event"] == "measurement failed" and e["measure"] == "refresh" for e in logs)


async def test_a_silent_scheduler_is_left_for_a_new_stream_and_streams_end(
    peer: Peer, monitor: Callable[..., Awaitable[MonitorComponent]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitor_service, "REPORT_STREAM_S", 0.3)
    monkeypatch.setattr(monitor_service, "REPLY_SLACK_S", 0.2)
    recording = RecordingScheduler(silent=1)
    scheduler = await peer(scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server, recording)
    with capture_logs() as logs:
        await monitor(interval_s=0.1, scheduler=scheduler)
        await until(lambda: recording.answered >= 2)  # the streams after the silent one end by themselves
    assert recording.streams >= 3 and len(recording.reports) >= 4
    assert any(
        e["event"] == "scheduler unreachable for resource reports" and e["code"] == "DEADLINE_EXCEEDED" for e in logs
    )
