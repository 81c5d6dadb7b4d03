"""Frame-rate filter, resize and box scaling."""

from __future__ import annotations

import numpy as np
import pytest

from dayu.media.frames import FrameRateFilter, resize, scale_box
from dayu.runtime.errors import InvalidArgument
from dayu.v1 import types_pb2


def kept_indices(frame_filter: FrameRateFilter, frames: int, start: int = 0) -> list[int]:
    return [index for index in range(start, start + frames) if frame_filter.keep()]


def test_keeps_every_third_frame_for_10_of_30() -> None:
    assert kept_indices(FrameRateFilter(30, 10), 30) == list(range(0, 30, 3))


def test_keeps_evenly_for_rates_that_do_not_divide() -> None:
    kept = kept_indices(FrameRateFilter(30, 12), 60)
    assert len(kept) == 24
    assert set(np.diff(kept).tolist()) == {2, 3}


def test_keeps_every_frame_when_target_reaches_the_source() -> None:
    for target in (30, 60):
        frame_filter = FrameRateFilter(30, target)
        assert kept_indices(frame_filter, 30) == list(range(30))
        assert frame_filter.kept_fps == 30


def test_ntsc_rates_stay_exact_over_long_runs() -> None:
    frame_filter = FrameRateFilter(30000 / 1001, 30000 / 2002)
    assert len(kept_indices(frame_filter, 30_000)) == 15_000


def test_changing_the_target_takes_effect_without_a_burst() -> None:
    frame_filter = FrameRateFilter(30, 5)
    first = kept_indices(frame_filter, 30)
    frame_filter.target_fps = 15
    second = kept_indices(frame_filter, 30, start=30)
    assert first == list(range(0, 30, 6))
    assert len(second) == 15
    assert max(np.diff(first + second).tolist()) <= 6
    assert min(np.diff(first + second).tolist()) >= 2
    frame_filter.target_fps = 3
    third = kept_indices(frame_filter, 30, start=60)
    assert len(third) == 3 and min(np.diff(third).tolist()) == 10
    assert frame_filter.target_fps == 3


@pytest.mark.parametrize(
    ("source", "target", "field"), [(0, 10, "source_fps"), (30, 0, "target_fps"), (30, float("nan"), "target_fps")]
)
def test_bad_rates_are_refused(source: float, target: float, field: str) -> None:
    with pytest.raises(InvalidArgument) as bad:
        FrameRateFilter(source, target)
    assert bad.value.field == field


def test_bad_target_set_at_run_time_is_refused_and_the_old_one_kept() -> None:
    frame_filter = FrameRateFilter(30, 10)
    with pytest.raises(InvalidArgument):
        frame_filter.target_fps = -1
    assert frame_filter.target_fps == 10 and kept_indices(frame_filter, 6) == [0, 3]


def test_resize_gives_the_asked_size() -> None:
    frame = np.random.default_rng(1).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    assert resize(frame, 320, 180).shape == (180, 320, 3)
    assert resize(frame, 1280, 720).shape == (720, 1280, 3)
    assert resize(frame, 640, 480).shape == (480, 640, 3)
    assert resize(frame, 640, 360) is frame


def test_shrinking_averages_pixels() -> None:
    stripes = np.zeros((4, 4, 3), dtype=np.uint8)
    stripes[:, ::2] = 200
    assert np.all(resize(stripes, 2, 2) == 100)


def test_resize_to_nothing_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        resize(np.zeros((4, 4, 3), dtype=np.uint8), 0, 4)


def test_scale_box_between_resolutions() -> None:
    box = types_pb2.Box(x1=10, y1=20, x2=110, y2=220)
    small = types_pb2.Resolution(width=640, height=360)
    large = types_pb2.Resolution(width=1280, height=1080)
    assert scale_box(box, small, large) == types_pb2.Box(x1=20, y1=60, x2=220, y2=660)
    assert scale_box(scale_box(box, small, large), large, small) == box


def test_scale_box_needs_resolutions() -> None:
    with pytest.raises(InvalidArgument) as bad:
        scale_box(types_pb2.Box(), types_pb2.Resolution(), types_pb2.Resolution(width=1, height=1))
    assert bad.value.field == "from_res"
