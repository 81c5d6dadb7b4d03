"""The datasource's playback of its sources at real-time pace, without gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dayu.datasource.sources import FrameReader, Source
from dayu.media.codecs import encode_image
from dayu.runtime.clock import timestamp
from dayu.runtime.errors import NotFound, Unavailable
from dayu.runtime.logs import get_logger
from dayu.runtime.validation import require_id
from dayu.v1 import datasource_pb2, types_pb2

log = get_logger(__name__)


@dataclass(frozen=True)
class PlayedSource:
    """A source under its id, with the encoding its frames travel in."""

    source_id: str
    kind: str
    source: Source
    codec: int = types_pb2.CODEC_JPEG  # JPEG or RAW_BGR
    quality: int = 90  # JPEG quality, 1..100

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
        )


class DatasourceCore:
    """Plays each source as a camera would: frame n is due at start + n / fps on a monotonic clock
    (no drift), and a consumer that falls more than a frame behind misses the frames whose time has
    passed instead of getting a burst. Every call opens its own playback."""

    def __init__(self, sources: Sequence[PlayedSource]) -> None:
        self._sources = {played.source_id: played for played in sources}
        self._readers: set[FrameReader] = set()

    def infos(self) -> list[datasource_pb2.SourceInfo]:
        """Every source's description, in source id order (the order its pages follow)."""
        return [self._sources[source_id].info() for source_id in sorted(self._sources)]

    def find(self, source_id: str) -> PlayedSource:
        require_id(source_id, "source_id")
        try:
            return self._sources[source_id]
        except KeyError:
            raise NotFound(f"source {source_id!r} is not one of {sorted(self._sources)}") from None

    async def stream(self, source_id: str, max_frames: int = 0) -> AsyncIterator[datasource_pb2.Frame]:
        """The frames of one source from its beginning, at its pace, until it ends, `max_frames` have
        been sent (0: no limit) or the caller stops iterating."""
        played = self.find(source_id)
        # Reading, rendering and encoding cost CPU or block on a camera: each playback gets a thread of
        # its own, so slow cameras never starve the event loop's shared pool.
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"datasource-{source_id}")
        try:
            reader = await self._open(played, worker)
            self._readers.add(reader)
            try:
                async for frame in self._play(played, reader, worker, max_frames):
                    yield frame
            finally:
                self._readers.discard(reader)
                reader.close()
        finally:
            worker.shutdown(wait=False)

    @staticmethod
    async def _open(played: PlayedSource, worker: ThreadPoolExecutor) -> FrameReader:
        """Opens a playback in the worker (a camera may take its timeout to answer). A caller that
        leaves meanwhile must not leave the playback running: it is closed as soon as it opens."""
        opening = asyncio.get_running_loop().run_in_executor(worker, played.source.open)
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_once_open)
            raise
        except OSError as error:
            raise Unavailable(f"source {played.source_id!r} cannot be opened: {error}") from None

    async def _play(
        self, played: PlayedSource, reader: FrameReader, worker: ThreadPoolExecutor, max_frames: int
    ) -> AsyncIterator[datasource_pb2.Frame]:
        loop = asyncio.get_running_loop()
        interval = 1.0 / reader.fps
        start = time.monotonic()
        index = sent = 0  # index: the frame due next
        while not max_frames or sent < max_frames:
            late = time.monotonic() - (start + index * interval)
            if late < 0:
                await asyncio.sleep(-late)
            skip = max(0, int(late / interval))  # frames whose time passed while the consumer lagged
            index += skip
            frame = await loop.run_in_executor(worker, self._capture, played, reader, skip, index)
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
        for reader in list(self._readers):
            reader.close()


def _close_once_open(opening: asyncio.Future[FrameReader]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
