"""The processor's queue and workers, without gRPC."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace

from dayu.processor.kinds import ClosableRunner, StageRunner
from dayu.runtime.clock import timestamp
from dayu.runtime.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from dayu.runtime.logs import get_logger
from dayu.runtime.tracing import NO_TRACING, Tracing, task_attributes
from dayu.runtime.validation import validate_task
from dayu.v1 import task_pb2

log = get_logger(__name__)


@dataclass
class _Job:
    task: task_pb2.Task
    stage: task_pb2.TaskStage
    queued_at: float
    context: otel_context.Context  # the caller's trace context: the job's spans are its children
    waiting: trace.Span  # the queue wait, ended when a worker takes the job
    done: asyncio.Future[task_pb2.Task] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ProcessorCore:
    """Runs stages of one processor kind: a bounded queue (full means RESOURCE_EXHAUSTED, so callers
    can go elsewhere) drained by a fixed number of workers, which wait without spinning."""

    def __init__(
        self,
        node: str,
        kind: str,
        runner: StageRunner,
        workers: int,
        queue_capacity: int,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.node, self.kind, self.runner, self.tracing = node, kind, runner, tracing
        self.workers = workers
        self.queue_capacity = queue_capacity
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_capacity)
        self._tasks: list[asyncio.Task[None]] = []
        self.processed = 0
        self.failed = 0

    @property
    def queue_length(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"{self.kind}-worker-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if isinstance(self.runner, ClosableRunner):
            await self.runner.aclose()

    async def process(self, task: task_pb2.Task, stage_name: str) -> task_pb2.Task:
        """Runs `stage_name` of `task` and returns the task with the stage filled in. A failure of
        the stage itself is reported in the returned task (state FAILED, error), not raised."""
        validate_task(task)
        stages = {s.spec.name: s for s in task.dag.stages}
        if stage_name not in stages:
            raise InvalidArgument("stage", f"a stage of the task's DAG {sorted(stages)}, got {stage_name!r}")
        stage = stages[stage_name]
        if stage.spec.processor != self.kind:
            raise FailedPrecondition(
                f"stage {stage_name!r} needs processor {stage.spec.processor!r}; this one runs {self.kind!r}"
            )
        attributes = task_attributes(task.stream_id, task.root_id, stage_name)
        job = _Job(
            task, stage, time.time(), otel_context.get_current(), self.tracing.start("processor.queue", **attributes)
        )
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            job.waiting.set_status(trace.StatusCode.ERROR, "queue full")
            job.waiting.end()
            raise ResourceExhausted(f"{self.kind} queue on {self.node} is full ({self.queue_capacity} tasks)") from None
        return await job.done

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._run(job)
            finally:
                self._queue.task_done()

    async def _run(self, job: _Job) -> None:
        stage = job.stage
        started = time.time()
        job.waiting.end()
        attributes = task_attributes(job.task.stream_id, job.task.root_id, stage.spec.name)
        try:
            with self.tracing.span("processor.inference", parent=job.context, **attributes):
                await self.runner.run(job.task, stage)
            stage.state = task_pb2.STAGE_STATE_DONE
            self.processed += 1
        except Exception as error:  # the task is reported with the reason, never lost
            log.warning("stage failed", stage=stage.spec.name, task_id=job.task.task_id, error=str(error))
            del stage.results[:]
            stage.state = task_pb2.STAGE_STATE_FAILED
            stage.error = f"{type(error).__name__}: {error}"
            self.failed += 1
        finished = time.time()
        stage.executed_on = self.node
        timings = stage.timings
        timings.queued_at.CopyFrom(timestamp(job.queued_at))
        timings.started_at.CopyFrom(timestamp(started))
        timings.finished_at.CopyFrom(timestamp(finished))
        timings.queue_s = started - job.queued_at
        timings.process_s = finished - started
        if not job.done.cancelled():
            job.done.set_result(job.task)
