"""How a policy reacted to a run's changes: the changes of a bandwidth trace, the recovery after each,
and reversals of the configuration's knobs; and the compute changes `dayu experiment` plays."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from dayu.compute_changes import CpuHog, QuotaCut, Window, changes_of, play
from dayu.controller.links import BandwidthTrace
from dayu.reactions import Change, recoveries, reversals, trace_changes
from dayu.runtime.errors import InvalidArgument


def trace(tmp_path: Path, text: str) -> BandwidthTrace:
    (tmp_path / "trace.txt").write_text(text)
    return BandwidthTrace.load(tmp_path / "trace.txt")


def task(made_s: float, latency_s: float, stream: str = "cam", outcome: str = "delivered", **knobs: Any) -> dict:
    return {
        "made_s": made_s,
        "stream_id": stream,
        "latency_s": latency_s,
        "latency_budget_s": 1.0,
        "outcome": outcome,
        "decision_version": knobs.get("version", 1),
        "height": knobs.get("height", 720),
        "fps": knobs.get("fps", 2.0),
        "frames_per_segment": knobs.get("frames", 2),
    }


def test_trace_changes_are_steps_by_half_again_or_more_repeats_included(tmp_path: Path) -> None:
    # 20, 18 (not a change: under 1.5x), 2, then the trace repeats every 30 s.
    steps = trace(tmp_path, "0 20\n10 18\n20 2\n")
    assert steps.steps(65) == [10, 20, 30, 40, 50, 60]
    changes = trace_changes(steps, 65)
    assert [(c.at_s, c.what) for c in changes] == [
        (20, "18 -> 2 Mbit/s"),
        (30, "2 -> 20 Mbit/s"),
        (50, "18 -> 2 Mbit/s"),
        (60, "2 -> 20 Mbit/s"),
    ]


def test_a_slow_ramp_is_a_change_each_time_it_has_gone_half_again_as_far(tmp_path: Path) -> None:
    ramp = trace(tmp_path, "".join(f"{t} {20 - t}\n" for t in range(20)) + "20 1\n")
    # 20 down to 1 by 1 Mbit/s a second: the first change at 7 (13 is 1.5x under 20; 14, at 6, was not
    # yet), the next 1.5x under 13, and so on.
    changes = trace_changes(ramp, 20.5)
    assert [c.at_s for c in changes] == [7, 12, 15, 17, 18, 19]
    assert changes[0].what == "14 -> 13 Mbit/s"


def test_an_outage_to_zero_is_a_change_both_ways(tmp_path: Path) -> None:
    outage = trace(tmp_path, "0 20\n18 0\n19 20\n")
    assert [c.what for c in trace_changes(outage, 19.5)] == ["20 -> 0 Mbit/s", "0 -> 20 Mbit/s"]


def test_recovery_is_when_every_stream_was_within_budget_for_good() -> None:
    change, later = Change(10.0, "drop"), Change(30.0, "back")
    tasks = [
        task(9.0, 3.0),  # before the change: not counted here
        task(10.5, 2.0),
        task(11.5, 0.9),
        task(12.5, 1.5),  # late again: recovery is from the next one on
        task(13.5, 0.8),
        task(14.5, 0.7),
        task(11.0, 0.5, stream="other"),  # on time from the start
        task(30.5, 0.5),
        task(31.5, 2.0, outcome="dropped"),  # the window's last task of the stream: not back
    ]
    first, second = recoveries(tasks, [later, change], 40.0)
    assert first.change == change and first.seconds == 3.5 and first.late == 2 and first.made == 6
    assert second.change == later and second.seconds is None and second.late == 1


def test_no_changes_no_recoveries_and_changes_at_one_moment_are_one() -> None:
    assert recoveries([task(1.0, 3.0)], [], 5.0) == []
    (both,) = recoveries([task(3.0, 0.5)], [Change(2.0, "20 -> 2 Mbit/s"), Change(2.0, "CPU hog ends")], 5.0)
    assert both.change == Change(2.0, "20 -> 2 Mbit/s; CPU hog ends") and both.seconds == 0.0


def test_recovery_is_zero_when_nothing_was_late() -> None:
    (recovered,) = recoveries([task(1.0, 0.2), task(2.0, 0.3)], [Change(0.5, "drop")], 5.0)
    assert recovered.seconds == 0.0 and recovered.late == 0 and recovered.made == 2


def test_reversals_count_a_knob_moved_back_within_ten_seconds() -> None:
    tasks = [
        task(0.0, 0.1, version=1, height=720),
        task(2.0, 0.1, version=2, height=540),  # down
        task(4.0, 0.1, version=3, height=720),  # back up within 10 s: a reversal
        task(5.0, 0.1, version=3, height=720),  # the same decision: no move
        task(30.0, 0.1, version=4, height=540),  # down, 26 s later: not a reversal
        task(31.0, 0.1, version=5, height=540, fps=1.0),  # another knob
        task(50.0, 0.1, version=6, height=540, fps=2.0),  # back, but 19 s later
        task(1.0, 0.1, stream="other", version=1, frames=2),
        task(3.0, 0.1, stream="other", version=2, frames=1),
        task(6.0, 0.1, stream="other", version=3, frames=2),  # a reversal of the other stream
    ]
    assert reversals(tasks) == 2
    assert reversals(tasks, within_s=30) == 4


def test_windows_and_cuts_are_parsed_or_refused_naming_the_flag() -> None:
    assert Window.parse("20-40.5", "--cpu-hog") == Window(20.0, 40.5)
    cut = QuotaCut.parse("edge-1:0.25@5-15", "--cpu-cut")
    assert (cut.node, cut.cores, cut.window) == ("edge-1", 0.25, Window(5.0, 15.0))
    for bad in ("40-20", "20", "a-b", "-5-10"):
        with pytest.raises(InvalidArgument, match="--cpu-hog"):
            Window.parse(bad, "--cpu-hog")
    for bad in ("edge-1@5-15", "edge-1:0@5-15", "edge-1:x@5-15", ":1@5-15"):
        with pytest.raises(InvalidArgument, match="--cpu-cut"):
            QuotaCut.parse(bad, "--cpu-cut")
    assert [c.what for c in changes_of([CpuHog(Window(2, 4))])] == ["CPU hog from here", "CPU hog ends"]


class FakeMesh:
    """Only what play reads: when the traces started (a unit test of play's timing)."""

    def __init__(self) -> None:
        self.traces_started_at: float | None = None


def test_play_runs_a_real_hog_over_its_window_and_kills_it_when_cancelled() -> None:
    async def scenario() -> None:
        mesh, hog, never = FakeMesh(), CpuHog(Window(0.2, 0.6)), CpuHog(Window(0.3, 60))
        playing = asyncio.create_task(play([hog, never], mesh, poll_s=0.01))
        await asyncio.sleep(0.1)
        assert hog.process is None  # the traces have not started
        mesh.traces_started_at = time.time()
        await asyncio.sleep(0.45)
        assert hog.process is not None and never.process is not None
        pids = [hog.process.pid, never.process.pid]
        assert all(psutil.Process(pid).cpu_percent(interval=0.1) > 20 for pid in pids)  # it spins
        await asyncio.sleep(0.3)
        assert hog.process is None and not psutil.pid_exists(pids[0])  # its window ended
        playing.cancel()
        await asyncio.gather(playing, return_exceptions=True)
        assert never.process is None and not psutil.pid_exists(pids[1])  # undone when cancelled

    asyncio.run(scenario())


def test_a_hog_ends_with_the_process_that_started_it() -> None:
    """Should `dayu experiment` be killed before it undoes the hog, the hog does not spin on."""
    import subprocess
    import sys

    starter = "import subprocess, sys, time\nfrom dayu.compute_changes import HOG\n"
    starter += "import os\nhog = subprocess.Popen([sys.executable, '-c', HOG, str(os.getpid())])\n"
    starter += "print(hog.pid, flush=True)\ntime.sleep(60)\n"
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    hog = psutil.Process(int(parent.stdout.readline()))
    assert hog.is_running()
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and hog.is_running() and hog.status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.05)  # orphaned, it is reaped by whoever adopts it: gone or a zombie once it ends
    assert not hog.is_running() or hog.status() == psutil.STATUS_ZOMBIE, "the hog spins on"
