"""The Python dataclass client (gen/betterproto: betterproto2 messages, async grpclib stubs) and its
example, examples/python/dayu_example.py: the example against a running mesh and, with mutual TLS,
against stand-in servers with the mesh's kind of certificates; and the client's messages on the wire
against the protobuf classes the servers use (oneofs, proto3 optional, maps, Struct, Timestamp)."""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from dayu.runtime.certs import issue, make_ca
from dayu.runtime.tls import TlsSettings, server_credentials
from dayu.v1 import (
    backend_pb2,
    backend_pb2_grpc,
    decision_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
    types_pb2,
)

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "gen" / "betterproto"
EXAMPLE = ROOT / "examples" / "python" / "dayu_example.py"
RUNTIME = {"betterproto2": "0.10.0", "grpclib": "0.4.9"}  # as pyproject.toml's dev extras pin them
INSTALL = "pip install -e '.[dev]' (or: pip install betterproto2==0.10.0 grpclib==0.4.9)"


def require_client() -> None:
    """Fails (never skips) when the client's runtime or the generated code is missing."""
    problems = []
    for name, wanted in RUNTIME.items():
        try:
            found = version(name)
        except PackageNotFoundError:
            problems.append(f"{name} is not installed")
            continue
        if found != wanted:
            problems.append(f"{name} is {found}, not {wanted}")
    if problems:
        pytest.fail(f"the Python client's runtime: {'; '.join(problems)}: {INSTALL} in {sys.prefix}")
    if not (GENERATED / "dayu_client" / "dayu" / "v1" / "__init__.py").is_file():
        pytest.fail(f"no generated client in {GENERATED}: run hack/gen-betterproto.sh gen")


def client_modules() -> tuple[ModuleType, ModuleType]:
    """dayu_client.dayu.v1 and dayu_client.google.protobuf."""
    require_client()
    if str(GENERATED) not in sys.path:
        sys.path.insert(0, str(GENERATED))
    from dayu_client.dayu import v1
    from dayu_client.google import protobuf

    return v1, protobuf


async def run_example(*args: str) -> tuple[int, str, str]:
    require_client()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def last_json(out: str, err: str) -> dict[str, Any]:
    lines = out.strip().splitlines()
    assert lines, f"the example printed nothing; stderr:\n{err}"
    return json.loads(lines[-1])


def tls_args(tls: Any) -> list[str]:
    return [] if tls is None else ["--ca", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key)]


async def test_example_against_the_mesh(mesh: Any) -> None:
    code, out, err = await run_example(
        "--backend", mesh.backend, "--scheduler", mesh.scheduler, "--stream", mesh.stream, *tls_args(mesh.tls)
    )
    assert code == 0, f"the example failed ({code}):\n{out}\n{err}"
    result = last_json(out, err)
    assert "plates" in result["pipelines"]
    assert mesh.stream in result["stats_streams"]
    assert result["policy"] == "fixed"
    assert result["decisions"] >= 1
    assert result["last_version"] >= 1


# Stand-in servers for the four RPCs the example calls, with mutual TLS: what the client sends
# arrives as the protobuf classes read it, and the TLS setup (CA, client certificate, `dayu-mesh`).


@dataclass
class Seen:
    pipeline_pages: list[backend_pb2.ListPipelinesRequest] = field(default_factory=list)
    policies: list[scheduler_pb2.SetPolicyRequest] = field(default_factory=list)
    peers: set[str] = field(default_factory=set)
    watch_cancelled: asyncio.Event = field(default_factory=asyncio.Event)


PIPELINES = ["faces", "plates", "traffic"]
STREAMS = ["cam-1", "cam-2"]


def peer(context: grpc.aio.ServicerContext) -> str:
    return (context.auth_context().get("x509_common_name") or [b""])[0].decode()


class Backend(backend_pb2_grpc.BackendServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def ListPipelines(self, request, context):  # type: ignore[no-untyped-def]
        self.seen.pipeline_pages.append(request)
        self.seen.peers.add(peer(context))
        start = int(request.page_token or 0)
        end = start + request.page_size
        return backend_pb2.ListPipelinesResponse(
            pipelines=[types_pb2.Pipeline(name=name) for name in PIPELINES[start:end]],
            next_page_token=str(end) if end < len(PIPELINES) else "",
        )


class Scheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def GetSchedulerStats(self, request, context):  # type: ignore[no-untyped-def]
        start = int(request.page_token or 0)
        end = start + (request.page_size or 100)
        return scheduler_pb2.GetSchedulerStatsResponse(
            streams=[scheduler_pb2.StreamSchedulingStats(stream_id=stream) for stream in STREAMS[start:end]],
            spans_received=5,
            next_page_token=str(end) if end < len(STREAMS) else "",
        )

    async def SetPolicy(self, request, context):  # type: ignore[no-untyped-def]
        self.seen.policies.append(request)
        return scheduler_pb2.SetPolicyResponse(
            decision=decision_pb2.Decision(stream_id=request.stream_id, version=2, policy=request.policy.name)
        )

    async def WatchDecisions(self, request, context):  # type: ignore[no-untyped-def]
        try:
            for version in (2, 3):
                yield scheduler_pb2.WatchDecisionsResponse(
                    decision=decision_pb2.Decision(stream_id=request.stream_id, version=version)
                )
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.seen.watch_cancelled.set()
            raise


@dataclass
class TlsFiles:
    ca: str
    cert: str
    key: str


def tls_files(settings: TlsSettings) -> TlsFiles:
    return TlsFiles(settings.ca_file, settings.cert_file, settings.key_file)


@pytest.fixture
async def tls_stand_ins(tmp_path: Path) -> AsyncIterator[tuple[str, str, TlsFiles, TlsFiles, Seen]]:
    """Backend and scheduler stand-ins with a mesh certificate each (requiring client certificates);
    an operator's certificate of the same CA; one of a stranger CA."""
    ca = make_ca()
    seen = Seen()
    servers = []
    addresses = []
    for component, add, servicer in (
        ("backend", backend_pb2_grpc.add_BackendServiceServicer_to_server, Backend(seen)),
        ("scheduler", scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server, Scheduler(seen)),
    ):
        server = grpc.aio.server()
        add(servicer, server)
        settings = issue(ca, component, "cloud").write(tmp_path / component)
        port = server.add_secure_port("127.0.0.1:0", server_credentials(settings))
        await server.start()
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
    operator = tls_files(issue(ca, "operator", "example").write(tmp_path / "operator"))
    stranger = tls_files(issue(make_ca(), "operator", "example").write(tmp_path / "stranger"))
    try:
        yield addresses[0], addresses[1], operator, stranger, seen
    finally:
        for server in servers:
            await server.stop(grace=0)


async def test_example_with_mutual_tls(tls_stand_ins: tuple[str, str, TlsFiles, TlsFiles, Seen]) -> None:
    backend, scheduler, operator, _, seen = tls_stand_ins
    code, out, err = await run_example(
        "--backend", backend, "--scheduler", scheduler, "--stream", "cam-1", "--watch-seconds", "1",
        "--policy", "feedback_control", *tls_args(operator),
    )  # fmt: skip
    assert code == 0, f"the example failed ({code}):\n{out}\n{err}"
    assert last_json(out, err) == {
        "pipelines": PIPELINES,
        "stats_streams": STREAMS,
        "policy": "feedback_control",
        "decisions": 2,
        "last_version": 3,
    }
    assert [page.page_size for page in seen.pipeline_pages] == [2, 2]
    assert seen.peers == {"operator.example"}
    [policy] = seen.policies
    assert policy.stream_id == "cam-1"
    assert policy.policy.name == "feedback_control"
    assert policy.policy.HasField("params")  # an empty Struct, present
    assert json_format.MessageToDict(policy.policy.params) == {}
    await asyncio.wait_for(seen.watch_cancelled.wait(), 5)  # the watch was ended, not left open


async def test_example_refused_with_a_stranger_certificate(
    tls_stand_ins: tuple[str, str, TlsFiles, TlsFiles, Seen],
) -> None:
    backend, scheduler, operator, stranger, _ = tls_stand_ins
    # The servers do not trust us (a certificate of another CA).
    code, out, err = await run_example(
        "--backend", backend, "--scheduler", scheduler, "--stream", "cam-1",
        "--ca", operator.ca, "--cert", stranger.cert, "--key", stranger.key,
    )  # fmt: skip
    assert code != 0, out
    assert err.startswith("error: BackendService/ListPipelines") and "certificate" in err, err
    # We do not trust the servers (they are not of our CA).
    code, out, err = await run_example(
        "--backend", backend, "--scheduler", scheduler, "--stream", "cam-1", *tls_args(stranger)
    )
    assert code != 0, out
    assert "TLS handshake failed" in err and "CERTIFICATE_VERIFY_FAILED" in err, err


async def test_example_wrong_server_name(tls_stand_ins: tuple[str, str, TlsFiles, TlsFiles, Seen]) -> None:
    backend, scheduler, operator, _, _ = tls_stand_ins
    code, out, err = await run_example(
        "--backend", backend, "--scheduler", scheduler, "--stream", "cam-1", *tls_args(operator),
        "--server-name", "not-the-mesh",
    )  # fmt: skip
    assert code != 0, out
    assert "TLS" in err and "not-the-mesh" in err, err


# The client's messages on the wire: written by one side, read by the other.


def test_round_trip_with_the_protobuf_classes() -> None:
    v1, wkt = client_modules()
    params = {"gain": 1.5, "mode": "fast", "on": True, "off": False, "zero": 0, "none": None, "list": [1, "two", {}]}

    # Struct (its Value's `kind` is a oneof, every member here, defaults included): client -> protobuf.
    spec = v1.PolicySpec(name="fixed", params=wkt.Struct.from_dict(params))
    parsed = decision_pb2.PolicySpec.FromString(bytes(spec))
    assert parsed.name == "fixed"
    assert json_format.MessageToDict(parsed.params) == params
    assert parsed.params.fields["off"].WhichOneof("kind") == "bool_value"
    assert parsed.params.fields["zero"].WhichOneof("kind") == "number_value"
    assert parsed.params.fields["none"].WhichOneof("kind") == "null_value"
    # ... and back: protobuf -> client.
    expected = struct_pb2.Struct()
    expected.update(params)
    back = v1.PolicySpec.parse(decision_pb2.PolicySpec(name="fixed", params=expected).SerializeToString())
    assert back == spec
    assert back.params.to_dict() == params
    assert v1.PolicySpec.parse(bytes(spec)).params.fields["off"].is_set("bool_value")
    # An empty Struct is sent (present), an absent one is not.
    assert decision_pb2.PolicySpec.FromString(bytes(v1.PolicySpec(name="x", params=wkt.Struct()))).HasField("params")
    assert not decision_pb2.PolicySpec.FromString(bytes(v1.PolicySpec(name="x"))).HasField("params")

    # Timestamp (a datetime on the client, microseconds kept), maps of scalars and of messages, uint64.
    made_at = datetime.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=datetime.UTC)
    decision = v1.Decision(
        stream_id="cam-1",
        version=2**64 - 1,
        made_at=made_at,
        placement={"detect": "edge-1"},
        deployment={"detect": v1.NodeList(nodes=["edge-1", "cloud"])},
        paused=True,
    )
    read = decision_pb2.Decision.FromString(bytes(decision))
    assert read.made_at.ToDatetime(tzinfo=datetime.UTC) == made_at
    assert read.version == 2**64 - 1
    assert dict(read.placement) == {"detect": "edge-1"}
    assert list(read.deployment["detect"].nodes) == ["edge-1", "cloud"]
    assert v1.Decision.parse(read.SerializeToString()) == decision
    assert v1.Decision.parse(read.SerializeToString()).made_at == made_at
    # Proto JSON agrees too (camelCase names, RFC 3339 time, 64-bit integers as strings).
    assert decision.to_dict() == json_format.MessageToDict(read)

    # proto3 `optional` (a synthetic oneof): zero set is present, unset is absent, both ways.
    zero = types_pb2.Detection.FromString(bytes(v1.Detection(label="car", parent_index=0)))
    assert zero.HasField("parent_index")
    assert not types_pb2.Detection.FromString(bytes(v1.Detection(label="car"))).HasField("parent_index")
    assert v1.Detection.parse(types_pb2.Detection(parent_index=0).SerializeToString()).parent_index == 0
    assert v1.Detection.parse(types_pb2.Detection().SerializeToString()).parent_index is None
    record = task_pb2.TaskRecord(accuracy=0.0, latency_s=1.25)
    assert v1.TaskRecord.parse(record.SerializeToString()).accuracy == 0.0
    assert v1.TaskRecord.parse(task_pb2.TaskRecord().SerializeToString()).accuracy is None
