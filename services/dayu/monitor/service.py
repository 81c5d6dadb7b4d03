"""gRPC adapter of the monitor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from dayu.monitor.core import ResourceSampler, check_interval
from dayu.runtime.config import ComponentSettings
from dayu.runtime.server import Binding, Component
from dayu.v1 import monitor_pb2, monitor_pb2_grpc, resources_pb2


class MonitorSettings(ComponentSettings):
    pass


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self, sampler: ResourceSampler) -> None:
        self.sampler = sampler

    async def GetResources(
        self, request: monitor_pb2.GetResourcesRequest, context: object
    ) -> monitor_pb2.GetResourcesResponse:
        return monitor_pb2.GetResourcesResponse(resources=self.sampler.sample())

    async def WatchResources(
        self, request: monitor_pb2.WatchResourcesRequest, context: object
    ) -> AsyncIterator[resources_pb2.NodeResources]:
        interval = check_interval(request.interval_s)
        while True:
            yield self.sampler.sample()
            await asyncio.sleep(interval)

    async def Probe(self, request: monitor_pb2.ProbeRequest, context: object) -> monitor_pb2.ProbeResponse:
        return monitor_pb2.ProbeResponse(received_bytes=len(request.payload))


class MonitorComponent(Component):
    name = "monitor"
    settings_class = MonitorSettings

    def __init__(self, settings: MonitorSettings) -> None:
        self.sampler = ResourceSampler(settings.node)

    def bindings(self) -> Sequence[Binding]:
        return [Binding("dayu.v1.MonitorService", MonitorServicer(self.sampler))]
