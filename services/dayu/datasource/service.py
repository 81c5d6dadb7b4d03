"""gRPC adapter of the datasource: its sources from the configuration and those added at run time,
listed and streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pydantic

from dayu.datasource.core import DatasourceCore, PlayedSource
from dayu.datasource.sources import SOURCES
from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.errors import InvalidArgument
from dayu.runtime.paging import page
from dayu.runtime.server import Binding, Component
from dayu.runtime.tls import OPERATOR, require_component
from dayu.v1 import datasource_pb2, datasource_pb2_grpc, types_pb2

CODECS = {"jpeg": types_pb2.CODEC_JPEG, "raw": types_pb2.CODEC_RAW_BGR}


class SourceSection(StrictModel):
    source_id: str = pydantic.Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: str = pydantic.Field(description=f"source kind, from the source registry: {SOURCES.names()}")
    params: dict[str, Any] = pydantic.Field(default_factory=dict, description="the kind's parameters")
    codec: Literal["jpeg", "raw"] = pydantic.Field("jpeg", description="how frames travel: JPEG or raw BGR pixels")
    quality: int = pydantic.Field(90, ge=1, le=100, description="JPEG quality")


class DatasourceSection(StrictModel):
    sources: list[SourceSection] = pydantic.Field(default_factory=list)
    media_dirs: list[Path] = pydantic.Field(
        default_factory=list,
        description="folders whose files sources added at run time (AddSource) may read (video files, "
        "photos); none: such sources read no files. The sources above are not held to them",
    )


class DatasourceSettings(ComponentSettings):
    datasource: DatasourceSection = DatasourceSection()


def played_sources(section: DatasourceSection) -> list[PlayedSource]:
    """Builds every configured source through the registry; errors name the configuration field."""
    played: dict[str, PlayedSource] = {}
    for i, source in enumerate(section.sources):
        field = f"datasource.sources[{i}]"
        if source.source_id in played:
            raise InvalidArgument(f"{field}.source_id", f"a unique id, but {source.source_id!r} is used twice")
        built = SOURCES.create(
            source.kind,
            source.params,
            name_field=f"{field}.kind",
            params_field=f"{field}.params",
            field=f"{field}.params",
        )
        played[source.source_id] = PlayedSource(
            source.source_id, source.kind, built, CODECS[source.codec], source.quality
        )
    return list(played.values())


class DatasourceServicer(datasource_pb2_grpc.DatasourceServiceServicer):
    def __init__(self, core: DatasourceCore) -> None:
        self.core = core

    async def ListSources(
        self, request: datasource_pb2.ListSourcesRequest, context: object
    ) -> datasource_pb2.ListSourcesResponse:
        found, token = page(self.core.infos(), lambda s: s.source_id, request.page_size, request.page_token)
        return datasource_pb2.ListSourcesResponse(sources=found, next_page_token=token)

    async def AddSource(
        self, request: datasource_pb2.AddSourceRequest, context: object
    ) -> datasource_pb2.AddSourceResponse:
        # The backend adds the sources of its catalogue (PutSource); the operator's tools may too.
        require_component(context, ("backend", OPERATOR), "AddSource")
        added, info = await self.core.add(request.source)
        return datasource_pb2.AddSourceResponse(added=added, info=info)

    async def RemoveSource(
        self, request: datasource_pb2.RemoveSourceRequest, context: object
    ) -> datasource_pb2.RemoveSourceResponse:
        require_component(context, ("backend", OPERATOR), "RemoveSource")
        self.core.remove(request.source_id)
        return datasource_pb2.RemoveSourceResponse()

    async def StreamFrames(
        self, request: datasource_pb2.StreamFramesRequest, context: object
    ) -> AsyncIterator[datasource_pb2.StreamFramesResponse]:
        async for frame in self.core.stream(request.source_id, request.max_frames):
            yield datasource_pb2.StreamFramesResponse(frame=frame)


class DatasourceComponent(Component):
    name = "datasource"
    settings_class = DatasourceSettings

    def __init__(self, settings: DatasourceSettings) -> None:
        self.core = DatasourceCore(played_sources(settings.datasource), settings.datasource.media_dirs)

    def bindings(self) -> Sequence[Binding]:
        return [Binding("dayu.v1.DatasourceService", DatasourceServicer(self.core))]

    async def stop(self) -> None:
        self.core.stop()
