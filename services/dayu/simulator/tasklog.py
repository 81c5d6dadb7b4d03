"""What a simulated run keeps of its tasks, in memory bounded whatever the run's length and scale: counts,
sums and a bounded sample of the delivered tasks' latencies for the results (report.py), and each task's
row of run-POLICY/tasks.csv (the columns of `dayu experiment`'s), written as the tasks settle, in the
order they were made: a row waits only until every task made before it has settled.

Every task is kept as well (RunResults.tasks) only when asked: a few streams' (the timeline plot's, the
tests'), never ten thousand streams' for ten minutes (millions of tasks)."""

from __future__ import annotations

import array
import csv
import heapq
import random
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np

from dayu.experiment import TIMELINE_COLUMNS
from dayu.mesh.summary import reason_kind
from dayu.v1 import types_pb2

LATENCIES_KEPT = 1 << 22  # delivered tasks' latencies kept exactly (32 MiB); past it, a uniform sample this large
BIN_S = 5.0  # the within-budget share over time: tasks made in bins this long


@dataclass(slots=True)
class TaskOutcome:
    """What the results keep of a task (a row of the run's tasks.csv)."""

    made_s: float
    stream_id: str
    decision_version: int
    configuration: types_pb2.Configuration
    placement: str
    delivered: bool
    latency_s: float
    budget_s: float
    accuracy: float | None
    reason: str
    transfer_s: float  # over links, its stages' and its delivery's, queueing included

    @property
    def in_budget(self) -> bool:
        return self.delivered and self.latency_s <= self.budget_s


def timeline_row(t: TaskOutcome) -> dict[str, Any]:
    """The task as a row of tasks.csv (`dayu experiment`'s columns)."""
    config = t.configuration
    return {
        "made_s": round(t.made_s, 3),
        "stream_id": t.stream_id,
        "decision_version": t.decision_version,
        "width": config.resolution.width,
        "height": config.resolution.height,
        "fps": config.fps,
        "frames_per_segment": config.frames_per_segment,
        "quality": config.quality,
        "placement": t.placement,
        "outcome": "delivered" if t.delivered else "dropped",
        "latency_s": round(t.latency_s, 3),
        "latency_budget_s": t.budget_s,
        "accuracy": None if t.accuracy is None else round(t.accuracy, 3),
        "drop_reason": t.reason,
    }


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    """p50 (the median) and p95 as dayu.mesh.summary.percentiles takes them, of an array."""
    n = len(values)
    if not n:
        return {"p50": None, "p95": None}
    ordered = np.sort(values)
    median = float(ordered[n // 2]) if n % 2 else (float(ordered[n // 2 - 1]) + float(ordered[n // 2])) / 2
    return {"p50": median, "p95": float(ordered[min(n - 1, int(0.95 * n))])}


class TaskLog:
    """The tasks of a run as they settle (add), in bounded memory; rows go to `csv_path` (when given) once
    every task made before them has settled (flush), the rest when the run ends (close)."""

    def __init__(self, csv_path: Path | None = None, keep_tasks: bool = False, seed: int = 0) -> None:
        self.csv_path = csv_path
        self.keep_tasks = keep_tasks
        self.tasks: list[TaskOutcome] = []  # every task, only when keep_tasks
        self.generated = 0
        self.delivered = 0
        self.in_budget = 0
        self.latencies = array.array("d")  # of delivered tasks: all, or a uniform sample past LATENCIES_KEPT
        self._sample = random.Random(seed)  # its own: the simulation's draws stay as they are
        self.accuracies: Counter[float] = Counter()  # delivered tasks' F1 (a few values: the profile's)
        self.drop_reasons: Counter[str] = Counter()  # by reason_kind
        self.made_in_bin: Counter[int] = Counter()
        self.in_budget_in_bin: Counter[int] = Counter()
        self.budgets: set[float] = set()
        self.streams: set[str] = set()
        self._pending: list[tuple[float, str, list[Any]]] = []  # rows to write, a heap by (made_s, stream_id)
        self._file: IO[str] | None = None
        self._writer: Any = None
        if csv_path is not None:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = csv_path.open("w", newline="")
            self._writer = csv.writer(self._file)
            self._writer.writerow(TIMELINE_COLUMNS)

    def add(self, t: TaskOutcome) -> None:
        self.generated += 1
        self.streams.add(t.stream_id)
        self.budgets.add(t.budget_s)
        bin_ = int(t.made_s // BIN_S)
        self.made_in_bin[bin_] += 1
        if t.delivered:
            self.delivered += 1
            if t.latency_s <= t.budget_s:
                self.in_budget += 1
                self.in_budget_in_bin[bin_] += 1
            if len(self.latencies) < LATENCIES_KEPT:
                self.latencies.append(t.latency_s)
            else:  # reservoir sampling: each delivered task's latency kept with the same chance
                slot = self._sample.randrange(self.delivered)
                if slot < LATENCIES_KEPT:
                    self.latencies[slot] = t.latency_s
            if t.accuracy is not None:
                self.accuracies[t.accuracy] += 1
        else:
            self.drop_reasons[reason_kind(t.reason)] += 1
        if self.keep_tasks:
            self.tasks.append(t)
        if self._writer is not None:
            row = timeline_row(t)
            heapq.heappush(self._pending, (t.made_s, t.stream_id, [row[key] for key in TIMELINE_COLUMNS]))

    def flush(self, before_s: float) -> None:
        """Writes the rows of the tasks made before `before_s` (no task made before it is still to settle)."""
        pending, rows = self._pending, []
        while pending and pending[0][0] < before_s:
            rows.append(heapq.heappop(pending)[2])
        if rows and self._writer is not None:
            self._writer.writerows(rows)

    def close(self) -> None:
        """Writes the rows left and closes the file."""
        self.flush(float("inf"))
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- the results --------------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        return self.generated - self.delivered

    def latency_percentiles(self) -> dict[str, float | None]:
        return percentiles(np.frombuffer(self.latencies, dtype=np.float64))

    def sorted_latencies(self) -> np.ndarray:
        return np.sort(np.frombuffer(self.latencies, dtype=np.float64))

    def mean_accuracy(self) -> float | None:
        """statistics.fmean of the delivered tasks' F1: their exact sum, rounded once, over their count."""
        count = sum(self.accuracies.values())
        if not count:
            return None
        return float(sum(Fraction(value) * n for value, n in self.accuracies.items())) / count

    def in_budget_over_time(self) -> list[tuple[float, float]]:
        """(bin start, share of the tasks made in it delivered within budget), every BIN_S."""
        made, good = self.made_in_bin, self.in_budget_in_bin
        return [(b * BIN_S, good[b] / made[b]) for b in sorted(made)]
