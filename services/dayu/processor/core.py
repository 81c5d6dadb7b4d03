"""The processor's queue and workers, without gRPC.

Callers retry a stage with the same task id when a call fails or times out, so a stage is run once
per (task_id, stage): a request for one that is queued or running waits for that job, and one that
finished lately gets its stored outcome."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace

from dayu.processor.kinds import ClosableRunner, StageRunner
from dayu.runtime.clock import timestamp
from dayu.runtime.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable, shown
from dayu.runtime.logs import get_logger
from dayu.runtime.metrics import Meter, working_for
from dayu.runtime.tracing import NO_TRACING, Tracing, task_attributes
from dayu.runtime.validation import validate_task
from dayu.v1 import task_pb2

log = get_logger(__name__)
RECENT_RESULTS = 256  # finished stages kept to answer retries; a retry comes within seconds

_Key = tuple[str, str]  # (task_id, stage name)


def _shared_future() -> asyncio.Future[task_pb2.TaskStage]:
    """A job's outcome, which its callers await through a shield: when every caller gave up, an
    error set on it (its backend away, the processor stopping) is taken here, not reported as lost."""
    future: asyncio.Future[task_pb2.TaskStage] = asyncio.get_running_loop().create_future()
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    return future


@dataclass
class _Job:
    task: task_pb2.Task
    stage: task_pb2.TaskStage
    queued_at: float
    context: otel_context.Context  # the caller's trace context: the job's spans are its children
    waiting: trace.Span  # the queue wait, ended when a worker takes the job
    # The finished stage, shared by every request of the job.
    done: asyncio.Future[task_pb2.TaskStage] = field(default_factory=lambda: _shared_future())


class ProcessorCore:
    """Runs stages of one processor kind: a bounded queue (full means RESOURCE_EXHAUSTED, so callers
    can go elsewhere) drained by a fixed number of workers, which wait without spinning. Each
    (task_id, stage) runs once: see the module's docstring; `deduplicated` counts the requests
    answered without running."""

    def __init__(
        self,
        node: str,
        name: str,
        runner: StageRunner,
        workers: int,
        queue_capacity: int,
        tracing: Tracing = NO_TRACING,
        recent_results: int = RECENT_RESULTS,
    ) -> None:
        if recent_results < 1:
            raise InvalidArgument("recent_results", f"at least 1, got {recent_results}")
        self.node, self.name, self.runner, self.tracing = node, name, runner, tracing
        self.workers = workers
        self.queue_capacity = queue_capacity
        self.recent_results = recent_results
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_capacity)
        self._tasks: list[asyncio.Task[None]] = []
        self._jobs: dict[_Key, _Job] = {}  # queued or running: at most queue_capacity + workers
        self._finished: OrderedDict[_Key, task_pb2.TaskStage] = OrderedDict()  # least recently used first
        self.processed = 0
        self.failed = 0
        self.deduplicated = 0
        self.meter = Meter("processor", node)
        # Set while a deployable processor holds its models unloaded (dayu.processor.deployment): new
        # stages are refused with it (FAILED_PRECONDITION), so their callers go to another node.
        self.unloaded_because = ""

    async def drained(self) -> None:
        """Returns once no stage is queued or running."""
        await self._queue.join()

    @property
    def queue_length(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"{self.name}-worker-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        # Jobs no worker will finish: their callers get UNAVAILABLE, and retry elsewhere, rather than hang.
        jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            if not job.done.done():
                job.done.set_exception(Unavailable(f"{self.name} processor on {self.node} stopped"))
        if isinstance(self.runner, ClosableRunner):
            await self.runner.aclose()

    async def process(self, task: task_pb2.Task, stage_name: str) -> task_pb2.Task:
        """Runs `stage_name` of `task` and returns the task with the stage filled in. A failure of
        the stage itself is reported in the returned task (state FAILED, error), not raised; a
        backend that is away (Unavailable) is raised, for the caller to wait for or go elsewhere. A
        request for a stage of the same task id that is queued, running or finished lately is
        answered with that run's outcome, without running the stage again."""
        validate_task(task)
        stages = {s.spec.name: s for s in task.dag.stages}
        if stage_name not in stages:
            raise InvalidArgument("stage", f"a stage of the task's DAG {sorted(stages)}, got {shown(stage_name)}")
        stage = stages[stage_name]
        if stage.spec.processor != self.name:
            raise FailedPrecondition(
                f"stage {stage_name!r} needs processor {stage.spec.processor!r}; this one is {self.name!r}"
            )
        key = (task.task_id, stage_name)
        if key in self._finished or key in self._jobs:
            self.deduplicated += 1
            log.debug("stage answered without running again", stage=stage_name, task_id=task.task_id)
            stage.CopyFrom(await self._outcome(key))
            return task
        if self.unloaded_because:
            raise FailedPrecondition(self.unloaded_because)
        job = self._enqueue(task, stage)
        self._jobs[key] = job
        await asyncio.shield(job.done)  # the worker fills in this task's stage itself
        return task

    async def _outcome(self, key: _Key) -> task_pb2.TaskStage:
        """The finished stage of the run of `key`, finished lately or queued or running."""
        if key in self._finished:
            self._finished.move_to_end(key)
            return self._finished[key]
        # Shielded: a caller that gives up (its deadline passed) leaves the job to the others.
        return await asyncio.shield(self._jobs[key].done)

    def _enqueue(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> _Job:
        attributes = task_attributes(task.stream_id, task.root_id, stage.spec.name)
        job = _Job(
            task, stage, time.time(), otel_context.get_current(), self.tracing.start("processor.queue", **attributes)
        )
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            job.waiting.set_status(trace.StatusCode.ERROR, "queue full")
            job.waiting.end()
            raise ResourceExhausted(f"{self.name} queue on {self.node} is full ({self.queue_capacity} tasks)") from None
        self.meter.queue_length(self.name, self._queue.qsize())
        return job

    async def _work(self) -> None:
        working_for(self.node, self.name)  # the model calls of this worker's stages count as this processor's
        while True:
            job = await self._queue.get()
            self.meter.queue_length(self.name, self._queue.qsize())
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
        except Unavailable as error:  # the backend (Triton) is away, not the stage wrong: the caller
            log.warning("backend unavailable", stage=stage.spec.name, task_id=job.task.task_id, error=str(error))
            del self._jobs[(job.task.task_id, stage.spec.name)]  # waits for it or goes elsewhere
            job.done.set_exception(error)
            return
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
        self._finish(job)

    def _finish(self, job: _Job) -> None:
        """Moves the job from the running to the recent ones (in one step: a retry finds it in one or
        the other) and answers its callers."""
        key = (job.task.task_id, job.stage.spec.name)
        # A copy: a sub-message keeps its whole task (and the segment's frames) alive.
        outcome = task_pb2.TaskStage()
        outcome.CopyFrom(job.stage)
        del self._jobs[key]
        self._finished[key] = outcome
        while len(self._finished) > self.recent_results:
            self._finished.popitem(last=False)
        job.done.set_result(outcome)
