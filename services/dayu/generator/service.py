"""gRPC adapter of the generator: the streams it runs, their ports to the mesh, and the servicer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Literal

import pydantic

from dayu.generator.core import GeneratorStreams, StreamRunner, check_decision
from dayu.generator.sequences import SequenceStore
from dayu.runtime.client import Channels, remote, remote_stream
from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.errors import InvalidArgument, NotFound
from dayu.runtime.logs import get_logger
from dayu.runtime.paging import MAX_PAGE_SIZE, every_page, page
from dayu.runtime.pipelines import load_pipelines
from dayu.runtime.sections import PolicySection
from dayu.runtime.server import Binding, Component
from dayu.runtime.tls import OPERATOR, require_component
from dayu.runtime.tracing import Tracing
from dayu.runtime.validation import require_id, validate_stream_spec
from dayu.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    datasource_pb2,
    datasource_pb2_grpc,
    decision_pb2,
    distributor_pb2,
    distributor_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
    types_pb2,
)

log = get_logger(__name__)
CODECS = {"jpeg": types_pb2.CODEC_JPEG, "h264": types_pb2.CODEC_H264, "raw": types_pb2.CODEC_RAW_BGR}


class ConfigurationSection(StrictModel):
    width: int = pydantic.Field(gt=0)
    height: int = pydantic.Field(gt=0)
    fps: float = pydantic.Field(gt=0)
    quality: int = pydantic.Field(80, ge=1, le=100)
    frames_per_segment: int = pydantic.Field(5, ge=1)
    codec: Literal["jpeg", "h264", "raw"] = "jpeg"

    def message(self) -> types_pb2.Configuration:
        return types_pb2.Configuration(
            resolution=types_pb2.Resolution(width=self.width, height=self.height),
            fps=self.fps,
            quality=self.quality,
            frames_per_segment=self.frames_per_segment,
            codec=CODECS[self.codec],
        )


class StreamSection(StrictModel):
    stream_id: str
    source_id: str
    pipeline: str = pydantic.Field(description="name of a pipeline in pipelines_file")
    latency_budget_s: float = pydantic.Field(gt=0)
    max_configuration: ConfigurationSection
    policy: PolicySection = PolicySection()

    def spec(self, node: str, pipelines: dict[str, types_pb2.Pipeline], field: str) -> decision_pb2.StreamSpec:
        if self.pipeline not in pipelines:
            raise InvalidArgument(
                f"{field}.pipeline", f"one of the pipelines {sorted(pipelines)}, got {self.pipeline!r}"
            )
        spec = decision_pb2.StreamSpec(
            stream_id=self.stream_id,
            source_id=self.source_id,
            node=node,
            pipeline=pipelines[self.pipeline],
            latency_budget_s=self.latency_budget_s,
            max_configuration=self.max_configuration.message(),
            policy=self.policy.spec(),
        )
        validate_stream_spec(spec, field)
        return spec


class GeneratorSection(StrictModel):
    datasource: str = pydantic.Field("", description="address of the datasource")
    controller: str = pydantic.Field("", description="address of this node's controller")
    scheduler: str = pydantic.Field("", description="address of the scheduler")
    distributor: str = pydantic.Field("", description="address of the distributor (records refused tasks)")
    pipelines_file: Path | None = None
    streams: list[StreamSection] = pydantic.Field(default_factory=list)
    sequences: Path | None = pydantic.Field(
        None, description="SQLite file keeping each stream's next sequence number across restarts (none: in memory)"
    )


class GeneratorSettings(ComponentSettings):
    generator: GeneratorSection = GeneratorSection()


class GrpcStreamPorts:
    def __init__(self, section: GeneratorSection, channels: Channels) -> None:
        self.section, self.channels = section, channels

    async def source(self, source_id: str) -> datasource_pb2.SourceInfo:
        stub = self.channels.stub(datasource_pb2_grpc.DatasourceServiceStub, self.section.datasource)
        request = datasource_pb2.ListSourcesRequest(page_size=MAX_PAGE_SIZE)
        sources, _ = await every_page(  # every page: a datasource may play many sources
            lambda request, timeout: remote(stub.ListSources(request, timeout=timeout)), request, "sources", 10
        )
        for source in sources:
            if source.source_id == source_id:
                return source
        raise NotFound(f"source {source_id!r} is not played by the datasource at {self.section.datasource}")

    async def frames(self, source_id: str) -> AsyncIterator[datasource_pb2.Frame]:
        stub = self.channels.stub(datasource_pb2_grpc.DatasourceServiceStub, self.section.datasource)
        async for reply in remote_stream(stub.StreamFrames(datasource_pb2.StreamFramesRequest(source_id=source_id))):
            yield reply.frame

    async def register(self, spec: decision_pb2.StreamSpec) -> decision_pb2.Decision:
        stub = self.channels.stub(scheduler_pb2_grpc.SchedulerServiceStub, self.section.scheduler)
        reply = await remote(stub.RegisterStream(scheduler_pb2.RegisterStreamRequest(stream=spec), timeout=10))
        return reply.decision

    async def decisions(self, stream_id: str) -> AsyncIterator[decision_pb2.Decision]:
        stub = self.channels.stub(scheduler_pb2_grpc.SchedulerServiceStub, self.section.scheduler)
        request = scheduler_pb2.WatchDecisionsRequest(stream_id=stream_id)
        async for reply in remote_stream(stub.WatchDecisions(request)):
            yield reply.decision

    async def submit(self, task: task_pb2.Task) -> None:
        stub = self.channels.stub(controller_pb2_grpc.ControllerServiceStub, self.section.controller)
        # One attempt: the stream tries again, with the same task id, for as long as the task can wait.
        await remote(stub.SubmitTask(controller_pb2.SubmitTaskRequest(task=task), timeout=10))

    async def record_drop(self, task: task_pb2.Task, reason: str) -> None:
        stub = self.channels.stub(distributor_pb2_grpc.DistributorServiceStub, self.section.distributor)
        await remote(stub.RecordDrop(distributor_pb2.RecordDropRequest(task=task, reason=reason), timeout=10))


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    def __init__(self, streams: GeneratorStreams) -> None:
        self.streams = streams

    async def ListStreams(
        self, request: generator_pb2.ListStreamsRequest, context: object
    ) -> generator_pb2.ListStreamsResponse:
        found, token = page(self.streams.statuses(), lambda s: s.spec.stream_id, request.page_size, request.page_token)
        return generator_pb2.ListStreamsResponse(streams=found, next_page_token=token)

    async def ApplyDecision(
        self, request: generator_pb2.ApplyDecisionRequest, context: object
    ) -> generator_pb2.ApplyDecisionResponse:
        require_component(context, ("scheduler", OPERATOR), "ApplyDecision")
        decision = request.decision
        require_id(decision.stream_id, "decision.stream_id")
        runner = self.streams.runner(decision.stream_id)
        check_decision(runner.spec, decision)
        applied = runner.apply(decision)
        return generator_pb2.ApplyDecisionResponse(applied=applied, current_version=runner.decision.version)

    async def StartStream(
        self, request: generator_pb2.StartStreamRequest, context: object
    ) -> generator_pb2.StartStreamResponse:
        # The backend installs streams (InstallStream); the operator's tools may too.
        require_component(context, ("backend", OPERATOR), "StartStream")
        return generator_pb2.StartStreamResponse(started=await self.streams.start(request.stream))

    async def StopStream(
        self, request: generator_pb2.StopStreamRequest, context: object
    ) -> generator_pb2.StopStreamResponse:
        # Answers once the stream's tasks reached the controller or were recorded dropped, so the caller
        # may settle or unregister the stream right after.
        require_component(context, ("backend", OPERATOR), "StopStream")
        return generator_pb2.StopStreamResponse(tasks_generated=await self.streams.stop(request.stream_id))


class GeneratorComponent(Component):
    name = "generator"
    settings_class = GeneratorSettings

    def __init__(self, settings: GeneratorSettings) -> None:
        section = settings.generator
        self.grace_s = settings.server.shutdown_grace_s
        self.channels = Channels(
            settings.server.max_message_bytes, settings.tls, component=self.name, node=settings.node
        )
        pipelines = load_pipelines(section.pipelines_file) if section.pipelines_file else {}
        ports = GrpcStreamPorts(section, self.channels)
        self.tracing = Tracing(self.name, settings.node, settings.tracing, settings.tls)
        self.sequences = SequenceStore(section.sequences)
        self.streams = GeneratorStreams(settings.node, ports, self._launch, self.tracing, self.sequences, self.grace_s)
        seen: set[str] = set()
        for i, stream in enumerate(section.streams):
            spec = stream.spec(settings.node, pipelines, f"generator.streams[{i}]")
            if spec.stream_id in seen:
                raise InvalidArgument(f"generator.streams[{i}].stream_id", f"a unique id, {spec.stream_id!r} is twice")
            seen.add(spec.stream_id)
            self.streams.add_settings(spec)

    def _launch(self, runner: StreamRunner) -> asyncio.Task[None]:
        return self.background(runner.run, name=f"stream {runner.spec.stream_id}")

    def bindings(self) -> Sequence[Binding]:
        return [Binding("dayu.v1.GeneratorService", GeneratorServicer(self.streams))]

    async def start(self) -> None:
        self.streams.launch_settings()

    async def stop(self) -> None:
        """Capturing has stopped (the server cancelled it): let the tasks already made reach the
        controller, those of streams stopped at run time whose drain ran out of time too."""
        await self.streams.drain_all(self.grace_s)
        await self.channels.close()
        self.sequences.close()
