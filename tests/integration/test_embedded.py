"""`dayu up` end to end: the default mesh (cloud and two edge nodes, two streams, real models on a real
tritonserver) runs, stops after --duration and accounts for every task it made."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

FREE_PORT = ("--console-port", "0")  # the console on any free port: another mesh of the suite may hold 8080


def test_dayu_up_runs_the_default_mesh_and_accounts_for_every_task(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    run = subprocess.run(
        [sys.executable, "-m", "dayu.cli", "up", "--duration", "20", "--summary-json", str(summary_path), *FREE_PORT],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "dayu: summary" in run.stdout
    # The operator's console, with the admin token `dayu up` made and kept in its working folder.
    admin = yaml.safe_load((tmp_path / ".dayu" / "tokens.yaml").read_text())["admin"][0]
    assert re.search(rf"dayu: console http://127\.0\.0\.1:\d+/#token={re.escape(admin)}", run.stdout), run.stdout
    summary = json.loads(summary_path.read_text())
    assert summary["generated"] >= 4
    assert set(summary["generated_per_stream"]) == {"cam-1", "cam-2"}
    assert summary["unaccounted"] == 0
    assert summary["delivered"] + summary["dropped"] == summary["generated"]
    assert summary["delivered"] >= 2
    assert summary["latency_s"]["p50"] > 0
    assert 0 <= summary["accuracy_f1"] <= 1
    assert set(summary["stages"]) == {"detect", "read", "colour", "merge"}
    assert summary["bytes_per_link"]["edge-1->cloud"] > 0 and summary["bytes_per_link"]["edge-2->cloud"] > 0
    assert (tmp_path / ".dayu" / "dayu-records.sqlite").exists()
    # The models ran on the tritonserver the mesh started, whose own statistics count them.
    (models,) = summary["triton"].values()
    assert models["text_detection:1"]["inferences"] >= summary["delivered"]
    assert models["text_detection:1"]["failures"] == 0 and models["text_detection:1"]["compute_ms"] > 0
    assert "triton 127.0.0.1:" in run.stdout
