"""The one way to run a Dayu component as a gRPC server (grpc.aio).

Every component gets the same things here, so no service writes them again:
- its dayu.v1 services, registered from their descriptors, with request parsing that answers
  INVALID_ARGUMENT (not INTERNAL) for bytes that are not the expected message;
- errors raised by the core (dayu.runtime.errors) mapped to their gRPC status;
- gRPC health checking (grpc.health.v1) and server reflection;
- message size limits;
- the caller's W3C trace context (gRPC metadata) made current while a request is handled;
- graceful shutdown: health turns NOT_SERVING, new calls are refused, in-flight calls finish
  (within server.shutdown_grace_s), then the component's own background work is stopped and its
  spans flushed;
- supervised background work: a loop that fails is logged and started again, never silently gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context

from dayu.runtime.config import ComponentSettings
from dayu.runtime.errors import DayuError, InvalidArgument
from dayu.runtime.logs import get_logger
from dayu.runtime.tracing import Tracing, extract
from dayu.runtime.validation import check_enums

log = get_logger(__name__)

RESTART_BACKOFF_S = (0.5, 10.0)  # wait before a failed background loop runs again: first, longest


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (a server binds it a moment later)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` different ports nobody listens on now: bound all at once, so none is given twice."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [int(probe.getsockname()[1]) for probe in probes]


@dataclass(frozen=True)
class Binding:
    """A servicer object serving one dayu.v1 service, named in full (e.g. "dayu.v1.MonitorService").

    The servicer has one coroutine method per RPC that it implements (async generators for
    server streams); RPCs it leaves out answer UNIMPLEMENTED."""

    service: str
    servicer: object


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

    def background(self, work: Callable[..., Awaitable[None]], *args: Any, name: str = "") -> None:
        """Runs `work(*args)` for as long as the component lives, under supervision: when it raises,
        the exception is logged and it is called again after a backoff (RESTART_BACKOFF_S, doubling;
        from the start again after a run longer than the longest wait); when it returns, it is done.
        The server cancels it when it stops. `work` is a coroutine function, not a coroutine: a
        coroutine cannot be run again. `name` (for the logs) defaults to the function's name."""
        if not callable(work):
            raise TypeError(f"background() takes a coroutine function and its arguments, not {work!r}")
        name = name or getattr(work, "__qualname__", repr(work))
        tasks: set[asyncio.Task[None]] = vars(self).setdefault("_background_tasks", set())
        task = asyncio.create_task(self._supervise(work, args, name), name=f"{self.name}:{name}")
        tasks.add(task)
        task.add_done_callback(tasks.discard)  # loops that ended are not kept

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


def _parse(request_class: type[Message], raw: bytes) -> Message:
    request = request_class()
    try:
        request.ParseFromString(raw)
    except DecodeError as error:
        raise InvalidArgument(
            "request", f"a serialized {request_class.DESCRIPTOR.full_name} message ({error})"
        ) from None
    check_enums(request)  # at the door, for every RPC: no number outside the contract gets in
    return request


async def _abort(context: grpc.aio.ServicerContext, method: str, error: Exception) -> None:
    if isinstance(error, DayuError):
        await context.abort(grpc.StatusCode[error.status], str(error))
    log.exception("rpc failed", method=method)
    await context.abort(grpc.StatusCode.INTERNAL, f"{method} failed: {type(error).__name__}: {error}")


def _serialize(response: Message) -> bytes:
    return response.SerializeToString()


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


def _handler(
    method: MethodDescriptor, behavior: Callable[..., Any] | None, draining: asyncio.Event
) -> grpc.RpcMethodHandler:
    """Wraps a servicer method: parses raw request bytes itself (so garbage is INVALID_ARGUMENT),
    maps core errors to statuses, and ends server streams when the server drains."""
    request_class = message_factory.GetMessageClass(method.input_type)
    name = method.full_name
    kind = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]

    if behavior is None:

        async def unimplemented(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by this component")

        return kind(unimplemented, response_serializer=_serialize)

    async def parsed_stream(raw_requests: AsyncIterator[bytes]) -> AsyncIterator[Message]:
        async for raw in raw_requests:
            yield _parse(request_class, raw)

    def parsed(raw: Any) -> Any:
        return parsed_stream(raw) if method.client_streaming else _parse(request_class, raw)

    async def unary_response(raw: Any, context: grpc.aio.ServicerContext) -> Any:
        token = otel_context.attach(extract(context.invocation_metadata()))
        try:
            return await behavior(parsed(raw), context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, name, error)
        finally:
            otel_context.detach(token)

    async def streamed_response(raw: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in _until_draining(behavior(parsed(raw), context), draining):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, name, error)

    return kind(streamed_response if method.server_streaming else unary_response, response_serializer=_serialize)


def _service_handler(binding: Binding, draining: asyncio.Event) -> tuple[ServiceDescriptor, grpc.GenericRpcHandler]:
    try:
        service = descriptor_pool.Default().FindServiceByName(binding.service)
    except KeyError:
        raise ValueError(f"unknown service {binding.service!r}: import its dayu.v1 module first") from None
    handlers = {m.name: _handler(m, _implementation(binding.servicer, m.name), draining) for m in service.methods}
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


class ComponentServer:
    """A component served over gRPC on one port: start(), then stop() or run_until_signal()."""

    def __init__(self, component: Component, settings: ComponentSettings) -> None:
        self.component = component
        self.settings = settings
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._services: list[str] = []
        self._draining = asyncio.Event()

    @property
    def address(self) -> str:
        host = self.settings.server.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> str:
        """Binds, starts the component and the server, and reports SERVING. Returns HOST:PORT."""
        # No SO_REUSEPORT: a port taken already fails here, rather than two servers sharing its calls.
        options = [*channel_options(self.settings.server.max_message_bytes), ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(options=options)
        for binding in self.component.bindings():
            service, handler = _service_handler(binding, self._draining)
            server.add_generic_rpc_handlers((handler,))
            self._services.append(service.full_name)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection([*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        self.port = server.add_insecure_port(self.settings.server.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.server.listen}")
        self._server = server
        await self.component.start()
        await server.start()
        for name in ("", *self._services):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", component=self.component.name, address=self.address, services=self._services)
        return self.address

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
        await self.component.cancel_background()
        await self.component.stop()
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
