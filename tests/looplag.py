"""A probe of an event loop's responsiveness: how late a short sleep wakes up. A coroutine that holds
the loop (SQLite on the loop, a YAML parse, a big encode) shows up as one late wake-up as long as it.

A wake-up can also be late because the loop's thread waited for a CPU (a busy machine: other
processes, Triton's threads); that is not the loop's doing. So each late wake-up is also measured by
the CPU time the loop's thread spent meanwhile (`held_s`): the loop held itself that long. And a
watchdog thread records where the loop's thread was while it was late, so that a failure says why."""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

IDLE = {"wait", "select", "poll", "sleep", "_wait_for_tstate_lock", "get", "_do_waitpid", "_blocking", "_worker", "run"}


def _where(frame: object, depth: int = 6) -> str:
    stack = traceback.extract_stack(frame)[-depth:]  # type: ignore[arg-type]
    return " <- ".join(f"{f.name} ({f.filename.rsplit('/', 2)[-1]}:{f.lineno})" for f in reversed(stack))


@dataclass
class LoopLag:
    """Run it beside the work (`async with LoopLag() as lag:`), then read lag.worst_held_s (the longest
    the loop held itself), lag.worst_s (the latest wake-up, for whatever reason) and lag.culprits."""

    interval_s: float = 0.005
    watch_after_s: float = 0.030  # the watchdog looks at the threads once the loop is this late
    lags_s: list[float] = field(default_factory=list)
    held_s: list[float] = field(default_factory=list)
    culprits: Counter[str] = field(default_factory=Counter)
    _task: asyncio.Task[None] | None = None
    _beat: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    async def _measure(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked, cpu = loop.time(), time.thread_time()
            self._beat = time.monotonic()
            await asyncio.sleep(self.interval_s)
            late = max(0.0, loop.time() - asked - self.interval_s)
            self.lags_s.append(late)
            self.held_s.append(min(late, time.thread_time() - cpu))

    def _watch(self, loop_thread: int) -> None:
        seen = 0.0
        while not self._stop.wait(0.01):
            beat = self._beat
            if beat == seen or time.monotonic() - beat < self.interval_s + self.watch_after_s:
                continue
            seen = beat  # one look per late wake-up
            frames = sys._current_frames()
            if loop_thread in frames:
                self.culprits[f"loop: {_where(frames[loop_thread])}"] += 1
            for ident, frame in frames.items():  # another thread busy in Python may hold the GIL
                if ident not in (loop_thread, threading.get_ident()) and frame.f_code.co_name not in IDLE:
                    self.culprits[f"thread: {_where(frame, 4)}"] += 1

    async def __aenter__(self) -> LoopLag:
        self._beat = time.monotonic()
        self._task = asyncio.create_task(self._measure())
        threading.Thread(target=self._watch, args=(threading.get_ident(),), daemon=True).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._stop.set()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    @property
    def worst_s(self) -> float:
        return max(self.lags_s, default=0.0)

    @property
    def worst_held_s(self) -> float:
        return max(self.held_s, default=0.0)

    def summary(self) -> str:
        p99 = statistics.quantiles(self.lags_s, n=100)[98] if len(self.lags_s) >= 100 else self.worst_s
        where = "".join(f"\n  {count} x {stack}" for stack, count in self.culprits.most_common(10))
        return (
            f"{len(self.lags_s)} wake-ups: the loop held itself {self.worst_held_s * 1000:.1f} ms at worst; "
            f"late by {self.worst_s * 1000:.1f} ms at worst, p99 {p99 * 1000:.1f} ms, "
            f"{sum(lag > 0.05 for lag in self.lags_s)} over 50 ms{where}"
        )
