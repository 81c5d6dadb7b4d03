"""The Triton model repository, assembled from triton_models/ and the installed packages."""

from __future__ import annotations

from pathlib import Path

from dayu.processor.repository import assemble


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
