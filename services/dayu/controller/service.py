"""gRPC adapter of the controller: the transport to processors, peers and the distributor, and the
servicer over ControllerCore."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import grpc
import pydantic

from dayu.controller.core import ControllerCore
from dayu.controller.journal import TaskJournal
from dayu.controller.links import BandwidthTrace, Link
from dayu.runtime.client import Channels, remote, with_retries
from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.errors import FailedPrecondition, InvalidArgument, PermissionDenied, RemoteError
from dayu.runtime.logs import get_logger
from dayu.runtime.server import Binding, Component
from dayu.runtime.tls import OPERATOR, require_component, require_node
from dayu.runtime.tracing import Tracing
from dayu.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    distributor_pb2,
    distributor_pb2_grpc,
    processor_pb2,
    processor_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)

log = get_logger(__name__)
RECONNECT_S = (0.2, 5.0)  # first and longest wait before following a stream's decisions again


class LinkSection(StrictModel):
    bandwidth_mbps: float = pydantic.Field(0.0, ge=0, description="0: unlimited (unless a trace is given)")
    delay_ms: float = pydantic.Field(0.0, ge=0)
    trace: Path | None = pydantic.Field(None, description="bandwidth trace file (time_s mbps per line)")

    def link(self, from_node: str, to_node: str) -> Link:
        trace = BandwidthTrace.load(self.trace) if self.trace else None
        return Link(from_node, to_node, self.bandwidth_mbps, self.delay_ms, trace)


class ControllerSection(StrictModel):
    cloud_node: str = pydantic.Field("cloud", description="node that stages fall back to and forks end on")
    peers: dict[str, str] = pydantic.Field(default_factory=dict, description="node -> address of its controller")
    processors: dict[str, str] = pydantic.Field(
        default_factory=dict, description="processor kind -> address of this node's processor"
    )
    distributor: str = pydantic.Field("", description="address of the distributor")
    scheduler: str = pydantic.Field(
        "", description="address of the scheduler, whose decisions re-place tasks in flight (empty: not followed)"
    )
    links: dict[str, LinkSection] = pydantic.Field(default_factory=dict, description="node -> link from this node")
    join_timeout_s: float = pydantic.Field(10.0, gt=0)
    late_factor: float = pydantic.Field(
        0.0, ge=0, description="drop tasks older than this many latency budgets before sending them on (0: never)"
    )
    attempts: int = pydantic.Field(3, ge=1, description="quick tries of a call to a processor before its fallback")
    process_timeout_s: float = pydantic.Field(60.0, gt=0, description="longest a processor may take for one stage")
    patience_s: float = pydantic.Field(
        30.0, gt=0, description="longest a task without a budget (and any delivery) waits for its receiver to return"
    )
    journal: Path | None = pydantic.Field(
        None, description="SQLite file journaling the tasks this node holds (none: in memory, lost on a crash)"
    )


class ControllerSettings(ComponentSettings):
    controller: ControllerSection = ControllerSection()


class GrpcTransport:
    """Reaches processors, peer controllers and the distributor over gRPC, with bounded retries."""

    def __init__(self, section: ControllerSection, channels: Channels, node: str) -> None:
        self.section, self.channels, self.node = section, channels, node

    def _address(self, table: dict[str, str], key: str, what: str) -> str:
        if key not in table:
            raise FailedPrecondition(f"no address configured for {what} {key!r}")
        return table[key]

    async def process(self, kind: str, task: task_pb2.Task, stage: str) -> task_pb2.TaskStage:
        address = self._address(self.section.processors, kind, "processor")
        stub = self.channels.stub(processor_pb2_grpc.ProcessorServiceStub, address)
        request = processor_pb2.ProcessRequest(task=task, stage=stage)
        timeout = self.section.process_timeout_s
        reply = await remote(
            with_retries(lambda: stub.Process(request, timeout=timeout), attempts=self.section.attempts, what="process")
        )
        if reply.HasField("stage"):
            return reply.stage
        # A processor of an older release answers with the whole task: its stage of that name.
        done = [s for s in reply.task.dag.stages if s.spec.name == stage]
        if not done:
            raise RemoteError("INTERNAL", f"processor {kind!r} answered without stage {stage!r}")
        return done[0]

    # One attempt each: the core tries again, for as long as the task can wait, with the same task id.
    async def forward(self, node: str, task: task_pb2.Task, timeout_s: float) -> None:
        request = controller_pb2.SubmitTaskRequest(task=task, from_node=self.node)  # checked against our certificate
        await remote(self._peer(node).SubmitTask(request, timeout=timeout_s))

    def _peer(self, node: str) -> controller_pb2_grpc.ControllerServiceStub:
        address = self._address(self.section.peers, node, "controller of node")
        return self.channels.stub(controller_pb2_grpc.ControllerServiceStub, address)

    def _distributor(self) -> distributor_pb2_grpc.DistributorServiceStub:
        if not self.section.distributor:
            raise FailedPrecondition("no distributor address configured")
        return self.channels.stub(distributor_pb2_grpc.DistributorServiceStub, self.section.distributor)

    async def deliver(self, task: task_pb2.Task, timeout_s: float) -> None:
        await remote(self._distributor().Deliver(distributor_pb2.DeliverRequest(task=task), timeout=timeout_s))

    async def probe(self, node: str, nbytes: int) -> None:
        await remote(self._peer(node).Probe(controller_pb2.ProbeRequest(payload=bytes(nbytes)), timeout=30))

    async def record_drop(self, task: task_pb2.Task, reason: str) -> None:
        request = distributor_pb2.RecordDropRequest(task=task, reason=reason)
        await remote(self._distributor().RecordDrop(request, timeout=10))


class ControllerServicer(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(self, core: ControllerCore) -> None:
        self.core = core

    async def SubmitTask(
        self, request: controller_pb2.SubmitTaskRequest, context: object
    ) -> controller_pb2.SubmitTaskResponse:
        # With TLS: a generator of this node, another node's controller (saying so in from_node, if
        # at all), or the operator.
        caller = require_component(context, ("generator", "controller", OPERATOR), "SubmitTask")
        if caller is not None and caller.component == "generator" and caller.node != self.core.node:
            raise PermissionDenied(
                f"SubmitTask: a generator submits to its own node's controller ({self.core.node!r}); "
                f"the caller's certificate is {caller}"
            )
        if request.from_node:
            require_node(context, request.from_node, "from_node")
        await self.core.submit(request.task, request.from_node)
        return controller_pb2.SubmitTaskResponse(task_id=request.task.task_id)

    async def GetLinkStats(
        self, request: controller_pb2.GetLinkStatsRequest, context: object
    ) -> controller_pb2.GetLinkStatsResponse:
        return controller_pb2.GetLinkStatsResponse(
            links=[
                controller_pb2.LinkStats(
                    from_node=link.from_node,
                    to_node=link.to_node,
                    bytes_sent=link.bytes_sent,
                    tasks_sent=link.tasks_sent,
                    probe_bytes_sent=link.probe_bytes_sent,
                    bandwidth_mbps=link.bandwidth_mbps(),
                    delay_ms=link.delay_ms,
                )
                for _, link in sorted(self.core.links.items())
            ]
        )

    async def MeasureLink(
        self, request: controller_pb2.MeasureLinkRequest, context: object
    ) -> controller_pb2.MeasureLinkResponse:
        # With TLS: the monitor of this node (its probes load the links), or the operator.
        require_component(context, ("monitor", OPERATOR), "MeasureLink")
        require_node(context, self.core.node, "MeasureLink (the monitor's node)")
        return controller_pb2.MeasureLinkResponse(
            link=await self.core.measure_link(request.to_node, request.probe_bytes)
        )

    async def Probe(self, request: controller_pb2.ProbeRequest, context: object) -> controller_pb2.ProbeResponse:
        return controller_pb2.ProbeResponse(received_bytes=len(request.payload))


class ControllerComponent(Component):
    name = "controller"
    settings_class = ControllerSettings

    def __init__(self, settings: ControllerSettings) -> None:
        section = self.section = settings.controller
        self.channels = Channels(
            settings.server.max_message_bytes, settings.tls, component=self.name, node=settings.node
        )
        self.grace_s = settings.server.shutdown_grace_s
        self.tracing = Tracing(self.name, settings.node, settings.tracing, settings.tls)
        unknown = sorted(set(section.links) - set(section.peers))
        if unknown:
            raise InvalidArgument("controller.links", f"links to peers {sorted(section.peers)}, got {unknown}")
        # A link to every peer: emulated where the mesh says so, else the network's own.
        links = {node: section.links.get(node, LinkSection()).link(settings.node, node) for node in section.peers}
        self.core = ControllerCore(
            node=settings.node,
            cloud_node=section.cloud_node,
            nodes=set(section.peers),
            local_kinds=set(section.processors),
            links=links,
            transport=GrpcTransport(section, self.channels, settings.node),
            journal=TaskJournal(section.journal),
            join_timeout_s=section.join_timeout_s,
            late_factor=section.late_factor,
            patience_s=section.patience_s,
            tracing=self.tracing,
            on_new_stream=self._follow,
            on_forgotten_stream=self._unfollow,
        )
        self._followers: dict[str, asyncio.Task[None]] = {}

    def bindings(self) -> Sequence[Binding]:
        return [Binding("dayu.v1.ControllerService", ControllerServicer(self.core))]

    def _follow(self, stream_id: str) -> None:
        if self.section.scheduler:
            self._followers[stream_id] = self.background(
                self._follow_decisions, stream_id, name=f"decisions of {stream_id}"
            )

    def _unfollow(self, stream_id: str) -> None:
        follower = self._followers.pop(stream_id, None)
        if follower is not None:
            follower.cancel()

    async def _follow_decisions(self, stream_id: str) -> None:
        """Keeps the core's copy of the stream's decision current, reconnecting while the scheduler
        is down or does not know the stream yet."""
        stub = self.channels.stub(scheduler_pb2_grpc.SchedulerServiceStub, self.section.scheduler)
        wait = RECONNECT_S[0]
        while True:
            try:
                # The current decision first; (epoch, version) tells new from old, also across a
                # restart of the scheduler (a new epoch).
                watch = stub.WatchDecisions(scheduler_pb2.WatchDecisionsRequest(stream_id=stream_id))
                async for reply in watch:
                    self.core.apply_decision(reply.decision)
                    wait = RECONNECT_S[0]
            except grpc.aio.AioRpcError as error:
                log.debug("decisions unavailable", stream_id=stream_id, code=error.code().name)
            await asyncio.sleep(wait)
            wait = min(wait * 2, RECONNECT_S[1])

    async def start(self) -> None:
        await self.core.resume()

    async def stop(self) -> None:
        await self.core.drain(self.grace_s)
        await self.channels.close()
        self.core.journal.close()
