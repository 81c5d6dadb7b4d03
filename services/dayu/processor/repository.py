"""The Triton model repository: what triton_models/ holds (each model's configurations, and the one
Python-backend model of the CPU path) plus the ONNX files, copied from the installed packages that
ship them. Nothing is downloaded, and the large files stay out of git.

Assembled layout, one version per model:

    <target>/<model>/config.pbtxt           CPU path: Python backend running model.onnx (the default)
    <target>/<model>/configs/gpu.pbtxt      GPU path: onnxruntime backend (tritonserver --model-config-name=gpu)
    <target>/<model>/1/model.py             triton_models/onnx_model.py
    <target>/<model>/1/model.onnx           from the package that ships the model

The in-process backend finds its ONNX files through the same table, so both paths run one model file.
"""

from __future__ import annotations

import filecmp
import importlib.resources
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[3] / "triton_models"
# Copied into every model's version directory as model.py.
PYTHON_MODEL = "onnx_model.py"
VERSION = "1"


@dataclass(frozen=True)
class PackagedModel:
    """An ONNX model inside an installed Python package."""

    package: str
    resource: str  # path inside the package


PACKAGED_MODELS = {
    "text_detection": PackagedModel("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx"),
    "text_recognition": PackagedModel("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx"),
}


def require_model(name: str, version: int = 0) -> PackagedModel:
    """The packaged model of that name and version (0: the latest, the only one)."""
    if name not in PACKAGED_MODELS:
        raise ValueError(f"model {name!r} is not one of the repository's {sorted(PACKAGED_MODELS)}")
    if version not in (0, int(VERSION)):
        raise ValueError(f"model {name!r} has version {VERSION} only, got {version}")
    return PACKAGED_MODELS[name]


@contextmanager
def packaged_model_file(name: str, version: int = 0) -> Iterator[Path]:
    """A real file of the model's ONNX bytes while the context lasts (packages may be zipped)."""
    model = require_model(name, version)
    with importlib.resources.as_file(importlib.resources.files(model.package) / model.resource) as path:
        yield path


def _copy_if_changed(source: Path, target: Path) -> bool:
    """Copies unless the target has the same bytes already; replaces atomically, so a server reading
    the target never sees half a file. True when it copied."""
    if target.exists() and (target.samefile(source) or filecmp.cmp(source, target, shallow=False)):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    return True


def assemble(target: Path, source: Path = SOURCE) -> Path:
    """Builds the servable repository in `target` (which may be `source` itself) and returns it.
    Copies only what changed, so assembling before every start is cheap."""
    models = sorted(path for path in source.iterdir() if path.is_dir() and (path / "config.pbtxt").is_file())
    if not models:
        raise FileNotFoundError(f"no model (a directory with config.pbtxt) in {source}")
    for model_dir in models:
        require_model(model_dir.name)
        for config in [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]:
            _copy_if_changed(config, target / config.relative_to(source))
        version_dir = target / model_dir.name / VERSION
        _copy_if_changed(source / PYTHON_MODEL, version_dir / "model.py")
        with packaged_model_file(model_dir.name) as onnx_file:
            _copy_if_changed(onnx_file, version_dir / "model.onnx")
    return target
