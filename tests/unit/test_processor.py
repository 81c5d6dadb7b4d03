from __future__ import annotations

import asyncio

import pytest

from dayu.processor.core import ProcessorCore
from dayu.processor.kinds import PROCESSORS
from dayu.runtime.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from dayu.v1 import task_pb2

from conftest import make_task


class Failing:
    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        stage.results.add(frame_index=0)
        raise RuntimeError("model crashed")


async def test_full_queue_is_resource_exhausted_and_failures_are_recorded() -> None:
    slow = ProcessorCore("edge-1", "noop", PROCESSORS.create("noop", {"delay_s": 0.2}), workers=1, queue_capacity=1)
    await slow.start()
    try:
        first = asyncio.create_task(slow.process(make_task(), "detect"))
        await asyncio.sleep(0.05)  # taken by the worker
        second = asyncio.create_task(slow.process(make_task(), "detect"))  # waits in the queue
        await asyncio.sleep(0.01)
        with pytest.raises(ResourceExhausted):
            await slow.process(make_task(), "detect")
        done = await asyncio.gather(first, second)
        assert all(t.dag.stages[0].state == task_pb2.STAGE_STATE_DONE for t in done)
        assert done[1].dag.stages[0].timings.queue_s > 0.1
    finally:
        await slow.stop()

    failing = ProcessorCore("edge-1", "noop", Failing(), workers=1, queue_capacity=4)
    await failing.start()
    try:
        stage = (await failing.process(make_task(), "detect")).dag.stages[0]
        assert stage.state == task_pb2.STAGE_STATE_FAILED
        assert stage.error == "RuntimeError: model crashed" and not stage.results
        assert failing.failed == 1
        with pytest.raises(InvalidArgument, match=r"^stage"):
            await failing.process(make_task(), "nope")
        other = make_task()
        other.dag.stages[0].spec.processor = "detector"
        with pytest.raises(FailedPrecondition):
            await failing.process(other, "detect")
    finally:
        await failing.stop()


class Gated:
    """Fills in a stage once `gate` is set; counts its runs."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.runs = 0

    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        self.runs += 1
        await self.gate.wait()
        stage.results.add(frame_index=7)


async def test_retries_of_a_queued_or_running_stage_share_its_one_run() -> None:
    runner = Gated()
    core = ProcessorCore("edge-1", "noop", runner, workers=1, queue_capacity=4)
    await core.start()
    try:
        task = make_task()
        given_up = asyncio.create_task(core.process(task, "detect"))
        await asyncio.sleep(0.01)  # running
        retry = make_task()
        retry.CopyFrom(task)  # the same request, sent again: another message with the same task id
        second = asyncio.create_task(core.process(retry, "detect"))
        third = asyncio.create_task(core.process(task, "detect"))
        retry_given_up = asyncio.create_task(core.process(task, "detect"))
        await asyncio.sleep(0.01)
        # Callers whose deadline passed must not cancel the run the others wait for.
        given_up.cancel()
        retry_given_up.cancel()
        await asyncio.sleep(0.01)
        runner.gate.set()
        done = await asyncio.wait_for(asyncio.gather(second, third), timeout=5)
        assert runner.runs == 1 and core.processed == 1 and core.deduplicated == 3
        for answered in done:
            stage = answered.dag.stages[0]
            assert stage.state == task_pb2.STAGE_STATE_DONE and [r.frame_index for r in stage.results] == [7]
            assert stage.executed_on == "edge-1" and stage.timings.process_s > 0
        assert done[0] is retry and done[0].dag.stages[0] == done[1].dag.stages[0]
        assert (await asyncio.wait_for(core.process(make_task(), "detect"), timeout=5)).dag.stages[0].results
    finally:
        await core.stop()


async def test_a_finished_stage_is_replayed_and_the_recent_ones_are_bounded() -> None:
    runner = Gated()
    runner.gate.set()
    core = ProcessorCore("edge-1", "noop", runner, workers=1, queue_capacity=4, recent_results=2)
    await core.start()
    try:
        tasks = [make_task() for _ in range(3)]
        answered = await core.process(tasks[0], "detect")
        retry = make_task()
        retry.CopyFrom(tasks[0])
        del retry.dag.stages[0].results[:]
        replayed = await core.process(retry, "detect")
        assert runner.runs == 1 and core.deduplicated == 1
        assert replayed.dag.stages[0] == answered.dag.stages[0]
        assert replayed.segment.frames == tasks[0].segment.frames  # the caller's own task, frames included
        # Least recently used goes first: tasks[0], answered again after tasks[1] ran, outlives it.
        await core.process(tasks[1], "detect")
        await core.process(tasks[0], "detect")
        await core.process(tasks[2], "detect")
        assert runner.runs == 3 and core.deduplicated == 2
        await core.process(tasks[0], "detect")
        assert runner.runs == 3 and core.deduplicated == 3
        await core.process(tasks[1], "detect")  # evicted: runs again
        assert runner.runs == 4 and core.deduplicated == 3
        with pytest.raises(InvalidArgument, match=r"^recent_results"):
            ProcessorCore("edge-1", "noop", runner, workers=1, queue_capacity=4, recent_results=0)
    finally:
        await core.stop()


async def test_a_refused_request_is_not_remembered_and_stopping_answers_waiting_callers() -> None:
    runner = Gated()
    core = ProcessorCore("edge-1", "noop", runner, workers=1, queue_capacity=1)
    await core.start()
    running = asyncio.create_task(core.process(make_task(), "detect"))
    await asyncio.sleep(0.01)  # taken by the worker
    queued = asyncio.create_task(core.process(make_task(), "detect"))
    await asyncio.sleep(0.01)
    refused = make_task()
    with pytest.raises(ResourceExhausted):
        await core.process(refused, "detect")
    runner.gate.set()
    await asyncio.gather(running, queued)
    # Tried again once there is room, it runs: had the refusal been remembered, it would wait forever.
    answered = await asyncio.wait_for(core.process(refused, "detect"), timeout=5)
    assert answered.dag.stages[0].state == task_pb2.STAGE_STATE_DONE
    assert runner.runs == 3 and core.deduplicated == 0

    runner.gate.clear()
    stuck = asyncio.create_task(core.process(make_task(), "detect"))
    await asyncio.sleep(0.01)
    await core.stop()
    with pytest.raises(Unavailable, match="stopped"):
        await stuck


class AwayThenBack:
    """A backend that is away (Triton restarting) for its first call, then runs the stage."""

    def __init__(self) -> None:
        self.calls = 0

    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        self.calls += 1
        if self.calls == 1:
            raise Unavailable("Triton at 127.0.0.1:8001: inference failed 3 times")


async def test_a_backend_that_is_away_fails_the_call_not_the_stage() -> None:
    runner = AwayThenBack()
    core = ProcessorCore("edge-1", "noop", runner, workers=1, queue_capacity=4)
    await core.start()
    task = make_task()
    with pytest.raises(Unavailable, match="Triton"):
        await core.process(task, "detect")
    assert core.failed == 0  # nothing recorded against the stage: the caller waits or goes elsewhere
    done = await core.process(task, "detect")  # the retry runs it again (not a replay of the error)
    (detect,) = [s for s in done.dag.stages if s.spec.name == "detect"]
    assert detect.state == task_pb2.STAGE_STATE_DONE and runner.calls == 2
    await core.stop()
