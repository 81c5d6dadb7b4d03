"""Compute that changes during an experiment, for part of the run: a process hogging a core beside the
mesh (any mode: what an operator's other work does to a node), or a node's CPU quota cut (the cluster
of real nodes: "the edge got slower"). Each is applied at its window's start and undone at its end,
counted from when the mesh's bandwidth traces started, and undone whatever way the run ends."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

from dayu.reactions import Change
from dayu.runtime.errors import InvalidArgument

# A busy loop in a process of its own: one core's worth of work the mesh competes with, whatever it runs.
# It ends with the process that started it (whose pid it is given: the parent it sees changes), should
# that be killed before undoing it.
HOG = "import os, sys\nwhile os.getppid() == int(sys.argv[1]):\n    for _ in range(100_000):\n        pass\n"
_WINDOW = re.compile(r"^(?P<start>\d+(\.\d*)?)-(?P<end>\d+(\.\d*)?)$")
_CUT = re.compile(r"^(?P<node>[^:=@]+):(?P<cores>\d+(\.\d*)?)@(?P<window>.+)$")


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float

    @classmethod
    def parse(cls, text: str, field: str) -> Window:
        found = _WINDOW.match(text.strip())
        if not found or float(found["end"]) <= float(found["start"]):
            raise InvalidArgument(field, f"START-END in seconds with START < END (e.g. 20-40), got {text!r}")
        return cls(float(found["start"]), float(found["end"]))


class ComputeChange(Protocol):
    window: Window

    def describe(self) -> str: ...
    def apply(self, mesh: Any) -> None: ...
    def undo(self, mesh: Any) -> None: ...


@dataclass(eq=False)  # each change is itself: two of the same window are two changes
class CpuHog:
    """A process spinning on one core from the window's start to its end."""

    window: Window
    process: subprocess.Popen[bytes] | None = None

    def describe(self) -> str:
        return "CPU hog"

    def apply(self, mesh: Any) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", HOG, str(os.getpid())])

    def undo(self, mesh: Any) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@dataclass(eq=False)
class QuotaCut:
    """A cluster node's CPU quota cut to `cores` for the window, then back to the mesh file's."""

    window: Window
    node: str
    cores: float

    @classmethod
    def parse(cls, text: str, field: str) -> QuotaCut:
        found = _CUT.match(text.strip())
        if not found or float(found["cores"]) <= 0:
            raise InvalidArgument(field, f"NODE:CORES@START-END with CORES > 0 (e.g. cloud:0.5@20-40), got {text!r}")
        return cls(Window.parse(found["window"], field), found["node"], float(found["cores"]))

    def describe(self) -> str:
        return f"{self.node} cut to {self.cores:g} cores"

    def check(self, config: Any, field: str) -> None:
        """Refuses a node the mesh does not have, or one whose quota a CPU trace already drives."""
        if self.node not in config.nodes:
            raise InvalidArgument(field, f"one of the nodes {sorted(config.nodes)}, got {self.node!r}")
        if config.nodes[self.node].resources.cpu_trace is not None:
            raise InvalidArgument(field, f"a node without resources.cpu_trace (it drives {self.node}'s quota)")

    def apply(self, mesh: Any) -> None:
        mesh.cgroups[self.node].set_cpus(self.cores)

    def undo(self, mesh: Any) -> None:
        mesh.cgroups[self.node].set_cpus(mesh.config.nodes[self.node].resources.cpus)


def changes_of(compute: list[ComputeChange]) -> list[Change]:
    """The moments the compute changes, as reactions.recoveries counts them."""
    found = []
    for change in compute:
        found.append(Change(change.window.start_s, f"{change.describe()} from here"))
        found.append(Change(change.window.end_s, f"{change.describe()} ends"))
    return found


async def play(compute: list[ComputeChange], mesh: Any, poll_s: float = 0.05) -> None:
    """Applies each change over its window, counted from the mesh's `traces_started_at` (wall clock),
    until cancelled; what was applied is undone when its window ends, and at once when cancelled."""
    # Set while the mesh starts; the modes have no event for it.
    while getattr(mesh, "traces_started_at", None) is None:  # noqa: ASYNC110
        await asyncio.sleep(poll_s)
    origin = mesh.traces_started_at
    steps = sorted(
        [(c.window.start_s, 1, c) for c in compute] + [(c.window.end_s, 0, c) for c in compute],
        key=lambda step: (step[0], step[1]),  # an end before a start at the same moment
    )
    applied: list[ComputeChange] = []
    try:
        for at_s, starts, change in steps:
            await asyncio.sleep(max(0.0, origin + at_s - time.time()))
            if starts:
                change.apply(mesh)
                applied.append(change)
            elif change in applied:
                change.undo(mesh)
                applied.remove(change)
    finally:
        for change in applied:
            change.undo(mesh)
