"""gRPC adapter of the backend, its settings and its component: the servicer over BackendCore, the
reconcile loop, and the console (dayu.backend.http) on its own HTTP port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pydantic

from dayu.backend.core import BackendCore, Member, MeshDirectory
from dayu.backend.ports import GrpcMeshPorts
from dayu.backend.store import BackendStore
from dayu.runtime.auth import Role, Tokens, guard
from dayu.runtime.client import Channels
from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.logs import get_logger
from dayu.runtime.paging import page
from dayu.runtime.pipelines import load_pipelines
from dayu.runtime.server import Binding, Component
from dayu.v1 import backend_pb2, backend_pb2_grpc

log = get_logger(__name__)
SERVICE = "dayu.v1.BackendService"

# The role each call needs; a call not named here needs an admin token (dayu.runtime.auth.guard).
ROLES: dict[str, Role | None] = {
    f"{SERVICE}.{method}": Role.READ
    for method in (
        "ListPipelines",
        "ListInstalledStreams",
        "GetSystemStatus",
        "DescribeMesh",
        "ValidatePipeline",
        "WatchSystemStatus",
        "ListResults",
        "WatchResults",
        "GetLatestFrame",
        "GetTaskTimeline",
        "ExportResults",
        "ListStoredSources",
    )
}


class MemberSection(StrictModel):
    component: str
    node: str
    address: str
    role: str = ""


class BackendSection(StrictModel):
    pipelines_file: Path | None = pydantic.Field(None, description="YAML file of the pipelines a new store starts with")
    database: Path | None = pydantic.Field(
        None, description="SQLite file of the pipelines and installed streams (none: in memory, lost at exit)"
    )
    console_listen: str = pydantic.Field(
        "", description="HOST:PORT of the console (UI and Connect HTTP/JSON API); empty: no console"
    )
    reconcile_every_s: float = pydantic.Field(5.0, gt=0, description="seconds between two reconcile passes")
    cloud_node: str = "cloud"
    nodes: dict[str, list[str]] = pydantic.Field(default_factory=dict, description="node -> processors it runs")
    processor_kinds: dict[str, str] = pydantic.Field(default_factory=dict, description="processor -> its kind")
    members: list[MemberSection] = pydantic.Field(default_factory=list, description="every component and its address")
    policies: list[str] = pydantic.Field(default_factory=list, description="names of the scheduler's policies")


class BackendSettings(ComponentSettings):
    backend: BackendSection = BackendSection()


class BackendServicer(backend_pb2_grpc.BackendServiceServicer):
    """Each call is the core's; tokens are checked before (the binding's guard)."""

    def __init__(self, core: BackendCore) -> None:
        self.core = core

    async def ListPipelines(
        self, request: backend_pb2.ListPipelinesRequest, context: object
    ) -> backend_pb2.ListPipelinesResponse:
        found, token = page(await self.core.pipelines(), lambda p: p.name, request.page_size, request.page_token)
        return backend_pb2.ListPipelinesResponse(pipelines=found, next_page_token=token)

    async def PutPipeline(
        self, request: backend_pb2.PutPipelineRequest, context: object
    ) -> backend_pb2.PutPipelineResponse:
        return backend_pb2.PutPipelineResponse(replaced=await self.core.put_pipeline(request.pipeline))

    async def DeletePipeline(
        self, request: backend_pb2.DeletePipelineRequest, context: object
    ) -> backend_pb2.DeletePipelineResponse:
        await self.core.delete_pipeline(request.name)
        return backend_pb2.DeletePipelineResponse()

    async def ValidatePipeline(
        self, request: backend_pb2.ValidatePipelineRequest, context: object
    ) -> backend_pb2.ValidatePipelineResponse:
        return backend_pb2.ValidatePipelineResponse(violations=self.core.violations(request.pipeline))

    async def ListInstalledStreams(
        self, request: backend_pb2.ListInstalledStreamsRequest, context: object
    ) -> backend_pb2.ListInstalledStreamsResponse:
        streams = await self.core.streams()
        found, token = page(streams, lambda s: s.stream_id, request.page_size, request.page_token)
        return backend_pb2.ListInstalledStreamsResponse(streams=found, next_page_token=token)

    async def InstallStream(
        self, request: backend_pb2.InstallStreamRequest, context: object
    ) -> backend_pb2.InstallStreamResponse:
        return backend_pb2.InstallStreamResponse(already_installed=await self.core.install(request.stream))

    async def UninstallStream(
        self, request: backend_pb2.UninstallStreamRequest, context: object
    ) -> backend_pb2.UninstallStreamResponse:
        return backend_pb2.UninstallStreamResponse(stopped=await self.core.uninstall(request.stream_id))

    async def SetStreamPolicy(
        self, request: backend_pb2.SetStreamPolicyRequest, context: object
    ) -> backend_pb2.SetStreamPolicyResponse:
        return backend_pb2.SetStreamPolicyResponse(
            decision=await self.core.set_policy(request.stream_id, request.policy)
        )

    async def GetSystemStatus(
        self, request: backend_pb2.GetSystemStatusRequest, context: object
    ) -> backend_pb2.GetSystemStatusResponse:
        return await self.core.status()

    async def WatchSystemStatus(
        self, request: backend_pb2.WatchSystemStatusRequest, context: object
    ) -> AsyncIterator[backend_pb2.WatchSystemStatusResponse]:
        async for status in self.core.watch_status(request.interval_s):
            yield backend_pb2.WatchSystemStatusResponse(status=status)

    async def DescribeMesh(
        self, request: backend_pb2.DescribeMeshRequest, context: object
    ) -> backend_pb2.DescribeMeshResponse:
        return await self.core.describe()

    async def ListResults(
        self, request: backend_pb2.ListResultsRequest, context: object
    ) -> backend_pb2.ListResultsResponse:
        return backend_pb2.ListResultsResponse(records=await self.core.results(request.stream_id, request.limit))

    async def WatchResults(
        self, request: backend_pb2.WatchResultsRequest, context: object
    ) -> AsyncIterator[backend_pb2.WatchResultsResponse]:
        async for record in self.core.watch_results(request.stream_id, request.after_cursor):
            yield backend_pb2.WatchResultsResponse(record=record)

    async def GetLatestFrame(
        self, request: backend_pb2.GetLatestFrameRequest, context: object
    ) -> backend_pb2.GetLatestFrameResponse:
        return await self.core.latest_frame(request.stream_id)

    async def GetTaskTimeline(
        self, request: backend_pb2.GetTaskTimelineRequest, context: object
    ) -> backend_pb2.GetTaskTimelineResponse:
        return backend_pb2.GetTaskTimelineResponse(spans=await self.core.timeline(request.root_id))

    async def ExportResults(
        self, request: backend_pb2.ExportResultsRequest, context: object
    ) -> AsyncIterator[backend_pb2.ExportResultsResponse]:
        async for chunk in self.core.export(request):
            yield backend_pb2.ExportResultsResponse(chunk=chunk)

    async def PutSource(self, request: backend_pb2.PutSourceRequest, context: object) -> backend_pb2.PutSourceResponse:
        replaced, info = await self.core.put_source(request.source)
        return backend_pb2.PutSourceResponse(replaced=replaced, info=info)

    async def DeleteSource(
        self, request: backend_pb2.DeleteSourceRequest, context: object
    ) -> backend_pb2.DeleteSourceResponse:
        await self.core.delete_source(request.source_id)
        return backend_pb2.DeleteSourceResponse()

    async def ListStoredSources(
        self, request: backend_pb2.ListStoredSourcesRequest, context: object
    ) -> backend_pb2.ListStoredSourcesResponse:
        sources = await self.core.stored_sources()
        found, token = page(sources, lambda s: s.source_id, request.page_size, request.page_token)
        return backend_pb2.ListStoredSourcesResponse(sources=found, next_page_token=token)


def mesh_directory(section: BackendSection) -> MeshDirectory:
    members = [Member(m.component, m.node, m.address, m.role) for m in section.members]
    return MeshDirectory(section.cloud_node, section.nodes, section.processor_kinds, members, section.policies)


class BackendComponent(Component):
    name = "backend"
    settings_class = BackendSettings

    def __init__(self, settings: BackendSettings) -> None:
        section = settings.backend
        self.section = section
        self.tokens = Tokens.load(settings.auth)
        if not self.tokens:
            raise ValueError(
                "backend: no tokens; give auth.tokens_file (YAML `admin:` and `read:` lists) or DAYU_ADMIN_TOKEN"
            )
        seed = load_pipelines(section.pipelines_file).values() if section.pipelines_file else ()
        self.store = BackendStore(section.database, seed)
        self.channels = Channels(
            settings.server.max_message_bytes, settings.tls, component=self.name, node=settings.node
        )
        mesh = mesh_directory(section)
        self.core = BackendCore(self.store, mesh, GrpcMeshPorts(mesh, self.channels, self.tokens.admin_token()))
        self.servicer = BackendServicer(self.core)
        self.guard = guard(self.tokens, ROLES)
        self.console_url = ""  # http://HOST:PORT/ once the console listens
        self._console: object | None = None

    def bindings(self) -> Sequence[Binding]:
        return [Binding(SERVICE, self.servicer, self.guard)]

    async def start(self) -> None:
        self.background(self._reconcile_forever, name="reconcile")
        if self.section.console_listen:
            from dayu.backend.http import Console  # Starlette and uvicorn only where a console is served

            console = Console(self.servicer, self.guard, self.section.console_listen)
            self.console_url = await console.start()
            self._console = console
            log.info("console listening", url=self.console_url)

    async def _reconcile_forever(self) -> None:
        while True:
            await self.core.reconcile()
            await asyncio.sleep(self.section.reconcile_every_s)

    async def stop(self) -> None:
        if self._console is not None:
            await self._console.stop()  # type: ignore[attr-defined]
        await self.channels.close()
        self.store.close()
