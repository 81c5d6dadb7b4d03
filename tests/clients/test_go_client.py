"""The Go client (gen/go: protoc-gen-go messages and protoc-gen-go-grpc stubs, module dayu/gen/go)
and its example, examples/go: built with Debian's Go 1.19 and Go libraries (examples/go/build.sh, no
module downloads), run against a running mesh and, with mutual TLS, against stand-in servers with
the mesh's kind of certificates."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from dayu.runtime.certs import issue, make_ca
from dayu.runtime.tls import TlsSettings, server_credentials
from dayu.v1 import backend_pb2, backend_pb2_grpc, decision_pb2, scheduler_pb2, scheduler_pb2_grpc, types_pb2

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "examples" / "go" / "build.sh"
INSTALL = (
    "apt-get install golang-go golang-google-grpc-dev golang-google-protobuf-dev "
    "golang-github-golang-protobuf-1-5-dev (Debian bookworm: Go 1.19, grpc 1.33.3, protobuf 1.28.1)"
)
# A cold build (grpc and its dependencies compiled into an empty GOCACHE) takes 8-18 s on two busy
# cores; it happens in the first test's setup.
pytestmark = pytest.mark.timeout(300)


def go_cache() -> str:
    """GOCACHE when set (CI can point it at a kept folder); else one folder under the system's temp
    folder that outlives the test run, so a second run (or a second CI step) does not compile grpc
    again."""
    return os.environ.get("GOCACHE") or str(Path(tempfile.gettempdir()) / "dayu-go-build-cache")


@pytest.fixture(scope="session")
def go_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example, built once per session. Fails (never skips) without the Go toolchain."""
    if shutil.which("go") is None:
        pytest.fail(f"no `go` on PATH: the Go client needs Debian's Go toolchain and libraries: {INSTALL}")
    if not (ROOT / "gen" / "go" / "dayu" / "v1" / "scheduler_grpc.pb.go").is_file():
        pytest.fail("no generated Go code in gen/go: run hack/gen-go.sh gen")
    binary = tmp_path_factory.mktemp("go") / "dayu-example"
    built = subprocess.run(
        [str(BUILD), str(binary)],
        env={**os.environ, "GOCACHE": go_cache()},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if built.returncode != 0:
        pytest.fail(f"examples/go/build.sh failed ({built.returncode}); it needs {INSTALL}:\n{built.stderr}")
    return binary


async def run_example(binary: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(binary), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
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


async def test_example_against_the_mesh(go_example: Path, mesh: Any) -> None:
    code, out, err = await run_example(
        go_example, "--backend", mesh.backend, "--scheduler", mesh.scheduler, "--stream", mesh.stream,
        *tls_args(mesh.tls),
    )  # fmt: skip
    assert code == 0, f"the example failed ({code}):\n{out}\n{err}"
    result = last_json(out, err)
    assert "plates" in result["pipelines"]
    assert mesh.stream in result["stats_streams"]
    assert result["policy"] == "fixed"
    assert result["decisions"] >= 1
    assert result["last_version"] >= 1


async def test_example_usage_error(go_example: Path) -> None:
    code, out, err = await run_example(go_example, "--backend", "127.0.0.1:1")
    assert code == 2, out
    assert "--backend, --scheduler and --stream are required" in err, err


async def test_example_unreachable_backend(go_example: Path) -> None:
    code, out, err = await run_example(
        go_example, "--backend", "127.0.0.1:1", "--scheduler", "127.0.0.1:1", "--stream", "cam-1"
    )
    assert code == 1, out
    assert "BackendService/ListPipelines at 127.0.0.1:1" in err and "Unavailable" in err, err


# Stand-in servers for the four RPCs the example calls, with mutual TLS: what the Go client sends
# arrives as the Python protobuf classes read it, and the TLS setup (CA, client certificate, name).


@dataclass
class Seen:
    pipeline_pages: list[backend_pb2.ListPipelinesRequest] = field(default_factory=list)
    stats_pages: list[scheduler_pb2.GetSchedulerStatsRequest] = field(default_factory=list)
    policies: list[scheduler_pb2.SetPolicyRequest] = field(default_factory=list)
    peers: set[str] = field(default_factory=set)
    watch_cancelled: asyncio.Event = field(default_factory=asyncio.Event)


PIPELINES = ["faces", "plates", "traffic"]
STREAMS = ["cam-1", "cam-2", "cam-3"]


def note(seen: Seen, context: grpc.aio.ServicerContext) -> None:
    seen.peers.add((context.auth_context().get("x509_common_name") or [b""])[0].decode())


class Backend(backend_pb2_grpc.BackendServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def ListPipelines(self, request, context):  # type: ignore[no-untyped-def]
        self.seen.pipeline_pages.append(request)
        note(self.seen, context)
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
        self.seen.stats_pages.append(request)
        note(self.seen, context)
        start = int(request.page_token or 0)
        end = start + 2  # pages of two, whatever page_size says, so the client must follow the token
        return scheduler_pb2.GetSchedulerStatsResponse(
            streams=[scheduler_pb2.StreamSchedulingStats(stream_id=stream) for stream in STREAMS[start:end]],
            spans_received=5,
            next_page_token=str(end) if end < len(STREAMS) else "",
        )

    async def SetPolicy(self, request, context):  # type: ignore[no-untyped-def]
        self.seen.policies.append(request)
        note(self.seen, context)
        return scheduler_pb2.SetPolicyResponse(
            decision=decision_pb2.Decision(stream_id=request.stream_id, version=2, policy=request.policy.name)
        )

    async def WatchDecisions(self, request, context):  # type: ignore[no-untyped-def]
        note(self.seen, context)
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


async def test_example_with_mutual_tls(
    go_example: Path, tls_stand_ins: tuple[str, str, TlsFiles, TlsFiles, Seen]
) -> None:
    backend, scheduler, operator, _, seen = tls_stand_ins
    code, out, err = await run_example(
        go_example, "--backend", backend, "--scheduler", scheduler, "--stream", "cam-1", "--watch-seconds", "1",
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
    assert [(page.page_size, page.page_token) for page in seen.pipeline_pages] == [(2, ""), (2, "2")]
    assert [page.page_token for page in seen.stats_pages] == ["", "2"]
    assert seen.peers == {"operator.example"}  # the client certificate was shown
    [policy] = seen.policies
    assert policy.stream_id == "cam-1"
    assert policy.policy.name == "feedback_control"
    assert policy.policy.HasField("params")  # an empty Struct, present
    assert json_format.MessageToDict(policy.policy.params) == {}
    await asyncio.wait_for(seen.watch_cancelled.wait(), 5)  # the watch was ended, not left open


async def test_example_refused_with_a_stranger_certificate(
    go_example: Path, tls_stand_ins: tuple[str, str, TlsFiles, TlsFiles, Seen]
) -> None:
    backend, scheduler, _, stranger, seen = tls_stand_ins
    code, out, err = await run_example(
        go_example, "--backend", backend, "--scheduler", scheduler, "--stream", "cam-1", *tls_args(stranger)
    )
    assert code == 1, out
    assert err.startswith("dayu-example: BackendService/ListPipelines"), err
    assert not seen.pipeline_pages


async def test_example_wrong_server_name(
    go_example: Path, tls_stand_ins: tuple[str, str, TlsFiles, TlsFiles, Seen]
) -> None:
    backend, scheduler, operator, _, seen = tls_stand_ins
    code, out, err = await run_example(
        go_example, "--backend", backend, "--scheduler", scheduler, "--stream", "cam-1", *tls_args(operator),
        "--server-name", "not-the-mesh",
    )  # fmt: skip
    assert code == 1, out
    assert "not-the-mesh" in err and "certificate" in err, err
    assert not seen.pipeline_pages
