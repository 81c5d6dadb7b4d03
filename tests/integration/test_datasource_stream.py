"""A real datasource on loopback: sources listed and streamed at their pace, added and removed at run
time, with an HTTP MJPEG camera served from this test."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import grpc
import numpy as np
import pytest

from dayu.datasource.core import DatasourceCore
from dayu.datasource.service import DatasourceSettings, played_sources
from dayu.media.codecs import decode_image
from dayu.runtime.errors import InvalidArgument
from dayu.v1 import datasource_pb2, datasource_pb2_grpc, types_pb2

STREET = {"source_id": "street", "kind": "synthetic", "params": {"width": 480, "height": 270, "fps": 20, "seed": 1}}
ALLEY = {
    "source_id": "alley",
    "kind": "synthetic",
    "params": {"width": 320, "height": 180, "fps": 10, "seed": 2},
    "codec": "raw",
}


async def stream(address: str, source_id: str, max_frames: int = 0) -> list[datasource_pb2.Frame]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = datasource_pb2_grpc.DatasourceServiceStub(channel).StreamFrames(
            datasource_pb2.StreamFramesRequest(source_id=source_id, max_frames=max_frames), timeout=30
        )
        return [reply.frame async for reply in call]


async def list_sources(address: str) -> dict[str, datasource_pb2.SourceInfo]:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await datasource_pb2_grpc.DatasourceServiceStub(channel).ListSources(
            datasource_pb2.ListSourcesRequest(), timeout=10
        )
    return {info.source_id: info for info in reply.sources}


def decoded(frame: datasource_pb2.Frame) -> np.ndarray:
    return decode_image(frame.data, frame.codec, frame.resolution, "frame")


async def test_list_sources_describes_them(serve) -> None:  # type: ignore[no-untyped-def]
    address = await serve("datasource", datasource={"sources": [STREET, ALLEY]})
    sources = await list_sources(address)
    assert list(sources) == ["alley", "street"]  # in source id order, as pages go
    street = sources["street"]
    assert street.kind == "synthetic" and street.fps == 20 and street.has_ground_truth and not street.cycle
    assert (street.resolution.width, street.resolution.height) == (480, 270)
    assert (sources["alley"].resolution.width, sources["alley"].resolution.height) == (320, 180)


async def test_two_sources_stream_at_once_at_their_pace(serve) -> None:  # type: ignore[no-untyped-def]
    address = await serve("datasource", datasource={"sources": [STREET, ALLEY]})
    started = time.monotonic()
    street, alley = await asyncio.gather(stream(address, "street", 30), stream(address, "alley", 12))
    elapsed = time.monotonic() - started
    # 29 intervals at 20 fps and 11 at 10 fps: about 1.5 s each, side by side (a slow machine skips
    # frames rather than falling behind, which only stretches the span a little).
    assert 1.0 < elapsed < 8.0, elapsed
    for frames, count, codec, size in (
        (street, 30, types_pb2.CODEC_JPEG, (480, 270)),
        (alley, 12, types_pb2.CODEC_RAW_BGR, (320, 180)),
    ):
        assert len(frames) == count
        indices = [frame.index for frame in frames]
        assert indices[0] == 0 and indices == sorted(set(indices)), indices
        for frame in frames:
            assert frame.codec == codec and (frame.resolution.width, frame.resolution.height) == size
            assert decoded(frame).shape == (size[1], size[0], 3)
    captured = [frame.captured_at.ToNanoseconds() / 1e9 for frame in street]
    assert captured == sorted(captured) and abs(captured[-1] - time.time()) < 5
    assert 1.0 < captured[-1] - captured[0] < 5.0, "30 frames at 20 fps span about 1.45 s"
    assert any(frame.ground_truth for frame in street), "the scene shows legible plates"
    for frame in street:
        for plate in frame.ground_truth:
            assert plate.label == "plate" and plate.box.x2 <= 480 and plate.box.y2 <= 270


async def test_same_source_streams_twice_from_its_start(serve) -> None:  # type: ignore[no-untyped-def]
    address = await serve("datasource", datasource={"sources": [ALLEY]})
    first, second = await asyncio.gather(stream(address, "alley", 5), stream(address, "alley", 5))
    assert [f.index for f in first] == [f.index for f in second] == [0, 1, 2, 3, 4]
    assert [f.data for f in first] == [f.data for f in second], "the same seed gives the same frames"


async def test_finite_source_ends_the_stream(serve) -> None:  # type: ignore[no-untyped-def]
    short = {"source_id": "short", "kind": "synthetic"}
    short["params"] = {"width": 160, "height": 90, "fps": 20, "duration_s": 0.5, "cycle": False}
    address = await serve("datasource", datasource={"sources": [short]})
    frames = await stream(address, "short")
    assert [frame.index for frame in frames] == list(range(10))


async def test_unknown_source_is_not_found(serve) -> None:  # type: ignore[no-untyped-def]
    address = await serve("datasource", datasource={"sources": [ALLEY]})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream(address, "nowhere", 1)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nowhere" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream(address, "", 1)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("source_id:")


async def test_bad_source_configuration_names_the_field(serve) -> None:  # type: ignore[no-untyped-def]
    bad = {"source_id": "bad", "kind": "synthetic", "params": {"fps": 0}}
    with pytest.raises(InvalidArgument) as caught:
        await serve("datasource", datasource={"sources": [ALLEY, bad]})
    assert caught.value.field == "datasource.sources[1].params.fps"


async def test_lagging_consumer_misses_frames_instead_of_a_burst() -> None:
    core = DatasourceCore(played_sources(DatasourceSettings(datasource={"sources": [ALLEY]}).datasource))
    received: list[tuple[int, float]] = []
    async for frame in core.stream("alley", 6):
        received.append((frame.index, time.monotonic()))
        await asyncio.sleep(0.35)  # 3.5 frame intervals at 10 fps
    indices = [index for index, _ in received]
    gaps = [b - a for a, b in itertools.pairwise(indices)]
    assert all(gap >= 3 for gap in gaps), f"frames whose time passed are skipped: {indices}"
    pauses = [b - a for (_, a), (_, b) in itertools.pairwise(received)]
    assert min(pauses) > 0.3, "no burst to catch up"


# --- sources added at run time ---------------------------------------------------------------------


def source_spec(source_id: str = "added", kind: str = "synthetic", **params: Any) -> datasource_pb2.SourceSpec:
    made = datasource_pb2.SourceSpec(source_id=source_id, kind=kind)
    made.params.update(params or {"width": 160, "height": 120, "fps": 10, "seed": 3})
    return made


async def add_source(address: str, spec: datasource_pb2.SourceSpec) -> datasource_pb2.AddSourceResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = datasource_pb2_grpc.DatasourceServiceStub(channel)
        return await stub.AddSource(datasource_pb2.AddSourceRequest(source=spec), timeout=30)


async def remove_source(address: str, source_id: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = datasource_pb2_grpc.DatasourceServiceStub(channel)
        await stub.RemoveSource(datasource_pb2.RemoveSourceRequest(source_id=source_id), timeout=10)


async def refused(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


async def test_added_source_streams_until_removed(serve) -> None:  # type: ignore[no-untyped-def]
    address = await serve("datasource", datasource={"sources": [ALLEY]})
    reply = await add_source(address, source_spec())
    assert reply.added and reply.info.added and reply.info.fps == 10
    assert (reply.info.resolution.width, reply.info.resolution.height) == (160, 120)
    assert not (await add_source(address, source_spec())).added, "the same source again changes nothing"
    sources = await list_sources(address)
    assert list(sources) == ["added", "alley"] and sources["added"].added and not sources["alley"].added

    received: list[datasource_pb2.Frame] = []
    async with grpc.aio.insecure_channel(address) as channel:
        call = datasource_pb2_grpc.DatasourceServiceStub(channel).StreamFrames(
            datasource_pb2.StreamFramesRequest(source_id="added"), timeout=30
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for reply in call:
                received.append(reply.frame)
                if len(received) == 3:
                    await remove_source(address, "added")
    assert 3 <= len(received) <= 5, "the stream ends once the source is removed"
    assert decoded(received[0]).shape == (120, 160, 3)
    code, details = caught.value.code(), caught.value.details() or ""
    assert code == grpc.StatusCode.NOT_FOUND and "removed" in details, (code, details)
    assert list(await list_sources(address)) == ["alley"]
    code, details = await refused(stream(address, "added", 1))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_added_sources_are_checked(serve, tmp_path) -> None:  # type: ignore[no-untyped-def]
    media = tmp_path / "media"
    media.mkdir()
    photo = media / "street.png"
    cv2.imwrite(str(photo), np.full((90, 120, 3), 128, np.uint8))
    outside = tmp_path / "outside.png"
    cv2.imwrite(str(outside), np.full((90, 120, 3), 128, np.uint8))
    address = await serve("datasource", datasource={"sources": [ALLEY], "media_dirs": [str(media)]})
    for bad, field in [
        (source_spec(kind="hologram"), "source.kind"),
        (source_spec(width=16), "source.params.width"),
        (source_spec(fps=1, shade="dark"), "source.params.shade"),
        (source_spec("not an id"), "source.source_id"),
        (datasource_pb2.SourceSpec(kind="synthetic"), "source.source_id"),
        (datasource_pb2.SourceSpec(source_id="x", kind="synthetic", codec=types_pb2.CODEC_H264), "source.codec"),
    ]:
        code, details = await refused(add_source(address, bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}:"), (field, details)
    code, details = await refused(add_source(address, source_spec("photo", "photos", images=[str(outside)])))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith("source.params.images[0]:")
    assert "datasource.media_dirs" in details
    reply = await add_source(address, source_spec("photo", "photos", images=[str(photo)], width=128, height=96))
    assert reply.added and reply.info.uri == str(photo)
    assert len(await stream(address, "photo", 2)) == 2
    code, _ = await refused(add_source(address, source_spec("alley")))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    code, details = await refused(remove_source(address, "alley"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "settings (the mesh file)" in details
    code, _ = await refused(remove_source(address, "nowhere"))
    assert code == grpc.StatusCode.NOT_FOUND
    await remove_source(address, "photo")
    assert list(await list_sources(address)) == ["alley"]


# --- an HTTP MJPEG camera ----------------------------------------------------------------------------

CAMERA_SIZE, CAMERA_FPS = (320, 240), 20


@dataclass
class MjpegCamera:
    url: str
    connections: int = 0
    frames_per_connection: int = 0  # 0: stream until the client leaves


def camera_image(number: int) -> np.ndarray:
    """Frame `number` of the camera: grey level rising with the number, and a white square moving."""
    width, height = CAMERA_SIZE
    image = np.full((height, width, 3), (number * 7) % 200 + 30, np.uint8)
    x = (number * 9) % (width - 40)
    image[100:140, x : x + 40] = 255
    return image


@pytest.fixture
def mjpeg_camera() -> Iterator[MjpegCamera]:
    """A multipart/x-mixed-replace camera on 127.0.0.1, as IP cameras serve MJPEG over HTTP."""
    camera = MjpegCamera(url="")
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            camera.connections += 1
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            number, limit = 0, camera.frames_per_connection
            try:
                while not stop.is_set() and (not limit or number < limit):
                    _, jpeg = cv2.imencode(".jpg", camera_image(number))
                    header = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                    self.wfile.write(header.encode() + jpeg.tobytes() + b"\r\n")
                    number += 1
                    time.sleep(1 / CAMERA_FPS)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads what matters."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    camera.url = f"http://127.0.0.1:{server.server_address[1]}/video.mjpg"
    yield camera
    stop.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def camera_source(camera: MjpegCamera, **params: Any) -> dict[str, Any]:
    return {"source_id": "gate", "kind": "camera", "params": {"url": camera.url, "fps": CAMERA_FPS, **params}}


async def test_http_mjpeg_camera_streams(serve, mjpeg_camera: MjpegCamera) -> None:  # type: ignore[no-untyped-def]
    address = await serve("datasource", datasource={"sources": [camera_source(mjpeg_camera)]})
    before = (await list_sources(address))["gate"]
    assert before.kind == "camera" and before.uri == mjpeg_camera.url and not before.cycle
    assert before.fps == CAMERA_FPS and not before.has_ground_truth
    frames = await stream(address, "gate", 8)
    assert len(frames) == 8
    levels = []
    for frame in frames:
        image = decoded(frame)
        assert image.shape == (CAMERA_SIZE[1], CAMERA_SIZE[0], 3)
        levels.append(float(np.median(image)))
    assert levels == sorted(levels), f"frames come in the camera's order: {levels}"
    after = (await list_sources(address))["gate"]
    assert (after.resolution.width, after.resolution.height) == CAMERA_SIZE


async def test_camera_reconnects_when_the_connection_drops(serve, mjpeg_camera: MjpegCamera) -> None:  # type: ignore[no-untyped-def]
    mjpeg_camera.frames_per_connection = 5
    source = camera_source(mjpeg_camera, reconnect_s=0.1)
    address = await serve("datasource", datasource={"sources": [source]})
    frames = await stream(address, "gate", 12)
    assert len(frames) == 12
    assert mjpeg_camera.connections >= 3, "5 frames per connection: the camera was reconnected"
    for frame in frames:
        assert decoded(frame).shape == (CAMERA_SIZE[1], CAMERA_SIZE[0], 3)
