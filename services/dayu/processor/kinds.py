"""Processor kinds, selected by name (the `processor` of a pipeline stage) with typed parameters.

A kind fills in one stage of a task: its per-frame results and scenario. Inference kinds (the
detector and second-stage models served by Triton) register here the same way."""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

import pydantic

from dayu.runtime.registry import Registry
from dayu.v1 import task_pb2


class StageRunner(Protocol):
    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        """Fills stage.results and stage.scenario for the task's segment; raises on failure."""


@runtime_checkable
class ClosableRunner(Protocol):
    async def aclose(self) -> None:
        """Releases what the runner holds open (a connection to Triton); called when the processor stops."""


PROCESSORS: Registry[type[StageRunner]] = Registry("processor")


class NoopParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    delay_s: float = pydantic.Field(0.0, ge=0, le=60, description="time each stage takes, to emulate work")


@PROCESSORS.register("noop", params=NoopParams)
class NoopRunner:
    """Finds nothing, after an optional fixed delay: measures the mesh's own cost, and tests drains."""

    def __init__(self, params: NoopParams) -> None:
        self.delay_s = params.delay_s

    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        frames = len(task.segment.frame_indices)
        for index in task.segment.frame_indices:
            stage.results.add(frame_index=index)
        stage.scenario.object_counts.extend([0] * frames)
        stage.scenario.mean_object_sizes.extend([0.0] * frames)


# The inference kinds register themselves on import; importing them here keeps every kind in PROCESSORS
# wherever the registry is used. Last, since they import PROCESSORS from this module.
from dayu.processor import models  # noqa: E402, F401
