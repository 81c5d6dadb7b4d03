from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from dayu.controller.core import ControllerCore
from dayu.controller.links import BandwidthTrace, Link
from dayu.runtime.errors import InvalidArgument


class Quiet:
    """A transport whose calls go through at once (the emulated link is all the time they take)."""

    async def probe(self, node: str, nbytes: int) -> None: ...


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def trace(tmp_path: Path, text: str) -> BandwidthTrace:
    path = tmp_path / "trace.txt"
    path.write_text(text)
    return BandwidthTrace.load(path)


def test_trace_steps_and_repeats(tmp_path: Path) -> None:
    t = trace(tmp_path, "# a drop\n0 10\n10, 2\n")
    assert t.period_s == 20
    assert t.segment(0) == (10, 10)
    assert t.segment(12.5) == (2, 7.5)
    assert t.segment(25) == (10, 5)  # repeats


def test_serialization_follows_the_trace_across_a_drop(tmp_path: Path) -> None:
    clock = FakeClock()
    link = Link("edge-1", "cloud", trace=trace(tmp_path, "0 8\n1 1\n10 1\n"), clock=clock)
    # 8 Mbit/s for the first second carries 1 MB; the next 0.5 MB go at 1 Mbit/s (4 s).
    assert link.serialization_s(1_500_000, at=clock()) == pytest.approx(1 + 4)
    clock.now += 1.5
    assert link.bandwidth_mbps() == 1


def test_the_bytes_carried_follow_the_trace_as_serialization_does(tmp_path: Path) -> None:
    """What a transfer called off part way had sent: serialization_s inverted, across the drop."""
    clock = FakeClock()
    link = Link("a", "b", trace=trace(tmp_path, "0 8\n1 0.8\n"), clock=clock)  # 1 MB/s, then 100 KB/s
    at = clock.now + 0.5
    assert link.carried_bytes(at, at + 0.5) == pytest.approx(500_000)
    assert link.carried_bytes(at, at + 1.5) == pytest.approx(500_000 + 100_000)  # 0.5 s at 1 MB/s, 1 s at 100 KB/s
    for nbytes in (1_000, 400_000, 700_000):
        assert link.carried_bytes(at, at + link.serialization_s(nbytes, at)) == pytest.approx(nbytes)
    assert link.carried_bytes(at, at) == 0
    fixed = Link("a", "b", bandwidth_mbps=0.5, clock=clock)
    assert fixed.carried_bytes(at, at + 2) == pytest.approx(125_000)


def test_fixed_and_unlimited_links() -> None:
    assert Link("a", "b", bandwidth_mbps=10).serialization_s(1_250_000, at=0) == pytest.approx(1.0)
    assert Link("a", "b").serialization_s(10**9, at=0) == 0


async def test_transmit_counts_bytes_and_queues_fifo() -> None:
    link = Link("a", "b", bandwidth_mbps=80, delay_ms=1)  # 10 MB/s
    seconds = await link.transmit(100_000)
    assert seconds >= 0.011 and link.bytes_sent == 100_000 and link.tasks_sent == 1


@pytest.mark.parametrize("text", ["", "1 10\n", "0 10\n0 5\n", "0 -1\n", "0 ten\n"])
def test_bad_traces_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(InvalidArgument):
        trace(tmp_path, text)


async def test_expected_rpc_time_is_per_byte_weighted_by_bytes() -> None:
    """A small send's round trip is not a per-byte rate: after a 1 KB call of 5 ms, a 240 KB one is
    expected to take what the large sends took per byte, not 240 times 5 ms."""
    clock = FakeClock()
    link = Link("edge-1", "cloud", clock=clock)

    def taking(seconds: float):  # type: ignore[no-untyped-def]
        async def send() -> None:
            clock.now += seconds

        return send

    assert link.expected_rpc_s(240_000) == 0.0  # nothing sent yet
    await link.transmit(230_000, taking(0.1))  # a task with its frames: 0.1 s
    await link.transmit(1_000, taking(0.005))  # a delivery without them: a call's round trip
    expected = link.expected_rpc_s(240_000)
    assert expected == pytest.approx(240_000 * (0.8 * 0.1 + 0.2 * 0.005) / (0.8 * 230_000 + 0.2 * 1_000))
    assert 0.09 < expected < 0.12  # averaging each send's own per-byte time said 0.32 s


async def test_a_transfer_going_on_bounds_the_links_rate() -> None:
    clock = FakeClock()
    link = Link("a", "b", bandwidth_mbps=0.1, clock=clock)  # 100 KB take 8 s
    assert link.sending_bound_mbps() is None
    sending = asyncio.create_task(link.transmit(100_000))
    await asyncio.sleep(0)
    clock.now += 0.9
    assert link.sending_bound_mbps() is None  # under a second: the loop's lag on a busy machine
    clock.now += 1.1  # not through after 2 s: under 0.4 Mbit/s
    assert link.sending_bound_mbps() == pytest.approx(0.4)
    clock.now += 2
    assert link.sending_bound_mbps() == pytest.approx(0.2)
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)
    assert link.sending_bound_mbps() is None  # nothing going: nothing said
    probe = asyncio.create_task(link.transmit(100_000, probe=True))
    await asyncio.sleep(0)
    assert link.sending_bound_mbps() is None  # a probe's bytes are not a task's
    probe.cancel()
    await asyncio.gather(probe, return_exceptions=True)


async def test_a_link_that_fell_under_a_transfer_is_measured_without_waiting_for_it() -> None:
    """The monitor's measurement while a task's transfer outlasts the last measured rate says the
    bound at once; probes queued behind the transfer would say it seconds later."""
    link = Link("edge-1", "cloud", bandwidth_mbps=8)
    core = ControllerCore("edge-1", "cloud", set(), set(), {"cloud": link}, Quiet())
    before = await core.measure_link("cloud", 64 * 1024)
    assert 4 < before.bandwidth_mbps <= 8.5
    link.fixed_mbps = 0.1  # the link falls: 100 KB now take 8 s
    sending = asyncio.create_task(link.transmit(100_000))
    await asyncio.sleep(1.2)
    started = time.perf_counter()
    fell = await core.measure_link("cloud", 64 * 1024)
    assert time.perf_counter() - started < 0.1
    assert 0.1 < fell.bandwidth_mbps < 0.67 and fell.rtt_ms == before.rtt_ms  # under 800 kbit in over 1.2 s
    assert core.measured_links["cloud"] == fell
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)


async def test_an_emulated_links_bound_ends_with_its_emulation() -> None:
    """Once the emulator has carried the bytes, the call that hands them over is loopback: a slow
    receiver there is not the link."""
    clock, handed = FakeClock(), asyncio.Event()

    async def slow_receiver() -> None:
        await handed.wait()

    link = Link("a", "b", bandwidth_mbps=1000, clock=clock)
    sending = asyncio.create_task(link.transmit(1000, slow_receiver))
    await asyncio.sleep(0.01)  # the emulation (8 microseconds) is over, the call is not
    clock.now += 5
    assert link.sending_bound_mbps() is None
    handed.set()
    await sending
    unemulated = Link("a", "b", clock=clock)  # the kernel's: the call is the link
    handed.clear()
    sending = asyncio.create_task(unemulated.transmit(1_000_000, slow_receiver))
    await asyncio.sleep(0)
    clock.now += 4
    assert unemulated.sending_bound_mbps() == pytest.approx(2.0)
    handed.set()
    await sending
