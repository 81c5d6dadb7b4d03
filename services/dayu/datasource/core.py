"""The datasource's playback of its sources at real-time pace, and the sources added and removed at run
time (AddSource, RemoveSource), without gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from dayu.datasource.sources import SOURCES, FrameReader, Source
from dayu.media.codecs import encode_image
from dayu.runtime.clock import timestamp
from dayu.runtime.errors import (
    AlreadyExists,
    DayuError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    shown,
)
from dayu.runtime.logs import get_logger
from dayu.runtime.validation import require_id
from dayu.v1 import datasource_pb2, types_pb2

log = get_logger(__name__)

MAX_SOURCES = 256  # sources added at run time (as many as the backend stores); the settings' are the operator's
DEFAULT_QUALITY = 90  # JPEG quality of a SourceSpec that gives none
# How a SourceSpec's codec travels: unset is JPEG; H.264 is for segments, not single frames.
RUN_TIME_CODECS = {
    types_pb2.CODEC_UNSPECIFIED: types_pb2.CODEC_JPEG,
    types_pb2.CODEC_JPEG: types_pb2.CODEC_JPEG,
    types_pb2.CODEC_RAW_BGR: types_pb2.CODEC_RAW_BGR,
}


class SourceReplaced(DayuError):
    """The source a frame stream played was replaced (AddSource): calling StreamFrames again plays the
    new one. ABORTED, which a caller retries (a generator does)."""

    status = "ABORTED"


# What AddSource was given, normalised (kind, parameters as canonical JSON, codec, quality): the same
# again changes nothing.
SpecKey = tuple[str, str, int, int]


@dataclass(frozen=True)
class PlayedSource:
    """A source under its id, with the encoding its frames travel in."""

    source_id: str
    kind: str
    source: Source
    codec: int = types_pb2.CODEC_JPEG  # JPEG or RAW_BGR
    quality: int = DEFAULT_QUALITY  # JPEG quality, 1..100
    added: bool = False  # added at run time (AddSource); False: from the datasource's settings
    spec_key: SpecKey | None = None  # of a source added at run time

    def info(self) -> datasource_pb2.SourceInfo:
        width, height = self.source.resolution
        return datasource_pb2.SourceInfo(
            source_id=self.source_id,
            kind=self.kind,
            uri=self.source.uri,
            fps=self.source.fps,
            resolution=types_pb2.Resolution(width=width, height=height),
            cycle=self.source.cycle,
            has_ground_truth=self.source.has_ground_truth,
            added=self.added,
        )


def spec_params(spec: datasource_pb2.SourceSpec, field: str = "source") -> dict[str, Any]:
    """The kind's parameters of a SourceSpec: a Struct holds JSON's values, numbers as floats, which the
    kind's parameter model takes as the integers they stand for (640.0 for a width of 640)."""
    try:
        return json_format.MessageToDict(spec.params) if spec.HasField("params") else {}
    except ValueError:  # a Struct holds any double; JSON, and so parameters, no NaN or infinity
        raise InvalidArgument(f"{field}.params", "numbers JSON can hold, got NaN or an infinity") from None


def spec_encoding(spec: datasource_pb2.SourceSpec, field: str = "source") -> tuple[int, int]:
    """The codec (JPEG or RAW_BGR) and JPEG quality a SourceSpec asks for, defaults filled in."""
    if spec.codec not in RUN_TIME_CODECS:
        names = [types_pb2.Codec.Name(codec) for codec in RUN_TIME_CODECS]
        raise InvalidArgument(f"{field}.codec", f"one of {names} (frames travel one by one), got {shown(spec.codec)}")
    if spec.quality > 100:
        expected = f"a JPEG quality of 1 to 100 (0: {DEFAULT_QUALITY}), got {spec.quality}"
        raise InvalidArgument(f"{field}.quality", expected)
    return RUN_TIME_CODECS[spec.codec], spec.quality or DEFAULT_QUALITY


def confine(files: Sequence[tuple[str, Path]], media_dirs: Sequence[Path]) -> None:
    """Refuses (FAILED_PRECONDITION, naming the field) a file that is not inside one of `media_dirs`, both
    taken as the real paths they resolve to: no '..' and no symbolic link leads out of a folder."""
    if not files:
        return
    folders = [Path(os.path.realpath(folder)) for folder in media_dirs]
    for field, path in files:
        try:
            real = Path(os.path.realpath(path))
        except ValueError as error:  # a NUL character
            raise InvalidArgument(field, f"a file path, got {shown(str(path))}: {error}") from None
        if not any(real.is_relative_to(folder) for folder in folders):
            allowed = [str(folder) for folder in media_dirs]
            raise FailedPrecondition(
                f"{field}: {shown(str(path))} is not inside the datasource's media folders {allowed}: a source added "
                "at run time reads files only from there; add its folder to datasource.media_dirs in the "
                "datasource's settings"
            )


def build_added_source(
    spec: datasource_pb2.SourceSpec,
    params: dict[str, Any],
    key: SpecKey,
    media_dirs: Sequence[Path],
    field: str = "source",
) -> PlayedSource:
    """Builds a source added at run time through the source registry, once the files it would read are
    found inside `media_dirs`. Blocking (it may open a video or decode photos): call it off the loop."""
    kind: type[Source] = SOURCES.entry(spec.kind, f"{field}.kind").factory
    confine(kind.files(params, f"{field}.params"), media_dirs)
    built = SOURCES.create(
        spec.kind, params, name_field=f"{field}.kind", params_field=f"{field}.params", field=f"{field}.params"
    )
    return PlayedSource(spec.source_id, spec.kind, built, key[2], key[3], added=True, spec_key=key)


class _Playback:
    """One StreamFrames call's playback of a source, which ends with `ended` when its source is removed
    or replaced."""

    def __init__(self, played: PlayedSource) -> None:
        self.played = played
        self.reader: FrameReader | None = None
        self.ended: DayuError | None = None
        self.ending = asyncio.Event()

    def end(self, why: DayuError) -> None:
        if self.ended is None:
            self.ended = why
        self.ending.set()
        if self.reader is not None:
            self.reader.close()  # a read blocked on a camera returns

    def check(self) -> None:
        if self.ended is not None:
            raise self.ended


class DatasourceCore:
    """Plays each source as a camera would: frame n is due at start + n / fps on a monotonic clock
    (no drift), and a consumer that falls more than a frame behind misses the frames whose time has
    passed instead of getting a burst. Every call opens its own playback.

    Sources come from the settings, and at run time from AddSource (at most MAX_SOURCES); a source
    added at run time reads files only inside `media_dirs`."""

    def __init__(self, sources: Sequence[PlayedSource], media_dirs: Sequence[Path] = ()) -> None:
        self._sources = {played.source_id: played for played in sources}
        self._media_dirs = list(media_dirs)
        self._playbacks: set[_Playback] = set()

    def infos(self) -> list[datasource_pb2.SourceInfo]:
        """Every source's description, in source id order (the order its pages follow)."""
        return [self._sources[source_id].info() for source_id in sorted(self._sources)]

    def find(self, source_id: str) -> PlayedSource:
        require_id(source_id, "source_id")
        try:
            return self._sources[source_id]
        except KeyError:
            raise NotFound(f"source {source_id!r} is not one of {sorted(self._sources)}") from None

    async def add(
        self, spec: datasource_pb2.SourceSpec, field: str = "source"
    ) -> tuple[bool, datasource_pb2.SourceInfo]:
        """Adds a source at run time; (False, its info) when the same spec (id, kind, parameters, codec,
        quality) is there already. A different spec for the id of a source added at run time replaces
        it: the frame streams of the old one end (ABORTED: calling StreamFrames again plays the new
        one). The id of a source of the settings is ALREADY_EXISTS. The parameters are the kind's (a
        Struct's numbers taken as the integers they stand for); files a kind reads must be inside the
        datasource's media folders (FAILED_PRECONDITION otherwise)."""
        require_id(spec.source_id, f"{field}.source_id")
        codec, quality = spec_encoding(spec, field)
        SOURCES.entry(spec.kind, f"{field}.kind")
        self._refuse_settings_source(spec.source_id)
        params, key = await asyncio.to_thread(self._params_and_key, spec, codec, quality, field)  # a large Struct
        current = self._sources.get(spec.source_id)
        if current is not None and current.spec_key == key:
            return False, current.info()
        if current is None:
            self._refuse_more()
        played = await asyncio.to_thread(build_added_source, spec, params, key, self._media_dirs, field)
        # Looked up again: another call may have added, replaced or removed it while this one was building.
        current = self._sources.get(spec.source_id)
        if current is not None and current.spec_key == key:
            return False, current.info()
        if current is None:
            self._refuse_more()
        self._sources[spec.source_id] = played
        if current is not None:
            replaced = f"source {spec.source_id!r} was replaced: stream it again to play the new one"
            self._end(current, SourceReplaced, replaced)
        log.info("source added", source_id=spec.source_id, kind=spec.kind, replaced=current is not None)
        return True, played.info()

    @staticmethod
    def _params_and_key(
        spec: datasource_pb2.SourceSpec, codec: int, quality: int, field: str
    ) -> tuple[dict[str, Any], SpecKey]:
        params = spec_params(spec, field)
        return params, (spec.kind, json.dumps(params, sort_keys=True), codec, quality)

    def _refuse_settings_source(self, source_id: str) -> None:
        current = self._sources.get(source_id)
        if current is not None and not current.added:
            raise AlreadyExists(
                f"source {source_id!r} comes from the datasource's settings (the mesh file); give another id"
            )

    def _refuse_more(self) -> None:
        if sum(played.added for played in self._sources.values()) >= MAX_SOURCES:
            raise ResourceExhausted(f"{MAX_SOURCES} sources were added at run time already; remove one first")

    def remove(self, source_id: str) -> None:
        """Removes a source added at run time; its frame streams end (NOT_FOUND, as for a source that is
        not played: a generator reading it keeps trying, in case it comes back) and release their readers."""
        require_id(source_id, "source_id")
        played = self.find(source_id)
        if not played.added:
            raise FailedPrecondition(
                f"source {source_id!r} comes from the datasource's settings (the mesh file): only sources added "
                "at run time are removed; change the settings instead"
            )
        del self._sources[source_id]
        self._end(played, NotFound, f"source {source_id!r} was removed")
        log.info("source removed", source_id=source_id)

    def _end(self, played: PlayedSource, error: type[DayuError], message: str) -> None:
        for playback in list(self._playbacks):
            if playback.played is played:
                playback.end(error(message))

    async def stream(self, source_id: str, max_frames: int = 0) -> AsyncIterator[datasource_pb2.Frame]:
        """The frames of one source from its beginning, at its pace, until it ends, `max_frames` have
        been sent (0: no limit) or the caller stops iterating; a source removed or replaced meanwhile
        ends it with NOT_FOUND or ABORTED."""
        playback = _Playback(self.find(source_id))
        self._playbacks.add(playback)  # before the first await, so a removal meanwhile ends it
        # Reading, rendering and encoding cost CPU or block on a camera: each playback gets a thread of
        # its own, so slow cameras never starve the event loop's shared pool.
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"datasource-{source_id}")
        try:
            reader = playback.reader = await self._open(playback, worker)
            try:
                async for frame in self._play(playback, reader, worker, max_frames):
                    yield frame
            finally:
                reader.close()
        finally:
            self._playbacks.discard(playback)
            worker.shutdown(wait=False)

    @staticmethod
    async def _open(playback: _Playback, worker: ThreadPoolExecutor) -> FrameReader:
        """Opens a playback in the worker (a camera may take its timeout to answer). A caller that
        leaves meanwhile, or a source removed meanwhile, must not leave the playback running: it is
        closed as soon as it opens."""
        played = playback.played
        opening = asyncio.get_running_loop().run_in_executor(worker, played.source.open)
        ending = asyncio.ensure_future(playback.ending.wait())
        try:
            await asyncio.wait((opening, ending), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_once_open)
            raise
        finally:
            ending.cancel()
        if playback.ended is not None:
            opening.add_done_callback(_close_once_open)
            raise playback.ended
        try:
            return opening.result()
        except OSError as error:
            raise Unavailable(f"source {played.source_id!r} cannot be opened: {error}") from None

    async def _play(
        self, playback: _Playback, reader: FrameReader, worker: ThreadPoolExecutor, max_frames: int
    ) -> AsyncIterator[datasource_pb2.Frame]:
        played = playback.played
        loop = asyncio.get_running_loop()
        interval = 1.0 / reader.fps
        start = time.monotonic()
        index = sent = 0  # index: the frame due next
        while not max_frames or sent < max_frames:
            late = time.monotonic() - (start + index * interval)
            if late < 0:
                with contextlib.suppress(TimeoutError):  # woken early when the source goes
                    async with asyncio.timeout(-late):
                        await playback.ending.wait()
            playback.check()
            skip = max(0, int(late / interval))  # frames whose time passed while the consumer lagged
            index += skip
            frame = await loop.run_in_executor(worker, self._capture, played, reader, skip, index)
            playback.check()
            if frame is None:
                log.info("source ended", source_id=played.source_id, frames=sent)
                return
            yield frame
            index += 1
            sent += 1

    @staticmethod
    def _capture(played: PlayedSource, reader: FrameReader, skip: int, index: int) -> datasource_pb2.Frame | None:
        captured = reader.read(skip)
        if captured is None:
            return None
        captured_at = time.time()
        height, width = captured.image.shape[:2]
        return datasource_pb2.Frame(
            source_id=played.source_id,
            index=index,
            captured_at=timestamp(captured_at),
            codec=played.codec,
            resolution=types_pb2.Resolution(width=width, height=height),
            data=encode_image(captured.image, played.codec, played.quality),
            ground_truth=captured.ground_truth,
        )

    def stop(self) -> None:
        """Ends every playback still open (a blocked camera read returns), as the server shuts down."""
        for playback in list(self._playbacks):
            if playback.reader is not None:
                playback.reader.close()


def _close_once_open(opening: asyncio.Future[FrameReader]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
