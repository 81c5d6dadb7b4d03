"""The links from a controller to the other nodes: one transfer at a time (FIFO), byte counters, and,
where the mesh emulates its links, bandwidth (fixed or replayed from a trace) and one-way delay. A
link with neither (Kubernetes, the cluster of namespaces: the kernel carries the bytes) only queues
and counts.

A transfer of n bytes waits for the link to be free (tasks queue behind each other, as on a real
link), occupies it for the time the bandwidth needs to carry n bytes, then arrives after the
propagation delay. Traces use Pensieve's format: one "time_s mbps" pair per line (commas also
accepted, '#' starts a comment); the trace repeats after its last point."""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dayu.runtime.errors import InvalidArgument

MIN_BOUND_S = 1.0  # a transfer going for less says nothing of the link's rate (sending_bound_mbps)
STRETCHES = 100_000  # of a trace looked at for one transfer, at most
CALL_OFF_CHECK_S = 0.25  # how often a transfer the emulator holds asks whether to go on (transmit's keep_going)


async def _nothing() -> None:
    return None


class NotSent(Exception):
    """The sender gave up on a transfer while it waited for the link."""


class CalledOff(NotSent):
    """The sender called a transfer off while the emulator held its bytes (the receiver got none);
    `sent` of them had gone."""

    def __init__(self, sent: int) -> None:
        super().__init__(sent)
        self.sent = sent


@dataclass(frozen=True)
class BandwidthTrace:
    times_s: tuple[float, ...]
    mbps: tuple[float, ...]
    period_s: float

    @classmethod
    def load(cls, path: Path) -> BandwidthTrace:
        times, rates = [], []
        try:
            lines = path.read_text().splitlines()
        except OSError as error:
            raise InvalidArgument(str(path), f"a readable bandwidth trace ({error})") from None
        for number, line in enumerate(lines, 1):
            fields = line.split("#", 1)[0].replace(",", " ").split()
            if not fields:
                continue
            try:
                t, rate = float(fields[0]), float(fields[1])
            except (ValueError, IndexError):
                raise InvalidArgument(f"{path}:{number}", f"'time_s mbps', got {line.strip()!r}") from None
            if rate < 0 or (times and t <= times[-1]) or t < 0:
                raise InvalidArgument(f"{path}:{number}", "increasing times from 0 and bandwidth >= 0")
            times.append(t)
            rates.append(rate)
        if not times or times[0] != 0:
            raise InvalidArgument(str(path), "a trace starting at time 0")
        # The last point lasts as long as the average step, so the trace can repeat.
        step = times[-1] / (len(times) - 1) if len(times) > 1 else 1.0
        return cls(tuple(times), tuple(rates), times[-1] + step)

    def steps(self, until_s: float) -> list[float]:
        """The moments after 0 and before `until_s` at which a point of the trace begins (the rate may
        stay the same), repeats included."""
        periods = math.ceil(until_s / self.period_s) if until_s > 0 else 0
        found = (k * self.period_s + t for k in range(periods) for t in self.times_s)
        return [t for t in found if 0 < t < until_s]

    def stretches(self, t: float) -> Iterator[tuple[float, float]]:
        """(Mbit/s, seconds) of each stretch at one rate from time t on, the first from t: at most
        STRETCHES of them (a trace of zeros would otherwise never end)."""
        elapsed = 0.0
        for _ in range(STRETCHES):
            mbps, remaining_s = self.segment(t + elapsed)
            yield mbps, remaining_s
            elapsed += remaining_s

    def segment(self, t: float) -> tuple[float, float]:
        """(Mbit/s at time t, seconds until the rate changes)."""
        offset = t % self.period_s
        i = bisect.bisect_right(self.times_s, offset) - 1
        end = self.times_s[i + 1] if i + 1 < len(self.times_s) else self.period_s
        return self.mbps[i], end - offset


class Link:
    """One directed emulated link. bandwidth_mbps 0 and no trace means unlimited."""

    def __init__(
        self,
        from_node: str,
        to_node: str,
        bandwidth_mbps: float = 0.0,
        delay_ms: float = 0.0,
        trace: BandwidthTrace | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.from_node, self.to_node = from_node, to_node
        self.fixed_mbps, self.delay_ms, self.trace = bandwidth_mbps, delay_ms, trace
        self._clock = clock
        self._start = clock()
        self._busy = asyncio.Lock()
        self.bytes_sent = 0  # tasks' serialized bytes
        self.tasks_sent = 0
        self.probe_bytes_sent = 0  # the monitor's bandwidth probes
        # Moving averages of what recent sends took (acknowledgement included) and of the bytes they
        # carried: their ratio is the time per byte, weighted by bytes, so that a small send's fixed
        # cost (a call's round trip) is not taken for a per-byte rate that a large send would pay
        # hundreds of thousands of times over.
        self._rpc_s = 0.0
        self._rpc_bytes = 0.0
        self._sending: tuple[float, int] | None = None  # (since, bytes) of the task transfer going now

    def sending_bound_mbps(self) -> float | None:
        """What the task transfer going over the link now says of its rate: n bytes not through after
        t seconds went at under n/t. The bound falls as the transfer lasts, so a link that collapsed
        under a transfer is known before the transfer (or a probe queued behind it) gets through.
        None when no task's bytes are on the link. Where the kernel carries them, the call's time is
        the link's and the receiver's: a receiver slow to take them reads as a slower link."""
        if self._sending is None:
            return None
        since, nbytes = self._sending
        going_s = self._clock() - since
        # Under a second it says nothing: a busy machine's event loop wakes the emulator that late.
        return nbytes * 8 / going_s / 1e6 if going_s >= MIN_BOUND_S else None

    def fell_to_mbps(self, last_mbps: float | None) -> float | None:
        """The sending bound when it is under the last measured rate: the link fell under the task
        transfer going now (said at once, rather than by probes queued behind that transfer); else None."""
        bound = self.sending_bound_mbps()
        return bound if last_mbps is not None and bound is not None and bound < last_mbps else None

    def mark_sending(self, nbytes: int | None) -> None:
        """A task transfer of nbytes starts going over the link now (None: it is through)."""
        self._sending = None if nbytes is None else (self._clock(), nbytes)

    def expected_rpc_s(self, nbytes: int) -> float:
        """Seconds sending nbytes is expected to take from the moment they start to go, by what this
        link's recent sends took (0 before the first): the part of a task's age that no one clock sees."""
        return nbytes * self._rpc_s / self._rpc_bytes if self._rpc_bytes else 0.0

    def bandwidth_mbps(self) -> float:
        """Current bandwidth; 0 means unlimited."""
        if self.trace is None:
            return self.fixed_mbps
        return self.trace.segment(self._clock() - self._start)[0]

    def serialization_s(self, nbytes: int, at: float) -> float:
        """Seconds the link needs to carry nbytes starting at clock time `at`, following the trace."""
        if self.trace is None:
            return nbytes * 8 / (self.fixed_mbps * 1e6) if self.fixed_mbps > 0 else 0.0
        bits, elapsed = nbytes * 8.0, 0.0
        for mbps, remaining_s in self.trace.stretches(at - self._start):
            capacity = mbps * 1e6 * remaining_s
            if capacity >= bits:
                return elapsed + bits / (mbps * 1e6)
            bits -= capacity
            elapsed += remaining_s
        return elapsed

    def carried_bytes(self, since: float, until: float) -> float:
        """Bytes the link carries from clock time `since` to `until`, following the trace (what
        serialization_s inverts): those of a transfer called off part way."""
        if self.trace is None:
            return self.fixed_mbps * 1e6 / 8 * max(0.0, until - since)
        bits, elapsed, span = 0.0, 0.0, until - since
        for mbps, remaining_s in self.trace.stretches(since - self._start):
            if elapsed >= span:
                break
            bits += mbps * 1e6 * min(remaining_s, span - elapsed)
            elapsed += remaining_s
        return bits / 8

    async def _emulate(self, nbytes: int, keep_going: Callable[[], bool] | None) -> None:
        """Holds nbytes for as long as the link needs to carry them; CalledOff when `keep_going` says no."""
        total_s = self.serialization_s(nbytes, self._clock())
        if keep_going is None:
            await asyncio.sleep(total_s)
            return
        started = self._clock()
        done_at = started + total_s
        while (left_s := done_at - self._clock()) > 0:
            await asyncio.sleep(min(CALL_OFF_CHECK_S, left_s))
            if done_at > self._clock() and not keep_going():
                sent = min(nbytes, round(self.carried_bytes(started, self._clock())))
                self.bytes_sent += sent
                raise CalledOff(sent)

    async def transmit(
        self,
        nbytes: int,
        send: Callable[[], Awaitable[None]] = _nothing,
        *,
        probe: bool = False,
        still_wanted: Callable[[], bool] = lambda: True,
        on_sending: Callable[[], None] = lambda: None,
        keep_going: Callable[[], bool] | None = None,
    ) -> float:
        """Carries nbytes over the link and `send`s them (the gRPC call that really moves them, over
        whatever network lies below: loopback under the emulator, a kernel link in the cluster);
        returns the seconds it took, queueing included. One transfer at a time, as on a real link:
        that keeps the queue apart from the sending in the traces. Raises NotSent, sending nothing,
        when `still_wanted` says no once the link is free (a task that went stale in the queue);
        calls `on_sending` when the bytes start to go (queueing is over). Raises CalledOff when
        `keep_going`, asked every CALL_OFF_CHECK_S while the emulator holds the bytes, says no; where
        the kernel carries them it is not asked (the call is the link, and a call cancelled there
        may have reached the receiver already)."""
        started = self._clock()
        async with self._busy:
            if not still_wanted():
                raise NotSent()
            on_sending()
            # The bytes are on the link while the emulator holds them, or, where the kernel carries
            # them, while the call sends them (an emulated link's call is loopback: not the link).
            emulated = self.fixed_mbps > 0 or self.trace is not None
            try:
                self.mark_sending(None if probe else nbytes)
                await self._emulate(nbytes, keep_going)
                sent_at = self._clock()
                if emulated:
                    self.mark_sending(None)
                await send()
            finally:
                self.mark_sending(None)
            if probe:
                self.probe_bytes_sent += nbytes
            else:
                self.bytes_sent += nbytes
                self.tasks_sent += 1
                took, carried = self._clock() - sent_at, max(nbytes, 1)
                if not self._rpc_bytes:
                    self._rpc_s, self._rpc_bytes = took, float(carried)
                else:
                    self._rpc_s = 0.8 * self._rpc_s + 0.2 * took
                    self._rpc_bytes = 0.8 * self._rpc_bytes + 0.2 * carried
        await asyncio.sleep(self.delay_ms / 1000)
        return self._clock() - started
