"""Source kinds, selected by name with typed parameters: what a datasource can play.

- "synthetic": a traffic scene with true plate boxes (dayu.datasource.scene), deterministic for a seed;
- "file": a video file that PyAV or OpenCV reads, played once or over and over;
- "photos": real photos (packages ship some) filmed as a camera would, slowly zooming in on each;
- "camera": a real camera over RTSP, HTTP (MJPEG) or USB, through OpenCV; it reconnects when it drops.

A Source describes what it plays and opens a FrameReader per playback, so that several streams of one
source run side by side, each at its own position. Readers block (decoding, rendering, waiting for a
camera): call them from a worker thread.
"""

from __future__ import annotations

import abc
import importlib.metadata
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import av
import cv2
import numpy as np
import pydantic

from dayu.datasource.scene import PHASES, TrafficScene
from dayu.runtime.config import StrictModel
from dayu.runtime.errors import InvalidArgument
from dayu.runtime.logs import get_logger
from dayu.runtime.registry import Registry
from dayu.v1 import types_pb2

log = get_logger(__name__)


@dataclass(frozen=True)
class SourceFrame:
    """One frame as a source produces it: BGR uint8 pixels of shape (height, width, 3), and the true
    boxes when the source knows them."""

    image: np.ndarray
    ground_truth: Sequence[types_pb2.Detection] = ()


class FrameReader(abc.ABC):
    """One playback of a source, at its own position."""

    @property
    @abc.abstractmethod
    def fps(self) -> float:
        """The rate at which frames are due."""

    @abc.abstractmethod
    def read(self, skip: int = 0) -> SourceFrame | None:
        """The next frame, after passing over `skip` frames that fell due while the consumer lagged
        (a live camera has moved on anyway and ignores it); None when the source has ended."""

    @abc.abstractmethod
    def close(self) -> None:
        """Ends the playback and releases what it holds. Safe from any thread, even while read() runs
        in another (which then returns None); returns at once."""


class Source(abc.ABC):
    """A configured source: what it plays (for ListSources), and playbacks of it.

    Kinds are built as `kind(params, field=...)`, where `field` is the path of the parameters in the
    configuration, for the errors found when the source is set up."""

    uri: str = ""
    cycle: bool = False
    has_ground_truth: bool = False

    @property
    @abc.abstractmethod
    def fps(self) -> float:
        """Native frame rate."""

    @property
    @abc.abstractmethod
    def resolution(self) -> tuple[int, int]:
        """Native (width, height); (0, 0) while unknown (a camera not reached yet)."""

    @abc.abstractmethod
    def open(self) -> FrameReader:
        """Starts a playback from the beginning; raises OSError when the media cannot be opened."""

    @classmethod
    def files(cls, params: Mapping[str, Any], field: str = "params") -> list[tuple[str, Path]]:
        """The local files a source of this kind would read, as its parameters name them before they
        are validated: (the field naming each, its path). A source added at run time may read only
        files inside the datasource's media folders, so a kind that reads files must list them all
        here; cameras and synthetic scenes read none."""
        return []


SOURCES: Registry[type[Source]] = Registry("source")


# --- synthetic -----------------------------------------------------------------------------------------


WARM_UP_S = 20.0  # scene time of the first frame


class SyntheticParams(StrictModel):
    width: int = pydantic.Field(960, ge=64, le=7680)
    height: int = pydantic.Field(540, ge=64, le=4320)
    fps: float = pydantic.Field(10.0, gt=0, le=240)
    seed: int = pydantic.Field(0, ge=0, description="the same seed gives the same frames")
    lanes: int = pydantic.Field(4, ge=2, le=8, description="lanes of the road, half in each direction")
    traffic: float = pydantic.Field(1.0, gt=0, le=10, description="multiplies how many vehicles arrive")
    phases: list[str] = pydantic.Field(
        default_factory=lambda: list(PHASES), min_length=1, description=f"traffic phases to draw from: {list(PHASES)}"
    )
    phase_min_s: float = pydantic.Field(5.0, gt=0, description="shortest phase")
    phase_max_s: float = pydantic.Field(60.0, gt=0, description="longest phase")
    min_plate_height_px: float = pydantic.Field(10.0, gt=0, description="smaller plates are left out of ground truth")
    duration_s: float = pydantic.Field(0.0, ge=0, description="length of the scene; 0 plays forever")
    cycle: bool = pydantic.Field(True, description="with a duration: start over at the end, or end the stream")

    @pydantic.field_validator("phases")
    @classmethod
    def _known_phases(cls, phases: list[str]) -> list[str]:
        unknown = [name for name in phases if name not in PHASES]
        if unknown:
            raise ValueError(f"phases among {list(PHASES)}, got {unknown}")
        return phases

    @pydantic.model_validator(mode="after")
    def _phase_range(self) -> SyntheticParams:
        if self.phase_min_s > self.phase_max_s:
            raise ValueError(f"phase_min_s ({self.phase_min_s}) at most phase_max_s ({self.phase_max_s})")
        return self


@SOURCES.register("synthetic", params=SyntheticParams)
class SyntheticSource(Source):
    """A synthetic traffic scene with true plate boxes, the same frames for the same seed."""

    has_ground_truth = True

    def __init__(self, params: SyntheticParams, *, field: str = "params") -> None:
        self.params = params
        self.cycle = params.cycle and params.duration_s > 0

    @property
    def fps(self) -> float:
        return self.params.fps

    @property
    def resolution(self) -> tuple[int, int]:
        return self.params.width, self.params.height

    def scene(self) -> TrafficScene:
        p = self.params
        return TrafficScene(
            p.width,
            p.height,
            p.seed,
            p.lanes,
            p.traffic,
            p.phases,
            (p.phase_min_s, p.phase_max_s),
            p.min_plate_height_px,
        )

    def open(self) -> FrameReader:
        return _SyntheticReader(self)


class _SyntheticReader(FrameReader):
    """Frame i shows the scene at WARM_UP_S + i / fps (starting over at the end of the duration, when
    cycling): the road already carries traffic on the first frame."""

    def __init__(self, source: SyntheticSource) -> None:
        self._source = source
        self._scene = source.scene()
        self._position = 0
        frames = source.params.duration_s * source.fps
        self._length = max(1, round(frames)) if frames else 0

    @property
    def fps(self) -> float:
        return self._source.fps

    def read(self, skip: int = 0) -> SourceFrame | None:
        self._position += skip
        if self._length and self._position >= self._length:
            if not self._source.cycle:
                return None
            self._position %= self._length
            self._scene = self._source.scene()  # the scene only moves forward: start a new one
        image, truth = self._scene.render(WARM_UP_S + self._position / self.fps)
        self._position += 1
        return SourceFrame(image, truth)

    def close(self) -> None:
        """Nothing to release: the scene lives in memory."""


# --- file ----------------------------------------------------------------------------------------------


class FileParams(StrictModel):
    path: pydantic.FilePath = pydantic.Field(description="a video file (or image sequence) PyAV or OpenCV reads")
    cycle: bool = pydantic.Field(True, description="start over at the end, or end the stream")
    fps: float | None = pydantic.Field(None, gt=0, le=1000, description="play at this rate instead of the file's")


class _Video(Protocol):
    """A decoder that can pass over frames without converting them to pixels."""

    fps: float  # 0 when the file does not say

    def grab(self) -> bool:
        """Decodes the next frame; False at the end."""

    def retrieve(self) -> np.ndarray:
        """The grabbed frame as BGR pixels."""

    def close(self) -> None: ...


class _AvVideo:
    def __init__(self, path: Path) -> None:
        self._container = av.open(str(path))
        try:
            stream = self._container.streams.video[0]
        except IndexError:
            self._container.close()
            raise OSError(f"{path} has no video stream") from None
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self._frames = self._container.decode(stream)
        self._frame: av.VideoFrame | None = None

    def grab(self) -> bool:
        try:
            self._frame = next(self._frames, None)
        except av.FFmpegError as error:  # a damaged tail ends the file, as players treat it
            log.warning("video file damaged; treating it as ended", error=str(error))
            self._frame = None
        return self._frame is not None

    def retrieve(self) -> np.ndarray:
        assert self._frame is not None
        return self._frame.to_ndarray(format="bgr24")

    def close(self) -> None:
        self._container.close()


class _CvVideo:
    def __init__(self, path: Path) -> None:
        self._capture = cv2.VideoCapture(str(path))
        if not self._capture.isOpened():
            raise OSError(f"OpenCV cannot open {path}")
        self.fps = max(0.0, float(self._capture.get(cv2.CAP_PROP_FPS)))

    def grab(self) -> bool:
        return bool(self._capture.grab())

    def retrieve(self) -> np.ndarray:
        ok, image = self._capture.retrieve()
        if not ok:
            raise OSError("OpenCV grabbed a frame it cannot retrieve")
        return image  # type: ignore[no-any-return]

    def close(self) -> None:
        self._capture.release()


def _open_video(path: Path) -> _Video:
    """PyAV first (it reads the most), OpenCV for what PyAV refuses."""
    try:
        return _AvVideo(path)
    except (av.FFmpegError, OSError) as av_error:
        try:
            return _CvVideo(path)
        except OSError:
            raise OSError(f"neither PyAV nor OpenCV reads {path}: {av_error}") from None


@SOURCES.register("file", params=FileParams)
class FileSource(Source):
    """Replays a video file at its frame rate (or the one given), once or over and over."""

    def __init__(self, params: FileParams, *, field: str = "params") -> None:
        self.params = params
        self.uri = str(params.path)
        self.cycle = params.cycle
        try:
            video = _open_video(params.path)
        except OSError as error:
            raise InvalidArgument(f"{field}.path", f"a video file PyAV or OpenCV reads: {error}") from None
        try:
            if not video.grab():
                raise InvalidArgument(f"{field}.path", f"a video with at least one frame, got none in {self.uri}")
            height, width = video.retrieve().shape[:2]
        finally:
            video.close()
        fps = params.fps or video.fps
        if not fps:
            raise InvalidArgument(f"{field}.fps", f"the frame rate to play at: {self.uri} does not give its own")
        self._fps, self._resolution = fps, (width, height)

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def resolution(self) -> tuple[int, int]:
        return self._resolution

    def open(self) -> FrameReader:
        return _FileReader(self)

    @classmethod
    def files(cls, params: Mapping[str, Any], field: str = "params") -> list[tuple[str, Path]]:
        path = params.get("path")
        return [(f"{field}.path", Path(path))] if isinstance(path, str) else []  # else not a path: refused


class _FileReader(FrameReader):
    """Decodes the file in order; close() may come from another thread while a read decodes, so the
    decoder is released by whichever of the two finishes last."""

    def __init__(self, source: FileSource) -> None:
        self._source = source
        self._video = _open_video(source.params.path)
        self._guard = threading.Lock()
        self._reading = self._closed = False

    @property
    def fps(self) -> float:
        return self._source.fps

    def read(self, skip: int = 0) -> SourceFrame | None:
        with self._guard:
            if self._closed:
                return None
            self._reading = True
        try:
            return self._decode(skip)
        finally:
            with self._guard:
                self._reading = False
                if self._closed:
                    self._video.close()

    def _decode(self, skip: int) -> SourceFrame | None:
        for _ in range(skip + 1):
            if self._video.grab():
                continue
            if not self._source.cycle:
                return None
            self._video.close()
            self._video = _open_video(self._source.params.path)
            if not self._video.grab():  # emptied since it was configured
                return None
        return SourceFrame(self._video.retrieve())

    def close(self) -> None:
        with self._guard:
            if not self._closed and not self._reading:
                self._video.close()
            self._closed = True


# --- photos --------------------------------------------------------------------------------------------


def packaged_file(reference: str) -> Path:
    """A file path, or DISTRIBUTION:PATH of a file an installed package ships, found without importing
    the package (matplotlib:matplotlib/mpl-data/sample_data/grace_hopper.jpg)."""
    path = Path(reference)
    if path.is_file() or ":" not in reference:
        return path
    distribution, _, inside = reference.partition(":")
    try:
        found = importlib.metadata.distribution(distribution).locate_file(inside)
    except importlib.metadata.PackageNotFoundError:
        raise OSError(f"{reference}: no installed package {distribution!r}") from None
    except ValueError as error:  # no name before the colon
        raise OSError(f"{reference}: {error}") from None
    return Path(str(found))


MAX_PHOTOS = 256


class PhotosParams(StrictModel):
    images: list[str] = pydantic.Field(
        min_length=1,
        max_length=MAX_PHOTOS,
        description="photos, as files or DISTRIBUTION:PATH of a file an installed package ships",
    )
    width: int = pydantic.Field(960, ge=64, le=7680)
    height: int = pydantic.Field(540, ge=64, le=4320)
    fps: float = pydantic.Field(10.0, gt=0, le=240)
    seconds_each: float = pydantic.Field(10.0, gt=0, le=3600, description="how long the camera looks at each photo")
    zoom: float = pydantic.Field(
        1.5, ge=1, le=4, description="the camera zooms in this far over each photo, slowly, so no two frames are alike"
    )


@SOURCES.register("photos", params=PhotosParams)
class PhotosSource(Source):
    """Real photos (those packages ship, or yours) as a camera would film them: each for a while, the camera
    slowly zooming in towards its centre; the photos in turn, over and over. No ground truth: scored against
    the golden configuration."""

    cycle = True

    def __init__(self, params: PhotosParams, *, field: str = "params") -> None:
        self.params = params
        self.photos = []
        for index, reference in enumerate(params.images):
            try:
                path = packaged_file(reference)
            except OSError as error:
                raise InvalidArgument(
                    f"{field}.images[{index}]", f"a photo file or DISTRIBUTION:PATH ({error})"
                ) from None
            image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
            if image is None:
                raise InvalidArgument(f"{field}.images[{index}]", f"a photo OpenCV reads, got {str(path)!r}")
            self.photos.append(image)
        self.uri = ",".join(params.images)

    @property
    def fps(self) -> float:
        return self.params.fps

    @property
    def resolution(self) -> tuple[int, int]:
        return self.params.width, self.params.height

    def frame(self, position: int) -> np.ndarray:
        """Frame `position`: the photo due then, as much of it as the zoom shows, at the source's size."""
        p = self.params
        t = position / p.fps
        photo = self.photos[int(t // p.seconds_each) % len(self.photos)]
        progress = (t % p.seconds_each) / p.seconds_each
        height, width = photo.shape[:2]
        # The largest window of the output's aspect ratio that fits the photo, shrunk by the zoom so far.
        aspect = p.width / p.height
        window_w = min(width, height * aspect) / (1 + (p.zoom - 1) * progress)
        window_h = window_w / aspect
        x1, y1 = (width - window_w) / 2, (height - window_h) / 2
        crop = photo[int(y1) : int(y1 + window_h), int(x1) : int(x1 + window_w)]
        return cv2.resize(crop, (p.width, p.height), interpolation=cv2.INTER_AREA)

    def open(self) -> FrameReader:
        return _PhotosReader(self)

    @classmethod
    def files(cls, params: Mapping[str, Any], field: str = "params") -> list[tuple[str, Path]]:
        """Each photo's file, a DISTRIBUTION:PATH found where its package lies. Past MAX_PHOTOS (or not a
        list, or not text) the parameters are refused anyway."""
        images = params.get("images")
        found = []
        for index, reference in enumerate(images[:MAX_PHOTOS] if isinstance(images, list) else []):
            if isinstance(reference, str):
                try:
                    found.append((f"{field}.images[{index}]", packaged_file(reference)))
                except OSError as error:
                    raise InvalidArgument(
                        f"{field}.images[{index}]", f"a photo file or DISTRIBUTION:PATH ({error})"
                    ) from None
        return found


class _PhotosReader(FrameReader):
    def __init__(self, source: PhotosSource) -> None:
        self._source = source
        self._position = 0

    @property
    def fps(self) -> float:
        return self._source.fps

    def read(self, skip: int = 0) -> SourceFrame | None:
        self._position += skip
        image = self._source.frame(self._position)
        self._position += 1
        return SourceFrame(image)

    def close(self) -> None:
        """Nothing to release: the photos live in the source."""


# --- camera --------------------------------------------------------------------------------------------

CAMERA_SCHEMES = ("rtsp", "rtsps", "http", "https")


class CameraParams(StrictModel):
    url: str = pydantic.Field("", description=f"stream URL ({', '.join(CAMERA_SCHEMES)}); or give a device")
    device: int | None = pydantic.Field(None, ge=0, description="USB (V4L2) device index, as in /dev/video0")
    fps: float | None = pydantic.Field(None, gt=0, le=240, description="pace at this rate instead of the camera's")
    default_fps: float = pydantic.Field(25.0, gt=0, le=240, description="the rate when the camera reports none")
    reconnect_s: float = pydantic.Field(2.0, gt=0, le=300, description="wait before reconnecting after a drop")
    timeout_s: float = pydantic.Field(10.0, gt=0, le=300, description="give up opening or reading after this")

    @pydantic.field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if url and urllib.parse.urlsplit(url).scheme not in CAMERA_SCHEMES:
            raise ValueError(f"a URL with a scheme among {list(CAMERA_SCHEMES)}, got {url!r}")
        return url

    @pydantic.model_validator(mode="after")
    def _one_camera(self) -> CameraParams:
        if (self.url == "") == (self.device is None):
            raise ValueError("exactly one of url and device")
        return self


def _without_password(url: str) -> str:
    """The URL as ListSources may show it: credentials in a camera URL are nobody else's business."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


@SOURCES.register("camera", params=CameraParams)
class CameraSource(Source):
    """A real camera (RTSP, HTTP MJPEG or USB) through OpenCV; it never ends, and reconnects when it drops."""

    def __init__(self, params: CameraParams, *, field: str = "params") -> None:
        self.params = params
        self.uri = _without_password(params.url) if params.url else f"usb:{params.device}"
        self._reported_fps: float | None = None
        self._seen: tuple[int, int] = (0, 0)

    @property
    def fps(self) -> float:
        return self.params.fps or self._reported_fps or self.params.default_fps

    @property
    def resolution(self) -> tuple[int, int]:
        return self._seen

    def connect(self) -> cv2.VideoCapture | None:
        """A connection to the camera, or None when it cannot be reached now."""
        if self.params.device is not None:
            capture = cv2.VideoCapture(self.params.device)
        else:
            timeout_ms = round(self.params.timeout_s * 1000)
            options = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
            capture = cv2.VideoCapture(self.params.url, cv2.CAP_FFMPEG, options)
        if not capture.isOpened():
            capture.release()
            return None
        reported = float(capture.get(cv2.CAP_PROP_FPS))
        self._reported_fps = reported if 0 < reported <= 240 else None
        return capture

    def saw(self, image: np.ndarray) -> None:
        self._seen = (image.shape[1], image.shape[0])

    def open(self) -> FrameReader:
        return _CameraReader(self)


class _CameraReader(FrameReader):
    """A thread keeps reading the camera (reconnecting when it drops) and keeps only the newest frame,
    so the stream shows the present, as a camera does, and never a backlog."""

    def __init__(self, source: CameraSource) -> None:
        self._source = source
        self._newest: np.ndarray | None = None
        self._captured = 0  # frames read from the camera so far
        self._returned = 0  # the number of the frame read() returned last
        self._arrived = threading.Condition()
        self._closing = threading.Event()
        self._first_attempt = threading.Event()
        self._thread = threading.Thread(target=self._capture, name=f"camera {source.uri}", daemon=True)
        self._thread.start()
        self._first_attempt.wait(source.params.timeout_s)  # learn the camera's frame rate before pacing

    @property
    def fps(self) -> float:
        return self._source.fps

    def _capture(self) -> None:
        uri = self._source.uri
        while not self._closing.is_set():
            capture = self._source.connect()
            self._first_attempt.set()
            if capture is None:
                log.warning("camera unreachable", uri=uri, retry_s=self._source.params.reconnect_s)
            else:
                try:
                    while not self._closing.is_set():
                        ok, image = capture.read()
                        if not ok:
                            log.warning("camera dropped", uri=uri, retry_s=self._source.params.reconnect_s)
                            break
                        self._source.saw(image)
                        with self._arrived:
                            self._newest, self._captured = image, self._captured + 1
                            self._arrived.notify_all()
                finally:
                    capture.release()
            self._closing.wait(self._source.params.reconnect_s)

    def read(self, skip: int = 0) -> SourceFrame | None:
        with self._arrived:
            self._arrived.wait_for(lambda: self._captured > self._returned or self._closing.is_set())
            if self._closing.is_set() or self._newest is None:
                return None
            self._returned = self._captured
            return SourceFrame(self._newest)

    def close(self) -> None:
        self._closing.set()
        with self._arrived:
            self._arrived.notify_all()
