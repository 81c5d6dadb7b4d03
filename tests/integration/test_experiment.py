"""`dayu experiment` end to end on a small mesh of no-op stages: one run per policy on the same
bandwidth trace, the table, the CSV, the plots and each run's tasks over time."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import yaml

PIPELINES = """
pipelines:
  - name: one
    stages:
      - {name: detect, processor: noop, input_type: DATA_TYPE_FRAMES, output_type: DATA_TYPE_BOXES}
"""


def mesh_file(tmp_path: Path) -> Path:
    (tmp_path / "pipelines.yaml").write_text(PIPELINES)
    config = {
        "nodes": {"cloud": {"processors": ["noop"]}, "edge-1": {}},
        "links": [{"between": ["edge-1", "cloud"], "bandwidth_mbps": 20, "delay_ms": 5}],
        "pipelines_file": "pipelines.yaml",
        "processors": {"noop": {"params": {"delay_s": 0.01}}},
        "sources": [{"source_id": "street", "kind": "synthetic", "params": {"width": 320, "height": 180, "fps": 10}}],
        "streams": [
            {
                "stream_id": "cam",
                "source_id": "street",
                "node": "edge-1",
                "pipeline": "one",
                "latency_budget_s": 1.0,
                "max_configuration": {"width": 320, "height": 180, "fps": 5, "frames_per_segment": 2},
            }
        ],
    }
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_experiment_runs_each_policy_and_writes_table_csv_and_plots(tmp_path: Path) -> None:
    (tmp_path / "trace.txt").write_text("# time_s mbps\n0 20\n3 2\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dayu.cli", "experiment", "--config", str(mesh_file(tmp_path))]
    command += ["--policies", "fixed,latency_budget", "--trace", str(tmp_path / "trace.txt")]
    command += ["--duration", "6", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    # A progress bar per policy on stderr: the seconds run and the tasks so far.
    for policy in ("fixed", "latency_budget"):
        assert f"{policy}: 100%" in done.stderr and "tasks=" in done.stderr, done.stderr[-3000:]

    header = done.stdout.splitlines()[-3]
    assert "in budget" in header and "accuracy" in header and "MB sent" in header and "decide ms" in header
    with (out / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [r["policy"] for r in rows] == ["fixed", "latency_budget"]
    for r in rows:
        assert int(r["generated"]) >= 3
        assert 0 <= float(r["within_budget"]) <= 1
        assert float(r["latency_p50_s"]) > 0 and float(r["megabytes_sent"]) > 0
    for picture in ("results.png", "timeline.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / "run-latency_budget" / "tasks.csv").open() as file:
        tasks = list(csv.DictReader(file))
    assert len(tasks) >= 3
    assert [float(t["made_s"]) for t in tasks] == sorted(float(t["made_s"]) for t in tasks)
    assert all(t["outcome"] in ("delivered", "dropped") and t["stream_id"] == "cam" for t in tasks)
    assert all(t["placement"] == "detect@cloud" for t in tasks if t["outcome"] == "delivered")


def test_experiment_refuses_an_unknown_policy(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "dayu.cli", "experiment", "--config", str(mesh_file(tmp_path))]
    command += ["--policies", "fixed,telepathy", "--duration", "1", "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--policies" in done.stderr and "telepathy" in done.stderr
