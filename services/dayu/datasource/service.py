"""gRPC adapter of the datasource.

Today it lists its configured sources; playing them (StreamFrames) comes with the data plane."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pydantic

from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.server import Binding, Component
from dayu.v1 import datasource_pb2, datasource_pb2_grpc, types_pb2


class SourceSection(StrictModel):
    source_id: str = pydantic.Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["synthetic", "file", "rtsp", "http_mjpeg", "usb"]
    uri: str = ""
    fps: float = pydantic.Field(30.0, gt=0)
    width: int = pydantic.Field(1280, gt=0)
    height: int = pydantic.Field(720, gt=0)
    cycle: bool = True

    def info(self) -> datasource_pb2.SourceInfo:
        return datasource_pb2.SourceInfo(
            source_id=self.source_id,
            kind=self.kind,
            uri=self.uri,
            fps=self.fps,
            resolution=types_pb2.Resolution(width=self.width, height=self.height),
            cycle=self.cycle,
            has_ground_truth=self.kind == "synthetic",
        )


class DatasourceSection(StrictModel):
    sources: list[SourceSection] = pydantic.Field(default_factory=list)


class DatasourceSettings(ComponentSettings):
    datasource: DatasourceSection = DatasourceSection()


class DatasourceServicer(datasource_pb2_grpc.DatasourceServiceServicer):
    def __init__(self, sources: list[SourceSection]) -> None:
        self.sources = [source.info() for source in sources]

    async def ListSources(
        self, request: datasource_pb2.ListSourcesRequest, context: object
    ) -> datasource_pb2.ListSourcesResponse:
        return datasource_pb2.ListSourcesResponse(sources=self.sources)


class DatasourceComponent(Component):
    name = "datasource"
    settings_class = DatasourceSettings

    def __init__(self, settings: DatasourceSettings) -> None:
        self.servicer = DatasourceServicer(settings.datasource.sources)

    def bindings(self) -> Sequence[Binding]:
        return [Binding("dayu.v1.DatasourceService", self.servicer)]
