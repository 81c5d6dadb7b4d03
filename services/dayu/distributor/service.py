"""gRPC adapter of the distributor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pydantic

from dayu.distributor.core import DistributorCore
from dayu.distributor.store import RecordStore
from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.server import Binding, Component
from dayu.v1 import distributor_pb2, distributor_pb2_grpc, task_pb2


class DistributorSection(StrictModel):
    database: Path = pydantic.Field(Path("dayu-records.sqlite"), description="SQLite file of the records")


class DistributorSettings(ComponentSettings):
    distributor: DistributorSection = DistributorSection()


class DistributorServicer(distributor_pb2_grpc.DistributorServiceServicer):
    def __init__(self, core: DistributorCore) -> None:
        self.core = core

    async def Deliver(
        self, request: distributor_pb2.DeliverRequest, context: object
    ) -> distributor_pb2.DeliverResponse:
        cursor, duplicate = await self.core.deliver(request.task)
        return distributor_pb2.DeliverResponse(cursor=cursor, duplicate=duplicate)

    async def RecordDrop(
        self, request: distributor_pb2.RecordDropRequest, context: object
    ) -> distributor_pb2.RecordDropResponse:
        cursor, duplicate = await self.core.record_drop(request.task, request.reason)
        return distributor_pb2.RecordDropResponse(cursor=cursor, duplicate=duplicate)

    async def QueryRecords(
        self, request: distributor_pb2.QueryRecordsRequest, context: object
    ) -> distributor_pb2.QueryRecordsResponse:
        records, next_cursor = self.core.query(request.filter, request.limit)
        return distributor_pb2.QueryRecordsResponse(records=records, next_cursor=next_cursor)

    async def ExportRecords(
        self, request: distributor_pb2.ExportRecordsRequest, context: object
    ) -> AsyncIterator[distributor_pb2.ExportRecordsResponse]:
        for chunk in self.core.export(request.filter):
            yield distributor_pb2.ExportRecordsResponse(chunk=chunk)

    async def WatchRecords(
        self, request: distributor_pb2.WatchRecordsRequest, context: object
    ) -> AsyncIterator[task_pb2.TaskRecord]:
        async for record in self.core.watch(request.filter):
            yield record


class DistributorComponent(Component):
    name = "distributor"
    settings_class = DistributorSettings

    def __init__(self, settings: DistributorSettings) -> None:
        self.core = DistributorCore(RecordStore(settings.distributor.database))

    def bindings(self) -> Sequence[Binding]:
        return [Binding("dayu.v1.DistributorService", DistributorServicer(self.core))]

    async def stop(self) -> None:
        self.core.store.close()
