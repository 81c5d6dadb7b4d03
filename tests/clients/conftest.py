"""Fixtures of the generated clients' tests (Go, TypeScript, Python dataclasses): a live mesh (`dayu up`
in a process of its own, on a light mesh: noop stages, a synthetic camera) for the whole session, with
the operator tokens it wrote; each language's example, built once; stand-in servers with mutual TLS
and tokens. What they share is in support.py."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from clients.support import (
    LANGUAGES,
    STREAM,
    Example,
    Examples,
    LiveMesh,
    StandIns,
    light_mesh,
    mesh_tokens,
    require_tool,
    stand_ins,
)

__all__ = ["require_tool"]
# `dayu: mesh up with nodes [...], N streams; scheduler HOST:PORT, backend HOST:PORT`; a line follows
# (`dayu: console http://...#token=ADMIN  (tokens: PATH)`).
UP_LINE = re.compile(r"scheduler (?P<scheduler>\S+), backend (?P<backend>\S+)\n")


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveMesh]:
    folder = tmp_path_factory.mktemp("client-mesh")
    log = folder / "up.log"
    command = [sys.executable, "-u", "-m", "dayu.cli", "up", "--config", str(light_mesh(folder)), "--duration", "1800"]
    command += ["--console-port", "0"]  # any free port: another mesh of the suite may hold the default
    with log.open("w") as out:
        process = subprocess.Popen(
            command,
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
        # `dayu up` ran in `folder` with the default workdir, .dayu: its tokens are there.
        yield LiveMesh(found["backend"], found["scheduler"], STREAM, mesh_tokens(folder / ".dayu" / "tokens.yaml"))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Examples:
    """examples["go"], examples["ts"], examples["python"]: each built on first use. A missing
    toolchain fails the tests of its language with how to install it; nothing is skipped."""
    return Examples(tmp_path_factory.mktemp("examples"))


@pytest.fixture(params=LANGUAGES)
def example(request: pytest.FixtureRequest, examples: Examples) -> Example:
    """Each language's example in turn."""
    return examples[request.param]


@pytest.fixture
async def tls_stand_ins(tmp_path: Path) -> AsyncIterator[StandIns]:
    """Backend and scheduler stand-ins with mutual TLS (support.stand_ins)."""
    async with stand_ins(tmp_path) as served:
        yield served
