"""gRPC adapter of the processor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pydantic

from dayu.processor.core import ProcessorCore
from dayu.processor.kinds import PROCESSORS
from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.server import Binding, Component
from dayu.runtime.tracing import Tracing
from dayu.v1 import processor_pb2, processor_pb2_grpc


class ProcessorSection(StrictModel):
    kind: str = pydantic.Field("noop", description="processor kind, from the processor registry")
    params: dict[str, Any] = pydantic.Field(default_factory=dict, description="the kind's parameters")
    workers: int = pydantic.Field(1, ge=1, le=64)
    queue_capacity: int = pydantic.Field(64, ge=1)


class ProcessorSettings(ComponentSettings):
    processor: ProcessorSection = ProcessorSection()


class ProcessorServicer(processor_pb2_grpc.ProcessorServiceServicer):
    def __init__(self, core: ProcessorCore) -> None:
        self.core = core

    async def Process(self, request: processor_pb2.ProcessRequest, context: object) -> processor_pb2.ProcessResponse:
        return processor_pb2.ProcessResponse(task=await self.core.process(request.task, request.stage))

    async def GetProcessorStatus(
        self, request: processor_pb2.GetProcessorStatusRequest, context: object
    ) -> processor_pb2.GetProcessorStatusResponse:
        core = self.core
        return processor_pb2.GetProcessorStatusResponse(
            node=core.node,
            kind=core.kind,
            queue_length=core.queue_length,
            queue_capacity=core.queue_capacity,
            workers=core.workers,
            processed=core.processed,
            failed=core.failed,
        )


class ProcessorComponent(Component):
    name = "processor"
    settings_class = ProcessorSettings

    def __init__(self, settings: ProcessorSettings) -> None:
        section = settings.processor
        runner = PROCESSORS.create(
            section.kind, section.params, name_field="processor.kind", params_field="processor.params"
        )
        self.tracing = Tracing(self.name, settings.node, settings.tracing)
        self.core = ProcessorCore(
            settings.node, section.kind, runner, section.workers, section.queue_capacity, self.tracing
        )

    def bindings(self) -> Sequence[Binding]:
        return [Binding("dayu.v1.ProcessorService", ProcessorServicer(self.core))]

    async def start(self) -> None:
        await self.core.start()

    async def stop(self) -> None:
        await self.core.stop()
