"""The inference stages on their real models (PP-OCRv4 from rapidocr), in process, on the scene of
tests/plates.py: a grey street with coloured vehicles carrying white plates with black text at known
places. tests/integration/test_triton.py runs the same models on Triton."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from dayu.datasource.scene import TrafficScene
from dayu.media.accuracy import f1, match_counts
from dayu.processor.core import ProcessorCore
from dayu.processor.kinds import PROCESSORS, StageRunner
from dayu.processor.refiners import dominant_colour
from dayu.processor.results import merge_detections
from dayu.runtime.errors import InvalidArgument
from dayu.v1 import task_pb2, types_pb2

from conftest import make_task
from plates import BLUE, RED, VEHICLES, draw_scene, iou, plates_pipeline, run_stage, scene_task

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def runners() -> dict[str, StageRunner]:
    """One runner per kind: each loads its model once, as a processor does."""
    return {
        kind: PROCESSORS.create(kind, {}) for kind in ("text_detector", "text_recognizer", "color_classifier", "merge")
    }


async def test_plates_are_found_read_coloured_and_merged(runners: dict[str, StageRunner]) -> None:
    width, height = 640, 360
    task = scene_task([draw_scene(width, height), draw_scene(width, height)[:, ::-1].copy()])
    truths = [vehicle.plate_box(width, height) for vehicle in VEHICLES]

    detect = await run_stage(runners["text_detector"], task, "detect")
    assert [r.frame_index for r in detect.results] == [0, 1]
    found = detect.results[0].detections
    assert len(found) == 2 and all(d.label == "plate" and 0.5 < d.score <= 1 for d in found)
    for detection, truth in zip(found, truths, strict=True):  # boxes come top to bottom
        assert iou(detection.box, truth) > 0.5
    assert list(detect.scenario.object_counts) == [2, 2]
    plate_size = np.mean([(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in truths]) / (width * height)
    assert detect.scenario.mean_object_sizes[0] == pytest.approx(plate_size, rel=0.5)

    read = await run_stage(runners["text_recognizer"], task, "read")
    detections = read.results[0].detections
    assert [d.text.replace(" ", "") for d in detections] == [v.text.replace(" ", "") for v in VEHICLES]
    assert [d.parent_index for d in detections] == [0, 1] and all(d.label == "plate" for d in detections)
    assert [d.box for d in detections] == [d.box for d in found]
    assert len(read.results[1].detections) == 2  # the mirrored frame has plates too, unreadable or not

    colour = await run_stage(runners["color_classifier"], task, "colour")
    assert [d.label for d in colour.results[0].detections] == ["red", "blue"]
    assert [d.parent_index for d in colour.results[0].detections] == [0, 1]

    merge = await run_stage(runners["merge"], task, "merge")
    merged = merge.results[0].detections
    assert [(d.label, d.text.replace(" ", ""), d.parent_index) for d in merged] == [
        ("plate:red", "AB12CDE", 0),
        ("plate:blue", "KX52TRB", 1),
    ]
    assert merged[0].score == min(detections[0].score, colour.results[0].detections[0].score)
    assert list(merge.scenario.object_counts) == [2, 2]


async def test_large_frames_are_scaled_down_and_boxes_come_back_in_frame_pixels() -> None:
    width, height = 1280, 720
    detector = PROCESSORS.create("text_detector", {"max_side": 640})
    task = scene_task([draw_scene(width, height)])
    found = (await run_stage(detector, task, "detect")).results[0].detections
    assert len(found) == 2
    for detection, vehicle in zip(found, VEHICLES, strict=True):
        assert iou(detection.box, vehicle.plate_box(width, height)) > 0.5


async def test_the_memory_arena_changes_where_tensors_live_not_what_is_found() -> None:
    """memory_arena (on by default) reaches the onnxruntime sessions, and a detector with it finds
    the same boxes, to the bit, as one without: on frames of two sizes, so a second input shape runs
    in the memory the first left."""
    from dayu.processor.inference import ModelRef

    frames = [draw_scene(1280, 720), draw_scene(640, 360)]
    found = {}
    for arena in (True, False):
        detector = PROCESSORS.create("text_detector", {} if arena else {"memory_arena": False})
        await detector.check()  # type: ignore[attr-defined]
        session = detector.backend.session(ModelRef("text_detection"))  # type: ignore[attr-defined]
        assert session.get_session_options().enable_cpu_mem_arena is arena
        found[arena] = []
        for frame in frames:
            stage = await run_stage(detector, scene_task([frame]), "detect")
            found[arena].append([(d.box, d.score) for d in stage.results[0].detections])
    assert found[True] == found[False] and all(found[True])


async def test_plate_shape_drops_the_scenery_the_model_takes_for_text() -> None:
    """On the synthetic traffic scene PP-OCR also boxes rows of trees and building edges as text; the
    plate shape the mesh configures (configs/experiment.yaml) drops them and keeps every plate."""
    configured = yaml.safe_load((CONFIGS / "experiment.yaml").read_text())["processors"]["text_detector"]["params"]
    assert configured["min_aspect"] > 1 and configured["max_height_share"] < 1
    scene = TrafficScene(1280, 720, seed=2)
    frames, truths = zip(*(scene.render(t) for t in np.arange(0.0, 30.0, 3.0)), strict=True)
    counts = {}
    for name, params in (("any text", {"max_side": 960}), ("plate shape", configured)):
        detect = await run_stage(PROCESSORS.create("text_detector", params), scene_task(list(frames)), "detect")
        counts[name] = np.sum(
            [
                match_counts([d.box for d in found.detections], [d.box for d in truth])
                for found, truth in zip(detect.results, truths, strict=True)
            ],
            axis=0,
        )
    (any_tp, any_fp, _), (shaped_tp, shaped_fp, shaped_fn) = counts["any text"], counts["plate shape"]
    assert shaped_tp == any_tp and any_fp >= 5 and shaped_fp <= any_fp / 3
    assert f1(shaped_tp, shaped_fp, shaped_fn) >= 0.8


def test_colours_have_names() -> None:
    patch = np.zeros((10, 10, 3), np.uint8)
    for bgr, name in [(RED, "red"), (BLUE, "blue"), ((0, 200, 0), "green"), ((0, 220, 230), "yellow")]:
        patch[:] = bgr
        assert dominant_colour(patch) == (name, 1.0)
    for grey, name in [(20, "black"), (120, "gray"), (240, "white")]:
        patch[:] = grey
        assert dominant_colour(patch)[0] == name


def test_merge_joins_what_parents_say_about_the_same_object() -> None:
    box = types_pb2.Box(x1=1, y1=2, x2=3, y2=4)
    detector = [types_pb2.Detection(box=box, label="plate", score=0.9), types_pb2.Detection(box=box, label="plate")]
    reader = [types_pb2.Detection(box=box, label="plate", text="AB12", score=0.8, parent_index=1)]
    colours = [types_pb2.Detection(box=box, label="red", score=0.7, parent_index=0)]
    merged = merge_detections([detector, reader, colours])
    assert [(d.label, d.text, d.parent_index) for d in merged] == [("plate:red", "", 0), ("plate", "AB12", 1)]
    assert merged[0].score == pytest.approx(0.7)


async def test_second_stages_decode_nothing_when_there_is_no_box(runners: dict[str, StageRunner]) -> None:
    task = make_task(plates_pipeline(), frames=2)  # frames that do not decode: never looked at
    detect = task.dag.stages[0]
    detect.results.add(frame_index=0)
    detect.state = task_pb2.STAGE_STATE_DONE
    for name, kind in (("read", "text_recognizer"), ("colour", "color_classifier")):
        found = await run_stage(runners[kind], task, name)
        assert [len(r.detections) for r in found.results] == [0, 0]
        assert list(found.scenario.object_counts) == [0, 0] and list(found.scenario.mean_object_sizes) == [0, 0]


async def test_failures_are_recorded_with_the_reason(runners: dict[str, StageRunner]) -> None:
    with pytest.raises(InvalidArgument, match=r"^processor\.params\.max_sides"):
        PROCESSORS.create("text_detector", {"max_sides": 640}, params_field="processor.params")

    task = scene_task([draw_scene(320, 180)] * 2)
    task.segment.frames[1] = b"\xff\xd8 not a JPEG"
    core = ProcessorCore("edge-1", "text_detector", runners["text_detector"], workers=1, queue_capacity=2)
    await core.start()
    try:
        detect = (await core.process(task, "detect")).dag.stages[0]
    finally:
        await core.stop()
    assert detect.state == task_pb2.STAGE_STATE_FAILED and not detect.results
    assert detect.error.startswith("InvalidArgument: segment.frames[1]")

    with pytest.raises(ValueError, match="parent stage 'detect' is STAGE_STATE_FAILED, not DONE"):
        await runners["text_recognizer"].run(task, task.dag.stages[1])
