"""The datasource's core: sources added and removed at run time (AddSource, RemoveSource), beside those of
its settings, and the media folders that confine the files they read."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from dayu.datasource import core as datasource_core
from dayu.datasource.core import DatasourceCore, PlayedSource, SourceReplaced
from dayu.datasource.service import DatasourceServicer, DatasourceSettings, played_sources
from dayu.datasource.sources import FrameReader, Source, SourceFrame
from dayu.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from dayu.v1 import datasource_pb2, types_pb2

STREET = {"source_id": "street", "kind": "synthetic", "params": {"width": 160, "height": 120, "fps": 5}}


def spec(source_id: str = "added", kind: str = "synthetic", **params: Any) -> datasource_pb2.SourceSpec:
    """A SourceSpec as a caller sends it: the parameters in a Struct, whose numbers are floats."""
    made = datasource_pb2.SourceSpec(source_id=source_id, kind=kind)
    made.params.update(params or {"width": 160, "height": 120, "fps": 20, "seed": 1})
    return made


def make_core(media_dirs: list[Path] | None = None, sources: list[dict[str, Any]] | None = None) -> DatasourceCore:
    section = DatasourceSettings(datasource={"sources": [STREET] if sources is None else sources}).datasource
    return DatasourceCore(played_sources(section), media_dirs or [])


async def frames_of(core: DatasourceCore, source_id: str, count: int) -> list[datasource_pb2.Frame]:
    return [frame async for frame in core.stream(source_id, count)]


def write_photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((90, 120, 3), np.uint8)
    image[20:70, 30:90] = (40, 160, 220)
    assert cv2.imwrite(str(path), image)
    return path


def write_video(path: Path, frames: int = 5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(frames):
            image = np.full((64, 64, 3), 20 + 30 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode(None))
    return path


# --- adding ------------------------------------------------------------------------------------------


async def test_added_source_is_listed_and_streamed() -> None:
    core = make_core()
    added, info = await core.add(spec())  # width 160.0 and so on: a Struct's numbers are floats
    assert added and info.added and info.kind == "synthetic" and info.fps == 20 and info.has_ground_truth
    assert (info.resolution.width, info.resolution.height) == (160, 120)
    listed = {source.source_id: source for source in core.infos()}
    assert list(listed) == ["added", "street"]
    assert listed["added"].added and not listed["street"].added
    frames = await frames_of(core, "added", 3)
    assert [frame.index for frame in frames] == [0, 1, 2]
    assert all(frame.codec == types_pb2.CODEC_JPEG and frame.data[:2] == b"\xff\xd8" for frame in frames)


async def test_the_same_spec_again_changes_nothing() -> None:
    core = make_core()
    assert (await core.add(spec()))[0]
    again = spec()
    again.codec, again.quality = types_pb2.CODEC_JPEG, 90  # the defaults, said
    added, info = await core.add(again)
    assert not added and info.added and info.fps == 20
    both = await asyncio.gather(core.add(spec("twice")), core.add(spec("twice")))
    assert sorted(added for added, _ in both) == [False, True], "of two at once, one adds and one finds it"


async def test_raw_codec_and_quality_are_kept() -> None:
    core = make_core()
    raw = spec("raw")
    raw.codec = types_pb2.CODEC_RAW_BGR
    await core.add(raw)
    (frame,) = await frames_of(core, "raw", 1)
    assert frame.codec == types_pb2.CODEC_RAW_BGR and len(frame.data) == 160 * 120 * 3
    low, high = spec("low"), spec("high")
    low.quality, high.quality = 5, 100
    await core.add(low)
    await core.add(high)
    (small,), (large,) = await frames_of(core, "low", 1), await frames_of(core, "high", 1)
    assert len(small.data) < len(large.data)


async def test_another_spec_replaces_the_source_and_ends_its_streams() -> None:
    core = make_core()
    await core.add(spec(fps=1, width=160, height=120))
    stream = core.stream("added")
    assert (await anext(stream)).index == 0
    reading = asyncio.ensure_future(anext(stream))  # the next frame is due in 1 s
    await asyncio.sleep(0.05)
    started = time.monotonic()
    added, info = await core.add(spec(fps=10, width=320, height=180))
    assert added and info.fps == 10 and (info.resolution.width, info.resolution.height) == (320, 180)
    with pytest.raises(SourceReplaced) as caught:
        await asyncio.wait_for(reading, 5)
    assert caught.value.status == "ABORTED" and "replaced" in str(caught.value)
    assert time.monotonic() - started < 0.9, "the stream ends at once, not when its next frame (1 fps) is due"
    (frame,) = await frames_of(core, "added", 1)
    assert (frame.resolution.width, frame.resolution.height) == (320, 180), "a new stream plays the new source"


async def test_bad_specs_name_the_field() -> None:
    core = make_core()
    cases: list[tuple[datasource_pb2.SourceSpec, str]] = [
        (spec(""), "source.source_id"),
        (spec("a b"), "source.source_id"),
        (spec(kind="hologram"), "source.kind"),
        (spec(kind=""), "source.kind"),
        (spec(width=10), "source.params.width"),
        (spec(width=160.5), "source.params.width"),
        (spec(colour="red"), "source.params.colour"),
        (spec(fps=float("nan")), "source.params"),
        (spec(kind="camera", url="ftp://camera/1"), "source.params.url"),
        (spec(kind="photos", images=[":photo.png"]), "source.params.images[0]"),
        (datasource_pb2.SourceSpec(source_id="x", kind="synthetic", codec=types_pb2.CODEC_H264), "source.codec"),
        (datasource_pb2.SourceSpec(source_id="x", kind="synthetic", quality=101), "source.quality"),
    ]
    for bad, field in cases:
        with pytest.raises(InvalidArgument) as caught:
            await core.add(bad)
        assert caught.value.field == field, (bad, caught.value)
    assert [source.source_id for source in core.infos()] == ["street"]


async def test_settings_sources_are_neither_replaced_nor_removed() -> None:
    core = make_core()
    with pytest.raises(AlreadyExists, match="settings"):
        await core.add(spec("street"))
    with pytest.raises(FailedPrecondition, match=r"comes from the datasource's settings \(the mesh file\)"):
        core.remove("street")
    with pytest.raises(NotFound, match="nowhere"):
        core.remove("nowhere")
    with pytest.raises(InvalidArgument) as caught:
        core.remove("")
    assert caught.value.field == "source_id"
    assert [(source.source_id, source.added) for source in core.infos()] == [("street", False)]


async def test_added_sources_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasource_core, "MAX_SOURCES", 2)
    core = make_core()
    await core.add(spec("one"))
    await core.add(spec("two"))
    with pytest.raises(ResourceExhausted, match="remove one first"):
        await core.add(spec("three"))
    assert (await core.add(spec("two", fps=5)))[0], "replacing one adds none"
    core.remove("one")
    assert (await core.add(spec("three")))[0]


# --- removing ----------------------------------------------------------------------------------------


class BlockingReader(FrameReader):
    """A camera that sends one frame, then never another: a read blocks until the reader is closed."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.sent = False

    @property
    def fps(self) -> float:
        return 50.0

    def read(self, skip: int = 0) -> SourceFrame | None:
        if not self.sent:
            self.sent = True
            return SourceFrame(np.zeros((8, 8, 3), np.uint8))
        self.closed.wait(30)
        return None

    def close(self) -> None:
        self.closed.set()


class BlockingSource(Source):
    def __init__(self) -> None:
        self.readers: list[BlockingReader] = []

    @property
    def fps(self) -> float:
        return 50.0

    @property
    def resolution(self) -> tuple[int, int]:
        return 8, 8

    def open(self) -> FrameReader:
        self.readers.append(BlockingReader())
        return self.readers[-1]


async def test_removing_a_source_ends_its_streams_and_closes_its_readers() -> None:
    source = BlockingSource()
    played = PlayedSource("gate", "camera", source, added=True, spec_key=("camera", "{}", 1, 90))
    core = DatasourceCore([played])
    streams = [core.stream("gate") for _ in range(2)]
    for stream in streams:
        assert (await anext(stream)).index == 0
    waiting = [asyncio.ensure_future(anext(stream)) for stream in streams]  # blocked on the camera
    await asyncio.sleep(0.1)
    assert not any(wait.done() for wait in waiting)
    core.remove("gate")
    for wait in waiting:
        with pytest.raises(NotFound, match="'gate' was removed"):
            await asyncio.wait_for(wait, 5)
    assert len(source.readers) == 2 and all(reader.closed.is_set() for reader in source.readers)
    assert core.infos() == []
    with pytest.raises(NotFound):
        await anext(core.stream("gate"))


async def test_removing_a_sleeping_stream_ends_it_at_once() -> None:
    core = make_core()
    await core.add(spec(fps=0.5, width=160, height=120))
    stream = core.stream("added")
    await anext(stream)
    waiting = asyncio.ensure_future(anext(stream))  # the next frame is due in 2 s
    await asyncio.sleep(0.05)
    started = time.monotonic()
    core.remove("added")
    with pytest.raises(NotFound):
        await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 0.5
    with pytest.raises(NotFound):
        core.remove("added")


async def test_other_streams_play_on() -> None:
    core = make_core()
    await core.add(spec("one"))
    await core.add(spec("two"))
    stream = core.stream("two")
    await anext(stream)
    core.remove("one")
    assert (await anext(stream)).index >= 1
    await stream.aclose()
    assert len(await frames_of(core, "street", 2)) == 2


# --- media folders -----------------------------------------------------------------------------------


def refused(error: FailedPrecondition, field: str) -> bool:
    text = str(error)
    return text.startswith(f"{field}:") and "datasource.media_dirs" in text


async def test_files_inside_the_media_folders_are_played(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    media = tmp_path / "media"
    photo = write_photo(media / "street.png")
    video = write_video(media / "clips" / "gate.mp4")
    core = make_core([media])
    added, info = await core.add(spec("photo", "photos", images=[str(photo)], width=128, height=96, fps=10))
    assert added and info.uri == str(photo)
    added, info = await core.add(spec("video", "file", path=str(video), cycle=False))
    assert added and info.kind == "file" and (info.resolution.width, info.resolution.height) == (64, 64)
    assert len(await frames_of(core, "video", 10)) == 5
    (frame,) = await frames_of(core, "photo", 1)
    assert (frame.resolution.width, frame.resolution.height) == (128, 96)
    # A relative path, and a link that stays inside, are fine too.
    os.symlink(photo, media / "link.png")
    assert (await core.add(spec("link", "photos", images=[str(media / "link.png")])))[0]
    monkeypatch.chdir(tmp_path)
    assert (await core.add(spec("relative", "photos", images=["media/street.png"])))[0]
    assert (await core.add(spec("dots", "photos", images=["media/clips/../street.png"])))[0]


async def test_files_outside_the_media_folders_are_refused(tmp_path: Path) -> None:
    media, outside = tmp_path / "media", tmp_path / "private"
    media.mkdir()
    secret = write_photo(outside / "secret.png")
    secret_video = write_video(outside / "secret.mp4")
    core = make_core([media])
    os.symlink(secret, media / "escape.png")
    os.symlink(outside, media / "folder")
    cases = [
        (spec("a", "photos", images=[str(secret)]), "source.params.images[0]"),
        (spec("b", "photos", images=[str(media / ".." / "private" / "secret.png")]), "source.params.images[0]"),
        (spec("c", "photos", images=[str(media / "escape.png")]), "source.params.images[0]"),  # a link out
        (spec("d", "photos", images=[str(media / "folder" / "secret.png")]), "source.params.images[0]"),
        (spec("e", "file", path=str(secret_video)), "source.params.path"),
        (spec("f", "file", path=str(media / "folder" / "secret.mp4")), "source.params.path"),
        (spec("g", "file", path=str(outside / "missing.mp4")), "source.params.path"),  # no hint it is missing
        (spec("h", "file", path="/etc/passwd"), "source.params.path"),
        (spec("i", "photos", images=["numpy:../../../../../../../../etc/passwd"]), "source.params.images[0]"),
    ]
    for bad, field in cases:
        with pytest.raises(FailedPrecondition) as caught:
            await core.add(bad)
        assert refused(caught.value, field), caught.value
    assert [source.source_id for source in core.infos()] == ["street"]


async def test_without_media_folders_added_sources_read_no_files(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "street.png")
    core = make_core(sources=[STREET, {"source_id": "mine", "kind": "photos", "params": {"images": [str(photo)]}}])
    with pytest.raises(FailedPrecondition) as caught:
        await core.add(spec("photo", "photos", images=[str(photo)]))
    assert refused(caught.value, "source.params.images[0]")
    assert len(await frames_of(core, "mine", 1)) == 1, "the settings' sources are not held to the media folders"
    # Cameras and synthetic scenes read no files.
    assert (await core.add(spec("gate", "camera", url="rtsp://camera.local/stream")))[0]
    assert (await core.add(spec("usb", "camera", device=0)))[0]
    assert (await core.add(spec()))[0]


# --- the gRPC adapter's callers ----------------------------------------------------------------------


class Caller:
    """A servicer context whose TLS peer is the certificate COMMON_NAME."""

    def __init__(self, common_name: str) -> None:
        self.common_name = common_name

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"transport_security_type": [b"ssl"], "x509_common_name": [self.common_name.encode()]}


async def test_only_the_backend_and_the_operator_add_and_remove_sources() -> None:
    servicer = DatasourceServicer(make_core())
    add = datasource_pb2.AddSourceRequest(source=spec())
    remove = datasource_pb2.RemoveSourceRequest(source_id="added")
    for stranger in ("generator.edge-1", "scheduler.cloud"):
        with pytest.raises(PermissionDenied, match="AddSource: only backend, operator"):
            await servicer.AddSource(add, Caller(stranger))
        with pytest.raises(PermissionDenied, match="RemoveSource: only backend, operator"):
            await servicer.RemoveSource(remove, Caller(stranger))
    reply = await servicer.AddSource(add, Caller("backend.cloud"))
    assert reply.added and reply.info.source_id == "added" and reply.info.added
    assert not (await servicer.AddSource(add, Caller("operator.laptop"))).added
    await servicer.RemoveSource(remove, Caller("operator.laptop"))
    listed = await servicer.ListSources(datasource_pb2.ListSourcesRequest(), Caller("generator.edge-1"))
    assert [source.source_id for source in listed.sources] == ["street"]
