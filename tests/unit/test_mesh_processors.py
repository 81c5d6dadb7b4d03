"""Processors in the mesh file: named apart from their kinds, taken from a processors file and changed key
by key, golden scorers that inherit their processor, and errors that name the field of the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dayu.mesh.model import load_mesh_config
from dayu.mesh.plan import Instance, settings
from dayu.runtime.errors import InvalidArgument

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def mesh(tmp_path: Path, **changes: Any) -> Path:
    data = yaml.safe_load((CONFIGS / "faces.yaml").read_text())
    data.update(pipelines_file=str(CONFIGS / "pipelines.yaml"), processors_file=str(CONFIGS / "processors.yaml"))
    data.update(changes)
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_processors_file_is_changed_key_by_key_and_golden_scorers_inherit(tmp_path: Path) -> None:
    config = load_mesh_config(mesh(tmp_path))
    face = config.processors["face_detector"]
    assert face.kind == "model" and face.params["backend"] == "triton"  # faces.yaml's change
    assert face.params["decode"]["type"] == "ssd"  # processors.yaml's, kept
    golden = config.golden_section("face_detector")
    assert golden.params["backend"] == "onnxruntime" and golden.params["model"] == "face_detection"


class _Wiring:
    pipelines_file, database, emulated_links, models_dir = "p.yaml", "d.sqlite", True, "/models"

    def address(self, target: Instance, seen_from: Instance) -> str:
        return "127.0.0.1:1"

    def triton(self, node: str) -> str:
        return "127.0.0.1:2"

    def state_dir(self, node: str) -> str:
        return "/state"


def test_a_processor_serves_under_its_name_and_runs_its_kind(tmp_path: Path) -> None:
    config = load_mesh_config(mesh(tmp_path))
    section = settings(config, Instance("processor", "cloud", "face_detector"), _Wiring())["processor"]  # type: ignore[arg-type]
    assert (section["kind"], section["name"]) == ("model", "face_detector")
    assert section["params"]["triton"]["address"] == "127.0.0.1:2"
    golden = settings(config, Instance("processor", "cloud", "golden-face_detector"), _Wiring())["processor"]  # type: ignore[arg-type]
    assert (golden["kind"], golden["name"]) == ("model", "face_detector")
    assert golden["params"]["model_repository"] == "/models"  # in process: the mesh's own models


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        (
            {"processors": {"face_detector": {"params": {"input": {"width": 0}}}}},
            "processors.face_detector.params.input",
            "width",
        ),
        ({"processors": {"mine": {"kind": "nothing"}}}, "processors.mine.kind", "one of the kinds"),
        (
            {"nodes": {"cloud": {"processors": ["nothing"]}, "edge-1": {}}},
            "nodes.cloud.processors",
            "processors of the processors section",
        ),
        (
            {"golden": {"face_detector": {"params": {"decode": {"type": "retina"}}}}},
            "golden.face_detector.params.decode",
            "",
        ),
    ],
)
def test_errors_name_the_field_of_the_mesh_file(
    tmp_path: Path, changes: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as error:
        load_mesh_config(mesh(tmp_path, **changes))
    assert error.value.field.startswith(field) and message in str(error.value), str(error.value)
