"""Client side of the mesh: one channel per address, with the same message limits as the servers,
mutual TLS when the component has a certificate (dayu.runtime.tls), and bounded retries for calls
whose failure is transient."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from dayu.runtime.errors import RemoteError
from dayu.runtime.logs import get_logger
from dayu.runtime.retry import TRANSIENT
from dayu.runtime.server import channel_options
from dayu.runtime.tls import TlsSettings, channel_credentials, open_channel
from dayu.runtime.tracing import client_interceptors

log = get_logger(__name__)
T = TypeVar("T")

# Statuses worth another try: the peer is down, restarting, overloaded or slow.
RETRYABLE = frozenset(getattr(grpc.StatusCode, name) for name in TRANSIENT)


class Channels:
    """Lazily opened channels to other components, keyed by HOST:PORT, closed together. Calls carry
    the caller's trace context in their metadata. With `tls` enabled, every channel is mutual TLS
    with the component's certificate; else plaintext."""

    def __init__(self, max_message_bytes: int, tls: TlsSettings | None = None) -> None:
        self._options = channel_options(max_message_bytes)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tls = tls if tls is not None and tls.enabled else None
        self._credentials = channel_credentials(self._tls) if self._tls is not None else None

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_channel(
                address, self._tls, self._options, client_interceptors(), self._credentials
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
