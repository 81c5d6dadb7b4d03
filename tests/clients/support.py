"""What the generated clients' tests share: the light mesh, each language's example (built once, run
the same way), and stand-in servers with mutual TLS that check the bearer token as the mesh does and
record what a client sent.

Every example (examples/go, gen/ts/examples, examples/python) takes the same flags, `--backend
--scheduler --stream [--token] [--watch-seconds] [--policy] [--ca --cert --key [--server-name]]`
(--token by default $DAYU_TOKEN, sent on every call as `authorization: Bearer TOKEN`), and prints one
JSON object last: {"pipelines", "stats_streams", "policy", "decisions", "last_version"}."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from dayu.runtime.auth import Role, Tokens, TokensFile, read_tokens_file
from dayu.runtime.certs import issue, make_ca
from dayu.runtime.errors import DayuError
from dayu.runtime.tls import TlsSettings, server_credentials
from dayu.v1 import backend_pb2, backend_pb2_grpc, decision_pb2, scheduler_pb2, scheduler_pb2_grpc, types_pb2

ROOT = Path(__file__).resolve().parents[2]
STREAM = "cam-1"
LANGUAGES = ("go", "ts", "python")
TOKEN_ENV = "DAYU_TOKEN"  # where an example takes its token from without --token


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


def tls_files(settings: TlsSettings) -> Tls:
    return Tls(Path(settings.ca_file), Path(settings.cert_file), Path(settings.key_file))


def tls_args(tls: Tls | None) -> list[str]:
    return [] if tls is None else ["--ca", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key)]


@dataclass(frozen=True)
class LiveMesh:
    backend: str
    scheduler: str
    stream: str
    tokens: TokensFile  # the mesh's operator tokens (its workdir's tokens.yaml)
    tls: Tls | None = None

    @property
    def admin_token(self) -> str:
        return self.tokens.admin[0]


def mesh_tokens(path: Path) -> TokensFile:
    """The operator tokens a mesh wrote (`dayu up`: WORKDIR/tokens.yaml), with at least an admin one."""
    if not path.is_file():
        pytest.fail(f"the mesh wrote no tokens file at {path}")
    tokens = read_tokens_file(path)
    if not tokens.admin:
        pytest.fail(f"no admin token in {path}")
    return tokens


def light_mesh(folder: Path) -> Path:
    """A cloud and an edge node with noop processors, one synthetic camera on a noop pipeline, next to
    every pipeline Dayu ships (the examples list them): mesh.yaml (and pipelines.yaml) in `folder`."""
    pipelines = yaml.safe_load((ROOT / "configs" / "pipelines.yaml").read_text())
    stage = {"name": "detect", "processor": "noop", "input_type": "DATA_TYPE_FRAMES", "output_type": "DATA_TYPE_BOXES"}
    pipelines["pipelines"].append({"name": "noop", "stages": [stage]})
    (folder / "pipelines.yaml").write_text(yaml.safe_dump(pipelines))
    mesh = {
        "cloud_node": "cloud",
        "nodes": {"cloud": {"processors": ["noop"]}, "edge-1": {"processors": ["noop"]}},
        "links": [{"between": ["edge-1", "cloud"], "bandwidth_mbps": 50}],
        "pipelines_file": "pipelines.yaml",
        "sources": [{"source_id": "street", "kind": "synthetic", "params": {"width": 320, "height": 180, "fps": 5}}],
        "streams": [
            {
                "stream_id": STREAM,
                "source_id": "street",
                "node": "edge-1",
                "pipeline": "noop",
                "latency_budget_s": 1.0,
                "max_configuration": {"width": 320, "height": 180, "fps": 5, "quality": 80, "frames_per_segment": 1},
                "policy": {"name": "latency_budget", "params": {"offload": False}},
            }
        ],
    }
    path = folder / "mesh.yaml"
    path.write_text(yaml.safe_dump(mesh))
    return path


def assert_live_result(result: dict[str, Any], stream: str) -> None:
    """The final JSON of an example run against a real mesh (embedded or a cluster) of `light_mesh`."""
    assert "plates" in result["pipelines"], result
    assert "noop" in result["pipelines"], result
    assert stream in result["stats_streams"], result
    assert result["policy"] == "fixed", result
    assert result["decisions"] >= 1, result
    assert result["last_version"] >= 1, result


# -- the examples ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """How to run one language's example: the command line without arguments, and the environment
    it needs on top of ours."""

    language: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


def require_tool(name: str, install: str) -> str:
    """The path of a toolchain's command; a missing one fails (CI installs it; nothing is skipped)."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {install}")
    return found


GO_INSTALL = (
    "apt-get install golang-go golang-google-grpc-dev golang-google-protobuf-dev "
    "golang-github-golang-protobuf-1-5-dev (Debian bookworm: Go 1.19, grpc 1.33.3, protobuf 1.28.1)"
)


def go_cache() -> str:
    """GOCACHE when set (CI can point it at a kept folder); else one folder under the system's temp
    folder that outlives the test run, so a second run (or a second CI step) does not compile grpc
    again (a cold build takes 8-18 s on two busy cores)."""
    return os.environ.get("GOCACHE") or str(Path(tempfile.gettempdir()) / "dayu-go-build-cache")


def build_go(folder: Path) -> Example:
    """examples/go built with Debian's Go in GOPATH mode (examples/go/build.sh, no module downloads)."""
    require_tool("go", f"the Go client needs Debian's Go toolchain and libraries: {GO_INSTALL}")
    if not (ROOT / "gen" / "go" / "dayu" / "v1" / "scheduler_grpc.pb.go").is_file():
        pytest.fail("no generated Go code in gen/go: run hack/gen-go.sh gen")
    binary = folder / "dayu-example"
    built = subprocess.run(
        [str(ROOT / "examples" / "go" / "build.sh"), str(binary)],
        env={**os.environ, "GOCACHE": go_cache()},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if built.returncode != 0:
        pytest.fail(f"examples/go/build.sh failed ({built.returncode}); it needs {GO_INSTALL}:\n{built.stderr}")
    return Example("go", (str(binary),))


TS_PACKAGE = ROOT / "gen" / "ts"
NODE_MAJOR = 20  # gen/ts/package.json "engines"; @connectrpc/connect-node 2.1 and protoc-gen-es 2.13 need it
TS_INSTALL = (
    "the TypeScript client needs Node.js >= 20 with npm: install them (NodeSource's nodejs 20+, which "
    "bundles npm, or your distribution's nodejs and npm where they are 20+; Debian 12's nodejs 18 is too old)"
)


def build_ts() -> Example:
    """gen/ts and its example compiled with the pinned tsc, after `npm ci` unless gen/ts/node_modules is
    up to date with the lock file."""
    node = require_tool("node", TS_INSTALL)
    npm = require_tool("npm", TS_INSTALL)
    found = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = re.match(r"v(\d+)\.", found)
    if not major or int(major.group(1)) < NODE_MAJOR:
        pytest.fail(f"node {found} is too old: {TS_INSTALL}")
    installed = TS_PACKAGE / "node_modules" / ".package-lock.json"  # written by npm ci / npm install
    if not installed.exists() or installed.stat().st_mtime < (TS_PACKAGE / "package-lock.json").stat().st_mtime:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=TS_PACKAGE, capture_output=True, text=True, timeout=240
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci failed in gen/ts:\n{done.stdout}\n{done.stderr}")
    tsc = TS_PACKAGE / "node_modules" / "typescript" / "bin" / "tsc"
    done = subprocess.run([node, str(tsc), "-p", "."], cwd=TS_PACKAGE, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"tsc failed in gen/ts:\n{done.stdout}\n{done.stderr}")
    return Example("ts", (node, str(TS_PACKAGE / "dist" / "examples" / "dayu-example.js")))


BETTERPROTO = ROOT / "gen" / "betterproto"
PYTHON_RUNTIME = {"betterproto2": "0.10.0", "grpclib": "0.4.9"}  # as pyproject.toml's dev extras pin them
PYTHON_INSTALL = "pip install -e '.[dev]' (or: pip install betterproto2==0.10.0 grpclib==0.4.9)"


def require_python_client() -> None:
    """Fails (never skips) when the Python client's runtime or its generated code is missing."""
    problems = []
    for name, wanted in PYTHON_RUNTIME.items():
        try:
            found = version(name)
        except PackageNotFoundError:
            problems.append(f"{name} is not installed")
            continue
        if found != wanted:
            problems.append(f"{name} is {found}, not {wanted}")
    if problems:
        pytest.fail(f"the Python client's runtime: {'; '.join(problems)}: {PYTHON_INSTALL} in {sys.prefix}")
    if not (BETTERPROTO / "dayu_client" / "dayu" / "v1" / "__init__.py").is_file():
        pytest.fail(f"no generated client in {BETTERPROTO}: run hack/gen-betterproto.sh gen")


def build_python() -> Example:
    """examples/python/dayu_example.py, with gen/betterproto on PYTHONPATH (as its docstring says)."""
    require_python_client()
    return Example(
        "python",
        (sys.executable, str(ROOT / "examples" / "python" / "dayu_example.py")),
        {"PYTHONPATH": str(BETTERPROTO)},
    )


class Examples:
    """Each language's example, built on first use and kept (a failed build fails every test that
    asks for that language, with the same message, and is not tried again)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._built: dict[str, Example | str] = {}
        self._builders: dict[str, Callable[[], Example]] = {
            "go": lambda: build_go(folder),
            "ts": build_ts,
            "python": build_python,
        }

    def __getitem__(self, language: str) -> Example:
        if language not in self._built:
            try:
                self._built[language] = self._builders[language]()
            except pytest.fail.Exception as failed:
                self._built[language] = str(failed)
        built = self._built[language]
        if isinstance(built, str):
            pytest.fail(built, pytrace=False)
        return built


async def run_example(
    example: Example, *args: str, token_env: str | None = None, timeout_s: float = 60
) -> tuple[int, str, str]:
    """Runs the example with `args`, and with $DAYU_TOKEN set to `token_env` (unset without it, whatever
    ours is): (exit status, stdout, stderr)."""
    env = {name: value for name, value in os.environ.items() if name != TOKEN_ENV}
    env.update(example.env)
    if token_env is not None:
        env[TOKEN_ENV] = token_env
    process = await asyncio.create_subprocess_exec(
        *example.argv, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def last_json(out: str, err: str) -> dict[str, Any]:
    """The JSON object an example prints last."""
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, f"the example printed nothing; stderr:\n{err}"
    return json.loads(lines[-1])


# -- stand-in servers with mutual TLS --------------------------------------------------------------
# The four RPCs the examples call, served with a mesh certificate each and requiring client
# certificates: what a client sends arrives as the Python protobuf classes read it. They check the
# bearer token as the mesh does (dayu.runtime.auth): the backend's ListPipelines needs a token, the
# scheduler's SetPolicy an admin one, its GetSchedulerStats and WatchDecisions none (what they were
# sent is recorded all the same).

PIPELINES = ["faces", "plates", "traffic"]
STREAMS = ["cam-1", "cam-2", "cam-3"]


@dataclass
class Seen:
    """What the stand-ins were sent, and by whom (the client certificates' common names)."""

    pipeline_pages: list[backend_pb2.ListPipelinesRequest] = field(default_factory=list)
    stats_pages: list[scheduler_pb2.GetSchedulerStatsRequest] = field(default_factory=list)
    policies: list[scheduler_pb2.SetPolicyRequest] = field(default_factory=list)
    peers: set[str] = field(default_factory=set)
    authorization: dict[str, list[str | None]] = field(default_factory=dict)  # method -> each call's
    watch_cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, context: grpc.aio.ServicerContext, method: str) -> None:
        self.peers.add((context.auth_context().get("x509_common_name") or [b""])[0].decode())
        sent = [str(value) for key, value in context.invocation_metadata() or () if key == "authorization"]
        self.authorization.setdefault(method, []).append(sent[0] if sent else None)


async def check_token(tokens: Tokens, context: grpc.aio.ServicerContext, needed: Role, method: str) -> None:
    """Refuses the call as the mesh does (UNAUTHENTICATED, PERMISSION_DENIED) unless its token will do."""
    sent = next((str(value) for key, value in context.invocation_metadata() or () if key == "authorization"), None)
    try:
        tokens.require(sent, needed, method)
    except DayuError as error:
        await context.abort(grpc.StatusCode[error.status], str(error))


class Backend(backend_pb2_grpc.BackendServiceServicer):
    def __init__(self, seen: Seen, tokens: Tokens) -> None:
        self.seen = seen
        self.tokens = tokens

    async def ListPipelines(self, request, context):  # type: ignore[no-untyped-def]
        self.seen.note(context, "ListPipelines")
        await check_token(self.tokens, context, Role.READ, "dayu.v1.BackendService.ListPipelines")
        self.seen.pipeline_pages.append(request)
        start = int(request.page_token or 0)
        end = start + request.page_size
        return backend_pb2.ListPipelinesResponse(
            pipelines=[types_pb2.Pipeline(name=name) for name in PIPELINES[start:end]],
            next_page_token=str(end) if end < len(PIPELINES) else "",
        )


class Scheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, seen: Seen, tokens: Tokens) -> None:
        self.seen = seen
        self.tokens = tokens

    async def GetSchedulerStats(self, request, context):  # type: ignore[no-untyped-def]
        self.seen.note(context, "GetSchedulerStats")
        self.seen.stats_pages.append(request)
        start = int(request.page_token or 0)
        end = start + 2  # pages of two, whatever page_size says, so the client must follow the token
        return scheduler_pb2.GetSchedulerStatsResponse(
            streams=[scheduler_pb2.StreamSchedulingStats(stream_id=stream) for stream in STREAMS[start:end]],
            spans_received=5,
            next_page_token=str(end) if end < len(STREAMS) else "",
        )

    async def SetPolicy(self, request, context):  # type: ignore[no-untyped-def]
        self.seen.note(context, "SetPolicy")
        await check_token(self.tokens, context, Role.ADMIN, "dayu.v1.SchedulerService.SetPolicy")
        self.seen.policies.append(request)
        return scheduler_pb2.SetPolicyResponse(
            decision=decision_pb2.Decision(stream_id=request.stream_id, version=2, policy=request.policy.name)
        )

    async def WatchDecisions(self, request, context):  # type: ignore[no-untyped-def]
        self.seen.note(context, "WatchDecisions")
        try:
            for version in (2, 3):
                yield scheduler_pb2.WatchDecisionsResponse(
                    decision=decision_pb2.Decision(stream_id=request.stream_id, version=version)
                )
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.seen.watch_cancelled.set()
            raise


@dataclass(frozen=True)
class StandIns:
    """The stand-ins' addresses; an operator's certificate of their CA; one of a stranger CA; their
    admin and read-only tokens."""

    backend: str
    scheduler: str
    operator: Tls
    stranger: Tls
    seen: Seen
    admin_token: str
    read_token: str

    def args(self, *more: str, role: str | None = "admin") -> list[str]:
        """The flags to call them with: `--token` with their admin token (role "admin"), their
        read-only one ("read") or none (None)."""
        token = {"admin": ["--token", self.admin_token], "read": ["--token", self.read_token], None: []}[role]
        return ["--backend", self.backend, "--scheduler", self.scheduler, "--stream", STREAMS[0], *token, *more]


@asynccontextmanager
async def stand_ins(folder: Path) -> AsyncIterator[StandIns]:
    """Backend and scheduler stand-ins, each with a mesh certificate (CN backend.cloud, DNS name
    dayu-mesh), requiring client certificates of the same CA, and an admin or read-only token where
    the mesh does."""
    ca = make_ca()
    seen = Seen()
    # The admin token begins with "-", as a random one may: the examples must not take it for an option.
    admin_token, read_token = f"-{secrets.token_urlsafe(24)}", secrets.token_urlsafe(24)
    tokens = Tokens(admin=[admin_token], read=[read_token])
    servers: list[grpc.aio.Server] = []
    addresses = []
    try:
        for component, add, servicer in (
            ("backend", backend_pb2_grpc.add_BackendServiceServicer_to_server, Backend(seen, tokens)),
            ("scheduler", scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server, Scheduler(seen, tokens)),
        ):
            server = grpc.aio.server()
            servers.append(server)
            add(servicer, server)
            settings = issue(ca, component, "cloud").write(folder / component)
            port = server.add_secure_port("127.0.0.1:0", server_credentials(settings))
            await server.start()
            addresses.append(f"127.0.0.1:{port}")
        operator = tls_files(issue(ca, "operator", "example").write(folder / "operator"))
        stranger = tls_files(issue(make_ca(), "operator", "example").write(folder / "stranger"))
        yield StandIns(addresses[0], addresses[1], operator, stranger, seen, admin_token, read_token)
    finally:
        for server in servers:
            await server.stop(grace=0)
