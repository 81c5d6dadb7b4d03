"""Client side of the mesh: one channel per address, with the same message limits as the servers,
mutual TLS when the component has a certificate (dayu.runtime.tls), Prometheus metrics of every call
(dayu.runtime.metrics), and bounded retries for calls whose failure is transient."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from dayu.runtime.errors import RemoteError
from dayu.runtime.logs import get_logger
from dayu.runtime.metrics import RpcMeter, current_exemplar
from dayu.runtime.retry import TRANSIENT
from dayu.runtime.server import channel_options
from dayu.runtime.tls import TlsSettings, channel_credentials, open_channel
from dayu.runtime.tracing import client_interceptors

log = get_logger(__name__)
T = TypeVar("T")

# Statuses worth another try: the peer is down, restarting, overloaded or slow.
RETRYABLE = frozenset(getattr(grpc.StatusCode, name) for name in TRANSIENT)


class _Metered:
    """Counts every call of the channels it is on (dayu_grpc_client_*), per method, labelled with the
    calling component and node. A unary call's status is awaited here (the caller awaits it anyway);
    a stream's is taken when it ends, without holding the stream back."""

    def __init__(self, component: str, node: str) -> None:
        self.component, self.node = component, node
        self._meters: dict[str, RpcMeter] = {}
        self._ending: set[asyncio.Task[None]] = set()  # streams' statuses being taken (held: tasks are weak)

    def meter(self, details: grpc.aio.ClientCallDetails) -> RpcMeter:
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        meter = self._meters.get(method)
        if meter is None:  # methods are the contracts': a bounded set
            meter = self._meters[method] = RpcMeter("client", self.component, self.node, method.removeprefix("/"))
        return meter

    async def unary(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        meter = self.meter(details)
        meter.started()
        started, exemplar = time.perf_counter(), current_exemplar()
        code = grpc.StatusCode.UNKNOWN
        try:
            call = await continuation(details, request)
            code = await call.code()
            return call
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            meter.handled(code.name, time.perf_counter() - started, exemplar)

    async def stream(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        meter = self.meter(details)
        meter.started()
        started = time.perf_counter()
        call = await continuation(details, request)

        async def handled() -> None:
            meter.handled((await call.code()).name, time.perf_counter() - started)

        def done(_: object) -> None:  # a callback cannot await; the status is known by now: no wait
            ending = asyncio.ensure_future(handled())
            self._ending.add(ending)
            ending.add_done_callback(self._ending.discard)

        call.add_done_callback(done)
        return call


class _MeteredUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metered: _Metered) -> None:
        self.metered = metered

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self.metered.unary(continuation, client_call_details, request)


class _MeteredUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, metered: _Metered) -> None:
        self.metered = metered

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self.metered.stream(continuation, client_call_details, request)


class _MeteredStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, metered: _Metered) -> None:
        self.metered = metered

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await self.metered.stream(continuation, client_call_details, request_iterator)


def metered_interceptors(component: str, node: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that count the calls of a channel (dayu_grpc_client_*) for `component` on `node`."""
    metered = _Metered(component, node)
    return [_MeteredUnaryUnary(metered), _MeteredUnaryStream(metered), _MeteredStreamUnary(metered)]


class Channels:
    """Lazily opened channels to other components, keyed by HOST:PORT, closed together. Calls carry
    the caller's trace context in their metadata, and are counted in the client's gRPC metrics as
    `component`'s on `node`. With `tls` enabled, every channel is mutual TLS with the component's
    certificate; else plaintext."""

    def __init__(
        self, max_message_bytes: int, tls: TlsSettings | None = None, *, component: str = "", node: str = ""
    ) -> None:
        self._options = channel_options(max_message_bytes)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tls = tls if tls is not None and tls.enabled else None
        self._credentials = channel_credentials(self._tls) if self._tls is not None else None
        # Outermost first: the metrics time the whole call, the trace context goes on its metadata.
        self._interceptors = [*metered_interceptors(component, node), *client_interceptors()]

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_channel(
                address, self._tls, self._options, self._interceptors, self._credentials
            )
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)


async def with_retries(
    call: Callable[[], Awaitable[T]], *, attempts: int = 3, backoff_s: float = 0.1, what: str = "call"
) -> T:
    """Runs `call`, retrying retryable failures with exponential backoff; re-raises the last one."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRYABLE or attempt == attempts:
                raise
            log.debug("retrying", what=what, attempt=attempt, code=error.code().name)
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


async def remote(call: Awaitable[T]) -> T:
    """The call's result; a gRPC failure raised as the transport-free RemoteError that cores catch."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise RemoteError(error.code().name, error.details() or "") from error


async def remote_stream(stream: AsyncIterator[T]) -> AsyncIterator[T]:
    """The stream's messages; a gRPC failure raised as RemoteError, as `remote` does."""
    try:
        async for message in stream:
            yield message
    except grpc.aio.AioRpcError as error:
        raise RemoteError(error.code().name, error.details() or "") from error
