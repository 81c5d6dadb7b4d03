"""Dayu's applications and your own model, each as `dayu up` runs it: the mesh's tritonserver serves the
models, the pipeline's stages run on them, every task is accounted for, and what each found shows in the
summary. A model that does not fit its YAML stops `dayu up` at start with the reason."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dayu.processor.repository import model_file

ROOT = Path(__file__).resolve().parents[2]


def dayu_up(config: Path, cwd: Path, duration: float = 10) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    summary = cwd / "summary.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dayu.cli",
            "up",
            "--console-port",
            "0",  # any free port: another mesh of the suite may hold the default
            "--config",
            str(config),
            "--duration",
            str(duration),
            "--summary-json",
            str(summary),
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return run, json.loads(summary.read_text()) if summary.exists() else {}


def served(summary: dict[str, Any], model: str) -> int:
    (models,) = summary["triton"].values()
    assert models[model]["failures"] == 0
    return int(models[model]["inferences"])


@pytest.mark.parametrize("app", ["traffic", "pedestrians", "faces"])
def test_each_application_runs_on_its_models(app: str, tmp_path: Path) -> None:
    run, summary = dayu_up(ROOT / "configs" / f"{app}.yaml", tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert summary["unaccounted"] == 0 and summary["delivered"] >= 3
    assert summary["accuracy_f1"] is not None  # against the golden configuration: photos have no ground truth
    (stream,) = summary["streams"].values()
    labels, texts = stream["labels"], stream["texts"]
    if app == "traffic":
        assert served(summary, "object_detection:1") >= summary["delivered"]
        assert served(summary, "text_detection:1") > 0  # the plate finder ran on the vehicles found
    elif app == "pedestrians":
        assert served(summary, "object_detection:1") >= summary["delivered"]
        assert set(labels) == {"count:person"} and any(int(t.split()[-1]) >= 1 for t in texts)
    else:
        for model in ("face_detection:1", "age:1", "gender:1"):
            assert served(summary, model) > 0
        # merged: age and gender of each face, as "age:80:male"
        assert any(label.startswith("age:") and label.endswith(("male", "female")) for label in labels), labels


def own_model_example(tmp_path: Path) -> Path:
    """The worked example of docs/models.md, with BlazeFace's ONNX file standing in for yours."""
    example = shutil.copytree(ROOT / "examples" / "own-model", tmp_path / "example")
    (example / "my_models" / "my_face_detector" / "1").mkdir(parents=True)
    with model_file("face_detection") as path:
        shutil.copyfile(path, example / "my_models" / "my_face_detector" / "1" / "model.onnx")
    return example


def test_your_own_model_runs_as_a_stage_from_a_few_lines_of_yaml(tmp_path: Path) -> None:
    example = own_model_example(tmp_path)
    run, summary = dayu_up(example / "mesh.yaml", tmp_path, duration=8)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert summary["unaccounted"] == 0 and summary["delivered"] >= 3
    assert served(summary, "my_face_detector:1") >= summary["delivered"]
    (stream,) = summary["streams"].values()
    assert stream["labels"] == {"face": stream["frames"]}  # Grace Hopper's face, on every frame
    config = (tmp_path / ".dayu" / "triton_models" / "my_face_detector" / "config.pbtxt").read_text()
    assert "Written by Dayu" in config and 'name: "regressors"' in config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "layout: NHWC",
            "'input' of model my_face_detector v1 has shape [-1, 128, 128, 3]; "
            "input NCHW 128x128 needs [?, 3, 128, 128]",
        ),
        ("model: my_face_detector", "metadata of my_face_detector v2: NOT_FOUND"),
        ("boxes: regressors", "model my_face_detector v1 has no output 'boxes'"),
    ],
)
def test_a_model_that_does_not_fit_its_yaml_stops_the_start(change: str, message: str, tmp_path: Path) -> None:
    example = own_model_example(tmp_path)
    wrong = {
        "layout: NHWC": "layout: NCHW",
        "model: my_face_detector": "model: my_face_detector\n      version: 2",
        "boxes: regressors": "boxes: boxes",
    }[change]
    mesh = example / "mesh.yaml"
    text = mesh.read_text()
    if change == "model: my_face_detector":
        text = text.replace("      version: 1\n", "")
    mesh.write_text(text.replace(change, wrong, 1))
    run, _ = dayu_up(mesh, tmp_path, duration=5)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert "dayu: error: processor 'my_faces' on" in run.stderr and message in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
