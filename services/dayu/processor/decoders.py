"""The catalogue of post-processing: a model's outputs as boxes (in the model's input pixels) with a score
and a class each, or as class scores, for the families dayu.processor.model_params describes.

Each decoder says which outputs it reads and the shape it needs of each, checked against the model's
real tensors when the processor starts, so a model of another family fails there, not on a task.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from dayu.processor.inference import ModelMismatch, ModelRef, Signature, check_shape
from dayu.processor.model_params import (
    BoxesDecoder,
    CenterNetDecoder,
    ClassifyDecoder,
    InputSpec,
    SsdAnchors,
    SsdDecoder,
    YoloDecoder,
    _BoxDecoder,
)


@dataclass(frozen=True)
class Found:
    """What a detector found on one image: boxes [n, 4] (x1, y1, x2, y2, input pixels), scores, classes."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @staticmethod
    def none() -> Found:
        return Found(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(values, -80, 80)))


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def activate(values: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return _sigmoid(values)
    if activation == "softmax":
        return _softmax(values)
    return values


def suppress(found: Found, params: _BoxDecoder) -> Found:
    """Non-maximum suppression (OpenCV's) within each class, or across classes with agnostic_nms; best
    first, at most max_detections."""
    if not len(found.scores):
        return found
    xywh = np.column_stack([found.boxes[:, :2], found.boxes[:, 2:] - found.boxes[:, :2]]).tolist()
    scores, top_k = found.scores.tolist(), params.max_detections
    if params.agnostic_nms:
        keep = cv2.dnn.NMSBoxes(xywh, scores, 0.0, params.iou_threshold, top_k=top_k)
    else:
        keep = cv2.dnn.NMSBoxesBatched(xywh, scores, found.classes.tolist(), 0.0, params.iou_threshold, top_k=top_k)
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)[:top_k]
    return Found(found.boxes[keep], found.scores[keep], found.classes[keep])


def _above(found: Found, threshold: float) -> Found:
    kept = found.scores >= threshold
    return Found(found.boxes[kept], found.scores[kept], found.classes[kept])


def _centre_boxes(cx: np.ndarray, cy: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    return np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


class YoloDecoding:
    def __init__(self, params: YoloDecoder, model_input: InputSpec) -> None:
        self.params = params
        self.classes = len(params.label_names)
        self.width = 4 + self.classes + (1 if params.format == "yolov5" else 0)
        self.output = params.output  # the model's only output when empty: named at the check

    def check(self, model: ModelRef, signature: Signature) -> list[str]:
        output = signature.output(model, self.params.output)
        expected = (None, self.width, None) if self.params.format == "yolov8" else (None, None, self.width)
        check_shape(model, output, expected, f"yolo ({self.params.format}) with {self.classes} labels")
        self.output = output.name
        return [output.name]

    def decode(self, outputs: dict[str, np.ndarray], index: int) -> Found:
        rows = outputs[self.output][index]
        rows = rows.T if self.params.format == "yolov8" else rows
        scores = rows[:, -self.classes :]
        if self.params.format == "yolov5":
            scores = scores * rows[:, 4:5]
        classes = scores.argmax(axis=1)
        best = scores[np.arange(len(rows)), classes]
        found = Found(_centre_boxes(*rows[:, :4].T), best, classes)
        return suppress(_above(found, self.params.score_threshold), self.params)


def grid_anchors(anchors: SsdAnchors, width: int, height: int) -> np.ndarray:
    """Anchors [n, 4] (centre x, centre y, width, height; 0..1 of the input) of one fixed size on a grid
    per stride, row by row, as MediaPipe's SsdAnchorsCalculator makes them with fixed_anchor_size."""
    if anchors.file is not None:
        loaded = np.load(anchors.file)
        if loaded.ndim != 2 or loaded.shape[1] != 4:
            raise ModelMismatch(f"anchors file {anchors.file} holds {list(loaded.shape)}; it needs [boxes, 4]")
        return loaded.astype(np.float64)
    found = []
    for stride, per_cell in zip(anchors.strides, anchors.per_cell, strict=True):
        rows, columns = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
        centres = np.column_stack([(xs.ravel() + anchors.offset) / columns, (ys.ravel() + anchors.offset) / rows])
        centres = np.repeat(centres, per_cell, axis=0)
        found.append(np.column_stack([centres, np.ones((len(centres), 2))]))
    return np.concatenate(found)


class SsdDecoding:
    def __init__(self, params: SsdDecoder, model_input: InputSpec) -> None:
        self.params = params
        self.size = np.array([model_input.width, model_input.height], dtype=np.float64)
        self.classes = len(params.label_names) + (1 if params.background else 0)

    @cached_property
    def anchors(self) -> np.ndarray:
        return grid_anchors(self.params.anchors, int(self.size[0]), int(self.size[1]))

    def check(self, model: ModelRef, signature: Signature) -> list[str]:
        count = len(self.anchors)
        boxes = signature.output(model, self.params.boxes)
        scores = signature.output(model, self.params.scores)
        check_shape(model, boxes, (None, count, boxes.shape[-1] if boxes.shape else None), f"ssd with {count} anchors")
        if len(boxes.shape) == 3 and 0 < boxes.shape[-1] < 4:
            raise ModelMismatch(f"{boxes.name!r} of model {model} has {boxes.shape[-1]} values per box; ssd needs 4")
        check_shape(model, scores, (None, count, self.classes), f"ssd with {count} anchors and {self.classes} classes")
        return [boxes.name, scores.name]

    def decode(self, outputs: dict[str, np.ndarray], index: int) -> Found:
        raw = outputs[self.params.boxes][index][:, :4].astype(np.float64) / np.asarray(self.params.box_scale)
        if self.params.order == "yxhw":
            raw = raw[:, [1, 0, 3, 2]]
        anchors = self.anchors
        centre = raw[:, :2] * anchors[:, 2:] + anchors[:, :2]
        size = (np.exp(raw[:, 2:]) if self.params.size == "exp" else raw[:, 2:]) * anchors[:, 2:]
        scores = activate(outputs[self.params.scores][index].astype(np.float64), self.params.activation)
        if self.params.background:
            scores = scores[:, 1:]
        classes = scores.argmax(axis=1)
        best = scores[np.arange(len(scores)), classes]
        boxes = _centre_boxes(*(centre * self.size).T, *(size * self.size).T)
        found = Found(boxes, best, classes)
        return suppress(_above(found, self.params.score_threshold), self.params)


class CenterNetDecoding:
    def __init__(self, params: CenterNetDecoder, model_input: InputSpec) -> None:
        self.params = params
        self.classes = len(params.label_names)
        self.cells = (-(-model_input.height // params.stride), -(-model_input.width // params.stride))

    def _nhwc(self, array: np.ndarray) -> np.ndarray:
        return array.transpose(1, 2, 0) if self.params.layout == "NCHW" else array

    def check(self, model: ModelRef, signature: Signature) -> list[str]:
        p = self.params
        wanted = [(p.heatmap, self.classes), (p.box, 2 if p.box_format == "wh" else 4)]
        wanted += [(p.offset, 2)] if p.offset else []
        rows, columns = self.cells
        for name, channels in wanted:
            tensor = signature.output(model, name)
            shape = (rows, columns, channels) if p.layout == "NHWC" else (channels, rows, columns)
            check_shape(model, tensor, (None, *shape), f"centernet ({p.box_format}) with stride {p.stride}")
        return [name for name, _ in wanted]

    def decode(self, outputs: dict[str, np.ndarray], index: int) -> Found:
        p = self.params
        heat = self._nhwc(activate(outputs[p.heatmap][index].astype(np.float32), p.activation))
        # A peak is a cell that is the highest of its 3x3 neighbourhood in its class.
        peaks = heat == cv2.dilate(heat, np.ones((3, 3), np.uint8))
        scores = np.where(peaks & (heat >= p.score_threshold), heat, 0.0).ravel()
        best = np.argsort(-scores, kind="stable")[: p.peaks]
        best = best[scores[best] > 0]
        ys, xs, classes = np.unravel_index(best, heat.shape)
        box = self._nhwc(outputs[p.box][index])[ys, xs].astype(np.float64)
        if p.box_unit == "cells":
            box = box * p.stride
        cx, cy = xs * float(p.stride), ys * float(p.stride)
        if p.box_format == "ltrb":
            boxes = np.column_stack([cx - box[:, 0], cy - box[:, 1], cx + box[:, 2], cy + box[:, 3]])
        else:
            if p.offset:
                offset = self._nhwc(outputs[p.offset][index])[ys, xs]
                cx, cy = cx + offset[:, 0] * p.stride, cy + offset[:, 1] * p.stride
            boxes = _centre_boxes(cx, cy, box[:, 0], box[:, 1])
        return suppress(Found(boxes, scores[best], classes), p)


class BoxesDecoding:
    def __init__(self, params: BoxesDecoder, model_input: InputSpec) -> None:
        self.params = params
        self.column = {name: i for i, name in enumerate(params.columns) if name != "skip"}
        self.size = np.array([model_input.width, model_input.height] * 2, dtype=np.float64)
        self.output = params.output

    def check(self, model: ModelRef, signature: Signature) -> list[str]:
        output = signature.output(model, self.params.output)
        check_shape(model, output, (None, None, len(self.params.columns)), f"boxes with columns {self.params.columns}")
        self.output = output.name
        return [output.name]

    def decode(self, outputs: dict[str, np.ndarray], index: int) -> Found:
        rows = outputs[self.output][index].astype(np.float64)
        rows = rows[np.isfinite(rows).all(axis=1)]
        boxes = rows[:, [self.column[c] for c in ("x1", "y1", "x2", "y2")]]
        if self.params.coordinates == "normalized":
            boxes = boxes * self.size
        classes = rows[:, self.column["class"]].astype(np.int64)
        known = (classes >= 0) & (classes < len(self.params.label_names))
        found = Found(boxes[known], rows[known, self.column["score"]], classes[known])
        return suppress(_above(found, self.params.score_threshold), self.params)


class ClassifyDecoding:
    def __init__(self, params: ClassifyDecoder, model_input: InputSpec) -> None:
        self.params = params
        self.output = params.output

    def check(self, model: ModelRef, signature: Signature) -> list[str]:
        output = signature.output(model, self.params.output)
        check_shape(model, output, (None, len(self.params.label_names)), "classify with that many labels")
        self.output = output.name
        return [output.name]

    def scores(self, outputs: dict[str, np.ndarray], index: int) -> np.ndarray:
        return activate(outputs[self.output][index].astype(np.float64), self.params.activation)


BoxDecoding = YoloDecoding | SsdDecoding | CenterNetDecoding | BoxesDecoding
Decoding = BoxDecoding | ClassifyDecoding

_DECODINGS: dict[type, type] = {
    YoloDecoder: YoloDecoding,
    SsdDecoder: SsdDecoding,
    CenterNetDecoder: CenterNetDecoding,
    BoxesDecoder: BoxesDecoding,
    ClassifyDecoder: ClassifyDecoding,
}


def decoding(params: object, model_input: InputSpec) -> Decoding:
    """The decoder of the catalogue the parameters choose."""
    return _DECODINGS[type(params)](params, model_input)  # type: ignore[no-any-return]
