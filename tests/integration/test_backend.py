"""The backend on a real embedded mesh: tokens on every call (gRPC and the console's Connect HTTP API),
bad input refused naming the field, a stream installed at run time that runs, shows its results,
frame, timeline and export, changes policy and uninstalls with every task accounted for, and a
backend (and a generator) restarted without losing anything."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf.message import Message

from dayu.mesh.embedded import Mesh
from dayu.mesh.model import CONFIGS, MeshConfig
from dayu.runtime.server import ComponentServer
from dayu.v1 import (
    backend_pb2,
    backend_pb2_grpc,
    datasource_pb2,
    decision_pb2,
    distributor_pb2,
    distributor_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    types_pb2,
)

FRAMES, BOXES = types_pb2.DATA_TYPE_FRAMES, types_pb2.DATA_TYPE_BOXES
SERVICE = backend_pb2.DESCRIPTOR.services_by_name["BackendService"]


def noop_pipeline(name: str = "quick") -> types_pb2.Pipeline:
    return types_pb2.Pipeline(
        name=name, stages=[types_pb2.StageSpec(name="detect", processor="noop", input_type=FRAMES, output_type=BOXES)]
    )


def stream_spec(stream_id: str = "cam-9", **changes: Any) -> decision_pb2.StreamSpec:
    spec = decision_pb2.StreamSpec(
        stream_id=stream_id,
        source_id="street",
        node="edge-1",
        pipeline=noop_pipeline(),
        latency_budget_s=2.0,
        max_configuration=types_pb2.Configuration(
            resolution=types_pb2.Resolution(width=320, height=180),
            fps=5,
            quality=80,
            frames_per_segment=1,
            codec=types_pb2.CODEC_JPEG,
        ),
        policy=decision_pb2.PolicySpec(name="fixed"),
    )
    for name, value in changes.items():
        if isinstance(value, Message):
            getattr(spec, name).CopyFrom(value)
        else:
            setattr(spec, name, value)
    return spec


def light_config(folder: Path) -> MeshConfig:
    """A cloud and an edge node with noop processors, one synthetic camera, no stream in the file."""
    return MeshConfig.model_validate(
        {
            "cloud_node": "cloud",
            "nodes": {"cloud": {"processors": ["noop"]}, "edge-1": {"processors": ["noop"]}},
            "links": [{"between": ["edge-1", "cloud"], "bandwidth_mbps": 50}],
            "pipelines_file": str(CONFIGS / "pipelines.yaml"),
            "sources": [
                {"source_id": "street", "kind": "synthetic", "params": {"width": 320, "height": 180, "fps": 5}}
            ],
            "streams": [],
        }
    )


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    mesh = Mesh(light_config(tmp_path), tmp_path, console_port=0)
    await mesh.start()
    try:
        yield mesh
    finally:
        await mesh.abort()


def tokens(mesh: Mesh, role: str = "admin") -> tuple[tuple[str, str], ...]:
    token = (mesh.tokens.admin if role == "admin" else mesh.tokens.read)[0]
    return (("authorization", f"Bearer {token}"),)


def backend(mesh: Mesh, channel: grpc.aio.Channel | None = None) -> backend_pb2_grpc.BackendServiceStub:
    return backend_pb2_grpc.BackendServiceStub(channel or grpc.aio.insecure_channel(mesh.addresses["backend"]))


def post(url: str, method: str, body: dict[str, Any], token: str | None = None) -> tuple[int, dict[str, Any]]:
    """A Connect call over HTTP: a unary one as plain JSON (what curl or a browser sends); a server
    stream enveloped, its error (if any) as the HTTP status a unary call would have had."""
    streaming = SERVICE.methods_by_name[method].server_streaming
    data = json.dumps(body).encode()
    kind = "application/connect+json" if streaming else "application/json"
    if streaming:
        data = b"\x00" + len(data).to_bytes(4, "big") + data
    headers = {"Content-Type": kind, **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(f"{url}dayu.v1.BackendService/{method}", data, headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            raw = reply.read()
            if not streaming:
                return reply.status, json.loads(raw or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    while raw:  # envelopes: a flags byte, a length, the message; flag 2 ends the stream
        flags, size = raw[0], int.from_bytes(raw[1:5], "big")
        message, raw = json.loads(raw[5 : 5 + size] or b"{}"), raw[5 + size :]
        if flags & 2 and "error" in message:
            return CONNECT_STATUS[message["error"]["code"]], message["error"]
    return 200, {}


def headers_only(console_url: str, content_length: int) -> str:
    """The status line the console answers a POST that sends its headers and none of its body."""
    url = urllib.parse.urlsplit(console_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(
            f"POST /dayu.v1.BackendService/InstallStream HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n".encode()
        )
        return sock.recv(4096).decode(errors="replace").split("\r\n")[0]


CONNECT_STATUS = {"unauthenticated": 401, "permission_denied": 403, "invalid_argument": 400}


async def call(stub: object, method: str, request: object, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    """A unary call, or the first message of a server stream."""
    rpc = getattr(stub, method)
    if SERVICE.methods_by_name[method].server_streaming:
        stream = rpc(request, metadata=metadata, timeout=20)
        async for first in stream:
            stream.cancel()
            return first
        return None
    return await rpc(request, metadata=metadata, timeout=20)


async def test_every_call_without_a_valid_token_is_refused_and_changes_nothing(mesh: Mesh) -> None:
    async with grpc.aio.insecure_channel(mesh.addresses["backend"]) as channel:
        stub = backend(mesh, channel)
        before = await stub.ListPipelines(backend_pb2.ListPipelinesRequest(), metadata=tokens(mesh), timeout=10)
        for method in SERVICE.methods:
            request = getattr(backend_pb2, method.input_type.name)()
            for metadata in ((), (("authorization", "Bearer not-a-token-of-this-mesh"),), (("authorization", "x"),)):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(stub, method.name, request, metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method.name, refused.value.details())
            status, body = await asyncio.to_thread(post, mesh.console_url, method.name, {})
            assert (status, body["code"]) == (401, "unauthenticated"), (method.name, body)
        after = await stub.ListPipelines(backend_pb2.ListPipelinesRequest(), metadata=tokens(mesh), timeout=10)
        assert after == before
        # Over HTTP too, the token is checked before the body is read: a stranger announcing 64 MB is
        # refused from its headers, without the server waiting for (or reading) a byte of it.
        assert (await asyncio.to_thread(headers_only, mesh.console_url, 64 << 20)).startswith("HTTP/1.1 401")

        # A read-only token reads, and may not change anything.
        read = tokens(mesh, "read")
        assert (await stub.DescribeMesh(backend_pb2.DescribeMeshRequest(), metadata=read, timeout=10)).nodes
        writes = [
            m.name for m in SERVICE.methods if m.name.startswith(("Put", "Delete", "Install", "Uninstall", "Set"))
        ]
        assert len(writes) == 7  # pipelines, sources, streams, policies
        for name in writes:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await call(stub, name, getattr(backend_pb2, SERVICE.methods_by_name[name].input_type.name)(), read)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
            status, body = await asyncio.to_thread(post, mesh.console_url, name, {}, mesh.tokens.read[0])
            assert status == 403 and "read-only" in body["message"], (name, body)

        # The scheduler's mutating calls too.
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(grpc.aio.insecure_channel(mesh.addresses["scheduler"]))
        request = scheduler_pb2.SetPolicyRequest(stream_id="any", policy=decision_pb2.PolicySpec(name="fixed"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await scheduler.SetPolicy(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bad_input_gets_an_error_naming_the_field(mesh: Mesh) -> None:
    admin = tokens(mesh)
    async with grpc.aio.insecure_channel(mesh.addresses["backend"]) as channel:
        stub = backend(mesh, channel)
        cases = [
            (stream_spec(latency_budget_s=-1), "stream.latency_budget_s"),
            (stream_spec(node="mars"), "stream.node"),
            (stream_spec(stream_id="bad id!"), "stream.stream_id"),
            (stream_spec(policy=decision_pb2.PolicySpec(name="telepathy")), "stream.policy.name"),
            (stream_spec(pipeline=types_pb2.Pipeline(name="x")), "stream.pipeline.stages"),
        ]
        bad_params = stream_spec(policy=decision_pb2.PolicySpec(name="fixed"))
        bad_params.policy.params.update({"fps": -3})
        cases.append((bad_params, "params"))
        for spec, field in cases:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.InstallStream(backend_pb2.InstallStreamRequest(stream=spec), metadata=admin, timeout=20)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            assert field in refused.value.details()
        assert not (await stub.ListInstalledStreams(backend_pb2.ListInstalledStreamsRequest(), metadata=admin)).streams

        # A DAG with a cycle, as the editor sends it: every call says which field.
        cyclic = noop_pipeline("loop")
        cyclic.stages.add(name="again", processor="noop", parents=["again"], input_type=BOXES, output_type=BOXES)
        status, body = await asyncio.to_thread(
            post, mesh.console_url, "PutPipeline", {"pipeline": {"name": "loop", "stages": [
                {"name": "a", "processor": "noop", "inputType": "DATA_TYPE_BOXES", "outputType": "DATA_TYPE_BOXES",
                 "parents": ["b"]},
                {"name": "b", "processor": "noop", "inputType": "DATA_TYPE_BOXES", "outputType": "DATA_TYPE_BOXES",
                 "parents": ["a"]}]}},
            mesh.tokens.admin[0],
        )  # fmt: skip
        assert status == 400 and body["code"] == "invalid_argument", body
        assert "pipeline.stages" in body["message"] and "cycle" in body["message"]
        found = await stub.ValidatePipeline(backend_pb2.ValidatePipelineRequest(pipeline=cyclic), metadata=admin)
        assert [v.field for v in found.violations] == ["pipeline.stages"], found
        assert "cycle: again -> again" in found.violations[0].description
        status, body = await asyncio.to_thread(
            post, mesh.console_url, "ListResults", {"limit": 5000}, mesh.tokens.read[0]
        )
        assert status == 400 and "stream_id" in body["message"], body
        status, body = await asyncio.to_thread(
            post, mesh.console_url, "ListResults", {"streamId": "cam", "limit": "many"}, mesh.tokens.read[0]
        )
        assert status == 400, body  # not JSON of the message: Connect's own refusal


async def wait_for(check: Any, timeout_s: float = 30.0, every_s: float = 0.3) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout_s} s: {check.__name__}")
        await asyncio.sleep(every_s)


async def test_a_stream_installed_at_run_time_runs_shows_its_results_and_uninstalls(mesh: Mesh) -> None:
    admin = tokens(mesh)
    async with grpc.aio.insecure_channel(mesh.addresses["backend"]) as channel:
        stub = backend(mesh, channel)
        await stub.PutPipeline(backend_pb2.PutPipelineRequest(pipeline=noop_pipeline()), metadata=admin)
        spec = stream_spec()
        reply = await stub.InstallStream(backend_pb2.InstallStreamRequest(stream=spec), metadata=admin, timeout=20)
        assert not reply.already_installed
        again = await stub.InstallStream(backend_pb2.InstallStreamRequest(stream=spec), metadata=admin, timeout=20)
        assert again.already_installed
        listed = await stub.ListInstalledStreams(backend_pb2.ListInstalledStreamsRequest(), metadata=admin)
        assert [s.stream_id for s in listed.streams] == ["cam-9"]

        async def results() -> list[Any]:
            request = backend_pb2.ListResultsRequest(stream_id="cam-9", limit=50)
            return list((await stub.ListResults(request, metadata=admin, timeout=10)).records)

        records = await wait_for(results)
        assert records == sorted(records, key=lambda r: -r.cursor)  # newest first
        assert not records[0].task.segment.frames

        async def frame() -> Any:
            try:
                request = backend_pb2.GetLatestFrameRequest(stream_id="cam-9")
                return await stub.GetLatestFrame(request, metadata=admin, timeout=10)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
                return None

        latest = await wait_for(frame)
        assert latest.jpeg[:2] == b"\xff\xd8" and latest.resolution.width == 320
        assert [s.stage for s in latest.stages] == ["detect"]

        root = records[-1].task.root_id  # an older task: its spans, exported every 0.5 s, are all in

        async def timeline() -> list[Any]:
            try:
                request = backend_pb2.GetTaskTimelineRequest(root_id=root)
                spans = list((await stub.GetTaskTimeline(request, metadata=admin, timeout=10)).spans)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
                return []
            return spans if {"generator", "controller", "processor"} <= {s.component for s in spans} else []

        spans = await wait_for(timeline)
        assert all(s.end.ToNanoseconds() >= s.start.ToNanoseconds() for s in spans)

        status = await stub.GetSystemStatus(backend_pb2.GetSystemStatusRequest(), metadata=admin, timeout=20)
        assert {n.node for n in status.nodes} == {"cloud", "edge-1"}
        assert all(c.up for c in status.components), [c for c in status.components if not c.up]
        assert "cam-9" in [s.stream_id for s in status.scheduling]
        assert [s.spec.stream_id for s in status.streams] == ["cam-9"]

        switched = await stub.SetStreamPolicy(
            backend_pb2.SetStreamPolicyRequest(stream_id="cam-9", policy=decision_pb2.PolicySpec(name="edge_only")),
            metadata=admin,
            timeout=10,
        )
        assert switched.decision.policy == "edge_only"

        watch = stub.WatchResults(backend_pb2.WatchResultsRequest(stream_id="cam-9"), metadata=admin)
        live = await asyncio.wait_for(anext(aiter(watch)), 20)
        assert live.record.task.stream_id == "cam-9" and live.record.cursor > records[0].cursor
        watch.cancel()

        chunks = stub.ExportResults(
            backend_pb2.ExportResultsRequest(stream_id="cam-9", format=backend_pb2.EXPORT_FORMAT_CSV), metadata=admin
        )
        text = b"".join([c.chunk async for c in chunks]).decode()
        rows = list(csv.DictReader(io.StringIO(text)))
        assert rows and {r["stream_id"] for r in rows} == {"cam-9"} and rows[0]["outcome"] in ("delivered", "dropped")
        lines = stub.ExportResults(backend_pb2.ExportResultsRequest(stream_id="cam-9"), metadata=admin)
        exported = [json.loads(line) for line in b"".join([c.chunk async for c in lines]).splitlines()]
        assert len(exported) >= len(rows) and exported[0]["task"]["stream_id"] == "cam-9"

        gone = await stub.UninstallStream(backend_pb2.UninstallStreamRequest(stream_id="cam-9"), metadata=admin)
        assert gone.stopped
        listed = await stub.ListInstalledStreams(backend_pb2.ListInstalledStreamsRequest(), metadata=admin)
        assert not listed.streams

    # Every task the stream made is delivered or recorded dropped: sequences 0..n-1, none missing.
    async with grpc.aio.insecure_channel(mesh.addresses["distributor"]) as channel:
        distributor = distributor_pb2_grpc.DistributorServiceStub(channel)

        async def accounted() -> bool:
            query = distributor_pb2.QueryRecordsRequest(
                filter=distributor_pb2.RecordFilter(stream_id="cam-9"), limit=1000
            )
            sequences = sorted(r.task.sequence for r in (await distributor.QueryRecords(query)).records)
            return bool(sequences) and sequences == list(range(len(sequences)))

        await wait_for(accounted, 20)
    generator = mesh.servers["generator@edge-1"].component
    assert "cam-9" not in getattr(generator, "runners", {})


async def restart(mesh: Mesh, key: str) -> None:
    """Stops an instance of the mesh and starts a new one with the same settings and address: what it
    held in memory is gone, what it keeps on disk is not."""
    server = mesh.servers[key]
    await server.stop()
    settings = server.settings
    settings.server.listen = mesh.addresses[key]
    restarted = ComponentServer(type(server.component)(settings), settings)  # type: ignore[call-arg]
    mesh.servers[key] = restarted
    await restarted.start()


async def restart_backend(mesh: Mesh) -> None:
    await restart(mesh, "backend")


async def test_a_restarted_backend_loses_nothing_and_restarts_streams_a_generator_lost(mesh: Mesh) -> None:
    admin = tokens(mesh)
    async with grpc.aio.insecure_channel(mesh.addresses["backend"]) as channel:
        stub = backend(mesh, channel)
        await stub.PutPipeline(backend_pb2.PutPipelineRequest(pipeline=noop_pipeline()), metadata=admin)
        await stub.InstallStream(backend_pb2.InstallStreamRequest(stream=stream_spec()), metadata=admin, timeout=20)
        policy = decision_pb2.PolicySpec(name="edge_only")
        await stub.SetStreamPolicy(backend_pb2.SetStreamPolicyRequest(stream_id="cam-9", policy=policy), metadata=admin)
        pipelines = await stub.ListPipelines(backend_pb2.ListPipelinesRequest(page_size=1000), metadata=admin)
        avenue = datasource_pb2.SourceSpec(source_id="avenue", kind="synthetic")
        avenue.params.update({"width": 320, "height": 180, "fps": 2})
        added = await stub.PutSource(backend_pb2.PutSourceRequest(source=avenue), metadata=admin, timeout=20)
        assert not added.replaced and added.info.added and added.info.resolution.width == 320
    await restart_backend(mesh)
    async with grpc.aio.insecure_channel(mesh.addresses["backend"]) as channel:
        stub = backend(mesh, channel)
        again = await stub.ListPipelines(backend_pb2.ListPipelinesRequest(page_size=1000), metadata=admin, timeout=20)
        assert again == pipelines
        streams = (await stub.ListInstalledStreams(backend_pb2.ListInstalledStreamsRequest(), metadata=admin)).streams
        assert [(s.stream_id, s.policy.name) for s in streams] == [("cam-9", "edge_only")]
        stored = await stub.ListStoredSources(backend_pb2.ListStoredSourcesRequest(), metadata=admin)
        assert list(stored.sources) == [avenue]

        # A restarted datasource plays the sources of its settings: the backend gives it the others back.
        await restart(mesh, "datasource")

        async def played() -> bool:
            described = await stub.DescribeMesh(backend_pb2.DescribeMeshRequest(), metadata=admin, timeout=20)
            return [(s.source_id, s.added) for s in described.sources] == [("avenue", True), ("street", False)]

        await wait_for(played, 20, every_s=1.0)

        # A generator that restarts has forgotten the streams started at run time: the backend starts
        # them again, with the policy set since.
        await restart(mesh, "generator@edge-1")

        async def running() -> bool:
            status = await stub.GetSystemStatus(backend_pb2.GetSystemStatusRequest(), metadata=admin, timeout=20)
            return "cam-9" in [s.spec.stream_id for s in status.streams]

        await wait_for(running, 20, every_s=1.0)
        found = await stub.GetSystemStatus(backend_pb2.GetSystemStatusRequest(), metadata=admin, timeout=20)
        stats = {s.stream_id: s.policy for s in found.scheduling}
        assert stats["cam-9"] == "edge_only"


async def test_the_tokens_file_is_the_operators_alone(mesh: Mesh) -> None:
    path = mesh.workdir / "tokens.yaml"
    assert path.stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load(path.read_text())["admin"] == mesh.tokens.admin
