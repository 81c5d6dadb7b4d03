"""A live mesh for the generated clients' examples (Go, TypeScript, Python dataclasses): `dayu up` in a
process of its own, on a light mesh (noop stages, a synthetic camera), for the whole session."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STREAM = "cam-1"
UP_LINE = re.compile(r"scheduler (?P<scheduler>\S+), backend (?P<backend>\S+)\n")


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class LiveMesh:
    backend: str
    scheduler: str
    stream: str
    tls: Tls | None = None


def light_mesh(folder: Path) -> Path:
    """A cloud and an edge node with noop processors, one synthetic camera on a noop pipeline, next to
    every pipeline Dayu ships (the examples list them)."""
    pipelines = yaml.safe_load((ROOT / "configs" / "pipelines.yaml").read_text())
    stage = {"name": "detect", "processor": "noop", "input_type": "DATA_TYPE_FRAMES", "output_type": "DATA_TYPE_BOXES"}
    pipelines["pipelines"].append({"name": "noop", "stages": [stage]})
    (folder / "pipelines.yaml").write_text(yaml.safe_dump(pipelines))
    mesh = {
        "cloud_node": "cloud",
        "nodes": {"cloud": {"processors": ["noop"]}, "edge-1": {"processors": ["noop"]}},
        "links": [{"between": ["edge-1", "cloud"], "bandwidth_mbps": 50}],
        "pipelines_file": "pipelines.yaml",
        "sources": [{"source_id": "street", "kind": "synthetic", "params": {"width": 320, "height": 180, "fps": 5}}],
        "streams": [
            {
                "stream_id": STREAM,
                "source_id": "street",
                "node": "edge-1",
                "pipeline": "noop",
                "latency_budget_s": 1.0,
                "max_configuration": {"width": 320, "height": 180, "fps": 5, "quality": 80, "frames_per_segment": 1},
                "policy": {"name": "latency_budget", "params": {"offload": False}},
            }
        ],
    }
    path = folder / "mesh.yaml"
    path.write_text(yaml.safe_dump(mesh))
    return path


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveMesh]:
    folder = tmp_path_factory.mktemp("client-mesh")
    log = folder / "up.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-u", "-m", "dayu.cli", "up", "--config", str(light_mesh(folder)), "--duration", "1800"],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not (found := UP_LINE.search(log.read_text())):  # the line that names the addresses
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dayu up is not up:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield LiveMesh(found["backend"], found["scheduler"], STREAM)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def require_tool(name: str, install: str) -> str:
    """The path of a toolchain's command; a missing one fails (CI installs it; nothing is skipped)."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {install}")
    return found
