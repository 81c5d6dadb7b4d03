"""gRPC adapter of the scheduler.

With mutual TLS (dayu.runtime.tls) it checks who calls (docs/security.md): resources only from the
monitor of the node they describe, a stream registered by its own node's generator (or the backend, or
the operator, for any node), feedback only from the distributor, policies set, streams unregistered
and task traces read by the backend or the operator, spans only about the exporter's own node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pydantic
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from dayu.runtime.auth import Role, Tokens, guard
from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.errors import NotFound
from dayu.runtime.sections import PolicySection
from dayu.runtime.server import Binding, Component
from dayu.runtime.tls import OPERATOR, peer_identity, require_component, require_node
from dayu.runtime.tracing import NODE
from dayu.runtime.validation import require_id
from dayu.scheduler.core import Admission, SchedulerCore, build_policy
from dayu.scheduler.deployment import DeploymentSettings
from dayu.v1 import resources_pb2, scheduler_pb2, scheduler_pb2_grpc


class SchedulerSection(StrictModel):
    default_policy: PolicySection = pydantic.Field(
        default_factory=PolicySection, description="policy of streams registered without one"
    )
    cloud_node: str = pydantic.Field("cloud", description="the node policies offload to")
    max_queue: int = pydantic.Field(48, ge=1, description="admission: tasks queued on a node that pause a stream")
    resume_queue: int = pydantic.Field(16, ge=0, description="admission: queued tasks under which streams resume")
    fallback_after_s: float = pydantic.Field(
        5.0, gt=0, description="no feedback this long (at least three segments and the budget): fallback plan"
    )
    decision_interval_s: float = pydantic.Field(0.5, ge=0, description="least time between two decisions")
    # Well over a monitor's time between reports (monitor.interval_s, 2 s, or up to a processor's 5 s
    # status deadline when one does not answer), so a live but slow monitor does not make its node stale.
    stale_after_s: float = pydantic.Field(
        15.0, gt=0, description="a node whose monitor has not reported for this long is stale: nothing new goes there"
    )
    deployment: DeploymentSettings = pydantic.Field(
        default_factory=DeploymentSettings,
        description="when deployable processor kinds are loaded on a node and unloaded (docs/deployment.md)",
    )
    shared_uplinks: dict[str, list[str]] = pydantic.Field(
        default_factory=dict,
        description="uplink name -> the nodes whose links to the cloud all cross it (a site's one WAN link): "
        "their streams share its bandwidth together (docs/adaptive-loop.md)",
    )

    @pydantic.model_validator(mode="after")
    def _one_uplink_a_node(self) -> SchedulerSection:
        behind: dict[str, str] = {}
        for name, nodes in self.shared_uplinks.items():
            if not nodes:
                raise ValueError(f"shared_uplinks.{name}: the nodes behind it, got none")
            for node in nodes:
                if node == self.cloud_node:
                    raise ValueError(f"shared_uplinks.{name}: {node!r} is the cloud node, which the uplinks lead to")
                if node in behind:
                    raise ValueError(f"shared_uplinks.{name}: {node!r} is behind {behind[node]!r} already")
                behind[node] = name
        return self

    def core(self, **overrides: Any) -> SchedulerCore:
        """The scheduler's core as this section sets it up (`overrides`: SchedulerCore's other
        arguments, such as a simulation's clock)."""
        return SchedulerCore(
            self.default_policy.spec(),
            self.cloud_node,
            self.decision_interval_s,
            Admission(self.max_queue, self.resume_queue),
            self.fallback_after_s,
            self.stale_after_s,
            deployment=self.deployment,
            shared_uplinks=self.shared_uplinks,
            **overrides,
        )


class SchedulerSettings(ComponentSettings):
    scheduler: SchedulerSection = SchedulerSection()


ADMINS = ("backend", OPERATOR)  # act for any node: install and uninstall streams, switch policies
ADMIN_CALLS: dict[str, Role | None] = {  # need the operator's admin token (dayu.runtime.auth)
    "dayu.v1.SchedulerService.SetPolicy": Role.ADMIN,
    "dayu.v1.SchedulerService.UnregisterStream": Role.ADMIN,
}


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, core: SchedulerCore) -> None:
        self.core = core

    async def RegisterStream(
        self, request: scheduler_pb2.RegisterStreamRequest, context: object
    ) -> scheduler_pb2.RegisterStreamResponse:
        require_component(context, ("generator", *ADMINS), "RegisterStream")
        require_node(context, request.stream.node, "stream.node", any_node=ADMINS)
        return scheduler_pb2.RegisterStreamResponse(decision=await self.core.register(request.stream))

    async def GetDecision(
        self, request: scheduler_pb2.GetDecisionRequest, context: object
    ) -> scheduler_pb2.GetDecisionResponse:
        return scheduler_pb2.GetDecisionResponse(decision=self.core.decision(request.stream_id))

    async def WatchDecisions(
        self, request: scheduler_pb2.WatchDecisionsRequest, context: object
    ) -> AsyncIterator[scheduler_pb2.WatchDecisionsResponse]:
        # The current decision first, whatever the caller knew: its version may be of an older epoch
        # (a restarted scheduler counts from 1 again); callers compare (epoch, version).
        async for decision in self.core.watch(request.stream_id):
            yield scheduler_pb2.WatchDecisionsResponse(decision=decision)

    async def ReportFeedback(
        self, request: scheduler_pb2.ReportFeedbackRequest, context: object
    ) -> scheduler_pb2.ReportFeedbackResponse:
        require_component(context, ("distributor",), "ReportFeedback")
        if not request.records:  # one record: a stream the scheduler does not know is NOT_FOUND
            await self.core.feedback(request.record)
            return scheduler_pb2.ReportFeedbackResponse(accepted=1)
        records = [request.record, *request.records] if request.HasField("record") else request.records
        for index, record in enumerate(records):  # the whole batch is checked before any record is taken
            require_id(record.task.stream_id, f"records[{index}].task.stream_id")
        accepted = unknown = 0
        for record in records:
            try:
                await self.core.feedback(record)
                accepted += 1
            except NotFound:
                unknown += 1
        return scheduler_pb2.ReportFeedbackResponse(accepted=accepted, unknown_stream=unknown)

    async def ReportResources(
        self, request_iterator: AsyncIterator[scheduler_pb2.ReportResourcesRequest], context: object
    ) -> scheduler_pb2.ReportResourcesResponse:
        require_component(context, ("monitor",), "ReportResources")
        received = 0
        async for request in request_iterator:
            report = request.resources
            require_node(context, report.node, "NodeResources.node")
            for index, link in enumerate(report.links):
                require_node(context, link.from_node, f"NodeResources.links[{index}].from_node")
            await self.core.report_resources(report)
            received += 1
        return scheduler_pb2.ReportResourcesResponse(received=received)

    async def SetPolicy(
        self, request: scheduler_pb2.SetPolicyRequest, context: object
    ) -> scheduler_pb2.SetPolicyResponse:
        require_component(context, ADMINS, "SetPolicy")
        return scheduler_pb2.SetPolicyResponse(decision=await self.core.set_policy(request.stream_id, request.policy))

    async def GetSchedulerStats(
        self, request: scheduler_pb2.GetSchedulerStatsRequest, context: object
    ) -> scheduler_pb2.GetSchedulerStatsResponse:
        hops = self.core.hops
        links = [
            resources_pb2.LinkBandwidth(from_node=a, to_node=b, bandwidth_mbps=mbps)
            for (a, b), mbps in sorted(hops.link_bandwidth().items())
        ]
        streams, token = self.core.stats(request.stream_id, request.page_size, request.page_token)
        return scheduler_pb2.GetSchedulerStatsResponse(
            streams=streams,
            spans_received=hops.received,
            spans_ignored=hops.ignored,
            traced_links=links,
            next_page_token=token,
        )

    async def UnregisterStream(
        self, request: scheduler_pb2.UnregisterStreamRequest, context: object
    ) -> scheduler_pb2.UnregisterStreamResponse:
        # The backend unregisters a stream it uninstalled, once its generator stopped it.
        require_component(context, ADMINS, "UnregisterStream")
        return scheduler_pb2.UnregisterStreamResponse(unregistered=await self.core.unregister(request.stream_id))

    async def GetTaskTrace(
        self, request: scheduler_pb2.GetTaskTraceRequest, context: object
    ) -> scheduler_pb2.GetTaskTraceResponse:
        # For the backend's task timelines; spans name nodes and stages, not for every member to read.
        require_component(context, ADMINS, "GetTaskTrace")
        return scheduler_pb2.GetTaskTraceResponse(spans=self.core.task_trace(request.root_id))

    async def GetDeploymentPlan(
        self, request: scheduler_pb2.GetDeploymentPlanRequest, context: object
    ) -> scheduler_pb2.GetDeploymentPlanResponse:
        # Read by every node's deployable processors (and operators); it names nodes and kinds only.
        if request.node:
            require_id(request.node, "node")
        return scheduler_pb2.GetDeploymentPlanResponse(nodes=self.core.deployment.node_plans(request.node))


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """The standard OTLP/gRPC trace receiver: components export their spans here."""

    def __init__(self, core: SchedulerCore) -> None:
        self.core = core

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        if peer_identity(context) is not None:  # with TLS: spans of the exporter's own node only
            for field, node in _claimed_nodes(request):
                require_node(context, node, field)
        await self.core.receive_spans(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def _claimed_nodes(request: trace_service_pb2.ExportTraceServiceRequest) -> list[tuple[str, str]]:
    """The node each resource and span of an export says it is of (dayu.node), with where it says so."""
    claimed = []
    for r, resource_spans in enumerate(request.resource_spans):
        for attribute in resource_spans.resource.attributes:
            if attribute.key == NODE:
                claimed.append((f"resource_spans[{r}].resource.{NODE}", attribute.value.string_value))
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            for p, span in enumerate(scope_spans.spans):
                for attribute in span.attributes:
                    if attribute.key == NODE:
                        field = f"resource_spans[{r}].scope_spans[{s}].spans[{p}].{NODE}"
                        claimed.append((field, attribute.value.string_value))
    return claimed


class SchedulerComponent(Component):
    name = "scheduler"
    settings_class = SchedulerSettings

    def __init__(self, settings: SchedulerSettings) -> None:
        # A bad default policy is refused at start, not at its first use.
        build_policy(settings.scheduler.default_policy.spec(), "scheduler.default_policy")
        self.core = settings.scheduler.core()
        # The operator's admin token for what changes a stream from outside (the backend's calls, an
        # operator's grpcurl); the mesh's own calls (registering, feedback, spans) need none.
        self.guard = guard(Tokens.load(settings.auth), ADMIN_CALLS, default=None)

    def bindings(self) -> Sequence[Binding]:
        return [
            Binding("dayu.v1.SchedulerService", SchedulerServicer(self.core), self.guard),
            Binding("opentelemetry.proto.collector.trace.v1.TraceService", TraceReceiver(self.core)),
        ]

    async def start(self) -> None:
        self.background(self._check)

    async def _check(self) -> None:
        """Every second: streams whose feedback stopped, nodes whose monitor did."""
        while True:
            await asyncio.sleep(1.0)
            await self.core.check_feedback()
            await self.core.check_nodes()
            await self.core.check_deployment()
