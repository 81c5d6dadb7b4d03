"""gRPC adapter of the controller.

Today it validates tasks and reports its links; routing tasks through processors and to other
nodes comes with the data plane."""

from __future__ import annotations

from collections.abc import Sequence

import pydantic

from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.errors import Unimplemented
from dayu.runtime.server import Binding, Component
from dayu.runtime.validation import validate_task
from dayu.v1 import controller_pb2, controller_pb2_grpc


class ControllerSection(StrictModel):
    nodes: list[str] = pydantic.Field(
        default_factory=list, description="nodes of the mesh; tasks naming other nodes are refused (empty: any)"
    )


class ControllerSettings(ComponentSettings):
    controller: ControllerSection = ControllerSection()


class ControllerServicer(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(self, node: str, nodes: list[str]) -> None:
        self.node = node
        self.nodes = set(nodes) | {node} if nodes else None

    async def SubmitTask(
        self, request: controller_pb2.SubmitTaskRequest, context: object
    ) -> controller_pb2.SubmitTaskResponse:
        validate_task(request.task, nodes=self.nodes)
        raise Unimplemented("routing tasks through the DAG is not built yet; the task was validated only")

    async def GetLinkStats(
        self, request: controller_pb2.GetLinkStatsRequest, context: object
    ) -> controller_pb2.GetLinkStatsResponse:
        return controller_pb2.GetLinkStatsResponse()


class ControllerComponent(Component):
    name = "controller"
    settings_class = ControllerSettings

    def __init__(self, settings: ControllerSettings) -> None:
        self.servicer = ControllerServicer(settings.node, settings.controller.nodes)

    def bindings(self) -> Sequence[Binding]:
        return [Binding("dayu.v1.ControllerService", self.servicer)]
