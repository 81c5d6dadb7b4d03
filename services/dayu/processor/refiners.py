"""Second stages, which say something about each box their parent stage found: the frames they look
at, and the colour classifier (OpenCV, no model; the text recognizer on its model is in
dayu.processor.models)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from dayu.media.codecs import decode_segment
from dayu.processor.kinds import ColorClassifierParams
from dayu.processor.results import only_parent, parent_detections, pixels_per_frame, record
from dayu.v1 import task_pb2, types_pb2


def crop_box(frame: np.ndarray, box: types_pb2.Box) -> np.ndarray:
    """The pixels of `box`, clipped to the frame (empty when the box lies outside it)."""
    height, width = frame.shape[:2]
    x1, y1 = max(int(box.x1), 0), max(int(box.y1), 0)
    x2, y2 = min(int(np.ceil(box.x2)), width), min(int(np.ceil(box.y2)), height)
    return frame[y1:y2, x1:x2] if x2 > x1 and y2 > y1 else frame[0:0, 0:0]


class BoxRefiner:
    """A second stage: says something about each box its one parent stage found, frame by frame. The
    segment is decoded only when there is a box to look at."""

    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        parents = parent_detections(task, only_parent(stage))
        frames = await asyncio.to_thread(decode_segment, task.segment) if any(parents) else []
        # Not strict: without boxes nothing was decoded; otherwise there is one frame per parent result.
        objects = [(frame, detection) for frame, found in zip(frames, parents, strict=False) for detection in found]
        described = iter(await self.describe(objects, stage.spec))
        per_frame = [
            [types_pb2.Detection(box=d.box, parent_index=i, **next(described)) for i, d in enumerate(found)]
            for found in parents
        ]
        record(stage, task.segment, per_frame, pixels_per_frame(task.segment, frames))

    async def describe(
        self, objects: Sequence[tuple[np.ndarray, types_pb2.Detection]], spec: types_pb2.StageSpec
    ) -> list[dict[str, Any]]:
        """Fields of the refined detection (label, text, score) for each (frame, parent detection), in order."""
        raise NotImplementedError


# Colour names of OpenCV hues (0..179, half degrees): the upper bound of each bin, in order.
_HUE_BINS = (("red", 8), ("orange", 20), ("yellow", 34), ("green", 85), ("blue", 130), ("purple", 160), ("red", 180))
_COLOURS = tuple(dict.fromkeys([name for name, _ in _HUE_BINS] + ["white", "gray", "black"]))


def _hue_table() -> np.ndarray:
    """The colour index of every OpenCV hue."""
    table, lower = np.zeros(180, dtype=np.intp), 0
    for name, upper in _HUE_BINS:
        table[lower:upper], lower = _COLOURS.index(name), upper
    return table


_HUE_TO_COLOUR = _hue_table()
_WHITE, _GRAY, _BLACK = (_COLOURS.index(name) for name in ("white", "gray", "black"))
# Below this saturation a pixel has no hue worth naming; below this value it is black; above the
# white value (and unsaturated) it is white (OpenCV's 0..255 scales).
_MIN_SATURATION, _BLACK_VALUE, _WHITE_VALUE = 60, 50, 180
# The sampled body region starts this many box heights above the box, clear of the plate's border.
_REGION_GAP = 0.5


def dominant_colour(pixels: np.ndarray) -> tuple[str, float]:
    """The colour name most of the BGR pixels have, and the share of pixels that have it."""
    hue, saturation, value = cv2.cvtColor(pixels, cv2.COLOR_BGR2HSV).reshape(-1, 3).T
    colour = np.where(saturation < _MIN_SATURATION, np.where(value > _WHITE_VALUE, _WHITE, _GRAY), _HUE_TO_COLOUR[hue])
    colour = np.where(value < _BLACK_VALUE, _BLACK, colour)
    counts = np.bincount(colour, minlength=len(_COLOURS))
    best = int(counts.argmax())
    return _COLOURS[best], float(counts[best] / counts.sum())


class ColorClassifierRunner(BoxRefiner):
    """Names the vehicle's colour around each box of its parent stage: the dominant HSV colour of the
    body just above the plate, with the share of pixels that have it as score ("unknown", 0 when that
    region lies outside the frame). Cheap (no model), so a fork has a real second branch."""

    def __init__(self, params: ColorClassifierParams) -> None:
        self.region_height, self.region_width = params.region_height, params.region_width

    def body_region(self, box: types_pb2.Box) -> types_pb2.Box:
        """The part of the vehicle above the plate, centred on it."""
        width, height = box.x2 - box.x1, box.y2 - box.y1
        centre, bottom = (box.x1 + box.x2) / 2, box.y1 - _REGION_GAP * height
        half_width = self.region_width * width / 2
        return types_pb2.Box(
            x1=centre - half_width, x2=centre + half_width, y1=bottom - self.region_height * height, y2=bottom
        )

    async def describe(
        self, objects: Sequence[tuple[np.ndarray, types_pb2.Detection]], spec: types_pb2.StageSpec
    ) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._colours, objects)

    def _colours(self, objects: Sequence[tuple[np.ndarray, types_pb2.Detection]]) -> list[dict[str, Any]]:
        described = []
        for frame, detection in objects:
            region = crop_box(frame, self.body_region(detection.box))
            colour, share = dominant_colour(region) if region.size else ("unknown", 0.0)
            described.append({"label": colour, "score": share})
        return described
