"""Inference stages on real models: licence plates found as text lines by PP-OCRv4 detection
(DBNet), and read by PP-OCRv4 recognition.

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

import numpy as np
from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess
from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer
from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

from dayu.media.codecs import decode_segment
from dayu.processor.inference import InferenceBackend, ModelRef, check_shape, make_backend, model_of
from dayu.processor.kinds import TextDetectorParams, TextRecognizerParams
from dayu.processor.refiners import BoxRefiner, crop_box
from dayu.processor.repository import model_file, reading_session
from dayu.processor.results import only_parent, parent_detections, pixels_per_frame, record
from dayu.v1 import task_pb2, types_pb2

# The models of the repository (triton_models/) the kinds use unless the pipeline's stage names another.
DETECTION_MODEL = "text_detection"
RECOGNITION_MODEL = "text_recognition"
# PP-OCRv4 recognition reads text lines resized to 48 pixels high; 320 is the narrowest padded width.
RECOGNITION_INPUT_SHAPE = (3, 48, 320)
# Boxes this thin or thinner are noise of the probability map, as rapidocr filters them.
MIN_BOX_SIDE = 3


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
            batch = await asyncio.to_thread(np.concatenate, [inputs[i] for i in chunk])  # megabytes: off the loop
            result = await backend.infer(model, batch)
            for position, i in enumerate(chunk):
                outputs[i] = result[position : position + 1]
    return outputs


class _ModelRunner:
    """A kind backed by a model: the backend its parameters choose, checked when the processor starts
    (the model is there, its input has the shape the kind sends), released when it stops."""

    backend: InferenceBackend
    model: str
    input_shape: tuple[int | None, ...]  # batch axis first; None: any size

    async def check(self) -> None:
        model = ModelRef(self.model)
        await self.backend.ready()
        signature = await self.backend.signature(model)
        check_shape(model, signature.only_input(model), self.input_shape, f"the {type(self).__name__}")
        signature.output(model)

    async def aclose(self) -> None:
        await self.backend.aclose()


class TextDetectorRunner(_ModelRunner):
    """Finds text lines (licence plates) on every frame with PP-OCRv4 detection (DBNet), or, in a stage with
    a parent, inside each box the parent found (plates on vehicles)."""

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
        self.backend = make_backend(params)
        self.model, self.input_shape = DETECTION_MODEL, (None, 3, None, None)

    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        if stage.spec.parents:
            await self._run_on_boxes(task, stage)
            return
        frames, inputs = await asyncio.to_thread(self._prepare, task.segment)
        maps = await infer_in_batches(self.backend, model_of(stage.spec, DETECTION_MODEL), inputs, self.batch_size)
        per_frame = await asyncio.to_thread(
            lambda: [self.boxes(m, f.shape[:2]) if m is not None else [] for m, f in zip(maps, frames, strict=True)]
        )
        record(stage, task.segment, per_frame, pixels_per_frame(task.segment, frames))

    async def _run_on_boxes(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        """Text lines inside each box of the parent stage (plates on the vehicles it found), in the frame's
        pixels, each with the index of the box it lies in; the shape rules hold within the box."""
        parents = parent_detections(task, only_parent(stage))
        frames = await asyncio.to_thread(decode_segment, task.segment) if any(parents) else []
        regions = [
            (position, index, detection.box)
            for position, found in enumerate(parents)
            for index, detection in enumerate(found)
        ]
        crops = [crop_box(frames[position], box) for position, _, box in regions]
        inputs = await asyncio.to_thread(lambda: [self.model_input(c) if c.size else None for c in crops])
        maps = await infer_in_batches(self.backend, model_of(stage.spec, DETECTION_MODEL), inputs, self.batch_size)

        def found_in_boxes() -> list[list[types_pb2.Detection]]:
            per_frame: list[list[types_pb2.Detection]] = [[] for _ in parents]
            for (position, index, box), crop, probabilities in zip(regions, crops, maps, strict=True):
                if probabilities is None:
                    continue
                left, top = max(int(box.x1), 0), max(int(box.y1), 0)  # where crop_box cut the crop
                for detection in self.boxes(probabilities, crop.shape[:2]):
                    found = detection.box
                    found.x1, found.x2, found.y1, found.y2 = (
                        found.x1 + left,
                        found.x2 + left,
                        found.y1 + top,
                        found.y2 + top,
                    )
                    detection.parent_index = index
                    per_frame[position].append(detection)
            return per_frame

        per_frame = await asyncio.to_thread(found_in_boxes)
        record(stage, task.segment, per_frame, pixels_per_frame(task.segment, frames))

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
    with model_file(model) as path:
        session = reading_session(path)
    return tuple(str(session.get_modelmeta().custom_metadata_map["character"]).splitlines())


class _CropNormaliser(TextRecognizer):
    """rapidocr's crop resizing and normalisation (resize_norm_img), without the session it would load."""

    def __init__(self) -> None:  # not the parent's: it would open an onnxruntime session
        self.rec_image_shape = list(RECOGNITION_INPUT_SHAPE)


class TextRecognizerRunner(_ModelRunner, BoxRefiner):
    """Reads the text in each box of its parent stage with PP-OCRv4 recognition, the crops of a whole
    segment in batches (crops of similar width share a call, as rapidocr groups them, so little of a
    batch is padding)."""

    def __init__(self, params: TextRecognizerParams) -> None:
        self.batch_size = params.batch_size
        self.backend = make_backend(params)
        self.model, self.input_shape = RECOGNITION_MODEL, (None, *RECOGNITION_INPUT_SHAPE[:2], None)
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
            decoded = await asyncio.to_thread(self._decode, probabilities)  # CTC over the batch: off the loop
            for i, (text, score) in zip(chunk, decoded, strict=True):
                texts[i] = (text, float(score))
        return texts

    def model_input(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """The crops resized to the model's height and padded to the widest of them (at least 320)."""
        _, height, width = RECOGNITION_INPUT_SHAPE
        widest = max(width / height, *(_aspect(crop) for crop in crops))
        return np.stack([self._normalise(crop, widest) for crop in crops]).astype(np.float32)


def _aspect(crop: np.ndarray) -> float:
    return crop.shape[1] / crop.shape[0]
