"""IoU, one-to-one matching and F1, with values worked out by hand."""

from __future__ import annotations

import pytest

from dayu.media.accuracy import f1, iou, match_counts, segment_f1
from dayu.runtime.errors import InvalidArgument
from dayu.v1 import types_pb2

HD = types_pb2.Resolution(width=1280, height=720)
HALF = types_pb2.Resolution(width=640, height=360)


def box(x1: float, y1: float, x2: float, y2: float) -> types_pb2.Box:
    return types_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2)


def frame(index: int, *boxes: types_pb2.Box, label: str = "car") -> types_pb2.FrameDetections:
    return types_pb2.FrameDetections(
        frame_index=index, detections=[types_pb2.Detection(box=b, label=label, score=0.9) for b in boxes]
    )


def test_iou_by_hand() -> None:
    # 10x10 squares overlapping on a 5x10 strip: 50 / (100 + 100 - 50).
    assert iou(box(0, 0, 10, 10), box(5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou(box(0, 0, 10, 10), box(0, 0, 10, 10)) == 1.0
    # A 2x2 box inside a 4x4 one: 4 / 16.
    assert iou(box(0, 0, 4, 4), box(1, 1, 3, 3)) == pytest.approx(0.25)
    # Touching edges and disjoint boxes do not overlap.
    assert iou(box(0, 0, 10, 10), box(10, 0, 20, 10)) == 0.0
    assert iou(box(0, 0, 1, 1), box(5, 5, 6, 6)) == 0.0
    # Boxes without area.
    assert iou(box(3, 3, 3, 3), box(3, 3, 3, 3)) == 0.0


def test_f1_by_hand() -> None:
    assert f1(0, 0, 0) == 1.0
    assert f1(0, 3, 0) == 0.0
    assert f1(0, 0, 3) == 0.0
    # precision 2/3, recall 2/4: 2 * 2 / (2 * 2 + 1 + 2).
    assert f1(2, 1, 2) == pytest.approx(4 / 7)


def test_match_counts_by_hand() -> None:
    truth = [box(0, 0, 10, 10), box(100, 100, 120, 120)]
    predicted = [box(1, 1, 10, 10), box(300, 300, 310, 310)]
    assert match_counts(predicted, truth) == (1, 1, 1)
    assert match_counts([], truth) == (0, 0, 2)
    assert match_counts(predicted, []) == (0, 2, 0)
    assert match_counts([], []) == (0, 0, 0)


def test_one_true_box_is_found_once() -> None:
    truth = [box(0, 0, 10, 10)]
    assert match_counts([box(0, 0, 10, 10), box(0, 0, 10, 9)], truth) == (1, 1, 0)


def test_matching_takes_the_best_pairs_first() -> None:
    # The wide prediction overlaps both true boxes (IoU 0.5 with each); the exact one matches the
    # left truth best, so the wide one is left to the right truth and both are found.
    truth = [box(0, 0, 10, 10), box(10, 0, 20, 10)]
    predicted = [box(0, 0, 20, 10), box(0, 0, 10, 10)]
    assert match_counts(predicted, truth) == (2, 0, 0)


def test_threshold_is_inclusive_and_checked() -> None:
    # IoU exactly 0.5: the left half of the truth.
    assert match_counts([box(0, 0, 5, 10)], [box(0, 0, 10, 10)]) == (1, 0, 0)
    assert match_counts([box(0, 0, 5, 10)], [box(0, 0, 10, 10)], iou_threshold=0.6) == (0, 1, 1)
    with pytest.raises(InvalidArgument) as bad:
        match_counts([], [], iou_threshold=0)
    assert bad.value.field == "iou_threshold"


def test_segment_f1_is_micro_averaged_over_frames() -> None:
    truth = [frame(0, box(0, 0, 10, 10)), frame(1, box(0, 0, 10, 10), box(50, 50, 60, 60), box(80, 80, 90, 90))]
    predicted = [frame(0, box(0, 0, 10, 10)), frame(1, box(0, 0, 10, 10))]
    # Counts summed: tp 2, fp 0, fn 2 -> 4 / 6 (a per-frame mean would give (1 + 0.5) / 2).
    assert segment_f1(predicted, truth, HD, HD) == pytest.approx(2 / 3)


def test_segment_f1_scales_predictions_to_the_truth_resolution() -> None:
    truth = [frame(7, box(100, 100, 300, 200))]
    predicted = [frame(7, box(50, 50, 150, 100))]
    assert segment_f1(predicted, truth, HALF, HD) == 1.0
    assert segment_f1(predicted, truth, HD, HD) == 0.0


def test_segment_f1_pairs_frames_by_index() -> None:
    truth = [frame(3, box(0, 0, 10, 10)), frame(4, box(20, 20, 30, 30))]
    # Frame 3 is missing from the predictions (a skipped frame): its true box is missed. Frame 9
    # is not in the truth: its box is a false positive.
    predicted = [frame(4, box(20, 20, 30, 30)), frame(9, box(0, 0, 10, 10))]
    assert segment_f1(predicted, truth, HD, HD) == pytest.approx(f1(1, 1, 1))
    assert segment_f1([], [], HD, HD) == 1.0
    assert segment_f1([frame(0)], [frame(0)], HD, HD) == 1.0


def test_segment_f1_label_filters_the_truth() -> None:
    truth = [frame(0, box(0, 0, 10, 10), label="face"), frame(0, box(50, 50, 60, 60), label="person")]
    predicted = [frame(0, box(0, 0, 10, 10), label="")]
    assert segment_f1(predicted, truth, HD, HD, label="face") == 1.0
    assert segment_f1(predicted, truth, HD, HD) == pytest.approx(f1(1, 0, 1))


def test_segment_f1_needs_resolutions() -> None:
    with pytest.raises(InvalidArgument) as bad:
        segment_f1([], [], types_pb2.Resolution(), HD)
    assert bad.value.field == "predicted_resolution"
