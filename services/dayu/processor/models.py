"""Inference stages on real models: licence plates found as text lines by PP-OCRv4 detection
(DBNet), read by PP-OCRv4 recognition, the vehicle's colour named around each plate, and the join
that combines parallel branches.

The models run on the node's Triton server or in process (the `backend` parameter, see
dayu.processor.inference); the pre- and post-processing around them runs here, in the processor, for
both: rapidocr's own resizing, normalisation, DBNet box extraction and CTC decoding, so results match
the reference PP-OCR pipeline and Triton's GPU backends serve the same tensors as its CPU path. A
segment's frames (and its crops) go to the model in batches. Decoding and the numeric work around the
model run in worker threads, so the processor's event loop keeps answering while a stage runs.
"""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import onnxruntime
import pydantic
from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess
from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer
from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

from dayu.media.codecs import decode_segment
from dayu.processor.inference import InferenceBackend, InferenceParams, ModelRef, make_backend, model_of
from dayu.processor.kinds import PROCESSORS
from dayu.processor.repository import packaged_model_file
from dayu.runtime.config import StrictModel
from dayu.runtime.registry import NoParams
from dayu.v1 import task_pb2, types_pb2

# The models of the repository (triton_models/) the kinds use unless the pipeline's stage names another.
DETECTION_MODEL = "text_detection"
RECOGNITION_MODEL = "text_recognition"
# PP-OCRv4 recognition reads text lines resized to 48 pixels high; 320 is the narrowest padded width.
RECOGNITION_INPUT_SHAPE = (3, 48, 320)
# Boxes this thin or thinner are noise of the probability map, as rapidocr filters them.
MIN_BOX_SIDE = 3


def _box_area(box: types_pb2.Box) -> float:
    return max(box.x2 - box.x1, 0.0) * max(box.y2 - box.y1, 0.0)


def _frame_area(segment: task_pb2.Segment, frames: Sequence[np.ndarray]) -> float:
    """Pixels of one frame: of the decoded frames when there are some, else as the segment declares."""
    if frames:
        height, width = frames[0].shape[:2]
        return float(width * height)
    return float(segment.resolution.width * segment.resolution.height)


def _record(
    stage: task_pb2.TaskStage,
    segment: task_pb2.Segment,
    per_frame: Sequence[Sequence[types_pb2.Detection]],
    frame_area: float,
) -> None:
    """Fills the stage's results and its scenario (object count and mean relative size per frame),
    what the scheduler adapts the configuration to."""
    del stage.results[:]
    stage.scenario.Clear()
    for frame_index, detections in zip(segment.frame_indices, per_frame, strict=True):
        stage.results.add(frame_index=frame_index, detections=detections)
        stage.scenario.object_counts.append(len(detections))
        if detections and frame_area <= 0:
            raise ValueError("segment.resolution is needed to relate object sizes to the frame")
        sizes = [_box_area(d.box) / frame_area for d in detections]
        stage.scenario.mean_object_sizes.append(float(np.mean(sizes)) if sizes else 0.0)


def _parent_detections(task: task_pb2.Task, parent: str) -> list[Sequence[types_pb2.Detection]]:
    """What stage `parent` of the task's DAG found on each frame of the segment, in segment order."""
    stage = next(s for s in task.dag.stages if s.spec.name == parent)
    if stage.state != task_pb2.STAGE_STATE_DONE:
        raise ValueError(f"parent stage {parent!r} is {task_pb2.StageState.Name(stage.state)}, not DONE")
    by_frame = {result.frame_index: result.detections for result in stage.results}
    return [by_frame.get(frame_index, ()) for frame_index in task.segment.frame_indices]


def _only_parent(stage: task_pb2.TaskStage) -> str:
    if len(stage.spec.parents) != 1:
        raise ValueError(
            f"stage {stage.spec.name!r} refines the boxes of exactly one parent stage, got {list(stage.spec.parents)}"
        )
    return stage.spec.parents[0]


def crop_box(frame: np.ndarray, box: types_pb2.Box) -> np.ndarray:
    """The pixels of `box`, clipped to the frame (empty when the box lies outside it)."""
    height, width = frame.shape[:2]
    x1, y1 = max(int(box.x1), 0), max(int(box.y1), 0)
    x2, y2 = min(int(np.ceil(box.x2)), width), min(int(np.ceil(box.y2)), height)
    return frame[y1:y2, x1:x2] if x2 > x1 and y2 > y1 else frame[0:0, 0:0]


async def infer_in_batches(
    backend: InferenceBackend, model: ModelRef, inputs: Sequence[np.ndarray | None], batch_size: int
) -> list[np.ndarray | None]:
    """The model's output for each input (one sample, batch axis of 1; None stays None): inputs of one
    shape share calls of up to `batch_size` samples, made one after the other."""
    by_shape: defaultdict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, sample in enumerate(inputs):
        if sample is not None:
            by_shape[sample.shape].append(i)
    outputs: list[np.ndarray | None] = [None] * len(inputs)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            batch = np.concatenate([inputs[i] for i in chunk])  # type: ignore[misc]
            result = await backend.infer(model, batch)
            for position, i in enumerate(chunk):
                outputs[i] = result[position : position + 1]
    return outputs


class _ModelRunner:
    """A kind backed by a model: the backend its parameters choose, released when the processor stops."""

    backend: InferenceBackend

    async def aclose(self) -> None:
        await self.backend.aclose()


class _BoxRefiner:
    """A second stage: says something about each box its one parent stage found, frame by frame. The
    segment is decoded only when there is a box to look at."""

    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        parents = _parent_detections(task, _only_parent(stage))
        frames = await asyncio.to_thread(decode_segment, task.segment) if any(parents) else []
        # Not strict: without boxes nothing was decoded; otherwise there is one frame per parent result.
        objects = [(frame, detection) for frame, found in zip(frames, parents, strict=False) for detection in found]
        described = iter(await self.describe(objects, stage.spec))
        per_frame = [
            [types_pb2.Detection(box=d.box, parent_index=i, **next(described)) for i, d in enumerate(found)]
            for found in parents
        ]
        _record(stage, task.segment, per_frame, _frame_area(task.segment, frames))

    async def describe(
        self, objects: Sequence[tuple[np.ndarray, types_pb2.Detection]], spec: types_pb2.StageSpec
    ) -> list[dict[str, Any]]:
        """Fields of the refined detection (label, text, score) for each (frame, parent detection), in order."""
        raise NotImplementedError


class TextDetectorParams(InferenceParams):
    max_side: int = pydantic.Field(
        960, ge=32, le=4096, description="longer side fed to the model; larger frames are scaled down, never up"
    )
    pixel_threshold: float = pydantic.Field(0.3, gt=0, lt=1, description="text probability of a pixel that is text")
    score_threshold: float = pydantic.Field(0.5, ge=0, le=1, description="mean text probability to keep a box")
    unclip_ratio: float = pydantic.Field(1.6, ge=1, le=4, description="how far boxes grow around the text core")
    # A plate reader knows what a plate looks like from its camera: a text line several times wider
    # than high, and no taller than some share of the frame. Shapes the model takes for text (a row
    # of trees, a building's edge) are neither, and would be false plates.
    min_aspect: float = pydantic.Field(0.0, ge=0, description="keep boxes at least this many times wider than high")
    max_height_share: float = pydantic.Field(
        1.0, gt=0, le=1, description="keep boxes at most this share of the frame's height"
    )
    label: str = pydantic.Field("plate", min_length=1, description="label of every box")
    batch_size: int = pydantic.Field(
        8, ge=1, le=64, description="frames per model call; a segment's frames share calls"
    )


@PROCESSORS.register("text_detector", params=TextDetectorParams)
class TextDetectorRunner(_ModelRunner):
    """Finds text lines (licence plates) on every frame with PP-OCRv4 detection (DBNet)."""

    def __init__(self, params: TextDetectorParams) -> None:
        self.label, self.batch_size = params.label, params.batch_size
        self.min_aspect, self.max_height_share = params.min_aspect, params.max_height_share
        # "max": the cost follows the data's resolution up to max_side, as the scheduler expects.
        self._preprocess = DetPreProcess(params.max_side, "max")
        self._postprocess = DBPostProcess(
            thresh=params.pixel_threshold,
            box_thresh=params.score_threshold,
            unclip_ratio=params.unclip_ratio,
            use_dilation=True,
            score_mode="fast",
        )
        self.backend = make_backend(params, DETECTION_MODEL)

    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        frames, inputs = await asyncio.to_thread(self._prepare, task.segment)
        maps = await infer_in_batches(self.backend, model_of(stage.spec, DETECTION_MODEL), inputs, self.batch_size)
        per_frame = await asyncio.to_thread(
            lambda: [self.boxes(m, f.shape[:2]) if m is not None else [] for m, f in zip(maps, frames, strict=True)]
        )
        _record(stage, task.segment, per_frame, _frame_area(task.segment, frames))

    def _prepare(self, segment: task_pb2.Segment) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """The decoded frames and the model's input for each (None: too small for the model's 32-pixel grid)."""
        frames = decode_segment(segment)
        return frames, [self.model_input(frame) for frame in frames]

    def model_input(self, frame: np.ndarray) -> np.ndarray | None:
        """One BGR frame as the model's input (1, 3, H, W), H and W multiples of 32 within max_side;
        None when the frame is too small for that grid."""
        return self._preprocess(frame)

    def boxes(self, probabilities: np.ndarray, frame_shape: tuple[int, int]) -> list[types_pb2.Detection]:
        """Axis-aligned boxes around the text lines of one frame's probability map, in the frame's
        pixels, top to bottom, left to right; only those of a plate's shape (min_aspect, max_height_share)."""
        quads, scores = self._postprocess(probabilities, frame_shape)
        detections = []
        for quad, score in zip(quads, scores, strict=True):
            (x1, y1), (x2, y2) = quad.min(axis=0), quad.max(axis=0)
            width, height = x2 - x1, y2 - y1
            if (
                width > MIN_BOX_SIDE
                and height > MIN_BOX_SIDE
                and width >= self.min_aspect * height
                and height <= self.max_height_share * frame_shape[0]
            ):
                box = types_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2)
                detections.append(types_pb2.Detection(box=box, label=self.label, score=score))
        return sorted(detections, key=lambda d: (d.box.y1, d.box.x1))


@functools.cache
def _characters(model: str) -> tuple[str, ...]:
    """The recognition model's character dictionary, from the packaged model's own metadata."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # only read, quickly
    with packaged_model_file(model) as path:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return tuple(str(session.get_modelmeta().custom_metadata_map["character"]).splitlines())


class _CropNormaliser(TextRecognizer):
    """rapidocr's crop resizing and normalisation (resize_norm_img), without the session it would load."""

    def __init__(self) -> None:  # not the parent's: it would open an onnxruntime session
        self.rec_image_shape = list(RECOGNITION_INPUT_SHAPE)


class TextRecognizerParams(InferenceParams):
    # Measured on 2 cores (hack/bench_models.py): with one thread, batches of 4 cost about what one crop per
    # call does and larger batches more; with two threads, batches of 4 are about a quarter cheaper per crop.
    batch_size: int = pydantic.Field(4, ge=1, le=256, description="crops per model call; a segment's crops share calls")


@PROCESSORS.register("text_recognizer", params=TextRecognizerParams)
class TextRecognizerRunner(_ModelRunner, _BoxRefiner):
    """Reads the text in each box of its parent stage with PP-OCRv4 recognition, the crops of a whole
    segment in batches (crops of similar width share a call, as rapidocr groups them, so little of a
    batch is padding)."""

    def __init__(self, params: TextRecognizerParams) -> None:
        self.batch_size = params.batch_size
        self.backend = make_backend(params, RECOGNITION_MODEL)
        self._normalise = _CropNormaliser().resize_norm_img
        # A list of its own: the decoder inserts its blank and space characters into the one it gets.
        self._decode = CTCLabelDecode(character=list(_characters(RECOGNITION_MODEL)))

    async def describe(
        self, objects: Sequence[tuple[np.ndarray, types_pb2.Detection]], spec: types_pb2.StageSpec
    ) -> list[dict[str, Any]]:
        crops = [crop_box(frame, detection.box) for frame, detection in objects]
        texts = await self.read(crops, model_of(spec, RECOGNITION_MODEL))
        return [
            {"label": detection.label, "text": text, "score": score}
            for (_, detection), (text, score) in zip(objects, texts, strict=True)
        ]

    async def read(self, crops: Sequence[np.ndarray], model: ModelRef) -> list[tuple[str, float]]:
        """Text and confidence of each BGR crop; ("", 0.0) for an empty crop."""
        texts: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        readable = sorted((i for i, crop in enumerate(crops) if crop.size), key=lambda i: _aspect(crops[i]))
        for start in range(0, len(readable), self.batch_size):
            chunk = readable[start : start + self.batch_size]
            batch = await asyncio.to_thread(self.model_input, [crops[i] for i in chunk])
            probabilities = await self.backend.infer(model, batch)
            for i, (text, score) in zip(chunk, self._decode(probabilities), strict=True):
                texts[i] = (text, float(score))
        return texts

    def model_input(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """The crops resized to the model's height and padded to the widest of them (at least 320)."""
        _, height, width = RECOGNITION_INPUT_SHAPE
        widest = max(width / height, *(_aspect(crop) for crop in crops))
        return np.stack([self._normalise(crop, widest) for crop in crops]).astype(np.float32)


def _aspect(crop: np.ndarray) -> float:
    return crop.shape[1] / crop.shape[0]


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


class ColorClassifierParams(StrictModel):
    region_height: float = pydantic.Field(2.0, gt=0, le=10, description="height of the body region, in box heights")
    region_width: float = pydantic.Field(1.0, gt=0, le=10, description="width of the body region, in box widths")


@PROCESSORS.register("color_classifier", params=ColorClassifierParams)
class ColorClassifierRunner(_BoxRefiner):
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


@PROCESSORS.register("merge", params=NoParams)
class MergeRunner:
    """Joins parallel branches: on each frame, one detection per object, combining what every parent
    stage said about it.

    Detections of different parents are the same object when they refine the same box (same
    parent_index; a detection without one, from a detector, stands for its own position). The merged
    detection keeps the first parent's box, the first non-empty text, the labels of all parents in
    parent order joined by ":" (for example "plate:red"), the lowest score (it is only as sure as its
    least sure part) and that common index as parent_index."""

    def __init__(self, params: NoParams) -> None:
        """Takes no parameters."""

    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        if not stage.spec.parents:
            raise ValueError(f"merge stage {stage.spec.name!r} joins parent stages, but has none")
        per_parent = [_parent_detections(task, parent) for parent in stage.spec.parents]
        per_frame = [merge_detections(found) for found in zip(*per_parent, strict=True)]
        _record(stage, task.segment, per_frame, _frame_area(task.segment, []))


def merge_detections(per_parent: Sequence[Sequence[types_pb2.Detection]]) -> list[types_pb2.Detection]:
    """One frame's detections of several parents, merged by object as MergeRunner says."""
    merged: dict[int, types_pb2.Detection] = {}
    for detections in per_parent:
        for position, detection in enumerate(detections):
            key = detection.parent_index if detection.HasField("parent_index") else position
            into = merged.get(key)
            if into is None:
                merged[key] = into = types_pb2.Detection()
                into.CopyFrom(detection)
                into.parent_index = key
                continue
            if detection.label and detection.label not in into.label.split(":"):
                into.label = f"{into.label}:{detection.label}" if into.label else detection.label
            into.text = into.text or detection.text
            into.score = min(into.score, detection.score)
    return [merged[key] for key in sorted(merged)]
