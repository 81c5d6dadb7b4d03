"""The Triton model repository, assembled from triton_models/ and the installed packages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dayu.processor.repository import PACKAGED_MODELS, SOURCE, assemble, generated_configs, model_file


def test_the_repository_is_assembled_from_the_packages_and_kept(tmp_path: Path) -> None:
    repository = assemble(tmp_path / "models")
    for model in ("text_detection", "text_recognition"):
        cpu = (repository / model / "config.pbtxt").read_text()
        gpu = (repository / model / "configs" / "gpu.pbtxt").read_text()
        assert 'backend: "python"' in cpu and 'platform: "onnxruntime_onnx"' in gpu
        for config in (cpu, gpu):
            assert "dynamic_batching" in config and "instance_group" in config and f'name: "{model}"' in config
        assert (repository / model / "1" / "model.py").is_file()
        assert (repository / model / "1" / "model.onnx").stat().st_size > 1_000_000
    onnx = repository / "text_detection" / "1" / "model.onnx"
    before = onnx.stat().st_mtime_ns
    assemble(repository)
    assert onnx.stat().st_mtime_ns == before  # unchanged files are not copied again


TENSOR = re.compile(r'\{ name: "([^"]+)", data_type: (\w+), dims: \[ ([^\]]*) \] \}')


def tensors(config: str) -> list[tuple[str, str, str]]:
    return TENSOR.findall(config)


@pytest.mark.parametrize("model", sorted(PACKAGED_MODELS))
def test_every_configuration_of_dayus_models_has_the_onnx_files_tensors(model: str, tmp_path: Path) -> None:
    """The hand-written configurations (CPU, GPU, TensorRT) name the tensors the ONNX file has, with its
    types and shapes, as the configuration Dayu would write from the file itself (sizes the file leaves
    free may be fixed)."""
    with model_file(model) as onnx_file:
        expected = tensors(generated_configs(model, onnx_file)["config.pbtxt"])
    folder = SOURCE / model
    for config in [folder / "config.pbtxt", *sorted((folder / "configs").glob("*.pbtxt"))]:
        text = config.read_text()
        assert f'name: "{model}"' in text
        found = tensors(text)
        assert [(name, kind) for name, kind, _ in found] == [(name, kind) for name, kind, _ in expected], config
        for (name, _, dims), (_, _, free) in zip(found, expected, strict=True):
            fixed, onnx = dims.split(", "), free.split(", ")
            # A configuration may fix a size the file leaves free (recognition's height of 48), not change one.
            assert len(fixed) == len(onnx) and all(o in ("-1", f) for f, o in zip(fixed, onnx, strict=True)), (
                config,
                name,
            )
    assert {path.name for path in (folder / "configs").glob("*.pbtxt")} == {"gpu.pbtxt", "tensorrt.pbtxt"}
