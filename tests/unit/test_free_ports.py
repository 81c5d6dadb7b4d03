"""free_ports: ports chosen before their servers bind them, out of the way of connections' local ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dayu.runtime import server
from dayu.runtime.server import PROBED_PORTS_FROM, free_ports


def ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = free_ports(40)
    assert len(set(ports)) == 40
    # What the embedded mesh lost a race to: a connection's local port, which the kernel takes from
    # the ephemeral range. Ports under it are never one (checked here where the range leaves room).
    assert all(PROBED_PORTS_FROM <= port < ephemeral_low() for port in ports), ports
    for port in ports:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()


def test_a_taken_port_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_ports(1)[0]))
        taken.listen()
        held = taken.getsockname()[1]
        spare = free_ports(1)[0]
        monkeypatch.setattr(server, "_below_ephemeral", lambda count: [spare, held])  # tried from the end
        assert free_ports(1) == [spare]
        monkeypatch.setattr(server, "_below_ephemeral", lambda count: [held])  # none left: any port
        (port,) = free_ports(1)
        assert port != held
