"""The `model` kind: a stage on any single-input model, described in YAML (dayu.processor.model_params),
no code.

A stage without parents runs the model on each frame of the segment; a stage with one parent runs it
on each box its parent found (the box's crop, grown by `crop`), so a detector finds things inside
other things (plates on vehicles, faces on people) and a classifier labels each box (age, gender).
Boxes come back in the frame's pixels. The model and its tensors are checked when the processor
starts (`check`): a model Triton does not serve, or tensors of another shape or type than the YAML
describes, fail the start with the reason, not the first task. Image work runs in worker threads,
so the processor's event loop keeps answering while a stage runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from dayu.media.codecs import decode_segment
from dayu.processor.decoders import ClassifyDecoding, Found, decoding
from dayu.processor.inference import ModelMismatch, ModelRef, check_shape, make_backend
from dayu.processor.model_input import Placement, crop_region, prepare
from dayu.processor.model_params import ModelStageParams
from dayu.processor.results import only_parent, parent_detections, pixels_per_frame, record
from dayu.v1 import task_pb2, types_pb2

# A piece of work for the model: the image, and for a box of the parent stage, (frame, box) positions.
_Image = tuple[np.ndarray, int, int | None]  # (pixels, frame position, parent box index or None)


class ModelStageRunner:
    """Runs a model described in YAML on each frame, or on each box of its parent stage."""

    def __init__(self, params: ModelStageParams) -> None:
        self.params = params
        self.backend = make_backend(params)
        self.decoding = decoding(params.decode, params.input)
        self.labels = params.decode.label_names
        self.keep = frozenset(params.decode.keep)
        self._checked: dict[ModelRef, tuple[list[str], int]] = {}  # outputs to read, largest batch

    def _model(self, spec: types_pb2.StageSpec | None = None) -> ModelRef:
        if spec is not None and spec.model:
            return ModelRef(spec.model, spec.model_version)
        return ModelRef(self.params.model, self.params.version)

    async def check(self) -> None:
        await self.backend.ready()
        await self._check(self._model())

    async def _check(self, model: ModelRef) -> tuple[list[str], int]:
        """The outputs the decoder reads and the largest batch the model takes, once its tensors are
        known to fit what the YAML describes (ModelMismatch otherwise)."""
        if model not in self._checked:
            signature = await self.backend.signature(model)
            spec = self.params.input
            if spec.name:
                matches = [t for t in signature.inputs if t.name == spec.name]
                if not matches:
                    raise ModelMismatch(
                        f"model {model} has no input {spec.name!r}; its inputs are {signature.input_names}"
                    )
                tensor = matches[0]
            else:
                tensor = signature.only_input(model)
            image = (3, spec.height, spec.width) if spec.layout == "NCHW" else (spec.height, spec.width, 3)
            check_shape(model, tensor, (None, *image), f"input {spec.layout} {spec.width}x{spec.height}")
            if tensor.dtype != spec.dtype:
                raise ModelMismatch(
                    f"input {tensor.name!r} of model {model} is {tensor.dtype}; input.dtype says {spec.dtype}"
                )
            largest = tensor.shape[0] if tensor.shape[0] > 0 else self.params.batch_size
            self._checked[model] = (self.decoding.check(model, signature), min(largest, self.params.batch_size))
        return self._checked[model]

    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        model = self._model(stage.spec)
        outputs, batch_size = await self._check(model)
        segment = task.segment
        if stage.spec.parents:
            parents = parent_detections(task, only_parent(stage))
            frames = await asyncio.to_thread(decode_segment, segment) if any(parents) else []
        else:
            parents, frames = None, await asyncio.to_thread(decode_segment, segment)
        images, placements, inputs = await asyncio.to_thread(self._inputs, frames, parents)
        results: list[dict[str, np.ndarray]] = []
        for start in range(0, len(inputs), batch_size):
            batch = await asyncio.to_thread(np.concatenate, inputs[start : start + batch_size])
            found = await self.backend.infer_outputs(model, batch, outputs)
            results += [{name: array[i : i + 1] for name, array in found.items()} for i in range(len(batch))]
        per_frame = await asyncio.to_thread(self._detections, frames, parents, images, placements, results)
        record(stage, segment, per_frame, pixels_per_frame(segment, frames))

    def _inputs(
        self, frames: list[np.ndarray], parents: list[Sequence[types_pb2.Detection]] | None
    ) -> tuple[list[_Image], list[Placement], list[np.ndarray]]:
        """What the model looks at (each frame, or each parent box's crop that is not empty), where each
        landed in the model's input, and the input samples."""
        images: list[_Image] = []
        corners: list[tuple[int, int]] = []  # where each image's top left corner is in its frame
        if parents is None:
            images = [(frame, position, None) for position, frame in enumerate(frames)]
            corners = [(0, 0)] * len(frames)
        else:
            for position, (frame, found) in enumerate(zip(frames, parents, strict=False)):
                for index, detection in enumerate(found):
                    x1, y1, x2, y2 = crop_region(frame.shape, detection.box, self.params.crop)
                    if x2 > x1 and y2 > y1:
                        images.append((frame[y1:y2, x1:x2], position, index))
                        corners.append((x1, y1))
        placements, inputs = [], []
        for (image, _, _), (x, y) in zip(images, corners, strict=True):
            sample, placement = prepare(image, self.params.input)
            placements.append(Placement(placement.sx, placement.sy, placement.dx, placement.dy, x, y))
            inputs.append(sample)
        return images, placements, inputs

    def _detections(
        self,
        frames: list[np.ndarray],
        parents: list[Sequence[types_pb2.Detection]] | None,
        images: list[_Image],
        placements: list[Placement],
        results: list[dict[str, np.ndarray]],
    ) -> list[list[types_pb2.Detection]]:
        count = len(parents) if parents is not None else len(frames)
        per_frame: list[list[types_pb2.Detection]] = [[] for _ in range(count)]
        labelled: dict[tuple[int, int], types_pb2.Detection] = {}
        for (_, position, index), placement, outputs in zip(images, placements, results, strict=True):
            frame_shape = frames[position].shape
            if isinstance(self.decoding, ClassifyDecoding):
                box = parents[position][index].box if index is not None else _whole(frame_shape)  # type: ignore[index]
                detection = self._classified(self.decoding.scores(outputs, 0), box, index)
                if index is None:
                    per_frame[position].append(detection)
                else:
                    labelled[(position, index)] = detection
            else:
                per_frame[position] += self._boxes(self.decoding.decode(outputs, 0), placement, frame_shape, index)
        if isinstance(self.decoding, ClassifyDecoding) and parents is not None:
            # One label per parent box, in the parent's order; a box outside the frame is unknown.
            for position, found in enumerate(parents):
                per_frame[position] = [
                    labelled.get((position, i)) or self._unknown(d.box, i) for i, d in enumerate(found)
                ]
        return per_frame

    def _label(self, name: str) -> str:
        return f"{self.params.label_prefix}{name}"

    def _boxes(
        self, found: Found, placement: Placement, frame_shape: tuple[int, ...], parent: int | None
    ) -> list[types_pb2.Detection]:
        height, width = frame_shape[:2]
        boxes = placement.to_frame(found.boxes)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        detections = []
        for (x1, y1, x2, y2), score, cls in zip(
            boxes.tolist(), found.scores.tolist(), found.classes.tolist(), strict=True
        ):
            name = self.labels[cls] if 0 <= cls < len(self.labels) else str(cls)
            if (self.keep and name not in self.keep) or x2 <= x1 or y2 <= y1:
                continue
            detection = types_pb2.Detection(
                box=types_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2), label=self._label(name), score=score
            )
            if parent is not None:
                detection.parent_index = parent
            detections.append(detection)
        return detections

    def _classified(self, scores: np.ndarray, box: types_pb2.Box, parent: int | None) -> types_pb2.Detection:
        decode = self.params.decode
        assert isinstance(self.decoding, ClassifyDecoding)
        order = np.argsort(-scores, kind="stable")[: self.decoding.params.top_k]
        best = int(order[0])
        detection = types_pb2.Detection(box=box, score=float(scores[best]), label=self._label(self.labels[best]))
        if self.decoding.params.expected_value:
            values = np.array([float(label) for label in self.labels])
            value = float((values * scores).sum() / max(scores.sum(), 1e-12))
            detection.label, detection.text = self._label(f"{value:.0f}"), f"{value:.1f}"
        elif len(order) > 1:
            detection.text = ", ".join(f"{self.labels[i]} {scores[i]:.2f}" for i in order)
        if scores[best] < decode.score_threshold:
            detection.label = self._label("unknown")
        if parent is not None:
            detection.parent_index = parent
        return detection

    def _unknown(self, box: types_pb2.Box, parent: int) -> types_pb2.Detection:
        return types_pb2.Detection(box=box, label=self._label("unknown"), score=0.0, parent_index=parent)

    async def aclose(self) -> None:
        await self.backend.aclose()


def _whole(frame_shape: tuple[int, ...]) -> types_pb2.Box:
    height, width = frame_shape[:2]
    return types_pb2.Box(x1=0, y1=0, x2=width, y2=height)
