"""A processor kind of another package, end to end, as docs/plugins.md tells a user to make one: made
from the template by `dayu processor new` outside the repository, its own tests run, built and
installed with pip (offline: hatchling, its build backend, comes with Dayu's dev extras), found
through its entry point, and run as the stage of a pipeline in the embedded mesh."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from dayu.distributor.store import RecordStore
from dayu.v1 import distributor_pb2, task_pb2

KIND = "brightness"
PIPELINES = f"""
pipelines:
  - name: light
    stages:
      - {{name: light, processor: {KIND}, input_type: DATA_TYPE_FRAMES, output_type: DATA_TYPE_LABELS}}
"""


def mesh_file(folder: Path) -> Path:
    """A cloud node and an edge node, each with the plugin's kind; one synthetic camera at the edge."""
    (folder / "pipelines.yaml").write_text(PIPELINES)
    config = {
        "nodes": {"cloud": {"processors": [KIND]}, "edge-1": {"processors": [KIND]}},
        "links": [{"between": ["edge-1", "cloud"], "bandwidth_mbps": 50, "delay_ms": 5}],
        "pipelines_file": "pipelines.yaml",
        "processors": {KIND: {"params": {"dark_below": 100}}},
        "sources": [{"source_id": "street", "kind": "synthetic", "params": {"width": 320, "height": 180, "fps": 10}}],
        "streams": [
            {
                "stream_id": "cam",
                "source_id": "street",
                "node": "edge-1",
                "pipeline": "light",
                "latency_budget_s": 2.0,
                "max_configuration": {"width": 320, "height": 180, "fps": 5, "frames_per_segment": 2},
            }
        ],
    }
    path = folder / "mesh.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_a_processor_made_from_the_template_runs_as_a_stage_of_the_mesh(tmp_path: Path) -> None:
    assert importlib.util.find_spec("hatchling"), "the plugin builds offline with hatchling: pip install -e '.[dev]'"
    dayu = [sys.executable, "-m", "dayu.cli"]
    run([*dayu, "processor", "new", KIND, "--directory", str(tmp_path / KIND)], tmp_path)
    package = tmp_path / KIND
    assert (package / "pyproject.toml").exists() and (package / f"dayu_{KIND}" / "runner.py").exists()

    # Its own tests pass as made.
    assert "3 passed" in run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package)], tmp_path)

    # Built with the environment's hatchling and installed into a folder of its own, without the index.
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-deps", "--quiet"]
    run([*pip, "--target", str(site), str(package)], tmp_path, timeout=120)
    (dist_info,) = site.glob(f"dayu_{KIND}-*.dist-info")
    assert f"{KIND} = dayu_{KIND}.runner:Runner" in (dist_info / "entry_points.txt").read_text()

    # The mesh finds the kind through the entry point (importlib.metadata reads the installed metadata
    # on the path) and runs it: every task the camera made is delivered with the stage's labels.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    summary_path = tmp_path / "summary.json"
    command = [*dayu, "up", "--config", str(mesh_file(tmp_path)), "--duration", "8", "--console-port", "0"]
    run([*command, "--summary-json", str(summary_path)], tmp_path, env, timeout=90)

    summary = json.loads(summary_path.read_text())
    assert summary["unaccounted"] == 0
    assert summary["generated"] >= 2 and summary["delivered"] == summary["generated"], summary
    assert set(summary["stages"]) == {"light"}

    store = RecordStore(tmp_path / ".dayu" / "dayu-records.sqlite")
    try:
        records = list(store.scan(distributor_pb2.RecordFilter()))
    finally:
        store.close()
    assert len(records) == summary["generated"]
    for record in records:
        assert record.outcome == task_pb2.TASK_OUTCOME_DELIVERED, record.reason
        (stage,) = record.task.dag.stages
        assert stage.spec.processor == KIND and stage.state == task_pb2.STAGE_STATE_DONE, stage.error
        assert stage.executed_on in {"cloud", "edge-1"}
        assert [result.frame_index for result in stage.results] == list(record.task.segment.frame_indices)
        for result in stage.results:
            (label,) = result.detections
            brightness = float(label.text)
            assert 0 <= brightness <= 255
            assert label.label == ("dark" if brightness < 100 else "bright")
            assert (label.box.x2, label.box.y2) == (
                record.task.segment.resolution.width,
                record.task.segment.resolution.height,
            )
