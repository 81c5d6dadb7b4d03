"""Accuracy of detections without hand labels: F1 at an IoU threshold against a reference.

The reference is the true boxes where the source knows them (synthetic scenes), or the golden
configuration's detections (full resolution, every frame), as Chameleon profiles configurations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from dayu.media.frames import require_resolution, scale_box
from dayu.runtime.errors import InvalidArgument
from dayu.v1 import types_pb2


def _corners(boxes: Iterable[types_pb2.Box]) -> np.ndarray:
    """Boxes as an (n, 4) array of x1, y1, x2, y2."""
    return np.array([(box.x1, box.y1, box.x2, box.y2) for box in boxes], dtype=np.float64).reshape(-1, 4)


def _area(corners: np.ndarray) -> np.ndarray:
    return np.clip(corners[:, 2] - corners[:, 0], 0, None) * np.clip(corners[:, 3] - corners[:, 1], 0, None)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a (rows) with every box of b (columns); 0 where the union is empty."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    union = _area(a)[:, None] + _area(b)[None, :] - overlap
    return np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)


def iou(a: types_pb2.Box, b: types_pb2.Box) -> float:
    """Intersection over union of two boxes; 0 for boxes without area."""
    return float(_iou_matrix(_corners([a]), _corners([b]))[0, 0])


def _require_threshold(iou_threshold: float) -> None:
    # 0 would let boxes that do not touch count as found.
    if not 0 < iou_threshold <= 1:
        raise InvalidArgument("iou_threshold", f"a threshold in (0, 1], got {iou_threshold}")


def match_counts(
    predicted: Sequence[types_pb2.Box], truth: Sequence[types_pb2.Box], iou_threshold: float = 0.5
) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of predicted boxes against true ones.

    Pairs at IoU >= iou_threshold are matched greedily, best IoU first, each box at most once, so a
    second box on the same object counts as a false positive rather than finding it twice.
    """
    _require_threshold(iou_threshold)
    overlaps = _iou_matrix(_corners(predicted), _corners(truth))
    rows, columns = np.nonzero(overlaps >= iou_threshold)
    best_first = np.argsort(-overlaps[rows, columns], kind="stable")
    used_predicted: set[int] = set()
    used_truth: set[int] = set()
    for row, column in zip(rows[best_first].tolist(), columns[best_first].tolist(), strict=True):
        if row not in used_predicted and column not in used_truth:
            used_predicted.add(row)
            used_truth.add(column)
    true_positives = len(used_predicted)
    return true_positives, len(predicted) - true_positives, len(truth) - true_positives


def f1(true_positives: int, false_positives: int, false_negatives: int) -> float:
    """Harmonic mean of precision and recall; 1.0 when there was nothing to find and nothing was found."""
    denominator = 2 * true_positives + false_positives + false_negatives
    return 1.0 if denominator == 0 else 2 * true_positives / denominator


def segment_f1(
    predicted: Sequence[types_pb2.FrameDetections],
    truth: Sequence[types_pb2.FrameDetections],
    predicted_resolution: types_pb2.Resolution,
    truth_resolution: types_pb2.Resolution,
    iou_threshold: float = 0.5,
    label: str | None = None,
) -> float:
    """Micro-averaged F1 of a segment's detections: counts summed over frames, then one F1.

    Frames are paired by frame_index; a frame present on one side only has no boxes on the other
    (so frames the configuration skipped count their true boxes as missed); a frame listed twice has
    the boxes of both entries. Predicted boxes are
    scaled to the truth's resolution. `label` keeps only the truth boxes of that class, for a stage
    that looks for one class in a scene that has several; predicted boxes are taken as they are.
    """
    _require_threshold(iou_threshold)
    require_resolution(predicted_resolution, "predicted_resolution")
    require_resolution(truth_resolution, "truth_resolution")
    predicted_boxes: defaultdict[int, list[types_pb2.Box]] = defaultdict(list)
    for frame in predicted:
        predicted_boxes[frame.frame_index].extend(
            scale_box(d.box, predicted_resolution, truth_resolution) for d in frame.detections
        )
    truth_boxes: defaultdict[int, list[types_pb2.Box]] = defaultdict(list)
    for frame in truth:
        truth_boxes[frame.frame_index].extend(d.box for d in frame.detections if label is None or d.label == label)
    totals = np.zeros(3, dtype=np.int64)
    for frame_index in predicted_boxes.keys() | truth_boxes.keys():
        totals += match_counts(predicted_boxes[frame_index], truth_boxes[frame_index], iou_threshold)
    return f1(*(int(count) for count in totals))
