"""A probe of an event loop's responsiveness. A coroutine that holds the loop (SQLite on the loop, a
YAML parse, a big encode) is one callback that runs long; this probe times every callback the loop
runs by the CPU time its thread spent in it (`worst_held_s`, and which callback that was).

Wall time would not do: on a busy machine (other processes, Triton's threads) a callback also waits
for a CPU or for the GIL, and the loop falls behind with many short callbacks queued, none of which
held it. The probe also measures how late a short sleep wakes up (`worst_s`, the loop's lag for
whatever reason), and a watchdog thread records where the threads were while the loop was late, so
that a report says why. A callback that blocks without using the CPU (a sleep, a wait on a lock or a
disk) shows there, in the late wake-ups and the stacks, not in `worst_held_s`."""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

IDLE = {"wait", "select", "poll", "sleep", "_wait_for_tstate_lock", "get", "_do_waitpid", "_blocking", "_worker", "run"}
NOTED_S = 0.005  # callbacks shorter than this are not worth naming


def _where(frame: object, depth: int = 6) -> str:
    stack = traceback.extract_stack(frame)[-depth:]  # type: ignore[arg-type]
    return " <- ".join(f"{f.name} ({f.filename.rsplit('/', 2)[-1]}:{f.lineno})" for f in reversed(stack))


def _name(handle: asyncio.Handle) -> str:
    """A task's step by its coroutine and where it stopped (the await after the work), another
    callback by its repr."""
    task = getattr(handle._callback, "__self__", None)  # a step or wake-up of a Task
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        where = f" at {frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno}" if frame else ""
        return f"a step of {getattr(coro, '__qualname__', coro)}{where}"
    return repr(handle)[:200]


@dataclass
class LoopLag:
    """Run it beside the work (`async with LoopLag() as lag:`), then read lag.worst_held_s (the CPU time
    of the longest callback on the loop), lag.worst_callback (what it was), lag.worst_s (the latest
    wake-up, for whatever reason) and lag.culprits."""

    interval_s: float = 0.005
    watch_after_s: float = 0.030  # the watchdog looks at the threads once the loop is this late
    lags_s: list[float] = field(default_factory=list)
    worst_held_s: float = 0.0
    worst_callback: str = ""
    culprits: Counter[str] = field(default_factory=Counter)
    _task: asyncio.Task[None] | None = None
    _beat: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _run: Callable[[asyncio.Handle], None] | None = None
    worst_collection: tuple[float, int] = (0.0, 0)  # the longest garbage collection: CPU seconds, generation
    _collecting: float = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        """A collection holds the GIL, whichever thread it runs on: the loop waits it out."""
        if phase == "start":
            self._collecting = time.thread_time()
        else:
            self.worst_collection = max(
                self.worst_collection, (time.thread_time() - self._collecting, info["generation"])
            )

    async def _measure(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            self._beat = time.monotonic()
            await asyncio.sleep(self.interval_s)
            self.lags_s.append(max(0.0, loop.time() - asked - self.interval_s))

    def _time_callbacks(self, loop_thread: int) -> None:
        """Wraps asyncio's Handle._run (every callback, task step and timer of a pure-Python loop runs
        through it) to take the CPU time of each one on the loop's thread."""
        run = self._run = asyncio.Handle._run
        probe = self

        def timed_run(handle: asyncio.Handle) -> None:
            if threading.get_ident() != loop_thread:
                return run(handle)
            start = time.thread_time()
            try:
                return run(handle)
            finally:
                spent = time.thread_time() - start
                if spent > probe.worst_held_s:
                    probe.worst_held_s = spent
                    if spent >= NOTED_S:
                        probe.worst_callback = _name(handle)

        asyncio.Handle._run = timed_run  # type: ignore[method-assign]

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
        self._time_callbacks(threading.get_ident())
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._measure())
        threading.Thread(target=self._watch, args=(threading.get_ident(),), daemon=True).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._run is not None
        asyncio.Handle._run = self._run  # type: ignore[method-assign]
        gc.callbacks.remove(self._on_gc)
        self._stop.set()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    @property
    def worst_s(self) -> float:
        return max(self.lags_s, default=0.0)

    def summary(self) -> str:
        p99 = statistics.quantiles(self.lags_s, n=100)[98] if len(self.lags_s) >= 100 else self.worst_s
        where = "".join(f"\n  {count} x {stack}" for stack, count in self.culprits.most_common(10))
        return (
            f"the longest callback held the loop {self.worst_held_s * 1000:.1f} ms of CPU"
            f"{f' ({self.worst_callback})' if self.worst_callback else ''}; "
            f"{len(self.lags_s)} wake-ups, late by {self.worst_s * 1000:.1f} ms at worst, p99 {p99 * 1000:.1f} ms, "
            f"{sum(lag > 0.05 for lag in self.lags_s)} over 50 ms{' (the threads then:)' if where else ''}{where}"
            f"\n the longest garbage collection took {self.worst_collection[0] * 1000:.1f} ms of CPU "
            f"(generation {self.worst_collection[1]})"
        )
