"""Compute contention in simulated time: the segments being processed on the nodes of one machine share
its cores as the kernel's fair scheduler shares them among runnable threads. Each segment runs one
inference thread (the processors' `intra_op_threads` is 1), so it goes at the profile's speed while a
core is free for it, and slower once more threads are runnable than there are cores: with n segments
running and `background` other runnable threads on average (the mesh's other components, and
whatever else runs on the machine; constant, or replayed over time as measured), each gets
min(1, cores / (n + background)) of a core. A node with
a CPU limit (its cgroup's CFS quota, `resources.cpus`) gives its n running segments at most
cpus / n each.

This is processor sharing: every time a segment starts or ends, the others' rates change, and each
segment's remaining work (in core-seconds: the profile's processing time) is carried at the new
rates."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import simpy

DONE_S = 1e-9  # work left under this is done (float rounding)


@dataclass(frozen=True)
class MachineSpec:
    """The machine the nodes share: its cores, the runnable threads besides the segments processed,
    on average, and each node's CPU limit in cores where it has one."""

    cores: float
    background: float = 0.0
    node_cpus: tuple[tuple[str, float], ...] = ()
    # Runnable threads besides the segments over time, (seconds, threads), each holding until the
    # next (as measured on the machine; replaces `background` from its first time on).
    background_trace: tuple[tuple[float, float], ...] = ()


@dataclass
class _Job:
    node: str
    remaining: float  # core-seconds
    done: simpy.Event
    rate: float = 1.0


class Machine:
    def __init__(self, env: simpy.Environment, spec: MachineSpec) -> None:
        self.env, self.spec = env, spec
        self.quotas = dict(spec.node_cpus)
        self.jobs: list[_Job] = []
        self._last = env.now
        self._version = 0
        self.busy_s = 0.0  # core-seconds of segments processed
        self.background = spec.background
        if spec.background_trace:
            env.process(self._replay())

    def _replay(self) -> Generator[simpy.Event, Any, None]:
        for at, threads in self.spec.background_trace:
            if at > self.env.now:
                yield self.env.timeout(at - self.env.now)
            self._advance()
            self.background = threads
            self._reschedule()

    def run(self, node: str, work_s: float) -> Generator[simpy.Event, Any, None]:
        """Processes `work_s` core-seconds on `node` (a simpy process body: `yield from`)."""
        if work_s <= DONE_S:
            return
        self._advance()
        job = _Job(node, work_s, self.env.event())
        self.jobs.append(job)
        self._reschedule()
        yield job.done

    def _advance(self) -> None:
        elapsed = self.env.now - self._last
        if elapsed > 0:
            for job in self.jobs:
                job.remaining -= job.rate * elapsed
                self.busy_s += job.rate * elapsed
        self._last = self.env.now

    def _rates(self) -> None:
        share = min(1.0, self.spec.cores / (len(self.jobs) + self.background))
        per_node: dict[str, int] = {}
        for job in self.jobs:
            per_node[job.node] = per_node.get(job.node, 0) + 1
        for job in self.jobs:
            quota = self.quotas.get(job.node)
            job.rate = share if quota is None else min(share, quota / per_node[job.node])

    def _reschedule(self) -> None:
        self._version += 1
        if not self.jobs:
            return
        self._rates()
        soonest = min(max(0.0, job.remaining) / job.rate for job in self.jobs)
        version = self._version
        wake = self.env.timeout(soonest)
        wake.callbacks.append(lambda _event: self._wake(version))

    def _wake(self, version: int) -> None:
        if version != self._version:  # a segment started or ended since: rescheduled then
            return
        self._advance()
        finished = [job for job in self.jobs if job.remaining <= DONE_S * max(1.0, job.rate)]
        if not finished:  # rounding left a sliver: the one closest to done is done
            finished = [min(self.jobs, key=lambda job: job.remaining / job.rate)]
        for job in finished:
            self.jobs.remove(job)
            job.done.succeed()
        self._reschedule()
