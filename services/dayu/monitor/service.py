"""gRPC adapter of the monitor: samples its node on an interval (resources, processor queues, the
links to every other node through the controller's probes) and streams each report to the scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
import pydantic

from dayu.monitor.core import ResourceSampler, check_interval
from dayu.runtime.client import Channels
from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.logs import get_logger
from dayu.runtime.server import Binding, Component
from dayu.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    processor_pb2,
    processor_pb2_grpc,
    resources_pb2,
    scheduler_pb2_grpc,
)

log = get_logger(__name__)


class MonitorSection(StrictModel):
    interval_s: float = pydantic.Field(2.0, ge=0.1, description="seconds between two reports")
    controller: str = pydantic.Field("", description="address of this node's controller (link probes)")
    peers: list[str] = pydantic.Field(default_factory=list, description="nodes whose links to measure")
    probe_bytes: int = pydantic.Field(32 * 1024, ge=1024, description="size of the bandwidth probe")
    processors: dict[str, str] = pydantic.Field(default_factory=dict, description="kind -> processor address")
    scheduler: str = pydantic.Field("", description="address of the scheduler that gets the reports")
    node_cgroup: str = pydantic.Field(
        "",
        description="cgroup holding this node's processes (cgroup v1 path under the hierarchy roots, as in "
        "/proc/self/cgroup), whose usage and limits are the node's; empty: the whole machine",
    )


class MonitorSettings(ComponentSettings):
    monitor: MonitorSection = MonitorSection()


class NodeMonitor:
    """Builds full reports of the node from the sampler and the node's controller and processors."""

    def __init__(self, sampler: ResourceSampler, section: MonitorSection, channels: Channels) -> None:
        self.sampler, self.section, self.channels = sampler, section, channels
        self.latest = sampler.sample()

    async def refresh(self) -> resources_pb2.NodeResources:
        report = await asyncio.to_thread(self.sampler.sample)
        for kind, address in sorted(self.section.processors.items()):
            stub = processor_pb2_grpc.ProcessorServiceStub(self.channels.get(address))
            try:
                status = await stub.GetProcessorStatus(processor_pb2.GetProcessorStatusRequest(), timeout=5)
                report.queue_lengths[kind] = status.queue_length
            except grpc.aio.AioRpcError as error:
                log.warning("processor unreachable", kind=kind, code=error.code().name)
        if self.section.controller:
            stub = controller_pb2_grpc.ControllerServiceStub(self.channels.get(self.section.controller))
            for node in self.section.peers:
                request = controller_pb2.MeasureLinkRequest(to_node=node, probe_bytes=self.section.probe_bytes)
                try:
                    report.links.append((await stub.MeasureLink(request, timeout=30)).link)
                except grpc.aio.AioRpcError as error:
                    log.warning("link not measured", to_node=node, code=error.code().name)
        self.latest = report
        return report


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self, monitor: NodeMonitor) -> None:
        self.monitor = monitor

    async def GetResources(
        self, request: monitor_pb2.GetResourcesRequest, context: object
    ) -> monitor_pb2.GetResourcesResponse:
        return monitor_pb2.GetResourcesResponse(resources=self.monitor.latest)

    async def WatchResources(
        self, request: monitor_pb2.WatchResourcesRequest, context: object
    ) -> AsyncIterator[resources_pb2.NodeResources]:
        interval = check_interval(request.interval_s)
        while True:
            yield self.monitor.latest
            await asyncio.sleep(interval)

    async def Probe(self, request: monitor_pb2.ProbeRequest, context: object) -> monitor_pb2.ProbeResponse:
        return monitor_pb2.ProbeResponse(received_bytes=len(request.payload))


class MonitorComponent(Component):
    name = "monitor"
    settings_class = MonitorSettings

    def __init__(self, settings: MonitorSettings) -> None:
        self.section = settings.monitor
        self.channels = Channels(settings.server.max_message_bytes)
        sampler = ResourceSampler(settings.node, cgroup=self.section.node_cgroup)
        self.monitor = NodeMonitor(sampler, self.section, self.channels)

    def bindings(self) -> Sequence[Binding]:
        return [Binding("dayu.v1.MonitorService", MonitorServicer(self.monitor))]

    async def start(self) -> None:
        self.background(self._report())

    async def stop(self) -> None:
        await self.channels.close()

    async def _reports(self) -> AsyncIterator[resources_pb2.NodeResources]:
        while True:
            started = asyncio.get_running_loop().time()
            yield await self.monitor.refresh()
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(0.0, self.section.interval_s - elapsed))

    async def _report(self) -> None:
        """Streams reports to the scheduler, reconnecting when it goes away; without a scheduler,
        keeps measuring for GetResources."""
        while True:
            if not self.section.scheduler:
                async for _ in self._reports():
                    pass
            stub = scheduler_pb2_grpc.SchedulerServiceStub(self.channels.get(self.section.scheduler))
            try:
                await stub.ReportResources(self._reports())
            except grpc.aio.AioRpcError as error:
                log.warning("scheduler unreachable for resource reports", code=error.code().name)
            await asyncio.sleep(self.section.interval_s)
