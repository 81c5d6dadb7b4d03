"""The TypeScript client (gen/ts, npm package @dayu/client) against a running mesh.

Installs the package's pinned dependencies with `npm ci` (unless gen/ts/node_modules is already
up to date with the lock file), compiles it and its example with the pinned tsc, then runs the
example (gen/ts/examples/dayu-example.ts) against the `mesh` fixture over real gRPC and checks
the JSON object it prints last. Needs Node.js >= 20 and npm on PATH: a missing toolchain fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gen" / "ts"
EXAMPLE = PACKAGE / "dist" / "examples" / "dayu-example.js"
NODE_MAJOR = 20  # gen/ts/package.json "engines"; @connectrpc/connect-node 2.1 and protoc-gen-es 2.13 need it
INSTALL_HINT = (
    "the TypeScript client needs Node.js >= 20 with npm: install them (NodeSource's nodejs 20+, which "
    "bundles npm, or your distribution's nodejs and npm where they are 20+; Debian 12's nodejs 18 is too old)"
)


def _toolchain() -> tuple[str, str]:
    node, npm = shutil.which("node") or shutil.which("nodejs"), shutil.which("npm")
    if not node or not npm:
        pytest.fail(f"{'node' if not node else 'npm'} not found on PATH: {INSTALL_HINT}")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < NODE_MAJOR:
        pytest.fail(f"node {version} is too old: {INSTALL_HINT}")
    return node, npm


def _run(cmd: list[str], cwd: Path, timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    return result, time.monotonic() - start


@pytest.fixture(scope="module")
def example() -> list[str]:
    """The compiled example, after `npm ci` (when needed) and `tsc`; its command line, without arguments."""
    node, npm = _toolchain()
    installed = PACKAGE / "node_modules" / ".package-lock.json"  # written by npm ci / npm install
    lock = PACKAGE / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        result, took = _run([npm, "ci", "--no-audit", "--no-fund"], PACKAGE, timeout=240)
        assert result.returncode == 0, f"npm ci failed in gen/ts:\n{result.stdout}\n{result.stderr}"
        print(f"npm ci: {took:.1f} s", file=sys.stderr)
    tsc = PACKAGE / "node_modules" / "typescript" / "bin" / "tsc"
    result, took = _run([node, str(tsc), "-p", "."], PACKAGE, timeout=120)
    assert result.returncode == 0, f"tsc failed in gen/ts:\n{result.stdout}\n{result.stderr}"
    print(f"tsc: {took:.1f} s", file=sys.stderr)
    return [node, str(EXAMPLE)]


def _last_json(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "the example printed nothing"
    return json.loads(lines[-1])


@pytest.mark.timeout(360)
def test_ts_example_against_mesh(mesh: Any, example: list[str]) -> None:
    args = ["--backend", mesh.backend, "--scheduler", mesh.scheduler, "--stream", mesh.stream, "--watch-seconds", "2"]
    if mesh.tls is not None:
        args += ["--ca", str(mesh.tls.ca), "--cert", str(mesh.tls.cert), "--key", str(mesh.tls.key)]
    result, took = _run([*example, *args], PACKAGE, timeout=60)
    print(f"example: {took:.1f} s\n{result.stdout}", file=sys.stderr)
    assert result.returncode == 0, f"the example failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    summary = _last_json(result.stdout)
    assert "plates" in summary["pipelines"]
    assert mesh.stream in summary["stats_streams"]
    assert summary["policy"] == "fixed"
    assert summary["decisions"] >= 1
    assert summary["last_version"] >= 1


@pytest.mark.timeout(360)
def test_ts_example_reports_errors(example: list[str]) -> None:
    """Nothing listening: a non-zero exit and a message naming the gRPC status, no JSON line."""
    args = ["--backend", "127.0.0.1:1", "--scheduler", "127.0.0.1:1", "--stream", "cam-1", "--watch-seconds", "1"]
    result, _ = _run([*example, *args], PACKAGE, timeout=60)
    assert result.returncode == 1, result
    assert "dayu-example: error: Unavailable" in result.stderr
    assert not result.stdout.rstrip().endswith("}")
    usage, _ = _run([*example, "--backend", "127.0.0.1:1"], PACKAGE, timeout=60)
    assert usage.returncode == 2 and "usage: dayu-example" in usage.stderr
