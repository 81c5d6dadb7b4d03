"""Compute contention in simulated time: the segments being processed on the nodes of one machine share
its cores as the kernel's fair scheduler shares them. Each segment runs one inference thread (the
processors' `intra_op_threads` is 1), so it goes at the profile's speed while a core is free for it,
and slower once more threads are runnable than there are cores.

The cluster gives each node a cgroup of its own, all with the same weight (cpu.shares), so the kernel
shares the cores between the nodes first, then between each node's runnable threads: a node gets at
most what its threads can run (one core each) and its CPU limit (`resources.cpus`, the cgroup's CFS
quota), and the nodes that want more split the rest evenly (max-min fairness, `fair_shares`). A node's
runnable threads are its segments and its other threads (its generator encoding, its controller's
calls, ...: `node_threads`, replayed over time as measured). Threads outside the nodes (`background`,
on average: other work on the machine) each count as a node of one thread. So two segments on the
cloud while each edge encodes get 2/3 of a core between them on 2 cores, where a share per thread
would give them a core.

This is processor sharing: every time a segment starts or ends, the others' rates change, and each
segment's remaining work (in core-seconds: the profile's processing time) is carried at the new
rates."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

import simpy

DONE_S = 1e-9  # work left under this is done (float rounding)
NodeThreads = tuple[tuple[float, tuple[tuple[str, float], ...]], ...]  # (seconds, ((node, threads), ...)) over time


@dataclass(frozen=True)
class MachineSpec:
    """The machine the nodes share: its cores, the runnable threads outside the nodes on average, each
    node's CPU limit in cores where it has one, and each node's runnable threads besides its segments
    over time: (seconds, ((node, threads), ...)), each holding until the next (as measured on the
    machine)."""

    cores: float
    background: float = 0.0
    node_cpus: tuple[tuple[str, float], ...] = ()
    node_threads: NodeThreads = ()


def fair_shares(capacity: float, demands: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Max-min fair shares of `capacity` by weight: each of `demands` (name -> (most it can use,
    weight)) gets what it asks for when that is under its weighted share of what is left, and those
    asking more split the rest by weight."""
    given: dict[str, float] = {}
    left, weight = capacity, sum(w for _, w in demands.values())
    for name, (most, w) in sorted(demands.items(), key=lambda item: item[1][0] / item[1][1]):
        given[name] = max(0.0, min(most, left * w / weight)) if weight > 0 else 0.0
        left, weight = left - given[name], weight - w
    return given


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
        self.node_threads: dict[str, float] = {}
        if spec.node_threads:
            env.process(self._replay())

    def _replay(self) -> Generator[simpy.Event, Any, None]:
        for at, threads in self.spec.node_threads:
            if at > self.env.now:
                yield self.env.timeout(at - self.env.now)
            self._advance()
            self.node_threads = dict(threads)
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
        segments: dict[str, int] = {}
        for job in self.jobs:
            segments[job.node] = segments.get(job.node, 0) + 1
        threads = dict(self.node_threads)
        for node, count in segments.items():
            threads[node] = threads.get(node, 0.0) + count
        demands = {node: (min(n, self.quotas.get(node, n)), 1.0) for node, n in threads.items() if n > 0}
        if self.spec.background > 0:  # outside the nodes: a node of one thread each
            demands[""] = (self.spec.background, self.spec.background)
        given = fair_shares(self.spec.cores, demands)
        for job in self.jobs:
            job.rate = given[job.node] / threads[job.node]

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
