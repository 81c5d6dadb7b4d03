"""The console's HTTP side: the UI's files and BackendService over Connect's protocol, on uvicorn.

Connect's unary calls are plain HTTP/JSON (`POST /dayu.v1.BackendService/ListPipelines` with a JSON
body and `Content-Type: application/json`; curl works), its server streams carry the live updates
(WatchSystemStatus, WatchResults), and the browser calls it with the TypeScript client generated from
the same protos. The Connect endpoints come from the generated gen/dayu/v1/backend_connect.py; each
one runs the gRPC servicer's own method, behind the same token guard and request checks as gRPC, so
there is one implementation of every call and one model of the messages."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from connectrpc import _codec as connect_codecs
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message import DecodeError, Message
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from dayu.runtime.auth import Guard
from dayu.runtime.errors import DayuError, ResourceExhausted, cut
from dayu.runtime.limits import REQUEST_BYTES, request_bytes
from dayu.runtime.logs import get_logger
from dayu.runtime.validation import check_request
from dayu.v1.backend_connect import BackendServiceASGIApplication

log = get_logger(__name__)
STATIC = Path(__file__).with_name("static")  # the UI, built by hack/build-console.sh
SERVICE = "dayu.v1.BackendService"
MAX_MESSAGE_CHARS = 1024  # as gRPC's status details (runtime/server.py)


class _Refusing:
    """A codec whose undecodable request is INVALID_ARGUMENT, naming the message, as at gRPC's door
    (connect-python 0.9 answers UNKNOWN, HTTP 500, and has no per-handler codecs yet)."""

    def __init__(self, codec: Any) -> None:
        self._codec = codec

    def __getattr__(self, name: str) -> Any:
        return getattr(self._codec, name)

    def decode(self, data: bytes | bytearray, message: Message) -> Message:
        try:
            return self._codec.decode(data, message)  # type: ignore[no-any-return]
        except (json_format.ParseError, DecodeError, ValueError) as error:
            expected = f"a {message.DESCRIPTOR.full_name} in {self._codec.name()} ({error})"
            raise ConnectError(Code.INVALID_ARGUMENT, cut(f"request: {expected}", MAX_MESSAGE_CHARS)) from None


for _name, _codec in list(connect_codecs._codecs.items()):
    connect_codecs._codecs[_name] = _Refusing(_codec)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _connect_error(error: Exception, method: str) -> ConnectError:
    if isinstance(error, DayuError):
        return ConnectError(Code[error.status], cut(str(error), MAX_MESSAGE_CHARS))
    log.exception("rpc failed", method=method)
    return ConnectError(Code.INTERNAL, cut(f"{method} failed: {type(error).__name__}: {error}", MAX_MESSAGE_CHARS))


def _checked(method: str, request: Message) -> None:
    """What gRPC's door checks after the token (runtime/server.py; the token: _TokenFirst): size and fields."""
    if request.ByteSize() > (limit := request_bytes(method, REQUEST_BYTES) or REQUEST_BYTES):
        raise ResourceExhausted(f"request: a {request.DESCRIPTOR.full_name} of at most {limit} bytes")
    check_request(request)


def connect_service(servicer: object) -> types.SimpleNamespace:
    """The Connect service (what the generated application calls, by snake_case name) made from the gRPC
    servicer's methods."""
    methods: dict[str, Callable[..., Any]] = {}
    for method in descriptor_pool.Default().FindServiceByName(SERVICE).methods:
        behavior = getattr(servicer, method.name)
        methods[_snake(method.name)] = (_streaming if method.server_streaming else _unary)(method.full_name, behavior)
    return types.SimpleNamespace(**methods)


def _unary(name: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def call(request: Message, context: RequestContext[Any, Any]) -> Message:
        try:
            _checked(name, request)
            return await behavior(request, None)  # type: ignore[no-any-return]
        except ConnectError:
            raise
        except Exception as error:
            raise _connect_error(error, name) from None

    return call


def _streaming(name: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def call(request: Message, context: RequestContext[Any, Any]) -> AsyncIterator[Message]:
        try:
            _checked(name, request)
            async for response in behavior(request, None):
                yield response
        except ConnectError:
            raise
        except Exception as error:
            raise _connect_error(error, name) from None

    return call


_HTTP_STATUS = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}  # Connect's HTTP statuses of a refusal


class _TokenFirst:
    """Checks a call's token from its headers, before its body is read (as gRPC's door does): a
    stranger's request costs nothing but its headers. Refused, it answers Connect's JSON error."""

    def __init__(self, app: Any, guard: Guard) -> None:
        self.app, self.guard = app, guard
        self.methods = {
            f"/{SERVICE}/{m.name}": m.full_name for m in descriptor_pool.Default().FindServiceByName(SERVICE).methods
        }

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        method = self.methods.get(scope.get("path", "")) if scope["type"] == "http" else None
        if method is not None:
            authorization = Headers(scope=scope).get("authorization")
            try:
                self.guard(method, authorization)
            except DayuError as error:
                body = {"code": error.status.lower(), "message": cut(str(error), MAX_MESSAGE_CHARS)}
                await JSONResponse(body, status_code=_HTTP_STATUS.get(error.status, 400))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def console_app(servicer: object, guard: Guard) -> Starlette:
    api = BackendServiceASGIApplication(connect_service(servicer), read_max_bytes=REQUEST_BYTES)
    routes = [Mount(api.path, app=_TokenFirst(api, guard)), Mount("/", app=StaticFiles(directory=STATIC, html=True))]
    return Starlette(routes=routes)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the process's own signal handling stays (dayu up, dayu serve): uvicorn must not take it


def _bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as error:
        sock.close()
        raise OSError(f"console: cannot listen on {listen}: {error}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class Console:
    """The console's HTTP server, inside the backend's process and event loop."""

    def __init__(self, servicer: object, guard: Guard, listen: str) -> None:
        self.listen = listen
        config = uvicorn.Config(
            console_app(servicer, guard),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,  # live watches never end by themselves
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Listens; returns the console's URL."""
        sock = _bind(self.listen)
        host, port = sock.getsockname()[:2]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="console")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError(f"console on {self.listen} stopped at start")
            await asyncio.sleep(0.02)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
