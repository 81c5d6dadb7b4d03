"""The backend's calls to the mesh over gRPC (BackendCore's MeshPorts)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc_health.v1 import health_pb2, health_pb2_grpc

from dayu.backend.core import CALL_TIMEOUT_S, Member, MeshDirectory
from dayu.runtime.client import Channels, remote, remote_stream
from dayu.runtime.errors import RemoteError
from dayu.runtime.paging import MAX_PAGE_SIZE, every_page
from dayu.v1 import (
    datasource_pb2,
    datasource_pb2_grpc,
    decision_pb2,
    distributor_pb2,
    distributor_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    resources_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)

TIMEOUT_S = 10.0  # calls that change something: a generator stopping a stream drains its tasks first
# Calls that change something wait, within their deadline, for a component that is still starting
# (or whose channel is backing off after a failed connection) rather than failing at once.
WAIT = {"wait_for_ready": True}


class GrpcMeshPorts:
    def __init__(self, mesh: MeshDirectory, channels: Channels, admin_token: str | None) -> None:
        self.mesh, self.channels = mesh, channels
        # The scheduler's admin calls (SetPolicy, UnregisterStream) take a token, as an operator's do.
        self._admin = (("authorization", f"Bearer {admin_token}"),) if admin_token else ()

    def _scheduler(self) -> scheduler_pb2_grpc.SchedulerServiceStub:
        return self.channels.stub(scheduler_pb2_grpc.SchedulerServiceStub, self.mesh.address("scheduler"))

    def _distributor(self) -> distributor_pb2_grpc.DistributorServiceStub:
        return self.channels.stub(distributor_pb2_grpc.DistributorServiceStub, self.mesh.address("distributor"))

    def _generator(self, node: str) -> generator_pb2_grpc.GeneratorServiceStub:
        return self.channels.stub(generator_pb2_grpc.GeneratorServiceStub, self.mesh.address("generator", node))

    async def register(self, spec: decision_pb2.StreamSpec) -> decision_pb2.Decision:
        request = scheduler_pb2.RegisterStreamRequest(stream=spec)
        return (await remote(self._scheduler().RegisterStream(request, timeout=TIMEOUT_S, **WAIT))).decision

    async def unregister(self, stream_id: str) -> bool:
        request = scheduler_pb2.UnregisterStreamRequest(stream_id=stream_id)
        reply = await remote(
            self._scheduler().UnregisterStream(request, timeout=TIMEOUT_S, metadata=self._admin, **WAIT)
        )
        return reply.unregistered

    async def set_policy(self, stream_id: str, policy: decision_pb2.PolicySpec) -> decision_pb2.Decision:
        request = scheduler_pb2.SetPolicyRequest(stream_id=stream_id, policy=policy)
        return (
            await remote(self._scheduler().SetPolicy(request, timeout=TIMEOUT_S, metadata=self._admin, **WAIT))
        ).decision

    async def scheduler_stats(self) -> scheduler_pb2.GetSchedulerStatsResponse:
        stub = self._scheduler()
        request = scheduler_pb2.GetSchedulerStatsRequest(page_size=MAX_PAGE_SIZE)
        streams, last = await every_page(
            lambda r, timeout: remote(stub.GetSchedulerStats(r, timeout=timeout)), request, "streams", CALL_TIMEOUT_S
        )
        reply = scheduler_pb2.GetSchedulerStatsResponse()
        reply.CopyFrom(last)
        del reply.streams[:]
        reply.streams.extend(streams)
        return reply

    async def task_trace(self, root_id: str) -> list[scheduler_pb2.TaskSpan]:
        request = scheduler_pb2.GetTaskTraceRequest(root_id=root_id)
        return list((await remote(self._scheduler().GetTaskTrace(request, timeout=CALL_TIMEOUT_S))).spans)

    async def start_stream(self, spec: decision_pb2.StreamSpec) -> bool:
        request = generator_pb2.StartStreamRequest(stream=spec)
        return (await remote(self._generator(spec.node).StartStream(request, timeout=TIMEOUT_S, **WAIT))).started

    async def stop_stream(self, node: str, stream_id: str) -> int:
        request = generator_pb2.StopStreamRequest(stream_id=stream_id)
        # Its tasks in flight reach their controller first: up to the generator's shutdown grace.
        reply = await remote(self._generator(node).StopStream(request, timeout=3 * TIMEOUT_S, **WAIT))
        return reply.tasks_generated

    async def generator_streams(self, node: str) -> list[generator_pb2.StreamStatus]:
        stub = self._generator(node)
        request = generator_pb2.ListStreamsRequest(page_size=MAX_PAGE_SIZE)
        streams, _ = await every_page(
            lambda r, timeout: remote(stub.ListStreams(r, timeout=timeout)), request, "streams", CALL_TIMEOUT_S
        )
        return list(streams)

    async def sources(self) -> list[datasource_pb2.SourceInfo]:
        stub = self._datasource()
        request = datasource_pb2.ListSourcesRequest(page_size=MAX_PAGE_SIZE)
        sources, _ = await every_page(
            lambda r, timeout: remote(stub.ListSources(r, timeout=timeout)), request, "sources", CALL_TIMEOUT_S
        )
        return list(sources)

    def _datasource(self) -> datasource_pb2_grpc.DatasourceServiceStub:
        return self.channels.stub(datasource_pb2_grpc.DatasourceServiceStub, self.mesh.address("datasource"))

    async def add_source(self, spec: datasource_pb2.SourceSpec) -> datasource_pb2.SourceInfo:
        request = datasource_pb2.AddSourceRequest(source=spec)
        return (await remote(self._datasource().AddSource(request, timeout=TIMEOUT_S, **WAIT))).info

    async def remove_source(self, source_id: str) -> None:
        request = datasource_pb2.RemoveSourceRequest(source_id=source_id)
        await remote(self._datasource().RemoveSource(request, timeout=TIMEOUT_S, **WAIT))

    async def resources(self, node: str) -> resources_pb2.NodeResources:
        stub = self.channels.stub(monitor_pb2_grpc.MonitorServiceStub, self.mesh.address("monitor", node))
        return (await remote(stub.GetResources(monitor_pb2.GetResourcesRequest(), timeout=CALL_TIMEOUT_S))).resources

    async def healthy(self, member: Member) -> None:
        stub = self.channels.stub(health_pb2_grpc.HealthStub, member.address)
        reply = await remote(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S))
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise RemoteError("UNAVAILABLE", health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def latest_records(self, stream_id: str, limit: int) -> list[task_pb2.TaskRecord]:
        request = distributor_pb2.QueryRecordsRequest(
            filter=distributor_pb2.RecordFilter(stream_id=stream_id), limit=limit, newest_first=True
        )
        return list((await remote(self._distributor().QueryRecords(request, timeout=CALL_TIMEOUT_S))).records)

    async def watch_records(self, stream_id: str, after_cursor: int) -> AsyncIterator[task_pb2.TaskRecord]:
        where = distributor_pb2.RecordFilter(stream_id=stream_id, after_cursor=after_cursor)
        async for reply in remote_stream(
            self._distributor().WatchRecords(distributor_pb2.WatchRecordsRequest(filter=where))
        ):
            yield reply.record

    async def latest_task(self, stream_id: str) -> task_pb2.TaskRecord:
        request = distributor_pb2.GetLatestTaskRequest(stream_id=stream_id)
        return (await remote(self._distributor().GetLatestTask(request, timeout=CALL_TIMEOUT_S))).record

    async def export_records(self, where: distributor_pb2.RecordFilter) -> AsyncIterator[bytes]:
        request = distributor_pb2.ExportRecordsRequest(filter=where)
        async for reply in remote_stream(self._distributor().ExportRecords(request)):
            yield reply.chunk
