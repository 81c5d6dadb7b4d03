"""The one way to run a Dayu component as a gRPC server (grpc.aio).

Every component gets the same things here, so no service writes them again:
- its dayu.v1 services, registered from their descriptors, with request parsing that answers
  INVALID_ARGUMENT (not INTERNAL) for bytes that are not the expected message;
- errors raised by the core (dayu.runtime.errors) mapped to their gRPC status;
- gRPC health checking (grpc.health.v1) and server reflection; with server.health_listen, health
  also on a plaintext port of its own (kubelet probes speak no TLS);
- mutual TLS when the settings name certificates (dayu.runtime.tls);
- message size limits;
- the caller's W3C trace context (gRPC metadata) made current while a request is handled;
- Prometheus metrics of every call (started, handled per status code, handling time, with the
  caller's trace id as exemplar), and, with metrics.listen, /metrics served (dayu.runtime.metrics);
- graceful shutdown: health turns NOT_SERVING, new calls are refused, in-flight calls finish
  (within server.shutdown_grace_s), then the component's own background work is stopped and its
  spans flushed;
- supervised background work: a loop that fails is logged and started again, never silently gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context

from dayu.runtime.auth import Guard
from dayu.runtime.config import ComponentSettings
from dayu.runtime.errors import DayuError, InvalidArgument, ResourceExhausted, cut
from dayu.runtime.limits import request_bytes
from dayu.runtime.logs import get_logger
from dayu.runtime.memory import freeze_what_started
from dayu.runtime.metrics import MetricsServer, RpcMeter, current_exemplar, rpc_method
from dayu.runtime.tls import server_credentials
from dayu.runtime.tracing import Tracing, extract
from dayu.runtime.validation import check_request

log = get_logger(__name__)

RESTART_BACKOFF_S = (0.5, 10.0)  # wait before a failed background loop runs again: first, longest


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (a server binds it a moment later)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` different ports nobody listens on now: bound all at once, so none is given twice.

    They come from below the kernel's ephemeral range where it leaves room: a port from that range,
    free when probed, can become the local port of any connection opened before its server binds it
    (a mesh opens many while it starts), and the bind then fails with "address already in use"."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        candidates = _below_ephemeral(count * PROBE_TRIES)
        for probe in probes:
            _bind_probe(probe, host, candidates)
        return [int(probe.getsockname()[1]) for probe in probes]


PROBED_PORTS_FROM = 10000  # the lowest port free_ports picks; below it lie well-known services
PROBE_TRIES = 64  # ports tried for each one asked, before any port the kernel gives


def _below_ephemeral(count: int) -> list[int]:
    """At most `count` random ports from PROBED_PORTS_FROM up to the kernel's ephemeral range (never a
    connection's local port); none where the range starts lower or cannot be read."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    ports = range(PROBED_PORTS_FROM, low)
    # Random, so that processes picking at once rarely try the same ports.
    return random.SystemRandom().sample(ports, min(count, len(ports)))


def _bind_probe(probe: socket.socket, host: str, candidates: list[int]) -> None:
    """Binds the probe to one of the candidates (consumed as tried), else to any port."""
    while candidates:
        with contextlib.suppress(OSError):
            probe.bind((host, candidates.pop()))
            return
    probe.bind((host, 0))


@dataclass(frozen=True)
class Binding:
    """A servicer object serving one dayu.v1 service, named in full (e.g. "dayu.v1.MonitorService").

    The servicer has one coroutine method per RPC that it implements (async generators for
    server streams); RPCs it leaves out answer UNIMPLEMENTED. `guard`, when given, sees each call's
    method and authorization metadata before anything else, and refuses it by raising (dayu.runtime.auth)."""

    service: str
    servicer: object
    guard: Guard | None = None


class Component:
    """What a service package hands to the runtime: its bindings and its lifecycle.

    Subclasses keep gRPC out of their core: they only implement servicer methods that call the
    core, and start()/stop() for background work."""

    name = "component"
    tracing: Tracing | None = None  # set by components whose cores make spans

    def bindings(self) -> Sequence[Binding]:
        raise NotImplementedError

    async def start(self) -> None:
        """Starts background work (see background()); called before the server accepts calls."""

    async def stop(self) -> None:
        """Releases what the component holds; called after in-flight calls have finished and its
        background work was cancelled."""

    def background(self, work: Callable[..., Awaitable[None]], *args: Any, name: str = "") -> asyncio.Task[None]:
        """Runs `work(*args)` for as long as the component lives, under supervision: when it raises,
        the exception is logged and it is called again after a backoff (RESTART_BACKOFF_S, doubling;
        from the start again after a run longer than the longest wait); when it returns, it is done.
        The server cancels it when it stops. `work` is a coroutine function, not a coroutine: a
        coroutine cannot be run again. `name` (for the logs) defaults to the function's name. Returns
        the supervising task (cancel it to stop the work for good)."""
        if not callable(work):
            raise TypeError(f"background() takes a coroutine function and its arguments, not {work!r}")
        name = name or getattr(work, "__qualname__", repr(work))
        tasks: set[asyncio.Task[None]] = vars(self).setdefault("_background_tasks", set())
        task = asyncio.create_task(self._supervise(work, args, name), name=f"{self.name}:{name}")
        tasks.add(task)
        task.add_done_callback(tasks.discard)  # loops that ended are not kept
        return task

    async def _supervise(self, work: Callable[..., Awaitable[None]], args: tuple[Any, ...], name: str) -> None:
        loop = asyncio.get_running_loop()
        backoff = RESTART_BACKOFF_S[0]
        while True:
            started = loop.time()
            try:
                await work(*args)
                return
            except Exception:
                if loop.time() - started > RESTART_BACKOFF_S[1]:
                    backoff = RESTART_BACKOFF_S[0]  # it had been running well: this is a new failure
                log.exception(
                    "background loop failed; restarting", component=self.name, loop=name, restart_in_s=backoff
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_S[1])

    async def cancel_background(self) -> None:
        tasks: set[asyncio.Task[None]] = vars(self).pop("_background_tasks", set())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _implementation(servicer: object, method: str) -> Callable[..., Any] | None:
    """The servicer's own method for an RPC, or None when only a generated base class has it."""
    for cls in type(servicer).__mro__:
        if method in vars(cls):
            return None if cls.__module__.endswith("_pb2_grpc") else getattr(servicer, method)
    return None


def _parse(request_class: type[Message], raw: bytes, max_bytes: int) -> Message:
    if len(raw) > max_bytes:  # before parsing: an oversized request costs nothing but its transfer
        raise ResourceExhausted(
            f"request: a {request_class.DESCRIPTOR.full_name} of at most {max_bytes} bytes, got {len(raw)}"
        )
    request = request_class()
    try:
        request.ParseFromString(raw)
    except DecodeError as error:
        raise InvalidArgument(
            "request", f"a serialized {request_class.DESCRIPTOR.full_name} message ({error})"
        ) from None
    if request.DESCRIPTOR.file.package == "dayu.v1":  # foreign contracts (OTLP spans) keep their own rules
        check_request(request)  # at the door, for every RPC: enums in the contract, fields within limits
    return request


MAX_DETAILS_CHARS = 1024  # a status's details travel as metadata: a client refuses more than 8 KiB of it


def _details(text: str) -> str:
    """Status details, cut where an error quoted too much (fields are bounded; this is the backstop)."""
    return cut(text, MAX_DETAILS_CHARS)


async def _abort(context: grpc.aio.ServicerContext, method: str, error: Exception) -> None:
    if isinstance(error, DayuError):
        await context.abort(grpc.StatusCode[error.status], _details(str(error)))
    log.exception("rpc failed", method=method)
    await context.abort(grpc.StatusCode.INTERNAL, _details(f"{method} failed: {type(error).__name__}: {error}"))


ON_LOOP_BYTES = 1 << 20  # requests larger than this are parsed on a thread, off the event loop


def _serialize(response: Message | bytes) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def _holds_bytes(message: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a message of this type can hold bytes (frames, payloads), at any depth."""
    seen = seen | {message.full_name}
    return any(
        field.type == FieldDescriptor.TYPE_BYTES
        or (
            field.message_type is not None
            and field.message_type.full_name not in seen
            and _holds_bytes(field.message_type, seen)
        )
        for field in message.fields
    )


def _heavy_fields(message: Descriptor) -> tuple[FieldDescriptor, ...]:
    """The fields through which a response of this type can be large: those that can hold bytes, and
    repeated messages (pages of records). (Serializing 30 MB takes upb about 80 ms, and so does only
    asking its size.)"""
    return tuple(
        field
        for field in message.fields
        if field.type == FieldDescriptor.TYPE_BYTES
        or (field.message_type is not None and (field.is_repeated or _holds_bytes(field.message_type)))
    )


def _serializer(message: Descriptor) -> Callable[[Any], Awaitable[Any]]:
    """How a handler passes on its responses of this type: serialized on a thread when one of its heavy
    fields is set (what can be large), else as they are, serialized on the event loop by grpc, which
    costs less than a thread's round trip for a small message."""
    heavy = _heavy_fields(message)

    async def serialized(response: Any) -> Any:
        if isinstance(response, Message) and any(_is_set(response, field) for field in heavy):
            return await asyncio.to_thread(response.SerializeToString)
        return response

    return serialized


def _is_set(message: Message, field: FieldDescriptor) -> bool:
    if field.is_repeated or field.type == FieldDescriptor.TYPE_BYTES:
        return len(getattr(message, field.name)) > 0
    return message.HasField(field.name)


_HANDLER_KINDS = {  # (client streaming, server streaming) -> grpc handler factory
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


async def _until_draining(responses: AsyncIterator[Any], draining: asyncio.Event) -> AsyncIterator[Any]:
    """The responses of a server stream, cut off when the server starts draining: live streams
    (frames, decisions, records) never end by themselves and would hold shutdown for the whole
    grace period."""
    stop = asyncio.ensure_future(draining.wait())
    following: asyncio.Future[Any] | None = None
    try:
        while True:
            following = asyncio.ensure_future(anext(responses))
            await asyncio.wait({following, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                raise ShuttingDown()
            try:
                yield following.result()
            except StopAsyncIteration:
                return
    finally:
        stop.cancel()
        if following is not None and not following.done():
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
        await responses.aclose()  # type: ignore[attr-defined]


class ShuttingDown(DayuError):
    status = "UNAVAILABLE"

    def __init__(self) -> None:
        super().__init__("server is shutting down; reconnect")


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(value)
    return None


def _code(context: grpc.aio.ServicerContext) -> str:
    """The status a call was aborted with (context.abort), by name."""
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN.name


def _failed(error: Exception) -> str:
    """The status _abort answers an error with, by name."""
    return error.status if isinstance(error, DayuError) else grpc.StatusCode.INTERNAL.name


def _handler(
    method: MethodDescriptor,
    behavior: Callable[..., Any] | None,
    draining: asyncio.Event,
    server_limit: int,
    guard: Guard | None = None,
    meter: RpcMeter | None = None,
) -> grpc.RpcMethodHandler:
    """Wraps a servicer method: parses raw request bytes itself (so garbage is INVALID_ARGUMENT),
    maps core errors to statuses, ends server streams when the server drains, and counts each call
    and its status in `meter`."""
    meter = meter or RpcMeter("server", "", "", rpc_method(method))
    request_class = message_factory.GetMessageClass(method.input_type)
    name = method.full_name
    max_bytes = request_bytes(name, server_limit)
    # Responses that can be large (pages of records, frames, results) are serialized on a thread.
    _serialized = _serializer(method.output_type)
    kind = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]

    if behavior is None:

        async def unimplemented(request: Any, context: grpc.aio.ServicerContext) -> None:
            meter.started()
            meter.handled(grpc.StatusCode.UNIMPLEMENTED.name, 0.0)
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by this component")

        return kind(unimplemented, response_serializer=_serialize)

    async def parse(raw: bytes) -> Message:
        if ON_LOOP_BYTES < len(raw) <= max_bytes:  # a large request is parsed and checked off the event loop
            return await asyncio.to_thread(_parse, request_class, raw, max_bytes)
        return _parse(request_class, raw, max_bytes)

    async def parsed_stream(raw_requests: AsyncIterator[bytes]) -> AsyncIterator[Message]:
        async for raw in raw_requests:
            yield await parse(raw)

    async def parsed(raw: Any, context: grpc.aio.ServicerContext) -> Any:
        if guard is not None:  # before the request is even parsed: a stranger's call costs nothing
            guard(name, _authorization(context))
        return parsed_stream(raw) if method.client_streaming else await parse(raw)

    async def unary_response(raw: Any, context: grpc.aio.ServicerContext) -> Any:
        token = otel_context.attach(extract(context.invocation_metadata()))
        meter.started()
        started, code = time.perf_counter(), "OK"
        try:
            return await _serialized(await behavior(await parsed(raw, context), context))
        except grpc.aio.AbortError:
            code = _code(context)
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED.name
            raise
        except Exception as error:
            code = _failed(error)
            await _abort(context, name, error)
        finally:
            meter.handled(code, time.perf_counter() - started, current_exemplar())
            otel_context.detach(token)

    async def streamed_response(raw: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        meter.started()
        started, code = time.perf_counter(), "OK"
        try:
            async for response in _until_draining(behavior(await parsed(raw, context), context), draining):
                yield await _serialized(response)
        except grpc.aio.AbortError:
            code = _code(context)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED.name
            raise
        except Exception as error:
            code = _failed(error)
            await _abort(context, name, error)
        finally:
            meter.handled(code, time.perf_counter() - started)

    return kind(streamed_response if method.server_streaming else unary_response, response_serializer=_serialize)


def _service_handler(
    binding: Binding, draining: asyncio.Event, server_limit: int, component: str = "", node: str = ""
) -> tuple[ServiceDescriptor, grpc.GenericRpcHandler]:
    try:
        service = descriptor_pool.Default().FindServiceByName(binding.service)
    except KeyError:
        raise ValueError(f"unknown service {binding.service!r}: import its dayu.v1 module first") from None
    handlers = {
        m.name: _handler(
            m,
            _implementation(binding.servicer, m.name),
            draining,
            server_limit,
            binding.guard,
            RpcMeter("server", component, node, rpc_method(m)),
        )
        for m in service.methods
    }
    return service, grpc.method_handlers_generic_handler(service.full_name, handlers)


KEEPALIVE_S = (10, 5)  # a ping after this many idle seconds; the peer is gone without an answer in that many


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Options shared by servers and clients, so both sides agree on message size limits, and on
    keepalive pings: a long-lived stream (decisions, frames, records) to a peer that vanished (killed,
    partitioned) fails within 15 s, and its caller reconnects, instead of waiting forever."""
    every_ms, answer_ms = KEEPALIVE_S[0] * 1000, KEEPALIVE_S[1] * 1000
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", every_ms),
        ("grpc.keepalive_timeout_ms", answer_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # The server side: accept the clients' pings (its default would call them abuse, GOAWAY).
        ("grpc.http2.min_recv_ping_interval_without_data_ms", every_ms // 2),
        ("grpc.http2.min_ping_interval_without_data_ms", every_ms // 2),
    ]


WORKERS = min(32, (os.cpu_count() or 1) + 4)  # the loop's worker threads (asyncio.to_thread), as Python sizes them
_with_workers: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def _start_workers(loop: asyncio.AbstractEventLoop) -> None:
    """Gives the loop its worker threads now, all of them, once per loop (the embedded mesh serves every
    component on one): left to itself the pool adds one at each new peak of concurrent work, and a
    component's threads would creep up for a while."""
    if loop in _with_workers:
        return
    executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="dayu-worker")
    started = threading.Barrier(WORKERS + 1)
    for _ in range(WORKERS):
        executor.submit(started.wait)  # each waits for the others: the pool must start a thread for each
    started.wait()
    loop.set_default_executor(executor)
    _with_workers.add(loop)


def _bound(listen: str, port: int) -> str:
    """HOST:PORT as bound: the host asked for, the port given (port 0 picks one)."""
    return f"{listen.rsplit(':', 1)[0]}:{port}"


class ComponentServer:
    """A component served over gRPC on one port: start(), then stop() or run_until_signal()."""

    def __init__(self, component: Component, settings: ComponentSettings) -> None:
        self.component = component
        self.settings = settings
        self.port = 0
        self.health_port = 0  # of the plaintext health server (server.health_listen), when there is one
        self.metrics: MetricsServer | None = None  # /metrics (metrics.listen), when served
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._services: list[str] = []
        self._draining = asyncio.Event()

    @property
    def address(self) -> str:
        return _bound(self.settings.server.listen, self.port)

    async def start(self) -> str:
        """Binds, starts the component and the server, and reports SERVING. Returns HOST:PORT."""
        _start_workers(asyncio.get_running_loop())
        # No SO_REUSEPORT: a port taken already fails here, rather than two servers sharing its calls.
        options = [*channel_options(self.settings.server.max_message_bytes), ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(options=options)
        for binding in self.component.bindings():
            service, handler = _service_handler(
                binding,
                self._draining,
                self.settings.server.max_message_bytes,
                self.component.name,
                self.settings.node,
            )
            server.add_generic_rpc_handlers((handler,))
            self._services.append(service.full_name)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection([*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        tls = self.settings.tls
        listen = self.settings.server.listen
        self.port = (
            server.add_secure_port(listen, server_credentials(tls)) if tls.enabled else server.add_insecure_port(listen)
        )
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")
        health_server = self._health_only_server()
        self._server = server
        await self.component.start()
        await server.start()
        if health_server is not None:
            await health_server.start()
            self._health_server = health_server
        for name in ("", *self._services):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._serve_metrics()
        freeze_what_started()  # its full collections would hold the loop (runtime/memory.py)
        log.info(
            "serving",
            component=self.component.name,
            address=self.address,
            services=self._services,
            tls=tls.enabled,
            **({"health_address": self.health_address} if self.health_port else {}),
            **({"metrics": self.metrics.url} if self.metrics else {}),
        )
        return self.address

    def _serve_metrics(self) -> None:
        """/metrics where metrics.listen says. One that cannot listen is logged, not fatal: the
        component serves the mesh all the same (metrics are for watching it, not running it)."""
        listen = self.settings.metrics.listen
        if not listen:
            return
        metrics = MetricsServer(listen)
        try:
            metrics.start()
        except OSError as error:
            log.error("metrics not served: cannot listen", listen=listen, error=str(error))
            return
        self.metrics = metrics

    @property
    def health_address(self) -> str:
        return _bound(self.settings.server.health_listen, self.health_port)

    def _health_only_server(self) -> grpc.aio.Server | None:
        """The plaintext server of server.health_listen: grpc.health.v1 only, from the same servicer,
        so a drain (NOT_SERVING) shows there as on the component's port."""
        listen = self.settings.server.health_listen
        if not listen:
            return None
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.health_port = server.add_insecure_port(listen)
        if self.health_port == 0:
            raise OSError(f"cannot listen on {listen} (server.health_listen)")
        return server

    async def stop(self, grace: float | None = None) -> None:
        """Refuses new calls, lets in-flight calls finish within the grace period, then stops the
        component's background work."""
        if self._server is None:
            return
        grace = self.settings.server.shutdown_grace_s if grace is None else grace
        log.info("draining", component=self.component.name, grace_s=grace)
        await self._health.enter_graceful_shutdown()
        self._draining.set()
        await self._server.stop(grace)
        self._server = None
        if self._health_server is not None:  # answered NOT_SERVING through the drain
            await self._health_server.stop(0)
            self._health_server = None
        await self.component.cancel_background()
        await self.component.stop()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
            self.metrics = None
        if self.component.tracing is not None:
            await asyncio.to_thread(self.component.tracing.shutdown)
        log.info("stopped", component=self.component.name)

    async def run_until_signal(self) -> None:
        """Serves until SIGTERM or SIGINT, then stops gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
