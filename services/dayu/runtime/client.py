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
from dayu.runtime.tracing import with_trace_context

log = get_logger(__name__)
T = TypeVar("T")
S = TypeVar("S")

# Statuses worth another try: the peer is down, restarting, overloaded or slow.
RETRYABLE = frozenset(getattr(grpc.StatusCode, name) for name in TRANSIENT)


class _Metered:
    """Counts every call of a channel (dayu_grpc_client_*), per method, labelled with the calling
    component and node, and puts the caller's trace context in its metadata. It wraps the channel's
    multicallables rather than using grpc.aio's interceptors, which run each call in a task of its
    own around the call's own and cost more than the rest of the client side (hack/bench_mesh.py).
    A unary call's status is taken when it returns or raises; a stream's when it ends, without
    holding the stream back."""

    def __init__(self, component: str, node: str) -> None:
        self.component, self.node = component, node
        self._meters: dict[str, RpcMeter] = {}
        self._ending: set[asyncio.Task[None]] = set()  # streams' statuses being taken (held: tasks are weak)

    def meter(self, method: str | bytes) -> RpcMeter:
        name = method.decode() if isinstance(method, bytes) else method
        meter = self._meters.get(name)
        if meter is None:  # methods are the contracts': a bounded set
            meter = self._meters[name] = RpcMeter("client", self.component, self.node, name.removeprefix("/"))
        return meter

    def unary(self, call: Any, meter: RpcMeter) -> Callable[..., Awaitable[Any]]:
        async def metered(request: Any, *, metadata: Any = None, **options: Any) -> Any:
            meter.started()
            started, exemplar = time.perf_counter(), current_exemplar()
            code = grpc.StatusCode.UNKNOWN.name
            try:
                response = await call(request, metadata=with_trace_context(metadata), **options)
                code = grpc.StatusCode.OK.name
                return response
            except grpc.aio.AioRpcError as error:
                code = error.code().name
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED.name
                raise
            finally:
                meter.handled(code, time.perf_counter() - started, exemplar)

        return metered

    def stream(self, call: Any, meter: RpcMeter) -> Callable[..., Any]:
        def metered(request: Any, *, metadata: Any = None, **options: Any) -> Any:
            meter.started()
            started = time.perf_counter()
            ongoing = call(request, metadata=with_trace_context(metadata), **options)

            async def handled() -> None:
                meter.handled((await ongoing.code()).name, time.perf_counter() - started)

            def done(_: object) -> None:  # a callback cannot await; the status is known by now: no wait
                ending = asyncio.ensure_future(handled())
                self._ending.add(ending)
                ending.add_done_callback(self._ending.discard)

            ongoing.add_done_callback(done)
            return ongoing

        return metered


class MeteredChannel:
    """A grpc.aio channel whose calls `metered` counts and traces (see _Metered); anything else is
    the channel's own."""

    def __init__(self, channel: grpc.aio.Channel, metered: _Metered) -> None:
        self.channel, self._metered = channel, metered

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Callable[..., Awaitable[Any]]:
        return self._metered.unary(self.channel.unary_unary(method, *args, **kwargs), self._metered.meter(method))

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        return self._metered.stream(self.channel.unary_stream(method, *args, **kwargs), self._metered.meter(method))

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        return self._metered.stream(self.channel.stream_unary(method, *args, **kwargs), self._metered.meter(method))

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        return self._metered.stream(self.channel.stream_stream(method, *args, **kwargs), self._metered.meter(method))

    def __getattr__(self, name: str) -> Any:  # close, channel_ready, get_state, ...
        return getattr(self.channel, name)


class Channels:
    """Lazily opened channels to other components, keyed by HOST:PORT, closed together. Calls carry
    the caller's trace context in their metadata, and are counted in the client's gRPC metrics as
    `component`'s on `node`. With `tls` enabled, every channel is mutual TLS with the component's
    certificate; else plaintext."""

    def __init__(
        self, max_message_bytes: int, tls: TlsSettings | None = None, *, component: str = "", node: str = ""
    ) -> None:
        self._options = channel_options(max_message_bytes)
        self._channels: dict[str, MeteredChannel] = {}
        self._tls = tls if tls is not None and tls.enabled else None
        self._credentials = channel_credentials(self._tls) if self._tls is not None else None
        self._metered = _Metered(component, node)
        self._stubs: dict[tuple[type[Any], str], Any] = {}

    def get(self, address: str) -> MeteredChannel:
        channel = self._channels.get(address)
        if channel is None:
            raw = open_channel(address, self._tls, self._options, credentials=self._credentials)
            channel = self._channels[address] = MeteredChannel(raw, self._metered)
        return channel

    def stub(self, stub_class: type[S], address: str) -> S:
        """The stub of `stub_class` on the channel to `address`, made once (a stub makes a callable
        per method of its service)."""
        stub = self._stubs.get((stub_class, address))
        if stub is None:
            stub = self._stubs[(stub_class, address)] = stub_class(self.get(address))
        return stub  # type: ignore[no-any-return]

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        self._stubs.clear()
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
