"""dayu.v1 kept like a public API: buf's STANDARD lint passes, nothing breaks the released contracts
(proto/dayu-v1.binpb), and a change that would break a client is caught (hack/contracts.sh, CI)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).parent / "buf"  # buf-bin, in the dev extras


def buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), "the buf CLI is missing: pip install -e '.[dev]' (buf-bin)"
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_contracts_pass_lint_and_break_nothing_released() -> None:
    for args in (("lint",), ("breaking", "--against", "proto/dayu-v1.binpb")):
        done = buf(*args)
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_change_that_would_break_a_client_is_caught(tmp_path: Path) -> None:
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    contract = tmp_path / "proto" / "dayu" / "v1" / "scheduler.proto"
    text = contract.read_text()
    assert "  uint32 page_size = 2;\n" in text
    contract.write_text(text.replace("  uint32 page_size = 2;\n", "  uint64 page_size = 2;\n", 1))
    done = buf("breaking", "--against", str(ROOT / "proto" / "dayu-v1.binpb"), cwd=tmp_path)
    assert done.returncode != 0
    assert 'changed type from "uint32" to "uint64"' in done.stdout + done.stderr
