"""Source kinds of the datasource: the synthetic traffic scene and video files, read for real."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import av
import numpy as np
import pytest

from dayu.datasource.scene import TrafficScene
from dayu.datasource.sources import SOURCES, FrameReader, Source, SourceFrame
from dayu.runtime.errors import InvalidArgument

PLATE_TEXT = re.compile(r"^[A-Z]{2}[0-9]{2} [A-Z]{3}$")


def make_source(kind: str, **params: object) -> Source:
    return SOURCES.create(kind, params, field="params")  # type: ignore[no-any-return]


def read_all(reader: FrameReader, count: int) -> list[SourceFrame]:
    frames = []
    for _ in range(count):
        frame = reader.read()
        if frame is None:
            break
        frames.append(frame)
    return frames


def frames_with_plates(count: int, seed: int = 1) -> list[SourceFrame]:
    """`count` frames, one per simulated second, that show at least one legible plate."""
    reader = make_source("synthetic", seed=seed, fps=10).open()
    found = [frame for frame in (reader.read(skip=9) for _ in range(120)) if frame and frame.ground_truth]
    assert len(found) >= count, f"only {len(found)} of 120 frames show a legible plate"
    return found[:count]


# --- synthetic ---------------------------------------------------------------------------------------


def test_synthetic_frames_depend_only_on_seed_and_index() -> None:
    first, second = (make_source("synthetic", seed=7, width=320, height=180, fps=5).open() for _ in range(2))
    sequential = read_all(first, 30)
    for i, frame in enumerate(sequential):
        again = second.read()
        assert again is not None
        assert np.array_equal(frame.image, again.image), f"frame {i} differs"
        assert list(frame.ground_truth) == list(again.ground_truth)
    jumped = make_source("synthetic", seed=7, width=320, height=180, fps=5).open().read(skip=29)
    assert jumped is not None and np.array_equal(jumped.image, sequential[29].image)
    other_seed = read_all(make_source("synthetic", seed=8, width=320, height=180, fps=5).open(), 30)
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(sequential, other_seed, strict=True))


def test_synthetic_frames_are_bgr_at_the_configured_size() -> None:
    source = make_source("synthetic", width=640, height=360, fps=12.5)
    frame = source.open().read()
    assert frame is not None
    assert frame.image.shape == (360, 640, 3) and frame.image.dtype == np.uint8
    assert source.resolution == (640, 360) and source.fps == 12.5
    assert source.has_ground_truth and not source.cycle


def test_ground_truth_plates_are_inside_the_frame_and_legible() -> None:
    frames = frames_with_plates(8)
    for frame in frames:
        height, width = frame.image.shape[:2]
        for plate in frame.ground_truth:
            box = plate.box
            assert 0 <= box.x1 < box.x2 <= width and 0 <= box.y1 < box.y2 <= height
            assert box.y2 - box.y1 >= 10, "smaller plates are left out as illegible"
            assert plate.label == "plate" and plate.score == 1.0
            assert PLATE_TEXT.match(plate.text), plate.text


def test_plate_region_is_a_white_plate_with_dark_text() -> None:
    for frame in frames_with_plates(5):
        for plate in frame.ground_truth:
            box = plate.box
            region = frame.image[int(box.y1) : int(box.y2), int(box.x1) : int(box.x2)]
            grey = region.mean(axis=2)
            inner = grey[2:-2, 2:-2]
            assert (inner > 170).mean() > 0.45, f"{plate.text}: the plate is mostly white"
            assert (inner < 90).mean() > 0.08, f"{plate.text}: the plate carries dark text"
            border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
            assert border.mean() < grey.mean(), f"{plate.text}: the plate has a dark border"
            saturation = region.max(axis=2).astype(int) - region.min(axis=2)
            assert saturation.mean() < 25, f"{plate.text}: black on white, no colour"


def test_a_real_text_reader_reads_the_plates() -> None:
    """PP-OCR (text detection, then recognition of each box) reads every plate in the ground truth."""
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    frame = next(frame for frame in frames_with_plates(20) if len(frame.ground_truth) >= 2)
    found, _ = rapidocr.RapidOCR()(frame.image)
    read = {text.replace(" ", "") for _, text, _ in found or []}
    truth = {plate.text.replace(" ", "") for plate in frame.ground_truth}
    assert truth <= read, f"read {read}, the plates are {truth}"


def test_traffic_changes_count_size_and_speed_over_time() -> None:
    scene = TrafficScene(960, 540, seed=3)
    minutes: list[tuple[float, float, float]] = []  # per minute: mean vehicles, mean height (px), mean speed
    for minute in range(12):
        counts, heights, speeds = [], [], []
        for second in range(60):
            placements = scene.placements(minute * 60 + second)
            counts.append(len(placements))
            heights += [p.vehicle.body.height * p.lane.scale for p in placements]
            speeds += [p.vehicle.speed for p in placements]
        minutes.append((statistics.mean(counts), statistics.mean(heights or [0]), statistics.mean(speeds or [0])))
    counts, heights, speeds = zip(*minutes, strict=True)
    assert max(counts) > 2.5 * min(counts), f"vehicles per frame, per minute: {counts}"
    busy_heights = [h for c, h, _ in minutes if c >= 1]
    assert max(busy_heights) > 1.3 * min(busy_heights), f"vehicle height per minute: {heights}"
    busy_speeds = [s for c, _, s in minutes if c >= 1]
    assert max(busy_speeds) > 1.5 * min(busy_speeds), f"speed per minute: {speeds}"
    phases = {scene.phase(t) for t in range(0, 720, 5)}
    assert len(phases) >= 3, phases


def test_synthetic_scene_with_a_duration_ends_or_cycles() -> None:
    once = make_source("synthetic", width=160, height=90, fps=10, duration_s=1.0, cycle=False)
    assert not once.cycle
    assert len(read_all(once.open(), 50)) == 10
    looping = make_source("synthetic", width=160, height=90, fps=10, duration_s=1.0)
    assert looping.cycle
    frames = read_all(looping.open(), 25)
    assert len(frames) == 25
    assert np.array_equal(frames[3].image, frames[13].image) and np.array_equal(frames[3].image, frames[23].image)


def test_synthetic_parameters_are_checked() -> None:
    with pytest.raises(InvalidArgument) as caught:
        make_source("synthetic", phases=["quiet", "gridlock"])
    assert caught.value.field == "params.phases" and "gridlock" in caught.value.expected
    with pytest.raises(InvalidArgument) as caught:
        make_source("synthetic", colour="red")
    assert caught.value.field == "params.colour"


# --- file --------------------------------------------------------------------------------------------

FILE_FRAMES, FILE_FPS, FILE_SIZE = 12, 8, (160, 120)


def level(i: int) -> int:
    """Grey level of frame i of the test video: far enough apart to survive compression."""
    return 20 + 18 * i


def write_video(path: Path) -> Path:
    """A short H.264 video whose frame i is uniformly grey at level(i)."""
    width, height = FILE_SIZE
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FILE_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(FILE_FRAMES):
            image = np.full((height, width, 3), level(i), np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode(None))
    return path


def levels(frames: list[SourceFrame]) -> list[int]:
    return [round(float(frame.image.mean())) for frame in frames]


def assert_levels(frames: list[SourceFrame], expected: list[int]) -> None:
    got = levels(frames)
    assert len(got) == len(expected) and all(abs(a - b) <= 4 for a, b in zip(got, expected, strict=True)), got


def test_file_plays_once_then_ends(tmp_path: Path) -> None:
    source = make_source("file", path=str(write_video(tmp_path / "clip.mp4")), cycle=False)
    assert source.fps == FILE_FPS and source.resolution == FILE_SIZE and not source.cycle
    assert source.uri.endswith("clip.mp4") and not source.has_ground_truth
    reader = source.open()
    frames = read_all(reader, 100)
    assert frames[0].image.shape == (FILE_SIZE[1], FILE_SIZE[0], 3)
    assert_levels(frames, [level(i) for i in range(FILE_FRAMES)])
    assert reader.read() is None
    reader.close()


def test_file_cycles_and_skips(tmp_path: Path) -> None:
    source = make_source("file", path=str(write_video(tmp_path / "clip.mp4")), fps=25)
    assert source.fps == 25 and source.cycle
    reader = source.open()
    assert_levels(read_all(reader, 2 * FILE_FRAMES + 3), [level(i % FILE_FRAMES) for i in range(2 * FILE_FRAMES + 3)])
    skipped = reader.read(skip=4)  # frames 3..6 of the third pass fell due unseen
    assert skipped is not None
    assert_levels([skipped], [level(7)])
    reader.close()
    assert reader.read() is None


def test_several_playbacks_of_one_file_are_independent(tmp_path: Path) -> None:
    source = make_source("file", path=str(write_video(tmp_path / "clip.mp4")))
    first, second = source.open(), source.open()
    assert_levels(read_all(first, 5), [level(i) for i in range(5)])
    assert_levels(read_all(second, 2), [level(0), level(1)])
    first.close()
    second.close()


def test_file_that_is_not_a_video_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    with pytest.raises(InvalidArgument) as caught:
        make_source("file", path=str(text))
    assert caught.value.field == "params.path"
    with pytest.raises(InvalidArgument) as caught:
        make_source("file", path=str(tmp_path / "missing.mp4"))
    assert caught.value.field == "params.path"
