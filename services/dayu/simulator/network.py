"""Links in simulated time, as the controllers' link emulator (dayu.controller.links) carries bytes: one
transfer at a time (FIFO), each occupying the link for as long as its bandwidth at that moment (fixed,
or following the trace) needs for its bytes (with the packets' headers on a kernel link), then arriving
after the link's delay. The bandwidth arithmetic is the
emulator's own Link, on the simulation's clock."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import simpy

from dayu.controller.links import CALL_OFF_CHECK_S, BandwidthTrace, Link
from dayu.simulator.scenario import ChannelSpec


class NotSent(Exception):
    """The sender gave up on the transfer once the link was free (too late to be worth sending)."""


class CalledOff(NotSent):
    """The sender called the transfer off while its bytes were going (the rest not sent): `sent` of
    them went from `sending_at` on."""

    def __init__(self, sent: int, sending_at: float) -> None:
        super().__init__(sent, sending_at)
        self.sent, self.sending_at = sent, sending_at


@dataclass
class Transfer:
    """What a transfer took: waiting for the link, then sending (bytes going, then the delay)."""

    queued_at: float
    sending_at: float
    arrived_at: float


@dataclass
class Channel:
    spec: ChannelSpec
    link: Link  # the emulator's bandwidth and serialization arithmetic
    busy: simpy.Resource
    bytes_sent: int = 0  # tasks' bytes
    tasks_sent: int = 0
    probe_bytes_sent: int = 0
    peak_queue: int = 0

    @property
    def delay_s(self) -> float:
        return self.spec.delay_ms / 1000

    @property
    def queued(self) -> int:
        return len(self.busy.queue)

    def transmit(
        self,
        env: simpy.Environment,
        nbytes: int,
        still_wanted: Callable[[], bool] = lambda: True,
        probe: bool = False,
        keep_going: Callable[[], bool] | None = None,
    ) -> Generator[simpy.Event, Any, Transfer]:
        """Carries nbytes over the link (a simpy process body: `yield from`); raises NotSent, sending
        nothing, when `still_wanted` says no once the link is free, and CalledOff when `keep_going`
        (asked every CALL_OFF_CHECK_S while the bytes go, as the controller's emulator does) says no; on
        a kernel link it is not asked (the controller's call is the link there, as in Link.transmit)."""
        if self.spec.kernel:
            keep_going = None
        queued_at = env.now
        request = self.busy.request()
        self.peak_queue = max(self.peak_queue, len(self.busy.queue))
        try:
            yield request
            if not still_wanted():
                raise NotSent()
            sending_at = env.now
            self.link.mark_sending(None if probe else nbytes)
            wire = self.spec.wire_bytes(nbytes)
            left_s = self.link.serialization_s(wire, env.now)
            step_s = left_s if keep_going is None else CALL_OFF_CHECK_S
            while left_s > 0:
                yield env.timeout(min(step_s, left_s))
                left_s -= step_s
                if left_s > 0 and keep_going is not None and not keep_going():
                    sent = min(nbytes, round(self.link.carried_bytes(sending_at, env.now) * nbytes / wire))
                    self.bytes_sent += sent
                    raise CalledOff(sent, sending_at)
        finally:
            self.link.mark_sending(None)
            self.busy.release(request)
        if probe:
            self.probe_bytes_sent += nbytes
        else:
            self.bytes_sent += nbytes
            self.tasks_sent += 1
        if self.delay_s:
            yield env.timeout(self.delay_s)
        return Transfer(queued_at, sending_at, env.now)


class Network:
    """Every channel, and which carries each (from node, to node) pair; a pair no channel carries is
    unlimited (no queue, no time), as a link the mesh does not emulate, and is not probed."""

    def __init__(self, env: simpy.Environment, channels: list[ChannelSpec]) -> None:
        self.channels: list[Channel] = []
        self._routes: dict[tuple[str, str], Channel] = {}
        for spec in channels:
            trace = BandwidthTrace.load(spec.trace) if spec.trace is not None else None
            link = Link(spec.name, spec.name, spec.bandwidth_mbps, spec.delay_ms, trace, clock=lambda: env.now)
            channel = Channel(spec, link, simpy.Resource(env, capacity=1))
            self.channels.append(channel)
            for pair in spec.pairs:
                self._routes[pair] = channel

    def channel(self, from_node: str, to_node: str) -> Channel | None:
        return self._routes.get((from_node, to_node))

    def peers(self, node: str) -> list[str]:
        """The nodes `node` reaches over a modelled link: those its monitor probes."""
        return sorted(to for (source, to) in self._routes if source == node)
