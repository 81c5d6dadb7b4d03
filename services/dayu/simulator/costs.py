"""The profile the simulator reads (configs/profile.yaml, made by `dayu profile`): what a segment costs
to process on each processor, how many bytes its frames take, and how accurate its detections are, as
functions of the configuration. Lookups interpolate between the measured points (piecewise linear,
numpy.interp) and hold the nearest measured value outside them, except processing past the largest
measured resolution, which follows the fitted model's cost per pixel."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydantic

from dayu.mesh.model import read_mesh_file
from dayu.runtime.config import StrictModel
from dayu.runtime.errors import from_validation_error

PROFILE_VERSION = 1


class ProcessingSample(StrictModel):
    width: int = pydantic.Field(gt=0)
    height: int = pydantic.Field(gt=0)
    frames: int = pydantic.Field(gt=0, description="frames in the segment")
    seconds: float = pydantic.Field(ge=0, description="median processing time of the segment")
    repeats: int = pydantic.Field(gt=0)


class ProcessingFit(StrictModel):
    """seconds = fixed_s + per_frame_s * frames + per_frame_pixel_s * frames * width * height"""

    fixed_s: float
    per_frame_s: float
    per_frame_pixel_s: float


class ProcessorProfile(StrictModel):
    kind: str
    params: dict[str, object] = pydantic.Field(default_factory=dict)
    fit: ProcessingFit
    spread: float = pydantic.Field(ge=0, le=2, description="typical relative deviation of one segment's time")
    measured: list[ProcessingSample] = pydantic.Field(min_length=1)


class FrameBytes(StrictModel):
    width: int = pydantic.Field(gt=0)
    height: int = pydantic.Field(gt=0)
    quality: int = pydantic.Field(ge=1, le=100)
    bytes: float = pydantic.Field(gt=0, description="mean JPEG bytes of one frame")


class AccuracySample(StrictModel):
    width: int = pydantic.Field(gt=0)
    height: int = pydantic.Field(gt=0)
    quality: int = pydantic.Field(ge=1, le=100)
    frames_per_segment: int = pydantic.Field(gt=0)
    f1: float = pydantic.Field(ge=0, le=1, description="mean of the segments' F1, as the distributor scores a task")
    segments: int = pydantic.Field(gt=0)


class TaskOverhead(StrictModel):
    """Bytes of a task besides its frames (ids, DAG, ground truth, results): fixed + per_frame x frames."""

    fixed_bytes: float = pydantic.Field(ge=0)
    per_frame_bytes: float = pydantic.Field(ge=0)


class ProfileFile(StrictModel):
    version: Literal[1] = PROFILE_VERSION
    made_by: str = ""
    made_at: str = ""
    machine: str = ""
    processors: dict[str, ProcessorProfile] = pydantic.Field(min_length=1)
    frame_bytes: list[FrameBytes] = pydantic.Field(min_length=1)
    accuracy: list[AccuracySample] = pydantic.Field(min_length=1)
    task_overhead: TaskOverhead


@dataclass(frozen=True)
class _Curve:
    """A piecewise-linear function of one variable, held flat outside its points."""

    xs: np.ndarray
    ys: np.ndarray

    @classmethod
    def of(cls, points: dict[float, float]) -> _Curve:
        xs = sorted(points)
        return cls(np.array(xs, dtype=float), np.array([points[x] for x in xs], dtype=float))

    def __call__(self, x: float) -> float:
        return float(np.interp(x, self.xs, self.ys))


@dataclass(frozen=True)
class _Processing:
    """One processor's seconds per segment: at each measured resolution a line in frames (least squares
    over the frame counts measured there), interpolated in pixels between resolutions."""

    pixels: np.ndarray  # measured pixel counts, ascending
    lines: np.ndarray  # (fixed, per frame) at each
    per_frame_pixel_s: float  # the fit's slope, past the largest resolution
    spread: float

    @classmethod
    def of(cls, profile: ProcessorProfile) -> _Processing:
        by_pixels: dict[int, list[ProcessingSample]] = defaultdict(list)
        for sample in profile.measured:
            by_pixels[sample.width * sample.height].append(sample)
        pixels = sorted(by_pixels)
        lines = []
        for count in pixels:
            samples = by_pixels[count]
            frames = np.array([s.frames for s in samples], dtype=float)
            seconds = np.array([s.seconds for s in samples], dtype=float)
            if len(set(frames.tolist())) > 1:
                per_frame, fixed = np.polyfit(frames, seconds, 1)
            else:  # one frame count measured here: all of it per frame
                fixed, per_frame = 0.0, float(np.mean(seconds / frames))
            lines.append((float(fixed), float(per_frame)))
        return cls(np.array(pixels, dtype=float), np.array(lines), profile.fit.per_frame_pixel_s, profile.spread)

    def seconds(self, pixels: float, frames: int) -> float:
        fixed = float(np.interp(pixels, self.pixels, self.lines[:, 0]))
        per_frame = float(np.interp(pixels, self.pixels, self.lines[:, 1]))
        beyond = max(0.0, pixels - float(self.pixels[-1]))  # past the largest measured: the fit's cost per pixel
        return max(0.0, fixed + frames * (per_frame + beyond * self.per_frame_pixel_s))


class Profile:
    """The lookups the simulator makes, over a validated profile file."""

    def __init__(self, data: ProfileFile, source: str = "profile") -> None:
        self.data, self.source = data, source
        self._processing = {name: _Processing.of(p) for name, p in data.processors.items()}
        self._bytes = self._by_quality(
            {(b.width * b.height, b.quality): b.bytes / (b.width * b.height) for b in data.frame_bytes}
        )
        accuracy: dict[int, dict[tuple[int, int], float]] = defaultdict(dict)
        for a in data.accuracy:
            accuracy[a.frames_per_segment][(a.width * a.height, a.quality)] = a.f1
        self._accuracy = {frames: self._by_quality(table) for frames, table in accuracy.items()}

    @staticmethod
    def _by_quality(table: dict[tuple[int, int], float]) -> dict[int, _Curve]:
        """Per quality, a curve over pixels."""
        curves: dict[int, dict[float, float]] = defaultdict(dict)
        for (pixels, quality), value in table.items():
            curves[quality][float(pixels)] = value
        return {quality: _Curve.of(points) for quality, points in curves.items()}

    @staticmethod
    def _at(curves: dict[int, _Curve], pixels: float, quality: int) -> float:
        """Interpolated in pixels at each measured quality, then in quality."""
        qualities = sorted(curves)
        values = [curves[q](pixels) for q in qualities]
        return float(np.interp(quality, qualities, values))

    @classmethod
    def load(cls, path: Path, field: str = "--profile") -> Profile:
        data = read_mesh_file(path, field)  # a YAML mapping, as a mesh file is
        try:
            return cls(ProfileFile.model_validate(data), str(path))
        except pydantic.ValidationError as error:
            raise from_validation_error(error, str(path)) from None

    @property
    def processors(self) -> list[str]:
        return sorted(self._processing)

    def processing_s(self, processor: str, width: int, height: int, frames: int) -> float:
        """Median seconds the processor takes for a segment of `frames` frames at width x height."""
        return self._processing[processor].seconds(float(width * height), frames)

    def spread(self, processor: str) -> float:
        return self._processing[processor].spread

    def frame_bytes(self, width: int, height: int, quality: int) -> float:
        """Mean JPEG bytes of one frame: bytes per pixel interpolated, times the pixels."""
        pixels = float(width * height)
        return self._at(self._bytes, pixels, quality) * pixels

    def task_bytes(self, frames: int, frame_bytes: float, with_frames: bool = True) -> int:
        overhead = self.data.task_overhead
        return int(
            overhead.fixed_bytes + overhead.per_frame_bytes * frames + (frame_bytes * frames if with_frames else 0)
        )

    def accuracy(self, width: int, height: int, quality: int, frames_per_segment: int) -> float:
        """Mean F1 of a task's first detector against ground truth: at the measured segment length at or
        under frames_per_segment (the shortest when none is)."""
        lengths = sorted(self._accuracy)
        length = max((n for n in lengths if n <= frames_per_segment), default=lengths[0])
        return self._at(self._accuracy[length], float(width * height), quality)
