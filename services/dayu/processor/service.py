"""gRPC adapter of the processor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pydantic

from dayu.processor.core import ProcessorCore
from dayu.processor.deployment import ModelDeployer
from dayu.processor.kinds import PROCESSORS, CheckedRunner, ModelMismatch
from dayu.runtime.client import Channels
from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.errors import Unavailable
from dayu.runtime.server import Binding, Component
from dayu.runtime.tls import TlsSettings
from dayu.runtime.tracing import Tracing
from dayu.v1 import processor_pb2, processor_pb2_grpc


class DeployableSection(StrictModel):
    """A deployable processor (dayu.processor.deployment): where it reads its node's plan, how often."""

    scheduler: str = pydantic.Field(min_length=1, description="HOST:PORT of the scheduler whose plan it follows")
    poll_s: float = pydantic.Field(1.0, ge=0.1, le=60, description="seconds between two reads of the plan")
    drain_s: float = pydantic.Field(30.0, ge=0, description="an unload waits this long at most for its tasks")
    release_models: bool = pydantic.Field(
        True, description="unload its models from the backend; false: only stop taking tasks (a shared Triton)"
    )


class ProcessorSection(StrictModel):
    kind: str = pydantic.Field("noop", description="processor kind, from the processor registry")
    name: str = pydantic.Field(
        "", description="the name pipeline stages give it (their `processor`); empty: the kind's name"
    )
    params: dict[str, Any] = pydantic.Field(default_factory=dict, description="the kind's parameters")
    workers: int = pydantic.Field(1, ge=1, le=64)
    queue_capacity: int = pydantic.Field(64, ge=1)
    deployable: DeployableSection | None = pydantic.Field(
        None,
        description="set: the scheduler's deployment plan loads and unloads its models (it starts unloaded)",
    )


class ProcessorSettings(ComponentSettings):
    processor: ProcessorSection = ProcessorSection()


class ProcessorServicer(processor_pb2_grpc.ProcessorServiceServicer):
    def __init__(self, core: ProcessorCore, deployer: ModelDeployer | None = None) -> None:
        self.core = core
        self.deployer = deployer

    async def Process(self, request: processor_pb2.ProcessRequest, context: object) -> processor_pb2.ProcessResponse:
        task = await self.core.process(request.task, request.stage)
        # Only the stage that ran goes back: the caller holds the task (and its frames) already.
        stage = next(s for s in task.dag.stages if s.spec.name == request.stage)
        return processor_pb2.ProcessResponse(stage=stage)

    async def GetProcessorStatus(
        self, request: processor_pb2.GetProcessorStatusRequest, context: object
    ) -> processor_pb2.GetProcessorStatusResponse:
        core = self.core
        return processor_pb2.GetProcessorStatusResponse(
            node=core.node,
            kind=core.name,
            queue_length=core.queue_length,
            queue_capacity=core.queue_capacity,
            workers=core.workers,
            processed=core.processed,
            failed=core.failed,
            deployable=self.deployer is not None,
            unloaded=bool(core.unloaded_because),
            load_s=self.deployer.load_s if self.deployer else 0.0,
            model_bytes=self.deployer.model_bytes if self.deployer else 0,
        )


def _with_tls(params: dict[str, Any], tls: TlsSettings) -> dict[str, Any]:
    """A kind's parameters with the processor's certificate for Triton (the hop to Triton is mutual
    TLS as every other), unless they are not on Triton or name a certificate of their own."""
    if not tls.enabled or params.get("backend") != "triton" or params.get("triton", {}).get("tls"):
        return params
    return {**params, "triton": {**params.get("triton", {}), "tls": tls.model_dump()}}


class ProcessorComponent(Component):
    name = "processor"
    settings_class = ProcessorSettings

    def __init__(self, settings: ProcessorSettings) -> None:
        section = settings.processor
        runner = PROCESSORS.create(
            section.kind,
            _with_tls(section.params, settings.tls),
            name_field="processor.kind",
            params_field="processor.params",
        )
        self.tracing = Tracing(self.name, settings.node, settings.tracing, settings.tls)
        self.runner = runner
        self.core = ProcessorCore(
            settings.node, section.name or section.kind, runner, section.workers, section.queue_capacity, self.tracing
        )
        self.deployable = section.deployable
        self.deployer = None
        if section.deployable is not None:
            self.deployer = ModelDeployer(
                self.core, runner, release_models=section.deployable.release_models, drain_s=section.deployable.drain_s
            )
            self.channels = Channels(
                settings.server.max_message_bytes, settings.tls, component=self.name, node=settings.node
            )

    def bindings(self) -> Sequence[Binding]:
        return [Binding("dayu.v1.ProcessorService", ProcessorServicer(self.core, self.deployer))]

    async def start(self) -> None:
        if self.deployer is not None and self.deployable is not None:  # its models load when the plan says
            await self.core.start()
            self.background(self.deployer.follow, self.channels, self.deployable.scheduler, self.deployable.poll_s)
            return
        if isinstance(self.runner, CheckedRunner):  # its model and tensors: at start, not on the first task
            try:
                await self.runner.check()
            except (ModelMismatch, Unavailable) as error:  # the model does not fit, or Triton never came
                raise type(error)(f"processor {self.core.name!r} on {self.core.node}: {error}") from None
        await self.core.start()

    async def stop(self) -> None:
        await self.core.stop()
        if self.deployer is not None:
            await self.channels.close()
