"""The Triton model repository: Dayu's models (triton_models/ holds their configurations; the ONNX files
come from the installed packages that ship them, Dayu's own package included) and your own models
(a folder of <name>/<version>/model.onnx, the mesh file's `models_dir`), assembled into one folder
that tritonserver serves. Nothing is downloaded, and the large files of other packages stay out of git.

Assembled layout:

    <target>/<model>/config.pbtxt           CPU path: Python backend running model.onnx (the default)
    <target>/<model>/configs/gpu.pbtxt      GPU path: onnxruntime backend (tritonserver --model-config-name=gpu)
    <target>/<model>/<version>/model.py     triton_models/onnx_model.py
    <target>/<model>/<version>/model.onnx   from the package that ships the model, or your folder

A model of your own needs no configuration: without a config.pbtxt next to its versions, both are
written from the ONNX file's own inputs and outputs. The in-process backend finds its ONNX files
through the same lookup (`model_file`), so both paths run one model file.
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
from typing import Any

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
    # Converted or extracted once, shipped in Dayu's own package (services/dayu/zoo/MODELS.md).
    "object_detection": PackagedModel("dayu.zoo", "centernet_mbv3_coco_512.onnx"),
    "face_detection": PackagedModel("dayu.zoo", "blazeface_short_range_128.onnx"),
    "age": PackagedModel("dayu.zoo", "age_v1.onnx"),
    "gender": PackagedModel("dayu.zoo", "gender_v1.onnx"),
}
ONNX_FILE = "model.onnx"


def require_model(name: str, version: int = 0) -> PackagedModel:
    """Dayu's model of that name and version (0: the latest, the only one)."""
    if name not in PACKAGED_MODELS:
        raise ValueError(f"model {name!r} is not one of Dayu's {sorted(PACKAGED_MODELS)}")
    if version not in (0, int(VERSION)):
        raise ValueError(f"model {name!r} has version {VERSION} only, got {version}")
    return PACKAGED_MODELS[name]


def own_versions(folder: Path, name: str) -> list[int]:
    """The versions of your model `name` in `folder`: numbered folders with a model.onnx, in order."""
    model_dir = folder / name
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / ONNX_FILE).is_file())


@contextmanager
def model_file(name: str, version: int = 0, own: Path | None = None) -> Iterator[Path]:
    """A real file of the model's ONNX bytes while the context lasts (packages may be zipped): your
    model of that name in `own` first, else Dayu's. Version 0 is the latest."""
    versions = own_versions(own, name) if own is not None else []
    if versions:
        if version and version not in versions:
            raise ValueError(f"model {name!r} in {own} has versions {versions}, not {version}")
        yield own / name / str(version or versions[-1]) / ONNX_FILE  # type: ignore[operator]
        return
    if name not in PACKAGED_MODELS and own is not None:
        raise ValueError(
            f"model {name!r} is neither in {own} (as {name}/<version>/{ONNX_FILE}) "
            f"nor one of Dayu's {sorted(PACKAGED_MODELS)}"
        )
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


# Triton's names of ONNX element types.
_TRITON_TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
}
# Batches of up to this many samples for models whose first axis is free.
GENERATED_MAX_BATCH = 8


def reading_session(onnx_file: Path) -> Any:
    """An onnxruntime session to read a model's tensors and metadata, not to run it: opened quickly."""
    import onnxruntime  # not loaded by those that only assemble Dayu's own models

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    return onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


def generated_configs(name: str, onnx_file: Path) -> dict[str, str]:
    """config.pbtxt (CPU path) and configs/gpu.pbtxt (GPU path) for an ONNX model, from its tensors."""
    session = reading_session(onnx_file)
    tensors = [*session.get_inputs(), *session.get_outputs()]
    batched = all(tensor.shape and not isinstance(tensor.shape[0], int) for tensor in tensors)

    def entries(found: list[object]) -> str:
        rows = []
        for tensor in found:
            kind = _TRITON_TYPES.get(tensor.type)  # type: ignore[attr-defined]
            if kind is None:
                raise ValueError(
                    f"model {name!r}: tensor {tensor.name!r} is {tensor.type}, which Dayu cannot configure"
                )  # type: ignore[attr-defined]
            shape = tensor.shape[1:] if batched else tensor.shape  # type: ignore[attr-defined]
            dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape)
            rows.append(f'{{ name: "{tensor.name}", data_type: {kind}, dims: [ {dims} ] }}')  # type: ignore[attr-defined]
        return ",\n  ".join(rows)

    body = (
        f"max_batch_size: {GENERATED_MAX_BATCH if batched else 0}\n"
        f"input [\n  {entries(session.get_inputs())}\n]\n"
        f"output [\n  {entries(session.get_outputs())}\n]\n"
        + ("dynamic_batching { max_queue_delay_microseconds: 2000 }\n" if batched else "")
        + "version_policy: { all: {} }\n"
    )
    header = f"# Written by Dayu from the tensors of {name}'s model.onnx (a config.pbtxt of yours replaces it).\n"
    cpu = (
        f'{header}name: "{name}"\nbackend: "python"\n{body}instance_group [ {{ count: 1, kind: KIND_CPU }} ]\n'
        'parameters { key: "intra_op_threads" value: { string_value: "1" } }\n'
    )
    gpu = f'{header}name: "{name}"\nplatform: "onnxruntime_onnx"\n{body}instance_group [ {{ kind: KIND_GPU }} ]\n'
    return {"config.pbtxt": cpu, "configs/gpu.pbtxt": gpu}


def _write_if_changed(text: str, target: Path) -> None:
    if target.exists() and target.read_text() == text:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(text)
    os.replace(partial, target)


def _assemble_own(target: Path, own: Path, source: Path) -> None:
    """Your models: each version's model.onnx and model.py, and their configurations (yours, or written)."""
    for model_dir in sorted(p for p in own.iterdir() if p.is_dir()):
        versions = own_versions(own, model_dir.name)
        if not versions:
            raise FileNotFoundError(f"{model_dir}: no <version>/{ONNX_FILE} (for example {model_dir}/1/{ONNX_FILE})")
        if model_dir.name in PACKAGED_MODELS:
            raise ValueError(f"{model_dir}: {model_dir.name!r} is the name of one of Dayu's models; choose another")
        for version in versions:
            version_dir = model_dir / str(version)
            _copy_if_changed(version_dir / ONNX_FILE, target / model_dir.name / str(version) / ONNX_FILE)
            _copy_if_changed(source / PYTHON_MODEL, target / model_dir.name / str(version) / "model.py")
        configs = [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]
        if (model_dir / "config.pbtxt").is_file():
            for config in configs:
                _copy_if_changed(config, target / model_dir.name / config.relative_to(model_dir))
        else:
            latest = model_dir / str(versions[-1]) / ONNX_FILE
            for relative, text in generated_configs(model_dir.name, latest).items():
                _write_if_changed(text, target / model_dir.name / relative)


def assemble(target: Path, source: Path = SOURCE, own: Path | None = None) -> Path:
    """Builds the servable repository in `target` (which may be `source` itself) from Dayu's models and
    your own (`own`), and returns it. Copies only what changed, so assembling before every start is cheap."""
    models = sorted(path for path in source.iterdir() if path.is_dir() and (path / "config.pbtxt").is_file())
    if not models:
        raise FileNotFoundError(f"no model (a directory with config.pbtxt) in {source}")
    for model_dir in models:
        require_model(model_dir.name)
        for config in [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]:
            _copy_if_changed(config, target / config.relative_to(source))
        version_dir = target / model_dir.name / VERSION
        _copy_if_changed(source / PYTHON_MODEL, version_dir / "model.py")
        with model_file(model_dir.name) as onnx_file:
            _copy_if_changed(onnx_file, version_dir / "model.onnx")
    if own is not None:
        _assemble_own(target, own, source)
    return target
