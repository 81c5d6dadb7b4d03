"""The `model` kind, a stage described in YAML: its parameters (errors name the field), the input it makes
of an image and the way back, each decoder of the catalogue on outputs of known content, and the
check at start against a real ONNX model's tensors (the packaged PP-OCR detector, as a model of your own)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dayu.processor.decoders import decoding, grid_anchors
from dayu.processor.inference import ModelRef
from dayu.processor.kinds import PROCESSORS, ModelMismatch
from dayu.processor.model_input import prepare
from dayu.processor.model_params import ModelStageParams
from dayu.processor.model_stage import ModelStageRunner
from dayu.processor.repository import assemble, model_file
from dayu.runtime.errors import InvalidArgument

INPUT = {"width": 64, "height": 64, "resize": "stretch"}


def params(decode: dict[str, Any], **more: Any) -> ModelStageParams:
    values = {"model": "mine", "input": INPUT, "decode": decode, **more}
    return PROCESSORS.params("model", values, field="processors.mine.params")  # type: ignore[return-value]


def test_errors_name_the_field() -> None:
    with pytest.raises(InvalidArgument) as error:
        params({"type": "yolo", "labels": ["a"], "keep": ["b"]})
    assert error.value.field.startswith("processors.mine.params.decode") and "['b']" in str(error.value)
    with pytest.raises(InvalidArgument) as error:
        params({"type": "ssd", "boxes": "b", "scores": "s", "anchors": {"strides": [8]}})
    assert "anchors" in error.value.field and "per_cell" in str(error.value)
    with pytest.raises(InvalidArgument) as error:
        params({"type": "retina"})
    assert error.value.field.startswith("processors.mine.params.decode")
    with pytest.raises(InvalidArgument) as error:
        PROCESSORS.params(
            "model", {"model": "mine", "input": {"width": 0, "height": 8}, "decode": {"type": "classify"}}
        )
    assert error.value.field == "params.input.width"
    with pytest.raises(InvalidArgument) as error:
        params({"type": "classify", "labels": ["young", "old"], "expected_value": True})
    assert "numbers" in str(error.value)


def test_a_letterboxed_image_maps_back_to_its_own_pixels() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :, 2] = 255  # red, in BGR
    spec = params({"type": "classify"}, input={"width": 64, "height": 64, "resize": "letterbox", "pad": 0}).input
    sample, placement = prepare(image, spec)
    assert sample.shape == (1, 3, 64, 64) and sample.dtype == np.float32
    assert sample[0, 0, 32, 32] == pytest.approx(1.0) and sample[0, 2, 32, 32] == 0  # RGB, scaled to 0..1
    assert sample[0, 0, 0, 32] == 0  # the padding above the image
    box = placement.to_frame(np.array([[0.0, 16.0, 64.0, 48.0]]))  # the whole image, in input pixels
    assert box.tolist() == [[0.0, 0.0, 200.0, 100.0]]


def test_yolo_boxes_are_suppressed_within_a_class() -> None:
    labels = ["a", "b", "c"]
    decoder = decoding(params({"type": "yolo", "labels": labels, "iou_threshold": 0.5}).decode, None)  # type: ignore[arg-type]
    candidates = np.array(
        [  # centre x, centre y, w, h, then a score per class
            [20, 20, 10, 10, 0.0, 0.9, 0.0],
            [21, 20, 10, 10, 0.0, 0.8, 0.0],  # the same object, less sure: suppressed
            [21, 20, 10, 10, 0.0, 0.0, 0.6],  # same place, another class: kept
            [50, 50, 10, 10, 0.1, 0.0, 0.0],  # below the threshold
        ],
        dtype=np.float32,
    )
    decoder.output = "out"  # type: ignore[union-attr]
    found = decoder.decode({"out": candidates.T[None]}, 0)  # type: ignore[union-attr]
    assert found.classes.tolist() == [1, 2]
    assert found.boxes[0].tolist() == [15, 15, 25, 25]
    assert found.scores.tolist() == pytest.approx([0.9, 0.6])


def test_ssd_anchors_and_offsets_as_blazeface_has_them() -> None:
    anchors = {"strides": [8, 16], "per_cell": [2, 6]}
    decode = {"type": "ssd", "boxes": "b", "scores": "s", "labels": ["face"], "anchors": anchors}
    spec = params(decode, input={"width": 128, "height": 128, "resize": "stretch"})
    grid = grid_anchors(spec.decode.anchors, 128, 128)  # type: ignore[union-attr]
    assert grid.shape == (896, 4)  # 16 x 16 x 2 + 8 x 8 x 6
    assert grid[0].tolist() == [0.5 / 16, 0.5 / 16, 1, 1] and grid[512].tolist() == [0.5 / 8, 0.5 / 8, 1, 1]
    decoder = decoding(spec.decode, spec.input)
    boxes, scores = np.zeros((1, 896, 16), np.float32), np.full((1, 896, 1), -10.0, np.float32)
    boxes[0, 100, :4] = [4, -2, 32, 16]  # 4 pixels right, 2 up of anchor 100's centre, 32 x 16
    scores[0, 100, 0] = 5.0
    found = decoder.decode({"b": boxes, "s": scores}, 0)  # type: ignore[union-attr]
    cx, cy = grid[100, 0] * 128 + 4, grid[100, 1] * 128 - 2
    assert found.boxes[0].tolist() == pytest.approx([cx - 16, cy - 8, cx + 16, cy + 8])
    assert found.scores.tolist() == pytest.approx([1 / (1 + np.exp(-5.0))])


def test_centernet_peaks_with_size_and_offset() -> None:
    decode = {"type": "centernet", "heatmap": "h", "box": "s", "offset": "o", "labels": ["a", "b"], "stride": 4}
    spec = params(decode, input={"width": 32, "height": 32})
    decoder = decoding(spec.decode, spec.input)
    heat, size, offset = np.zeros((1, 8, 8, 2), np.float32), np.zeros((1, 8, 8, 2)), np.zeros((1, 8, 8, 2))
    heat[0, 3, 5, 1], heat[0, 3, 4, 1] = 0.9, 0.5  # a peak and its weaker neighbour
    heat[0, 6, 1, 0] = 0.2  # a peak below the threshold
    size[0, 3, 5], offset[0, 3, 5] = (2, 3), (0.5, 0.25)
    found = decoder.decode({"h": heat, "s": size, "o": offset}, 0)  # type: ignore[union-attr]
    cx, cy = 5.5 * 4, 3.25 * 4
    assert found.classes.tolist() == [1]
    assert found.boxes[0].tolist() == pytest.approx([cx - 4, cy - 6, cx + 4, cy + 6])


def test_boxes_decoded_in_the_graph_and_classification() -> None:
    columns = ["y1", "x1", "y2", "x2", "score", "class"]
    decode = {"type": "boxes", "labels": ["a", "b"], "columns": columns, "coordinates": "normalized"}
    spec = params(decode, input={"width": 100, "height": 50})
    decoder = decoding(spec.decode, spec.input)
    decoder.output = "d"  # type: ignore[union-attr]
    rows = np.array([[[0.1, 0.2, 0.5, 0.6, 0.8, 1], [0, 0, 1, 1, 0.9, 7], [0, 0, 1, 1, 0.1, 0]]])
    found = decoder.decode({"d": rows}, 0)  # type: ignore[union-attr]
    assert found.boxes[0].tolist() == pytest.approx([20, 5, 60, 25]) and found.classes.tolist() == [1]

    ages = {"type": "classify", "labels": ["10", "20", "30"], "expected_value": True, "activation": "softmax"}
    runner = ModelStageRunner(params(ages, label_prefix="age:"))
    runner.decoding.output = "p"  # type: ignore[union-attr]
    scores = runner.decoding.scores({"p": np.log(np.array([[0.25, 0.5, 0.25]]))}, 0)  # type: ignore[union-attr]
    detection = runner._classified(scores, __import__("dayu.v1.types_pb2").v1.types_pb2.Box(x2=1, y2=1), 3)
    assert (detection.label, detection.text, detection.parent_index) == ("age:20", "20.0", 3)


def _own_models(tmp_path: Path) -> Path:
    """A folder of your own models: the PP-OCR detector under a name of yours."""
    own = tmp_path / "my_models"
    (own / "my_detector" / "1").mkdir(parents=True)
    with model_file("text_detection") as path:
        shutil.copyfile(path, own / "my_detector" / "1" / "model.onnx")
    return own


def test_your_own_model_is_served_with_configurations_written_from_its_tensors(tmp_path: Path) -> None:
    repository = assemble(tmp_path / "repository", own=_own_models(tmp_path))
    cpu = (repository / "my_detector" / "config.pbtxt").read_text()
    gpu = (repository / "my_detector" / "configs" / "gpu.pbtxt").read_text()
    assert 'backend: "python"' in cpu and 'platform: "onnxruntime_onnx"' in gpu
    assert 'name: "x", data_type: TYPE_FP32, dims: [ 3, -1, -1 ]' in cpu and "max_batch_size: 8" in cpu
    assert (repository / "my_detector" / "1" / "model.py").is_file()
    assert (repository / "text_detection" / "1" / "model.onnx").is_file()  # Dayu's own, next to it


def test_a_model_that_does_not_fit_the_yaml_fails_the_check_at_start(tmp_path: Path) -> None:
    own = _own_models(tmp_path)

    def check(decode: dict[str, Any], **more: Any) -> str:
        runner = ModelStageRunner(params(decode, model_repository=own, **more))
        with pytest.raises(ModelMismatch) as error:
            asyncio.run(runner.check())
        return str(error.value)

    yolo = {"type": "yolo", "labels": ["a"]}
    assert "neither in" in check(yolo, model="missing")
    message = check(yolo, model="my_detector", input={**INPUT, "layout": "NHWC"})
    assert "has shape [-1, 3, -1, -1]" in message and "NHWC" in message
    message = check(yolo, model="my_detector")
    assert "yolo (yolov8) with 1 labels needs [?, 5, ?]" in message
    assert "no output 'heat'" in check({"type": "centernet", "heatmap": "heat", "box": "s"}, model="my_detector")


def test_a_classifier_needs_one_score_per_label(tmp_path: Path) -> None:
    """The detector's input fits a classifier's YAML, its probability map [batch, 1, H, W] is no
    [batch, labels] of scores: refused at the check. (Models that fit run in test_app_models.py.)"""
    own = _own_models(tmp_path)
    runner = ModelStageRunner(
        params({"type": "classify", "labels": ["text"]}, model="my_detector", model_repository=own)
    )
    with pytest.raises(ModelMismatch, match=r"needs \[\?, 1\]"):
        asyncio.run(runner.check())
    assert asyncio.run(runner.backend.signature(ModelRef("my_detector"))).inputs[0].name == "x"
