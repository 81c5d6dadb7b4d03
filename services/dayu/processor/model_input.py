"""An image as a model's input tensor (dayu.processor.model_params.InputSpec), and the way back: boxes in
the model's input pixels to the image's pixels."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dayu.processor.model_params import CropSpec, InputSpec
from dayu.v1 import types_pb2


@dataclass(frozen=True)
class Placement:
    """Where an image landed in the model's input: scaled by (sx, sy), shifted by (dx, dy), then offset by
    where the image itself sits in the frame (a crop's corner)."""

    sx: float
    sy: float
    dx: float = 0.0
    dy: float = 0.0
    origin_x: float = 0.0
    origin_y: float = 0.0

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes [n, 4] (x1, y1, x2, y2) in input pixels, as pixels of the frame."""
        out = np.empty_like(boxes, dtype=np.float64)
        out[:, [0, 2]] = (boxes[:, [0, 2]] - self.dx) / self.sx + self.origin_x
        out[:, [1, 3]] = (boxes[:, [1, 3]] - self.dy) / self.sy + self.origin_y
        return out


def prepare(image: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Placement]:
    """One BGR image as one sample of the model's input (batch axis of 1), and where it was placed."""
    height, width = image.shape[:2]
    if spec.resize == "stretch":
        placement = Placement(spec.width / width, spec.height / height)
        size = (spec.width, spec.height)
    else:
        scale = min(spec.width / width, spec.height / height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        shares = (0.5, 0.5) if spec.align == "centre" else (0.0, 0.0)  # of the padding before the image
        placement = Placement(scale, scale, (spec.width - size[0]) * shares[0], (spec.height - size[1]) * shares[1])
    if spec.interpolation == "linear" and not spec.half_pixel:
        # Sampled at corners: output pixel (x, y) reads the image at ((x - dx) / sx, (y - dy) / sy).
        matrix = np.array([[placement.sx, 0, placement.dx], [0, placement.sy, placement.dy]])
        placed = cv2.warpAffine(
            image, matrix, (spec.width, spec.height), flags=cv2.INTER_LINEAR, borderValue=(spec.pad,) * 3
        )
    else:
        flags = cv2.INTER_AREA if spec.interpolation == "area" else cv2.INTER_LINEAR
        resized = cv2.resize(image, size, interpolation=flags)
        if size == (spec.width, spec.height):
            placed = resized
        else:  # letterboxed: whole pixels of padding, the image's placement rounded to them
            dx, dy = int(placement.dx), int(placement.dy)
            placement = Placement(placement.sx, placement.sy, dx, dy)
            placed = np.full((spec.height, spec.width, 3), spec.pad, dtype=np.uint8)
            placed[dy : dy + size[1], dx : dx + size[0]] = resized
    if spec.colour == "RGB":
        placed = cv2.cvtColor(placed, cv2.COLOR_BGR2RGB)
    if spec.dtype == "UINT8":
        tensor = placed
    else:
        mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
        tensor = (placed.astype(np.float32) * np.float32(spec.scale) - mean) / std
    if spec.layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor[None]), placement


def crop_region(frame_shape: tuple[int, ...], box: types_pb2.Box, crop: CropSpec) -> tuple[int, int, int, int]:
    """The pixels (x1, y1, x2, y2) of the frame around a parent's box that a model sees, clipped to the
    frame; empty (x2 <= x1 or y2 <= y1) when the box lies outside it."""
    width, height = box.x2 - box.x1, box.y2 - box.y1
    shift = crop.shift_y * height
    box = types_pb2.Box(x1=box.x1, y1=box.y1 + shift, x2=box.x2, y2=box.y2 + shift)
    if crop.square:
        side = max(width, height)
        cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
        x1, y1, x2, y2 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
        width = height = side
    else:
        x1, y1, x2, y2 = box.x1, box.y1, box.x2, box.y2
    x1, x2 = x1 - crop.margin * width, x2 + crop.margin * width
    y1, y2 = y1 - crop.margin * height, y2 + crop.margin * height
    frame_h, frame_w = frame_shape[:2]
    return max(int(x1), 0), max(int(y1), 0), min(int(np.ceil(x2)), frame_w), min(int(np.ceil(y2)), frame_h)
