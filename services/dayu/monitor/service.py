"""gRPC adapter of the monitor: samples its node on an interval (resources, processor queues and
which deployable processors are loaded, the links to every other node through the controller's probes)
and streams each report to the scheduler.

The loops outlive failures: a processor or link that does not answer is left out of the reports (the
others' figures still go), a measurement that fails is logged and the next comes on time, and a
stream to the scheduler that fails or goes silent is opened again. Every call has a deadline. Links
are measured in a loop of their own, so a peer that does not answer, which takes a link's whole
deadline, does not hold back the node's reports (the scheduler takes a node that is silent for long
as gone)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
import pydantic

from dayu.monitor.core import ResourceSampler, check_interval
from dayu.runtime.client import Channels
from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.logs import get_logger
from dayu.runtime.metrics import Meter
from dayu.runtime.server import Binding, Component
from dayu.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    processor_pb2,
    processor_pb2_grpc,
    resources_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
)

log = get_logger(__name__)

PROCESSOR_TIMEOUT_S = 5.0  # deadline of a processor's status
LINK_TIMEOUT_S = 30.0  # deadline of one link's measurement (two probes through the controller)
# A stream of reports ends after this long and a new one starts: its deadline (with the slack for the
# scheduler's reply) is how a scheduler that went silent, behind a partition, is noticed.
REPORT_STREAM_S, REPLY_SLACK_S = 30.0, 10.0


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
        self.meter = Meter("monitor", sampler.node)
        self.latest = sampler.sample()
        self.links: dict[str, resources_pb2.LinkBandwidth] = {}  # peer -> its link's last measure
        self._measured = asyncio.Condition()  # notified when `latest` is replaced
        self._failing: set[str] = set()  # peers that did not answer last time, to log changes only

    async def refresh(self) -> resources_pb2.NodeResources:
        """Measures the node now, with the links as last measured. A processor that does not answer
        is left out of the report."""
        report = await asyncio.to_thread(self.sampler.sample)
        processors = sorted(self.section.processors.items())
        statuses = await asyncio.gather(*(self._status(kind, address) for kind, address in processors))
        for (kind, _), status in zip(processors, statuses, strict=True):
            if status is None:
                continue
            if status.deployable:  # loaded and unloaded by the scheduler's plan: reported with its cost
                report.deployable.add(
                    kind=kind, loaded=not status.unloaded, load_s=status.load_s, model_bytes=status.model_bytes
                )
            if not status.unloaded:  # a kind held unloaded runs nothing: not in the queues, so not runnable
                report.queue_lengths[kind] = status.queue_length
                report.workers[kind] = status.workers
        report.links.extend(self.links[node] for node in sorted(self.links))
        async with self._measured:
            self.latest = report
            self._measured.notify_all()
        return report

    async def reports(self, duration_s: float) -> AsyncIterator[scheduler_pb2.ReportResourcesRequest]:
        """The latest report, then each new one as it is measured, for `duration_s`."""
        until = asyncio.get_running_loop().time() + duration_s
        report = self.latest
        while True:
            yield scheduler_pb2.ReportResourcesRequest(resources=report)
            try:
                async with asyncio.timeout_at(until), self._measured:
                    await self._measured.wait_for(lambda sent=report: self.latest is not sent)
            except TimeoutError:
                return
            report = self.latest

    async def measure_links(self) -> None:
        """Measures the link to every peer through the controller (configured: see start()); one that
        fails is left out of the reports until it is measured again."""
        # One at a time: probes sent together would share this node's uplink and measure each other.
        for node in self.section.peers:
            link = await self._link(node)
            if link is None:
                self.links.pop(node, None)
                self.meter.link_unmeasured(node)
            else:
                self.links[node] = link
                self.meter.link_measured(link)

    async def _status(self, kind: str, address: str) -> processor_pb2.GetProcessorStatusResponse | None:
        stub = self.channels.stub(processor_pb2_grpc.ProcessorServiceStub, address)
        request = processor_pb2.GetProcessorStatusRequest()
        try:
            status = await stub.GetProcessorStatus(request, timeout=PROCESSOR_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            self._answered(f"processor {kind} at {address}", error)
            return None
        self._answered(f"processor {kind} at {address}")
        return status

    async def _link(self, node: str) -> resources_pb2.LinkBandwidth | None:
        stub = self.channels.stub(controller_pb2_grpc.ControllerServiceStub, self.section.controller)
        request = controller_pb2.MeasureLinkRequest(to_node=node, probe_bytes=self.section.probe_bytes)
        try:
            link = (await stub.MeasureLink(request, timeout=LINK_TIMEOUT_S)).link
        except grpc.aio.AioRpcError as error:
            self._answered(f"link to {node}", error)
            return None
        self._answered(f"link to {node}")
        return link

    def _answered(self, peer: str, error: grpc.aio.AioRpcError | None = None) -> None:
        """Logs when a peer stops and starts answering again, not at every report."""
        if error is not None and peer not in self._failing:
            self._failing.add(peer)
            log.warning("left out of the reports", peer=peer, code=error.code().name, details=error.details())
        elif error is None and peer in self._failing:
            self._failing.discard(peer)
            log.info("back in the reports", peer=peer)


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self, monitor: NodeMonitor) -> None:
        self.monitor = monitor

    async def GetResources(
        self, request: monitor_pb2.GetResourcesRequest, context: object
    ) -> monitor_pb2.GetResourcesResponse:
        return monitor_pb2.GetResourcesResponse(resources=self.monitor.latest)

    async def WatchResources(
        self, request: monitor_pb2.WatchResourcesRequest, context: object
    ) -> AsyncIterator[monitor_pb2.WatchResourcesResponse]:
        interval = check_interval(request.interval_s)
        while True:
            yield monitor_pb2.WatchResourcesResponse(resources=self.monitor.latest)
            await asyncio.sleep(interval)


class MonitorComponent(Component):
    name = "monitor"
    settings_class = MonitorSettings

    def __init__(self, settings: MonitorSettings) -> None:
        self.section = settings.monitor
        self.channels = Channels(
            settings.server.max_message_bytes, settings.tls, component=self.name, node=settings.node
        )
        sampler = ResourceSampler(settings.node, cgroup=self.section.node_cgroup)
        self.monitor = NodeMonitor(sampler, self.section, self.channels)

    def bindings(self) -> Sequence[Binding]:
        return [Binding("dayu.v1.MonitorService", MonitorServicer(self.monitor))]

    async def start(self) -> None:
        self.background(self._every_interval, self.monitor.refresh, name="resources")
        if self.section.controller and self.section.peers:
            self.background(self._every_interval, self.monitor.measure_links, name="links")
        if self.section.scheduler:
            self.background(self._report)

    async def stop(self) -> None:
        await self.channels.close()

    async def _every_interval(self, measure: Callable[[], Awaitable[object]]) -> None:
        """Runs `measure` every interval; one that fails is logged and the next comes on time."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await measure()
            except Exception:
                log.exception("measurement failed", measure=measure.__name__, next_in_s=self.section.interval_s)
            await asyncio.sleep(max(0.0, self.section.interval_s - (loop.time() - started)))

    async def _report(self) -> None:
        """Streams the reports to the scheduler, a new stream every REPORT_STREAM_S; one that fails or
        misses its deadline is opened again after an interval."""
        stub = self.channels.stub(scheduler_pb2_grpc.SchedulerServiceStub, self.section.scheduler)
        while True:
            reports = self.monitor.reports(REPORT_STREAM_S)
            try:
                await stub.ReportResources(reports, timeout=REPORT_STREAM_S + REPLY_SLACK_S)
            except grpc.aio.AioRpcError as error:
                log.warning("scheduler unreachable for resource reports", code=error.code().name)
                await asyncio.sleep(self.section.interval_s)
