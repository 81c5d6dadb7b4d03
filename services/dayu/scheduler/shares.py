"""Shares of what streams share. The streams of one node send over the same link to the cloud, so each
gets a share of its bandwidth, decided for all of them together, instead of each assuming the whole
link (which, with four streams, asks the link for four times what it carries); and the streams whose
stages run on one processor share its workers' time.

The shares are max-min fair over what each stream needs (water-filling): a stream that needs less
than an equal share gets what it needs, and the rest is divided among the others the same way. What a
stream needs is what its policy says it would use with the resource to itself (the bitrate of the most
accurate configuration that fits its budget, over the share of a link it keeps free; the seconds of
processing a second it would ask of a processor), so configuration and share are chosen jointly, as
JCAB does; with streams whose accuracy grows alike and with diminishing returns, max-min fairness is
where their total accuracy is greatest. A stream whose need is unknown (no feedback yet) counts as
needing all it can get. Each stream is told the level the shares fill to, the most it may use (it is
not held to what it said it needs, which moves with its feedback): the whole resource when all their
needs fit in it together. Work per call grows with the streams on one resource only."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping
from typing import NamedTuple

Resource = Hashable  # ("link", from node, to node) or ("processor", node, processor kind)


def _level(capacity: float, needs: list[float | None]) -> tuple[float, float]:
    """Water-filling's level and spare: each stream gets min(its need, level) + spare (a need of None
    counts as above any level)."""
    known = sorted(max(need, 0.0) for need in needs if need is not None)
    count, left = len(needs), capacity
    for served, need in enumerate(known):
        fair = left / (count - served)
        if need >= fair:
            return fair, 0.0  # this one and every later one (the unknown too) get an equal share of what is left
        left -= need
    unknown = count - len(known)
    return (left / unknown, 0.0) if unknown else (math.inf, left / count if count else 0.0)


def water_fill(capacity: float, needs: Mapping[str, float | None]) -> dict[str, float]:
    """Max-min fair shares of `capacity` over `needs` (None: as much as it can get), what is left over
    once every need is met divided evenly among all: what the streams use when each uses what it needs
    up to the level Shares tells it (the reference its tests hold the level to)."""
    level, spare = _level(capacity, list(needs.values()))
    return {s: (level if need is None else min(max(need, 0.0), level)) + spare for s, need in needs.items()}


class _Kept(NamedTuple):
    capacity: float
    at: float  # when it was worked out, on the clock given to Shares
    level: float


class Shares:
    """Which streams use which shared resource (an uplink, a processor), with what each needs of it;
    each one's share of it. The level the shares of a resource fill to is worked out again when its
    capacity moves, and when needs or streams changed, at most every `refresh_s`: a processor that
    thousands of streams use costs a sort a second, not one per decision."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, refresh_s: float = 0.0) -> None:
        self._clock, self.refresh_s = clock, refresh_s
        self._needs: dict[Resource, dict[str, float | None]] = {}
        self._of: dict[str, set[Resource]] = {}
        self._kept: dict[Resource, _Kept] = {}
        self._changed: set[Resource] = set()  # needs or streams changed since the level was worked out

    def set_needs(self, stream_id: str, needs: Mapping[Resource, float | None]) -> None:
        """The stream uses these resources (no other), needing this much of each (None: unknown)."""
        for resource in self._of.get(stream_id, set()) - needs.keys():
            self._leave(stream_id, resource)
        for resource, need in needs.items():
            on = self._needs.setdefault(resource, {})
            if stream_id not in on or on[stream_id] != need:
                on[stream_id] = need
                self._changed.add(resource)
        if needs:
            self._of[stream_id] = set(needs)
        else:
            self._of.pop(stream_id, None)

    def forget(self, stream_id: str) -> None:
        for resource in self._of.pop(stream_id, set()):
            self._leave(stream_id, resource)

    def _leave(self, stream_id: str, resource: Resource) -> None:
        on = self._needs[resource]
        del on[stream_id]
        self._changed.add(resource)
        if not on:
            del self._needs[resource]
            self._kept.pop(resource, None)
            self._changed.discard(resource)

    def on(self, resource: Resource) -> Mapping[str, float | None]:
        """The streams that use the resource, with their needs."""
        return self._needs.get(resource, {})

    def others(self, stream_id: str, resource: Resource) -> int:
        """Streams other than this one that use the resource."""
        on = self._needs.get(resource, {})
        return len(on) - (stream_id in on)

    def share(self, stream_id: str, resource: Resource, capacity: float) -> float:
        """The most of the resource's `capacity` the stream may use: the level its streams' shares fill
        to (a stream that needs less uses less, and leaves the rest to the others: it is not held to
        what it said it needs, which moves with its feedback), all of it when their needs fit in it
        together. As a newcomer (not using it yet), counted as needing all it can get."""
        needs = self._needs.get(resource, {})
        if stream_id not in needs:
            return min(_level(capacity, [*needs.values(), None])[0], capacity)
        now, kept = self._clock(), self._kept.get(resource)
        stale = resource in self._changed and (kept is None or now - kept.at >= self.refresh_s)
        if kept is None or kept.capacity != capacity or stale:
            kept = self._kept[resource] = _Kept(capacity, now, _level(capacity, list(needs.values()))[0])
            self._changed.discard(resource)
        return min(kept.level, capacity)
