from __future__ import annotations

from pathlib import Path

import pytest

from dayu.processor.service import ProcessorSettings
from dayu.runtime.config import load_settings
from dayu.runtime.errors import InvalidArgument


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_flags_beat_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path, "node: from-file\nserver: {listen: '0.0.0.0:1', shutdown_grace_s: 7}\nprocessor: {workers: 3}\n"
    )
    monkeypatch.setenv("DAYU_NODE", "from-env")
    monkeypatch.setenv("DAYU_SERVER__SHUTDOWN_GRACE_S", "5")
    settings = load_settings(ProcessorSettings, path, server={"listen": "127.0.0.1:2"})
    assert settings.node == "from-env"
    assert settings.server.listen == "127.0.0.1:2"
    assert settings.server.shutdown_grace_s == 5  # env over file, file's other keys kept
    assert settings.processor.workers == 3


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as caught:
        load_settings(ProcessorSettings, write(tmp_path, "processor: {wrokers: 2}\n"))
    assert caught.value.field == "config.processor.wrokers"


def test_bad_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as caught:
        load_settings(ProcessorSettings, write(tmp_path, "processor: {workers: 0}\n"))
    assert caught.value.field == "config.processor.workers"
    assert "greater than or equal to 1" in caught.value.expected


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="--config"):
        load_settings(ProcessorSettings, tmp_path / "absent.yaml")
