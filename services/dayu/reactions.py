"""How a policy reacted to the changes of a run (the bandwidth trace's steps, the CPU's changes): how
soon after each its tasks were back within budget, and how often it went back on a decision. Read from
the run's tasks in the columns of tasks.csv (dayu.experiment.TIMELINE_COLUMNS, which `dayu simulate`
writes too), with `made_s` counted from when the trace started."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from dayu.controller.links import BandwidthTrace

CHANGE_RATIO = 1.5  # the bandwidth moved by this factor (either way) since the last change: a change
FLOOR_MBPS = 0.01  # rates under this count as this, so that a step to or from 0 has a finite ratio
REVERSAL_S = 10.0  # a knob moved back within this long of its last move: a reversal
EPSILON_S = 1e-6  # a step is read just after its moment: the new rate, whatever the rounding
KNOBS = ("height", "fps", "frames_per_segment")


@dataclass(frozen=True)
class Change:
    at_s: float  # since the trace started
    what: str


@dataclass(frozen=True)
class Recovery:
    change: Change
    seconds: float | None  # from the change until its tasks were within budget for good; None: not before the next
    late: int  # tasks made after the change (before the next) that were late or dropped
    made: int  # tasks made after the change (before the next)


def trace_changes(trace: BandwidthTrace, until_s: float) -> list[Change]:
    """The moments the trace's bandwidth has moved by CHANGE_RATIO or more since the last change (or
    its start), up to `until_s`: a step at once, a ramp each time it has gone that far."""
    changes: list[Change] = []
    reference = previous = trace.segment(0.0)[0]
    for t in trace.steps(until_s):
        rate = trace.segment(t + EPSILON_S)[0]  # at the step itself, whatever the rounding of t
        low, high = sorted((max(rate, FLOOR_MBPS), max(reference, FLOOR_MBPS)))
        if high / low >= CHANGE_RATIO:
            changes.append(Change(round(t, 3), f"{previous:g} -> {rate:g} Mbit/s"))
            reference = rate
        previous = rate
    return changes


def merged(changes: Iterable[Change]) -> list[Change]:
    """The changes in time order, those at the same moment as one (a drop as the CPU hog ends)."""
    at: dict[float, list[str]] = {}
    for change in sorted(changes, key=lambda c: c.at_s):
        at.setdefault(change.at_s, []).append(change.what)
    return [Change(moment, "; ".join(whats)) for moment, whats in at.items()]


def _on_time(task: Mapping[str, Any]) -> bool:
    budget = task["latency_budget_s"]
    return task["outcome"] == "delivered" and (not budget or task["latency_s"] <= budget)


def _by_stream(tasks: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    streams: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for task in sorted(tasks, key=lambda t: t["made_s"]):
        streams[task["stream_id"]].append(task)
    return streams


def recoveries(tasks: Iterable[Mapping[str, Any]], changes: list[Change], until_s: float) -> list[Recovery]:
    """For each change (those at the same moment as one), of the tasks made after it and before the
    next change (or `until_s`): when, after the change, every stream's tasks were within budget for
    good (the first on time after its last late or dropped one; 0 when none was late), the latest
    stream's; None when a stream's last task of the window was late. Tasks already in flight at the
    change count in the run's share within budget, not here."""
    streams = _by_stream(tasks)
    ordered = merged(changes)
    found = []
    ends = [c.at_s for c in ordered[1:]] + [until_s] * bool(ordered)
    for change, end in zip(ordered, ends, strict=True):
        seconds: float | None = 0.0
        late = made = 0
        for its in streams.values():
            window = [t for t in its if change.at_s <= t["made_s"] < end]
            misses = [i for i, t in enumerate(window) if not _on_time(t)]
            made, late = made + len(window), late + len(misses)
            if not misses:
                continue
            if misses[-1] == len(window) - 1:
                seconds = None
            elif seconds is not None:
                seconds = max(seconds, window[misses[-1] + 1]["made_s"] - change.at_s)
        found.append(Recovery(change, None if seconds is None else round(seconds, 3), late, made))
    return found


def reversals(tasks: Iterable[Mapping[str, Any]], within_s: float = REVERSAL_S) -> int:
    """How often a stream's decisions moved a knob (resolution, frame rate, frames per segment) back
    the way it came within `within_s` of moving it: up then down, or down then up. Each decision is
    seen from the first task made under it."""
    count = 0
    for its in _by_stream(tasks).values():
        decisions: dict[int, Mapping[str, Any]] = {}
        for task in its:
            decisions.setdefault(int(task["decision_version"]), task)
        last: dict[str, tuple[float, int]] = {}  # knob -> (when, direction) of its last move
        for before, after in pairwise(decisions[v] for v in sorted(decisions)):
            for knob in KNOBS:
                direction = (after[knob] > before[knob]) - (after[knob] < before[knob])
                if not direction:
                    continue
                if knob in last and last[knob][1] == -direction and after["made_s"] - last[knob][0] <= within_s:
                    count += 1
                last[knob] = (after["made_s"], direction)
    return count
