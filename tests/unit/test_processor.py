from __future__ import annotations

import asyncio

import pytest

from dayu.processor.core import ProcessorCore
from dayu.processor.kinds import PROCESSORS
from dayu.runtime.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
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
