"""gRPC adapter of the distributor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pydantic

from dayu.distributor.core import DistributorCore, GoldenSampler, golden_task
from dayu.distributor.store import RecordStore
from dayu.runtime.client import Channels
from dayu.runtime.config import ComponentSettings, StrictModel
from dayu.runtime.logs import get_logger
from dayu.runtime.server import Binding, Component
from dayu.runtime.tls import OPERATOR, require_component
from dayu.runtime.tracing import Tracing
from dayu.v1 import (
    distributor_pb2,
    distributor_pb2_grpc,
    processor_pb2,
    processor_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
    types_pb2,
)

log = get_logger(__name__)
FEEDBACK_BATCH = 256  # records in one ReportFeedback call at most
FEEDBACK_BATCH_BYTES = 1 << 20  # and this many bytes, unless one record is more (the scheduler takes 4 MiB)
FEEDBACK_LOG_EVERY = 1000  # while feedback keeps failing with one status, a warning every this many


class GoldenSection(StrictModel):
    """Accuracy of tasks without ground truth, against the golden configuration (full resolution)."""

    processors: dict[str, str] = pydantic.Field(
        default_factory=dict,
        description="detector kind -> address of a processor of that kind set up for the golden configuration "
        "(for example text_detector with max_side 4096, so frames are not scaled down); none: no golden accuracy",
    )
    every: int = pydantic.Field(10, ge=1, description="measure one in this many tasks of a stream")
    # Well within the 30 s a controller gives a delivery, which waits for it.
    timeout_s: float = pydantic.Field(10.0, gt=0, description="longest wait for the golden detections of a task")


class ProcessorGolden:
    """Golden detections from a processor of the stage's kind, over the processor contract."""

    def __init__(self, processors: dict[str, str], channels: Channels) -> None:
        self.processors, self.channels = processors, channels

    async def detect(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> list[types_pb2.FrameDetections]:
        address = self.processors.get(stage.spec.processor)
        if address is None:
            raise LookupError(f"no golden processor for kind {stage.spec.processor!r}")
        request = processor_pb2.ProcessRequest(
            task=await asyncio.to_thread(golden_task, task, stage), stage=stage.spec.name
        )
        reply = await self.channels.stub(processor_pb2_grpc.ProcessorServiceStub, address).Process(request)
        # The stage that ran (a processor of an older release sends the whole task instead).
        (done,) = [reply.stage] if reply.HasField("stage") else reply.task.dag.stages
        if done.state != task_pb2.STAGE_STATE_DONE:
            raise RuntimeError(f"golden {stage.spec.processor} failed: {done.error}")
        return list(done.results)


class DistributorSection(StrictModel):
    database: Path = pydantic.Field(Path("dayu-records.sqlite"), description="SQLite file of the records")
    scheduler: str = pydantic.Field("", description="address of the scheduler that gets each record as feedback")
    feedback_queue: int = pydantic.Field(1000, ge=1, description="records waiting for the scheduler at most")
    gap_timeout_s: float = pydantic.Field(
        30.0,
        gt=0,
        description="a stream's sequence still missing this long after a later one was stored is recorded "
        "as dropped (lost)",
    )
    golden: GoldenSection = GoldenSection()


class FeedbackSender:
    """Passes stored records on to the scheduler's feedback call, in order, without holding up
    delivery: a bounded queue, dropping feedback (never records) when the scheduler falls behind."""

    def __init__(self, address: str, channels: Channels, capacity: int) -> None:
        self.stub = channels.stub(scheduler_pb2_grpc.SchedulerServiceStub, address)
        self.queue: asyncio.Queue[task_pb2.TaskRecord] = asyncio.Queue(capacity)
        self.lost = 0
        self._failing = ""  # the status of the last failure while they go on: logged when it changes

    def offer(self, record: task_pb2.TaskRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            self.lost += 1

    async def send(self) -> None:
        """Runs for as long as the distributor does. What was stored while a call was under way goes
        in the next call, all together: a call per record costs the scheduler more than the record."""
        carried: task_pb2.TaskRecord | None = None  # taken for a batch it would have made too large
        while True:
            batch = [carried if carried is not None else await self.queue.get()]
            carried, size = None, batch[0].ByteSize()
            while not self.queue.empty() and len(batch) < FEEDBACK_BATCH:
                record = self.queue.get_nowait()
                if size + record.ByteSize() > FEEDBACK_BATCH_BYTES:
                    carried = record  # the first of the next call
                    break
                batch.append(record)
                size += record.ByteSize()
            try:
                request = scheduler_pb2.ReportFeedbackRequest(records=batch)
                reply = await self.stub.ReportFeedback(request, timeout=10)
                if reply.unknown_stream:  # stopped streams' last records, or streams never registered
                    self._lose(reply.unknown_stream, "unknown stream")
                else:
                    self._failing = ""
            except grpc.aio.AioRpcError as error:
                self._lose(len(batch), error.code().name)

    def _lose(self, records: int, why: str) -> None:
        # Not a line per record: a stream the scheduler does not know fails every one of its records.
        if why != self._failing or (self.lost + records) // FEEDBACK_LOG_EVERY > self.lost // FEEDBACK_LOG_EVERY:
            log.warning("feedback not delivered", why=why, lost=self.lost + records)
        self.lost += records
        self._failing = why


class DistributorSettings(ComponentSettings):
    distributor: DistributorSection = DistributorSection()


class DistributorServicer(distributor_pb2_grpc.DistributorServiceServicer):
    def __init__(self, core: DistributorCore) -> None:
        self.core = core

    async def Deliver(
        self, request: distributor_pb2.DeliverRequest, context: object
    ) -> distributor_pb2.DeliverResponse:
        require_component(context, ("controller", OPERATOR), "Deliver")
        cursor, duplicate = await self.core.deliver(request.task)
        return distributor_pb2.DeliverResponse(cursor=cursor, duplicate=duplicate)

    async def RecordDrop(
        self, request: distributor_pb2.RecordDropRequest, context: object
    ) -> distributor_pb2.RecordDropResponse:
        require_component(context, ("controller", "generator", OPERATOR), "RecordDrop")
        cursor, duplicate = await self.core.record_drop(request.task, request.reason)
        return distributor_pb2.RecordDropResponse(cursor=cursor, duplicate=duplicate)

    async def QueryRecords(
        self, request: distributor_pb2.QueryRecordsRequest, context: object
    ) -> distributor_pb2.QueryRecordsResponse:
        records, next_cursor = await self.core.query(request.filter, request.limit, request.newest_first)
        return distributor_pb2.QueryRecordsResponse(records=records, next_cursor=next_cursor)

    async def ExportRecords(
        self, request: distributor_pb2.ExportRecordsRequest, context: object
    ) -> AsyncIterator[distributor_pb2.ExportRecordsResponse]:
        async for chunk in self.core.export(request.filter):
            yield distributor_pb2.ExportRecordsResponse(chunk=chunk)

    async def WatchRecords(
        self, request: distributor_pb2.WatchRecordsRequest, context: object
    ) -> AsyncIterator[distributor_pb2.WatchRecordsResponse]:
        async for record in self.core.watch(request.filter):
            yield distributor_pb2.WatchRecordsResponse(record=record)

    async def SettleStreams(
        self, request: distributor_pb2.SettleStreamsRequest, context: object
    ) -> distributor_pb2.SettleStreamsResponse:
        require_component(context, (OPERATOR,), "SettleStreams")
        return distributor_pb2.SettleStreamsResponse(recorded=await self.core.settle(dict(request.generated)))

    async def GetLatestTask(
        self, request: distributor_pb2.GetLatestTaskRequest, context: object
    ) -> distributor_pb2.GetLatestTaskResponse:
        # Frames are the cameras' pictures: for the backend's latest frame and the operator, not every member.
        require_component(context, ("backend", OPERATOR), "GetLatestTask")
        return distributor_pb2.GetLatestTaskResponse(record=self.core.latest_task(request.stream_id))


class DistributorComponent(Component):
    name = "distributor"
    settings_class = DistributorSettings

    def __init__(self, settings: DistributorSettings) -> None:
        section = settings.distributor
        self.channels = Channels(
            settings.server.max_message_bytes, settings.tls, component=self.name, node=settings.node
        )
        self.feedback = (
            FeedbackSender(section.scheduler, self.channels, section.feedback_queue) if section.scheduler else None
        )
        self.tracing = Tracing(self.name, settings.node, settings.tracing, settings.tls)
        golden = section.golden
        sampler = (
            GoldenSampler(
                ProcessorGolden(golden.processors, self.channels), golden.every, golden.timeout_s, self.tracing
            )
            if golden.processors
            else None
        )
        self.core = DistributorCore(
            RecordStore(section.database),
            self.feedback.offer if self.feedback else None,
            sampler,
            self.tracing,
            section.gap_timeout_s,
        )

    def bindings(self) -> Sequence[Binding]:
        return [Binding("dayu.v1.DistributorService", DistributorServicer(self.core))]

    async def start(self) -> None:
        await self.core.start()
        self.background(self.core.check_gaps_forever)  # supervised: logged and restarted on errors
        if self.feedback:
            self.background(self.feedback.send)

    async def stop(self) -> None:
        await self.channels.close()
        await self.core.close()
