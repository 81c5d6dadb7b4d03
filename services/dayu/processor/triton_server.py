"""A node's Triton Inference Server when the node has no other: the tritonserver binary that ships in
the nvidia-pytriton wheel (CPU only, Python backend only), started on a model repository, waited for
until every model is ready, and stopped with SIGTERM. Also reads any Triton's own statistics.

What the binary needs, measured (docs/inference.md): the Python-backend stub for this interpreter's
version in the backend directory; LD_LIBRARY_PATH with this interpreter's libpython directory (else
the stub loads the system libpython and model init fails with "'_thread.RLock' object has no
attribute '_recursion_count'"); and this interpreter's bin directory first on PATH, so the stub's
embedded Python finds the environment with numpy and onnxruntime.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from dayu.runtime.client import RETRYABLE
from dayu.runtime.errors import Unavailable
from dayu.runtime.logs import get_logger
from dayu.runtime.server import free_port, free_ports
from dayu.runtime.tls import TARGET_NAME_OPTION, TlsSettings

log = get_logger(__name__)
# Statuses worth another try (Triton is down, restarting, overloaded or slow), as tritonclient names them.
RETRYABLE_STATUSES = frozenset(code.name for code in RETRYABLE)


def retryable(error: InferenceServerException) -> bool:
    """Whether tritonclient's error is one of RETRYABLE_STATUSES."""
    return (error.status() or "").removeprefix("StatusCode.") in RETRYABLE_STATUSES


# Seconds Triton waits for in-flight inferences at SIGTERM, and the margin this side waits beyond.
EXIT_TIMEOUT_S = 5
STOP_MARGIN_S = 10
LOG_TAIL_LINES = 5
ERROR_LINE = re.compile(r"E\d{4} ")


def _wheel_server_dir() -> Path:
    """The tritonserver distribution inside the nvidia-pytriton wheel (found without importing pytriton)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("nvidia-pytriton is not installed: it ships the tritonserver binary")
    return Path(spec.origin).parent / "tritonserver"


def backend_directory(workdir: Path) -> Path:
    """The wheel's backends with the Python-backend stub for this interpreter (the wheel keeps one per
    Python version aside), as links in `workdir`: the wheel's own directory is left untouched."""
    wheel = _wheel_server_dir()
    python_dir = workdir / "triton-backends" / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    links = {
        "libtriton_python.so": wheel / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": wheel / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": wheel / "python_backend_stubs" / version / "triton_python_backend_stub",
    }
    for name, target in links.items():
        if not target.exists():
            raise FileNotFoundError(f"{target} is missing from nvidia-pytriton (Python {version})")
        link = python_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return python_dir.parent


def client_arguments(tls: TlsSettings | None, channel_args: list[tuple[str, Any]] | None = None) -> dict[str, Any]:
    """tritonclient's InferenceServerClient keyword arguments: mutual TLS with the component's
    certificate, verifying Triton as `dayu-mesh` (as every mesh server), when `tls` is enabled."""
    arguments: dict[str, Any] = {} if channel_args is None else {"channel_args": list(channel_args)}
    if tls is not None and tls.enabled:
        arguments.update(
            ssl=True,
            root_certificates=tls.ca_file,
            private_key=tls.key_file,
            certificate_chain=tls.cert_file,
            channel_args=[*(channel_args or []), TARGET_NAME_OPTION],
        )
    return arguments


def server_arguments(tls: TlsSettings | None) -> list[str]:
    """tritonserver's flags for mutual TLS on its gRPC endpoint with a mesh certificate (none without)."""
    if tls is None or not tls.enabled:
        return []
    return [
        "--grpc-use-ssl=true",
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={tls.cert_file}",
        f"--grpc-server-key={tls.key_file}",
        f"--grpc-root-cert={tls.ca_file}",
    ]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
    return env


def model_control_arguments(load_models: list[str]) -> list[str]:
    """tritonserver's flags for explicit model control: these models loaded at start, the others of the
    repository only when a client asks (the repository API's load_model; unload_model frees one). The
    mesh's Tritons (dayu.mesh.plan.triton_arguments) and TritonServer(load_models=...) use these."""
    return ["--model-control-mode=explicit", *(f"--load-model={name}" for name in load_models)]


class TritonStartError(Unavailable):
    """tritonserver exited or did not become ready; the message ends with its log."""


@dataclass(frozen=True)
class ModelStatistics:
    """One model version's counters, as Triton reports them (cumulative since it started)."""

    inferences: int  # batch elements inferred (frames, crops)
    executions: int  # model calls (a batch is one)
    requests: int  # successful requests
    failures: int
    request_ms: float  # mean time of a successful request inside Triton
    queue_ms: float  # mean time a request waited for an instance
    compute_ms: float  # mean time of the model itself per request (input, inference, output)

    def as_dict(self) -> dict[str, float | int]:
        return dict(vars(self))


def _mean_ms(duration: object) -> float:
    count, ns = getattr(duration, "count", 0), getattr(duration, "ns", 0)
    return ns / count / 1e6 if count else 0.0


async def model_statistics(
    address: str, timeout_s: float = 5.0, tls: TlsSettings | None = None
) -> dict[str, ModelStatistics]:
    """Statistics of every model version Triton at `address` has served, keyed "name:version"."""
    async with triton_grpc.InferenceServerClient(address, **client_arguments(tls)) as client:
        reply = await client.get_inference_statistics(client_timeout=timeout_s)
    statistics = {}
    for model in reply.model_stats:
        stats = model.inference_stats
        compute = stats.compute_input.ns + stats.compute_infer.ns + stats.compute_output.ns
        statistics[f"{model.name}:{model.version}"] = ModelStatistics(
            inferences=model.inference_count,
            executions=model.execution_count,
            requests=stats.success.count,
            failures=stats.fail.count,
            request_ms=_mean_ms(stats.success),
            queue_ms=_mean_ms(stats.queue),
            compute_ms=compute / stats.compute_infer.count / 1e6 if stats.compute_infer.count else 0.0,
        )
    return statistics


async def statistics_of(
    addresses: list[str], tls: TlsSettings | None = None
) -> dict[str, dict[str, dict[str, float | int]]]:
    """Each Triton's statistics per model as plain counters (a run's summary); one that does not
    answer is left out, with a warning."""
    found = {}
    for address in addresses:
        try:
            stats = await model_statistics(address, tls=tls)
        except Exception as error:  # the summary goes on without them
            log.warning("no triton statistics", address=address, error=str(error))
            continue
        found[address] = {model: counters.as_dict() for model, counters in stats.items()}
    return found


async def wait_until_ready(
    address: str,
    timeout_s: float,
    process: asyncio.subprocess.Process | None = None,
    tls: TlsSettings | None = None,
) -> None:
    """Returns once Triton at `address` says it is ready (the models it loads at start loaded); raises
    TimeoutError, or TritonStartError when `process` exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    async with triton_grpc.InferenceServerClient(address, **client_arguments(tls)) as client:
        while True:
            if process is not None and process.returncode is not None:
                raise TritonStartError(f"tritonserver exited with {process.returncode}")
            with contextlib.suppress(InferenceServerException):
                if await client.is_server_ready(client_timeout=1):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Triton at {address} not ready after {timeout_s:g} s")
            await asyncio.sleep(0.1)


class TritonServer:
    """One tritonserver process on loopback, gRPC only, serving `repository`; its log goes to
    `workdir/tritonserver.log`. Start it before the processors that use it, stop it after them. With
    `tls`, its gRPC endpoint is mutual TLS with that certificate (the processors' clients show theirs).
    With `metrics_port` (0: a free one), it also serves its own Prometheus metrics (inference counts
    and durations per model, CPU and memory) over HTTP on loopback, at metrics_url. With `load_models`
    (a list, maybe empty), it runs in explicit model control mode: it loads those models at start and
    the others when a client asks (the repository API's load_model and unload_model: deployable
    processors); without, every model of the repository at start, and the API refuses loads."""

    def __init__(
        self,
        repository: Path,
        workdir: Path,
        *,
        grpc_port: int = 0,
        model_config_name: str = "",
        startup_timeout_s: float = 120.0,
        tls: TlsSettings | None = None,
        metrics_port: int | None = None,
        load_models: list[str] | None = None,
    ) -> None:
        self.repository, self.workdir = repository, workdir
        self.load_models = load_models
        self.tls = tls
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.model_config_name = model_config_name
        self.startup_timeout_s = startup_timeout_s
        self.log_path = workdir / "tritonserver.log"
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Its Prometheus metrics (empty without: metrics_port None, or not started yet)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else ""

    def _metrics_arguments(self) -> list[str]:
        if self.metrics_port is None:
            return ["--allow-metrics=false"]
        return [
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",  # the wheel's build is CPU only
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
        ]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def _command(self, backends: Path) -> list[str]:
        command = [
            str(_wheel_server_dir() / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--allow-http=false",
            *self._metrics_arguments(),
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            *server_arguments(self.tls),
        ]
        if self.model_config_name:
            command.append(f"--model-config-name={self.model_config_name}")
        if self.load_models is not None:  # explicit model control: these at start, the rest through the API
            command += model_control_arguments(self.load_models)
        return command

    async def start(self) -> str:
        """Starts the server (again, after a stop: on the same port) and returns its address once ready."""
        if self.running:
            return self.address
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.grpc_port = self.grpc_port or free_port()
        if self.metrics_port == 0:
            self.metrics_port = next(port for port in free_ports(2) if port != self.grpc_port)
        command = self._command(backend_directory(self.workdir))
        self._log = self.log_path.open("ab")
        # A session of its own: Ctrl-C on the mesh reaches the mesh, which stops Triton last, in order.
        self._process = await asyncio.create_subprocess_exec(
            *command, stdout=self._log, stderr=asyncio.subprocess.STDOUT, env=_environment(), start_new_session=True
        )
        started = time.monotonic()
        try:
            await wait_until_ready(self.address, self.startup_timeout_s, self._process, self.tls)
        except (TimeoutError, TritonStartError) as error:
            await self.stop()
            raise TritonStartError(f"{error}; log {self.log_path}:\n{self.log_tail()}") from None
        log.info("triton ready", address=self.address, seconds=round(time.monotonic() - started, 2))
        return self.address

    async def stop(self) -> int | None:
        """SIGTERM (Triton lets in-flight inferences finish), SIGKILL if it outlives its exit timeout;
        returns the exit status, None when it was not running."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S + STOP_MARGIN_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        log.info("triton stopped", address=self.address, returncode=process.returncode)
        return process.returncode

    def log_tail(self) -> str:
        """Its error lines (glog's "E" lines) and last lines: what says why it stopped, without its tables."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [line for line in lines if ERROR_LINE.match(line)]
        return "\n".join(dict.fromkeys(errors[-LOG_TAIL_LINES:] + lines[-LOG_TAIL_LINES:]))
