"""Component.background: supervised loops, restarted when they fail, stopped with the component."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from dayu.runtime import server
from dayu.runtime.server import Component


class Worker(Component):
    name = "worker"

    def __init__(self, failures: int) -> None:
        self.failures = failures  # runs that raise before one that waits to be cancelled
        self.runs: list[str] = []
        self.started: asyncio.Queue[str] = asyncio.Queue()

    async def loop(self, label: str) -> None:
        self.runs.append(label)
        self.started.put_nowait(label)
        if len(self.runs) <= self.failures:
            raise RuntimeError(f"run {len(self.runs)} failed")
        await asyncio.Event().wait()

    async def once(self) -> None:
        self.runs.append("once")


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "RESTART_BACKOFF_S", (0.01, 0.04))


async def started(worker: Worker, count: int) -> None:
    """Waits until the worker's loop has started `count` more times."""
    for _ in range(count):
        await asyncio.wait_for(worker.started.get(), 5)


def failures(logs: list[dict]) -> list[dict]:  # type: ignore[type-arg]
    return [entry for entry in logs if entry["event"] == "background loop failed; restarting"]


async def test_a_loop_that_raises_is_logged_and_started_again_with_a_growing_backoff() -> None:
    worker = Worker(failures=4)
    with capture_logs() as logs:
        worker.background(worker.loop, "x", name="the loop")
        await started(worker, 5)
    assert worker.runs == ["x"] * 5  # its arguments again at every run
    logged = failures(logs)
    assert [(e["component"], e["loop"], e["log_level"], e["exc_info"]) for e in logged] == [
        ("worker", "the loop", "error", True)
    ] * 4
    assert [e["restart_in_s"] for e in logged] == [0.01, 0.02, 0.04, 0.04]
    await worker.cancel_background()


async def test_the_backoff_starts_over_after_a_run_that_went_well() -> None:
    worker = Worker(failures=0)
    lasted = iter([0.0, 0.0, 0.06, 0.0])  # the third run outlasts the longest backoff before it fails

    async def flaky() -> None:
        worker.started.put_nowait("flaky")
        await asyncio.sleep(next(lasted))
        raise RuntimeError("failed")

    with capture_logs() as logs:
        worker.background(flaky)
        await started(worker, 4)
    assert [e["restart_in_s"] for e in failures(logs)][:3] == [0.01, 0.02, 0.01]
    await worker.cancel_background()


async def test_cancelling_stops_a_loop_running_or_waiting_to_restart() -> None:
    running, failing = Worker(failures=0), Worker(failures=1000)
    running.background(running.loop, "r")
    failing.background(failing.loop, "f")
    await started(running, 1)
    await started(failing, 2)
    for worker in (running, failing):
        await worker.cancel_background()
    runs = len(failing.runs)
    await asyncio.sleep(0.1)
    assert running.runs == ["r"] and len(failing.runs) == runs
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("worker:")]


async def test_a_loop_that_returns_is_done_and_not_kept() -> None:
    worker = Worker(failures=0)
    with capture_logs() as logs:
        worker.background(worker.once)
        (task,) = vars(worker)["_background_tasks"]
        await asyncio.wait_for(task, 5)
        await asyncio.sleep(0.05)  # longer than a restart's backoff
    assert not vars(worker)["_background_tasks"]
    assert worker.runs == ["once"] and not failures(logs)


async def test_a_coroutine_is_refused_since_it_cannot_run_again() -> None:
    worker = Worker(failures=0)
    work = worker.once()
    with pytest.raises(TypeError, match="coroutine function"):
        worker.background(work)  # type: ignore[arg-type]
    work.close()
