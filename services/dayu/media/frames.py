"""What a generator does to frames before encoding them: drop some (frame rate), resize, and map boxes
between resolutions."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

from dayu.runtime.errors import InvalidArgument
from dayu.v1 import types_pb2

if TYPE_CHECKING:
    import numpy as np

# Frame rates become exact fractions so that 10 of 30 frames is exactly every third frame, with no
# float drift over hours of video; 1001 keeps NTSC rates (30000/1001) exact.
_RATE_DENOMINATOR = 1001


def frame_rate(fps: float, field: str) -> Fraction:
    """The rate as an exact fraction, refusing rates that are not finite and > 0."""
    if not (math.isfinite(fps) and fps > 0):
        raise InvalidArgument(field, f"a frame rate > 0, got {fps}")
    return Fraction(fps).limit_denominator(_RATE_DENOMINATOR)


class FrameRateFilter:
    """Keeps target_fps of every source_fps frames, evenly spread, starting with the first frame.

    Each source frame earns target/source of a frame; a frame is kept when a whole one has been
    earned. The credit left over is always less than one frame, so changing the target at run time
    takes effect on the next frame without a burst of kept frames (or a gap) to catch up.
    """

    def __init__(self, source_fps: float, target_fps: float) -> None:
        self._source = frame_rate(source_fps, "source_fps")
        self._ratio = self._ratio_for(target_fps)
        self._target_fps = target_fps
        # Just short of a whole frame, so the first frame is kept.
        self._credit = 1 - self._ratio

    def _ratio_for(self, target_fps: float) -> Fraction:
        return min(Fraction(1), frame_rate(target_fps, "target_fps") / self._source)

    @property
    def source_fps(self) -> float:
        return float(self._source)

    @property
    def target_fps(self) -> float:
        return self._target_fps

    @target_fps.setter
    def target_fps(self, target_fps: float) -> None:
        self._ratio = self._ratio_for(target_fps)
        self._target_fps = target_fps

    @property
    def kept_fps(self) -> float:
        """The rate actually kept: the target, or the source's rate when the target is above it."""
        return float(self._source * self._ratio)

    def keep(self) -> bool:
        """Whether to keep the next source frame; call once per source frame, in order."""
        self._credit += self._ratio
        if self._credit >= 1:
            self._credit -= 1
            return True
        return False


def resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """The frame at width x height: area averaging to shrink (no aliasing), bilinear to grow."""
    if width <= 0 or height <= 0:
        raise InvalidArgument("resolution", f"width and height > 0, got {width}x{height}")
    source_height, source_width = frame.shape[:2]
    if (source_width, source_height) == (width, height):
        return frame
    shrinking = width <= source_width and height <= source_height
    # Imported here: the rest of this module (frame rates, box maths for dayu.media.accuracy) needs no OpenCV.
    import cv2

    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def require_resolution(resolution: types_pb2.Resolution, field: str) -> None:
    """Both sides > 0: a resolution anything is divided by."""
    if resolution.width == 0 or resolution.height == 0:
        raise InvalidArgument(field, f"width and height > 0, got {resolution.width}x{resolution.height}")


def scale_box(box: types_pb2.Box, from_res: types_pb2.Resolution, to_res: types_pb2.Resolution) -> types_pb2.Box:
    """The box found on a frame of from_res, in the pixel coordinates of the same frame at to_res."""
    require_resolution(from_res, "from_res")
    require_resolution(to_res, "to_res")
    x_scale = to_res.width / from_res.width
    y_scale = to_res.height / from_res.height
    return types_pb2.Box(x1=box.x1 * x_scale, y1=box.y1 * y_scale, x2=box.x2 * x_scale, y2=box.y2 * y_scale)
