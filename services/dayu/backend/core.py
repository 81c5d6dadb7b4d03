"""The backend without gRPC: the operator's catalogue of pipelines, the sources and streams added through it,
and the views of the mesh the console shows (system status, results, frames, timelines, exports).

What should run is in the store (SQLite); what runs is what the generators report. Installing a
stream stores it, registers it with the scheduler (which checks its policy) and starts it on its
node's generator; a reconcile pass, every few seconds and at start, starts what should run and does
not (a generator restarted), stops what runs and should not (an uninstall its generator missed), and
gives the scheduler back a policy it lost (a scheduler restarted). One lock orders installs,
uninstalls and passes, so a pass never sees half an install."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf import json_format

from dayu.backend.store import INSTALLED, REMOVING, BackendStore
from dayu.runtime.clock import timestamp
from dayu.runtime.errors import (
    AlreadyExists,
    DayuError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RemoteError,
    ResourceExhausted,
    shown,
)
from dayu.runtime.logs import get_logger
from dayu.runtime.validation import require_id, require_name, require_uuid, validate_pipeline, validate_stream_spec
from dayu.v1 import (
    backend_pb2,
    datasource_pb2,
    decision_pb2,
    distributor_pb2,
    generator_pb2,
    resources_pb2,
    scheduler_pb2,
    task_pb2,
    types_pb2,
)

log = get_logger(__name__)

# Pipelines in the catalogue: with requests of at most 64 KiB (runtime/limits.py), the whole list
# (ListPipelines) stays at 16 MiB, inside a reply.
MAX_PIPELINES = 256
MAX_STREAMS = 256  # streams installed through the backend (the scheduler takes 1024 in all)
MAX_SOURCES = 256  # sources added through the backend (as many as a datasource plays)
MAX_RESULTS = 1000  # records in one ListResults
DEFAULT_RESULTS = 100
STATUS_FRESH_S = 1.0  # a status this young is answered again: watchers share one read of the mesh
CALL_TIMEOUT_S = 3.0  # the status's reads of each component; a component slower than this counts as down
MIN_WATCH_INTERVAL_S = 0.5


@dataclass(frozen=True)
class Member:
    """A component of the mesh and where it answers."""

    component: str
    node: str
    address: str
    role: str = ""


@dataclass(frozen=True)
class MeshDirectory:
    """What the backend knows of the mesh from its settings (the mesh file, through the plan)."""

    cloud_node: str
    nodes: dict[str, list[str]]  # node -> processor names it runs
    processor_kinds: dict[str, str]  # processor name -> kind
    members: list[Member]
    policies: list[str] = field(default_factory=list)

    def address(self, component: str, node: str | None = None) -> str:
        node = node or self.cloud_node
        for member in self.members:
            if member.component == component and member.node == node:
                return member.address
        raise NotFound(f"no {component} on node {node!r} in this mesh")

    def has(self, component: str) -> bool:
        return any(m.component == component for m in self.members)

    def generator_nodes(self) -> list[str]:
        return sorted(m.node for m in self.members if m.component == "generator")

    def processor_names(self) -> set[str]:
        return {name for names in self.nodes.values() for name in names}


class MeshPorts(Protocol):
    """The calls the backend makes to the mesh; failures raise RemoteError."""

    async def register(self, spec: decision_pb2.StreamSpec) -> decision_pb2.Decision: ...
    async def unregister(self, stream_id: str) -> bool: ...
    async def set_policy(self, stream_id: str, policy: decision_pb2.PolicySpec) -> decision_pb2.Decision: ...
    async def scheduler_stats(self) -> scheduler_pb2.GetSchedulerStatsResponse:
        """Every stream's statistics (every page)."""

    async def task_trace(self, root_id: str) -> list[scheduler_pb2.TaskSpan]: ...
    async def start_stream(self, spec: decision_pb2.StreamSpec) -> bool: ...
    async def stop_stream(self, node: str, stream_id: str) -> int: ...
    async def generator_streams(self, node: str) -> list[generator_pb2.StreamStatus]: ...
    async def sources(self) -> list[datasource_pb2.SourceInfo]: ...
    async def add_source(self, spec: datasource_pb2.SourceSpec) -> datasource_pb2.SourceInfo: ...
    async def remove_source(self, source_id: str) -> None: ...
    async def resources(self, node: str) -> resources_pb2.NodeResources: ...
    async def healthy(self, member: Member) -> None:
        """Returns when the member answers SERVING; raises RemoteError otherwise."""

    async def latest_records(self, stream_id: str, limit: int) -> list[task_pb2.TaskRecord]:
        """The stream's latest records, newest first."""

    def watch_records(self, stream_id: str, after_cursor: int) -> AsyncIterator[task_pb2.TaskRecord]: ...
    async def latest_task(self, stream_id: str) -> task_pb2.TaskRecord: ...
    def export_records(self, where: distributor_pb2.RecordFilter) -> AsyncIterator[bytes]:
        """Gzipped JSON lines, in chunks."""


class Relayed(DayuError):
    """Another component's refusal, passed on with its own status and where it came from."""

    def __init__(self, error: RemoteError, what: str) -> None:
        super().__init__(f"{what}: {error.details}")
        self.status = error.code if error.code in _RELAYED else "UNAVAILABLE"


_RELAYED = {
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "FAILED_PRECONDITION",
    "RESOURCE_EXHAUSTED",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
}


def without_frames(record: task_pb2.TaskRecord) -> task_pb2.TaskRecord:
    if record.task.segment.frames or record.task.segment.stream:
        record = task_pb2.TaskRecord.FromString(record.SerializeToString())
        del record.task.segment.frames[:]
        record.task.segment.stream = b""
    return record


class BackendCore:
    def __init__(self, store: BackendStore, mesh: MeshDirectory, ports: MeshPorts) -> None:
        self.store, self.mesh, self.ports = store, mesh, ports
        self._lock = asyncio.Lock()
        self._running: dict[str, list[generator_pb2.StreamStatus]] = {}  # node -> its streams, at the last pass
        self._status: tuple[float, backend_pb2.GetSystemStatusResponse] | None = None
        self._status_read: asyncio.Task[backend_pb2.GetSystemStatusResponse] | None = None

    # -- the catalogue ----------------------------------------------------------------------------

    async def pipelines(self) -> list[types_pb2.Pipeline]:
        return list((await asyncio.to_thread(self.store.pipelines)).values())

    def check_pipeline(self, pipeline: types_pb2.Pipeline, where: str = "pipeline") -> None:
        """The DAG's first problem, then stages on processors the mesh does not run."""
        validate_pipeline(pipeline, where, processors=self.mesh.processor_names() or None)  # None: no mesh known

    def violations(self, pipeline: types_pb2.Pipeline) -> list[backend_pb2.FieldViolation]:
        try:
            self.check_pipeline(pipeline)
        except InvalidArgument as error:
            return [backend_pb2.FieldViolation(field=error.field, description=error.expected)]
        return []

    async def put_pipeline(self, pipeline: types_pb2.Pipeline) -> bool:
        self.check_pipeline(pipeline)
        async with self._lock:
            known = await asyncio.to_thread(self.store.pipelines)
            replaced = pipeline.name in known
            if not replaced and len(known) >= MAX_PIPELINES:
                raise ResourceExhausted(f"the catalogue holds {MAX_PIPELINES} pipelines already; delete one first")
            await asyncio.to_thread(self.store.put_pipeline, pipeline)
        return replaced

    async def delete_pipeline(self, name: str) -> None:
        require_name(name, "name")
        async with self._lock:
            if name not in await asyncio.to_thread(self.store.pipelines):
                raise NotFound(f"pipeline {name!r} does not exist")
            if users := sorted(i for i, spec in (await self._installed()).items() if spec.pipeline.name == name):
                raise FailedPrecondition(f"pipeline {name!r} is used by streams {users}; uninstall them first")
            await asyncio.to_thread(self.store.delete_pipeline, name)

    # -- sources ----------------------------------------------------------------------------------

    async def stored_sources(self) -> list[datasource_pb2.SourceSpec]:
        return list((await asyncio.to_thread(self.store.sources)).values())

    async def _users(self, source_id: str) -> list[str]:
        return sorted(i for i, spec in (await self._installed()).items() if spec.source_id == source_id)

    async def put_source(self, spec: datasource_pb2.SourceSpec) -> tuple[bool, datasource_pb2.SourceInfo]:
        """Adds or replaces a source; the datasource checks its kind, parameters and files."""
        require_id(spec.source_id, "source.source_id")
        if not spec.kind:
            raise InvalidArgument("source.kind", "a source kind (synthetic, file, photos, camera)")
        async with self._lock:
            stored = await asyncio.to_thread(self.store.sources)
            replaced = spec.source_id in stored
            if replaced and stored[spec.source_id] != spec and (users := await self._users(spec.source_id)):
                raise FailedPrecondition(f"source {spec.source_id!r} is used by streams {users}; uninstall them first")
            if not replaced and len(stored) >= MAX_SOURCES:
                raise ResourceExhausted(f"{MAX_SOURCES} sources are stored already; delete one first")
            try:
                info = await self.ports.add_source(spec)
            except RemoteError as error:
                raise Relayed(error, "the datasource refused the source") from None
            await asyncio.to_thread(self.store.put_source, spec)
        return replaced, info

    async def delete_source(self, source_id: str) -> None:
        require_id(source_id, "source_id")
        async with self._lock:
            if source_id not in await asyncio.to_thread(self.store.sources):
                raise NotFound(f"source {source_id!r} was not added through the backend")
            if users := await self._users(source_id):
                raise FailedPrecondition(f"source {source_id!r} is used by streams {users}; uninstall them first")
            try:
                await self.ports.remove_source(source_id)
            except RemoteError as error:
                if error.code != "NOT_FOUND":
                    raise Relayed(error, "the datasource did not remove the source") from None
            await asyncio.to_thread(self.store.delete_source, source_id)

    async def _reconcile_sources(self) -> None:
        """The datasource plays the stored sources (it forgets those added at run time when it
        restarts), and no other source added at run time."""
        if not self.mesh.has("datasource"):
            return
        try:
            played = {s.source_id: s for s in await self.ports.sources()}
        except RemoteError as error:
            log.debug("datasource away", code=error.code)
            return
        stored = await asyncio.to_thread(self.store.sources)
        for source_id, spec in stored.items():
            if source_id not in played:
                try:
                    await self.ports.add_source(spec)
                    log.info("source given back to the datasource", source_id=source_id)
                except RemoteError as error:
                    log.warning("source not given back", source_id=source_id, code=error.code, error=error.details)
        for source_id, info in played.items():
            if info.added and source_id not in stored:
                try:
                    await self.ports.remove_source(source_id)
                    log.warning("removed a source nobody added", source_id=source_id)
                except RemoteError as error:
                    log.warning("source not removed", source_id=source_id, code=error.code)

    # -- streams ----------------------------------------------------------------------------------

    def _settings_streams(self) -> dict[str, decision_pb2.StreamSpec]:
        """Streams of the generators' own settings (the mesh file), as the last pass saw them."""
        return {
            s.spec.stream_id: s.spec
            for statuses in self._running.values()
            for s in statuses
            if s.origin == generator_pb2.STREAM_ORIGIN_SETTINGS
        }

    async def _installed(self) -> dict[str, decision_pb2.StreamSpec]:
        """The streams installed through the backend (not those being removed), by id."""
        stored = await asyncio.to_thread(self.store.streams)
        return {i: spec for i, (spec, state) in stored.items() if state == INSTALLED}

    async def streams(self) -> list[decision_pb2.StreamSpec]:
        """Installed streams and the mesh file's, in id order."""
        found = await self._installed()
        found.update(self._settings_streams())
        return [found[i] for i in sorted(found)]

    def _check_stream(self, spec: decision_pb2.StreamSpec) -> None:
        validate_stream_spec(spec, "stream")
        generators = self.mesh.generator_nodes()
        if spec.node not in generators:
            raise InvalidArgument("stream.node", f"a node with a generator {generators}, got {shown(spec.node)}")
        self.check_pipeline(spec.pipeline, "stream.pipeline")
        if spec.policy.name and self.mesh.policies and spec.policy.name not in self.mesh.policies:
            raise InvalidArgument(
                "stream.policy.name", f"one of the policies {self.mesh.policies}, got {shown(spec.policy.name)}"
            )

    async def install(self, spec: decision_pb2.StreamSpec) -> bool:
        """Installs the stream; True when the same stream was installed already (nothing changed)."""
        self._check_stream(spec)
        async with self._lock:
            stored = await asyncio.to_thread(self.store.streams)
            if spec.stream_id in stored:
                if stored[spec.stream_id] == (spec, INSTALLED):
                    return True
                raise AlreadyExists(f"stream {spec.stream_id!r} is installed with another spec; uninstall it first")
            if spec.stream_id in self._settings_streams():
                raise AlreadyExists(f"stream {spec.stream_id!r} comes from the mesh file")
            if len(stored) >= MAX_STREAMS:
                raise ResourceExhausted(f"{MAX_STREAMS} streams are installed already; uninstall one first")
            try:
                await self.ports.register(spec)  # the scheduler checks the policy and its parameters
            except RemoteError as error:
                raise Relayed(error, "the scheduler refused the stream") from None
            await asyncio.to_thread(self.store.put_stream, spec)
            try:
                await self.ports.start_stream(spec)
            except RemoteError as error:
                await asyncio.to_thread(self.store.delete_stream, spec.stream_id)
                await self._forget_at_scheduler(spec.stream_id)
                raise Relayed(error, f"the generator on {spec.node} did not start it") from None
        log.info("stream installed", stream_id=spec.stream_id, node=spec.node, pipeline=spec.pipeline.name)
        return False

    async def uninstall(self, stream_id: str) -> bool:
        """Uninstalls the stream; False when its generator could not be told yet (a later pass will)."""
        require_id(stream_id, "stream_id")
        async with self._lock:
            spec = (await self._installed()).get(stream_id)
            if spec is None:
                if stream_id in self._settings_streams():
                    raise FailedPrecondition(f"stream {stream_id!r} comes from the mesh file; remove it there")
                raise NotFound(f"stream {stream_id!r} is not installed")
            await asyncio.to_thread(self.store.put_stream, spec, REMOVING)
            stopped = await self._stop(spec)
        log.info("stream uninstalled", stream_id=stream_id, stopped=stopped)
        return stopped

    async def _stop(self, spec: decision_pb2.StreamSpec) -> bool:
        """Stops a stream being removed, then forgets it; False (the row kept) when its generator is away."""
        try:
            await self.ports.stop_stream(spec.node, spec.stream_id)
        except RemoteError as error:
            if error.code != "NOT_FOUND":
                log.warning(
                    "generator away; the stream stops on a later pass", stream_id=spec.stream_id, code=error.code
                )
                return False
        await self._forget_at_scheduler(spec.stream_id)
        await asyncio.to_thread(self.store.delete_stream, spec.stream_id)
        return True

    async def _forget_at_scheduler(self, stream_id: str) -> None:
        try:
            await self.ports.unregister(stream_id)
        except RemoteError as error:  # it stays in the scheduler's statistics, harmless
            log.warning("scheduler did not unregister the stream", stream_id=stream_id, code=error.code)

    async def set_policy(self, stream_id: str, policy: decision_pb2.PolicySpec) -> decision_pb2.Decision:
        require_id(stream_id, "stream_id")
        if not policy.name:
            raise InvalidArgument("policy.name", "the name of a policy")
        if self.mesh.policies and policy.name not in self.mesh.policies:
            raise InvalidArgument("policy.name", f"one of the policies {self.mesh.policies}, got {shown(policy.name)}")
        async with self._lock:
            spec = (await self._installed()).get(stream_id)
            if spec is None and stream_id not in self._settings_streams():
                raise NotFound(f"stream {stream_id!r} is not installed")
            try:
                decision = await self.ports.set_policy(stream_id, policy)
            except RemoteError as error:
                raise Relayed(error, "the scheduler refused the policy") from None
            if spec is not None:  # kept for the stream's next start, and for a restarted scheduler
                spec.policy.CopyFrom(policy)
                await asyncio.to_thread(self.store.put_stream, spec)
        return decision

    # -- reconciling ------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """One pass: generators run what the store says, and the scheduler has each stream's policy."""
        async with self._lock:
            await self._reconcile_sources()  # before the streams, which read them
            running: dict[str, list[generator_pb2.StreamStatus]] = {}
            for node in self.mesh.generator_nodes():
                try:
                    running[node] = await self.ports.generator_streams(node)
                except RemoteError as error:
                    log.debug("generator away", node=node, code=error.code)
            self._running = running
            stored = await asyncio.to_thread(self.store.streams)
            for stream_id, (spec, state) in stored.items():
                if spec.node not in running:
                    continue  # its generator is away: nothing known, nothing done
                runs = any(s.spec.stream_id == stream_id for s in running[spec.node])
                if state == REMOVING:
                    await self._stop(spec)
                elif not runs:
                    await self._restart(spec)
            for node, statuses in running.items():
                for status in statuses:
                    stream_id = status.spec.stream_id
                    if status.origin == generator_pb2.STREAM_ORIGIN_STARTED and stream_id not in stored:
                        log.warning("stopping a stream nobody installed", stream_id=stream_id, node=node)
                        await self._stop(status.spec)
            await self._restore_policies(await self._installed())

    async def _restart(self, spec: decision_pb2.StreamSpec) -> None:
        try:
            await self.ports.start_stream(spec)
            log.info("stream started again", stream_id=spec.stream_id, node=spec.node)
        except RemoteError as error:
            log.warning("stream not started again", stream_id=spec.stream_id, code=error.code, error=error.details)

    async def _restore_policies(self, installed: dict[str, decision_pb2.StreamSpec]) -> None:
        """A restarted scheduler knows a stream by its generator's registration, with the policy it was
        installed with: the policy set since then is given back."""
        if not installed:
            return
        try:
            stats = await self.ports.scheduler_stats()
        except RemoteError:
            return
        for stream in stats.streams:
            spec = installed.get(stream.stream_id)
            if spec is not None and spec.policy.name and stream.policy != spec.policy.name:
                try:
                    await self.ports.set_policy(stream.stream_id, spec.policy)
                    log.info("policy given back to the scheduler", stream_id=stream.stream_id, policy=spec.policy.name)
                except RemoteError as error:
                    log.warning("policy not given back", stream_id=stream.stream_id, code=error.code)

    # -- what the mesh is and does ----------------------------------------------------------------

    async def describe(self) -> backend_pb2.DescribeMeshResponse:
        mesh = self.mesh
        generators = set(mesh.generator_nodes())
        reply = backend_pb2.DescribeMeshResponse(policies=mesh.policies)
        for node in sorted(mesh.nodes, key=lambda n: (n != mesh.cloud_node, n)):
            reply.nodes.add(
                name=node, cloud=node == mesh.cloud_node, generator=node in generators, processors=mesh.nodes[node]
            )
        types = _stage_types(await self.pipelines())
        for name in sorted(mesh.processor_names()):
            data_in, data_out = types.get(name, (types_pb2.DATA_TYPE_UNSPECIFIED, types_pb2.DATA_TYPE_UNSPECIFIED))
            reply.processors.add(
                name=name,
                kind=mesh.processor_kinds.get(name, name),
                input=data_in,
                output=data_out,
                nodes=sorted(n for n, names in mesh.nodes.items() if name in names),
            )
        try:
            for source in await self.ports.sources():
                reply.sources.add(
                    source_id=source.source_id,
                    resolution=source.resolution,
                    fps=source.fps,
                    kind=source.kind,
                    added=source.added,
                )
        except RemoteError as error:
            raise Relayed(error, "the datasource did not list its sources") from None
        return reply

    async def status(self) -> backend_pb2.GetSystemStatusResponse:
        """The system status, read at most once a second whoever asks (one read in flight at a time)."""
        now = time.monotonic()
        if self._status is not None and now - self._status[0] < STATUS_FRESH_S:
            return self._status[1]
        if self._status_read is None or self._status_read.done():
            self._status_read = asyncio.create_task(self._read_status())
        status = await asyncio.shield(self._status_read)
        self._status = (time.monotonic(), status)
        return status

    async def _read_status(self) -> backend_pb2.GetSystemStatusResponse:
        mesh = self.mesh
        monitors = sorted(m.node for m in mesh.members if m.component == "monitor")
        nodes, health, stats, streams = await asyncio.gather(
            asyncio.gather(*(self._resources(node) for node in monitors)),
            asyncio.gather(*(self._health(member) for member in mesh.members)),
            _within(self.ports.scheduler_stats()),
            asyncio.gather(*(_within(self.ports.generator_streams(n)) for n in mesh.generator_nodes())),
        )
        reply = backend_pb2.GetSystemStatusResponse(nodes=nodes, components=health, read_at=timestamp())
        if isinstance(stats, scheduler_pb2.GetSchedulerStatsResponse):
            reply.scheduling.extend(stats.streams)
            reply.traced_links.extend(stats.traced_links)
        for found in streams:
            if isinstance(found, list):
                reply.streams.extend(found)
        return reply

    async def _resources(self, node: str) -> resources_pb2.NodeResources:
        found = await _within(self.ports.resources(node))
        return (
            found
            if isinstance(found, resources_pb2.NodeResources)
            else resources_pb2.NodeResources(node=node, stale=True)
        )

    async def _health(self, member: Member) -> backend_pb2.ComponentHealth:
        health = backend_pb2.ComponentHealth(
            component=member.component, node=member.node, role=member.role, address=member.address
        )
        outcome = await _within(self.ports.healthy(member))
        health.up = not isinstance(outcome, RemoteError)
        if isinstance(outcome, RemoteError):
            health.detail = f"{outcome.code}: {outcome.details}"[:200]
        return health

    async def watch_status(self, interval_s: float) -> AsyncIterator[backend_pb2.GetSystemStatusResponse]:
        interval = interval_s or 2.0
        if interval < MIN_WATCH_INTERVAL_S:
            raise InvalidArgument("interval_s", f"at least {MIN_WATCH_INTERVAL_S} s, or 0 for 2 s; got {interval_s}")
        while True:
            yield await self.status()
            await asyncio.sleep(interval)

    # -- results ----------------------------------------------------------------------------------

    async def results(self, stream_id: str, limit: int) -> list[task_pb2.TaskRecord]:
        require_id(stream_id, "stream_id")
        if limit > MAX_RESULTS:
            raise InvalidArgument("limit", f"at most {MAX_RESULTS}, got {limit}")
        try:
            return [without_frames(r) for r in await self.ports.latest_records(stream_id, limit or DEFAULT_RESULTS)]
        except RemoteError as error:
            raise Relayed(error, "the distributor") from None

    async def watch_results(self, stream_id: str, after_cursor: int) -> AsyncIterator[task_pb2.TaskRecord]:
        if stream_id:
            require_id(stream_id, "stream_id")
        try:
            if after_cursor == 0:  # from the next one stored: after the newest there is
                newest = await self.ports.latest_records(stream_id, 1)
                after_cursor = newest[0].cursor if newest else 0
            async for record in self.ports.watch_records(stream_id, after_cursor):
                yield without_frames(record)
        except RemoteError as error:
            raise Relayed(error, "the distributor") from None

    async def latest_frame(self, stream_id: str) -> backend_pb2.GetLatestFrameResponse:
        require_id(stream_id, "stream_id")
        try:
            record = await self.ports.latest_task(stream_id)
        except RemoteError as error:
            if error.code == "NOT_FOUND":
                raise NotFound(f"no task of stream {stream_id!r} with its frames was delivered yet") from None
            raise Relayed(error, "the distributor") from None
        try:
            return await asyncio.to_thread(_frame_of, record)
        except InvalidArgument as error:  # the stored frames, not the caller's request, are at fault
            raise FailedPrecondition(f"the latest frames of stream {stream_id!r} do not decode: {error}") from None

    async def timeline(self, root_id: str) -> list[scheduler_pb2.TaskSpan]:
        require_uuid(root_id, "root_id")
        try:
            return await self.ports.task_trace(root_id)
        except RemoteError as error:
            raise Relayed(error, "the scheduler's traces") from None

    async def export(self, request: backend_pb2.ExportResultsRequest) -> AsyncIterator[bytes]:
        if request.stream_id:
            require_id(request.stream_id, "stream_id")
        where = distributor_pb2.RecordFilter(stream_id=request.stream_id)
        for name in ("since", "until"):
            if request.HasField(name):
                getattr(where, name).CopyFrom(getattr(request, name))
        as_csv = request.format == backend_pb2.EXPORT_FORMAT_CSV
        unzip = zlib.decompressobj(wbits=31)  # the distributor's chunks are one gzip stream
        pending = b""
        if as_csv:
            yield (",".join(CSV_COLUMNS) + "\r\n").encode()
        try:
            async for chunk in self.ports.export_records(where):
                lines = pending + unzip.decompress(chunk)
                complete, _, pending = lines.rpartition(b"\n")
                if complete:
                    yield await asyncio.to_thread(_csv_rows, complete) if as_csv else complete + b"\n"
        except RemoteError as error:
            raise Relayed(error, "the distributor's export") from None
        rest = pending + unzip.flush()
        if rest.strip():
            yield await asyncio.to_thread(_csv_rows, rest) if as_csv else rest + b"\n"


async def _within(call: object, timeout_s: float = CALL_TIMEOUT_S) -> object:
    """The call's result, or the RemoteError it raised or its timeout (as DEADLINE_EXCEEDED)."""
    try:
        return await asyncio.wait_for(call, timeout_s)  # type: ignore[arg-type]
    except RemoteError as error:
        return error
    except TimeoutError:
        return RemoteError("DEADLINE_EXCEEDED", f"no answer within {timeout_s:g} s")


def _stage_types(pipelines: Iterable[types_pb2.Pipeline]) -> dict[str, tuple[int, int]]:
    """What each processor takes and gives, as the catalogue's pipelines use it (the first use)."""
    found: dict[str, tuple[int, int]] = {}
    for pipeline in pipelines:
        for stage in pipeline.stages:
            found.setdefault(stage.processor, (stage.input_type, stage.output_type))
    return found


def _frame_of(record: task_pb2.TaskRecord) -> backend_pb2.GetLatestFrameResponse:
    """The last frame of the record's segment as JPEG, with each stage's detections on it."""
    import cv2  # the codecs only when a frame is asked for

    from dayu.media.codecs import decode_segment

    segment = record.task.segment
    frames = decode_segment(segment)
    if not frames:
        raise NotFound(f"the latest task of stream {record.task.stream_id!r} kept no frames")
    image = frames[-1]
    index = segment.frame_indices[len(frames) - 1] if len(segment.frame_indices) >= len(frames) else 0
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise FailedPrecondition("the latest frame does not encode as JPEG")
    reply = backend_pb2.GetLatestFrameResponse(
        jpeg=jpeg.tobytes(),
        resolution=types_pb2.Resolution(width=image.shape[1], height=image.shape[0]),
        frame_index=index,
        record=without_frames(record),
    )
    for stage in record.task.dag.stages:
        detections = [d for frame in stage.results if frame.frame_index == index for d in frame.detections]
        reply.stages.add(stage=stage.spec.name, detections=detections)
    return reply


CSV_COLUMNS = (
    "stream_id",
    "sequence",
    "task_id",
    "outcome",
    "reason",
    "stored_at",
    "latency_s",
    "accuracy",
    "width",
    "height",
    "fps",
    "quality",
    "frames_per_segment",
    "codec",
    "decision_version",
    "detections",
    "labels",
)


def _csv_rows(lines: bytes) -> bytes:
    """CSV rows of JSON-lines records (the distributor's export), one per record."""
    out = io.StringIO()
    writer = csv.writer(out)
    for line in lines.splitlines():
        if not line.strip():
            continue
        record = json_format.Parse(line, task_pb2.TaskRecord(), ignore_unknown_fields=True)
        task, config = record.task, record.task.configuration
        labels: dict[str, int] = {}
        count = 0
        for stage in task.dag.stages:
            for frame in stage.results:
                for detection in frame.detections:
                    count += 1
                    if detection.label:
                        labels[detection.label] = labels.get(detection.label, 0) + 1
        writer.writerow(
            [
                task.stream_id,
                task.sequence,
                task.task_id,
                task_pb2.TaskOutcome.Name(record.outcome).removeprefix("TASK_OUTCOME_").lower(),
                record.reason,
                record.stored_at.ToJsonString() if record.HasField("stored_at") else "",
                f"{record.latency_s:.6f}",
                f"{record.accuracy:.6f}" if record.HasField("accuracy") else "",
                config.resolution.width,
                config.resolution.height,
                f"{config.fps:g}",
                config.quality,
                config.frames_per_segment,
                types_pb2.Codec.Name(config.codec).removeprefix("CODEC_").lower(),
                task.decision_version,
                count,
                json.dumps(labels, sort_keys=True) if labels else "",
            ]
        )
    return out.getvalue().encode()
