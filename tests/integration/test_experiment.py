"""`dayu experiment` end to end on a small mesh of no-op stages: one run per policy on each bandwidth
trace, with a CPU hog beside the mesh for part of each run; the tables (the runs', and the recovery
after each change), the CSVs, the plots and each run's tasks over time."""

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


def test_experiment_runs_each_policy_on_each_trace_and_writes_tables_csvs_and_plots(tmp_path: Path) -> None:
    (tmp_path / "drop.txt").write_text("# time_s mbps\n0 20\n3 2\n")
    (tmp_path / "steady.txt").write_text("0 20\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dayu.cli", "experiment", "--config", str(mesh_file(tmp_path))]
    command += ["--policies", "fixed,latency_budget", "--cpu-hog", "1-4"]
    command += ["--trace", str(tmp_path / "drop.txt"), "--trace", str(tmp_path / "steady.txt")]
    command += ["--duration", "6", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # A progress bar per policy on stderr: the seconds run and the tasks so far.
    for policy in ("fixed", "latency_budget"):
        assert f"{policy}: 100%" in done.stderr and "tasks=" in done.stderr, done.stderr[-3000:]
    for title in ("in budget", "accuracy", "vs best", "back <=3s", "reversals", "MB sent", "decide ms"):
        assert title in done.stdout
    # After each trace's runs: seconds until back within budget after each change, for each policy.
    assert "back within budget, seconds after each change" in done.stdout
    assert "2 Mbit/s" in done.stdout and "CPU hog from here" in done.stdout

    with (out / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["trace"], r["policy"]) for r in rows] == [
        (f"{name}.txt, CPU hog 1-4 s", policy) for name in ("drop", "steady") for policy in ("fixed", "latency_budget")
    ]
    for r in rows:
        assert int(r["generated"]) >= 3
        assert 0 <= float(r["in_budget_of_made"]) <= float(r["within_budget"]) <= 1
        assert float(r["latency_p50_s"]) > 0 and float(r["megabytes_sent"]) > 0
        assert int(r["reversals"]) >= 0 and 0 <= float(r["back_within_3s"]) <= 1
    assert all(float(r["accuracy_vs_best"]) == 1 for r in rows if r["policy"] == "fixed" and r["accuracy_vs_best"])
    assert (out / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for trace in ("drop", "steady"):
        for picture in ("results.png", "timeline.png", "configuration.png"):
            assert (out / trace / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with (out / trace / "recovery.csv").open() as file:
            changes = list(csv.DictReader(file))
        assert [c["change"] for c in changes if "hog" in c["change"]] == ["CPU hog from here", "CPU hog ends"]
        assert all(c["fixed"] and c["latency_budget"] for c in changes)
    assert [float(c["at_s"]) for c in csv.DictReader((out / "drop" / "recovery.csv").open())][:2] == [1, 3]

    with (out / "drop" / "run-latency_budget" / "tasks.csv").open() as file:
        tasks = list(csv.DictReader(file))
    assert len(tasks) >= 3
    assert [float(t["made_s"]) for t in tasks] == sorted(float(t["made_s"]) for t in tasks)
    assert float(tasks[0]["made_s"]) > 0  # counted from when the trace started, before the first task
    assert all(t["outcome"] in ("delivered", "dropped") and t["stream_id"] == "cam" for t in tasks)
    assert all(t["placement"] == "detect@cloud" for t in tasks if t["outcome"] == "delivered")


def test_experiment_refuses_an_unknown_policy(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "dayu.cli", "experiment", "--config", str(mesh_file(tmp_path))]
    command += ["--policies", "fixed,telepathy", "--duration", "1", "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--policies" in done.stderr and "telepathy" in done.stderr


def test_experiment_refuses_a_cpu_cut_without_the_cluster_and_a_window_backwards(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "dayu.cli", "experiment", "--config", str(mesh_file(tmp_path))]
    command += ["--policies", "fixed", "--duration", "1", "--out", str(tmp_path / "out")]
    done = subprocess.run([*command, "--cpu-cut", "cloud:0.5@1-2"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--cpu-cut: --mode cluster" in done.stderr
    done = subprocess.run([*command, "--cpu-hog", "9-3"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--cpu-hog: START-END" in done.stderr and "'9-3'" in done.stderr
