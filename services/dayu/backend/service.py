"""gRPC adapter of the backend.

It keeps the catalogue of pipelines (validated DAGs). Streams come from the generators' configuration
(see configs/embedded.yaml); installing them at run time through the backend (starting a generator) and
the web UI are not built yet, so InstallStream validates and answers UNIMPLEMENTED."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydantic

from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.errors import FailedPrecondition, NotFound, ResourceExhausted, Unimplemented
from dayu.runtime.paging import page
from dayu.runtime.pipelines import load_pipelines
from dayu.runtime.server import Binding, Component
from dayu.runtime.validation import require_id, require_name, validate_pipeline, validate_stream_spec
from dayu.v1 import backend_pb2, backend_pb2_grpc, decision_pb2, types_pb2

# Pipelines in the catalogue: with requests of at most 64 KiB (runtime/limits.py), the whole list
# (ListPipelines) stays at 16 MiB, inside a reply.
MAX_PIPELINES = 256


class BackendSection(StrictModel):
    pipelines_file: Path | None = pydantic.Field(None, description="YAML file of the pipelines to start with")


class BackendSettings(ComponentSettings):
    backend: BackendSection = BackendSection()


class BackendServicer(backend_pb2_grpc.BackendServiceServicer):
    def __init__(self, pipelines: dict[str, types_pb2.Pipeline]) -> None:
        self.pipelines = pipelines
        self.streams: dict[str, decision_pb2.StreamSpec] = {}

    async def ListPipelines(
        self, request: backend_pb2.ListPipelinesRequest, context: object
    ) -> backend_pb2.ListPipelinesResponse:
        pipelines = [self.pipelines[n] for n in sorted(self.pipelines)]
        found, token = page(pipelines, lambda p: p.name, request.page_size, request.page_token)
        return backend_pb2.ListPipelinesResponse(pipelines=found, next_page_token=token)

    async def PutPipeline(
        self, request: backend_pb2.PutPipelineRequest, context: object
    ) -> backend_pb2.PutPipelineResponse:
        validate_pipeline(request.pipeline)
        replaced = request.pipeline.name in self.pipelines
        if not replaced and len(self.pipelines) >= MAX_PIPELINES:
            raise ResourceExhausted(f"the catalogue holds {MAX_PIPELINES} pipelines already; delete one first")
        self.pipelines[request.pipeline.name] = request.pipeline
        return backend_pb2.PutPipelineResponse(replaced=replaced)

    async def DeletePipeline(
        self, request: backend_pb2.DeletePipelineRequest, context: object
    ) -> backend_pb2.DeletePipelineResponse:
        require_name(request.name, "name")
        if request.name not in self.pipelines:
            raise NotFound(f"pipeline {request.name!r} does not exist")
        users = sorted(s.stream_id for s in self.streams.values() if s.pipeline.name == request.name)
        if users:
            raise FailedPrecondition(f"pipeline {request.name!r} is used by streams {users}")
        del self.pipelines[request.name]
        return backend_pb2.DeletePipelineResponse()

    async def ListInstalledStreams(
        self, request: backend_pb2.ListInstalledStreamsRequest, context: object
    ) -> backend_pb2.ListInstalledStreamsResponse:
        streams = [self.streams[s] for s in sorted(self.streams)]
        found, token = page(streams, lambda s: s.stream_id, request.page_size, request.page_token)
        return backend_pb2.ListInstalledStreamsResponse(streams=found, next_page_token=token)

    async def InstallStream(
        self, request: backend_pb2.InstallStreamRequest, context: object
    ) -> backend_pb2.InstallStreamResponse:
        validate_stream_spec(request.stream)
        raise Unimplemented(
            "installing streams (starting their generators) is not built yet; the stream was validated only"
        )

    async def UninstallStream(
        self, request: backend_pb2.UninstallStreamRequest, context: object
    ) -> backend_pb2.UninstallStreamResponse:
        require_id(request.stream_id, "stream_id")
        raise NotFound(f"stream {request.stream_id!r} is not installed")


class BackendComponent(Component):
    name = "backend"
    settings_class = BackendSettings

    def __init__(self, settings: BackendSettings) -> None:
        path = settings.backend.pipelines_file
        self.servicer = BackendServicer(load_pipelines(path) if path else {})

    def bindings(self) -> Sequence[Binding]:
        return [Binding("dayu.v1.BackendService", self.servicer)]
