"""ClusterNetwork on the real kernel: namespaces, a bridge, htb shaping, kernel byte counts, hosts files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Through the worker process, as the cluster drives it: pyroute2 forks, and this process may have
# gRPC threads from other tests (see dayu.cluster.netproc).
from dayu.cluster.netproc import NetworkProcess as ClusterNetwork


def _netns_available() -> str:
    """Why these tests can't run here, or "" when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veths, a bridge and tc)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` (ip netns exec)"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as error:
        return f"`ip netns` is unavailable: {error}"
    return ""


SKIP_REASON = _netns_available()
pytestmark = pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON)

PAYLOAD = 250_000

# One connection: reads until EOF, answers with the byte count.
SERVER = r"""
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
server.settimeout(15)
print("ready", flush=True)
conn, _ = server.accept()
conn.settimeout(15)
received = 0
while chunk := conn.recv(65536):
    received += len(chunk)
conn.sendall(str(received).encode())
"""

# Sends the payload, waits for the count: prints the count and the seconds from connect to answer.
CLIENT = r"""
import socket, sys, time
started = time.perf_counter()
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
conn.sendall(b"x" * int(sys.argv[3]))
conn.shutdown(socket.SHUT_WR)
answer = conn.recv(64)
print(answer.decode(), time.perf_counter() - started)
"""


def client(net: ClusterNetwork, src: str | None, dst: str, port: int, size: int, timeout_s: float = 15):
    """Runs CLIENT in src's namespace (None: the host's) against dst."""
    command = [sys.executable, "-c", CLIENT, net.interfaces[dst].address, str(port), str(size), str(timeout_s)]
    if src is not None:
        command = ["ip", "netns", "exec", net.netns(src), *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s + 10)


def transfer(net: ClusterNetwork, src: str | None, dst: str, port: int, size: int = PAYLOAD) -> float:
    """Sends `size` bytes over TCP from a process in src's namespace to one in dst's; the seconds it took."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", net.netns(dst), sys.executable, "-c", SERVER, net.interfaces[dst].address, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        done = client(net, src, dst, port, size)
        assert done.returncode == 0, done.stderr
        received, seconds = done.stdout.split()
        assert int(received) == size
        return float(seconds)
    finally:
        server.kill()
        server.wait()


def leftovers(prefix: str) -> list[str]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    found = [line.split()[0] for line in namespaces.splitlines() if line.startswith(f"{prefix}-")]
    found += [line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if f" {prefix}-" in line]
    found += [str(path) for path in Path("/etc/netns").glob(f"{prefix}-*")]
    return found


@pytest.fixture
def net() -> Iterator[ClusterNetwork]:
    prefix = f"t{uuid.uuid4().hex[:6]}"
    # A /24 of its own in 198.19.0.0/16, so tests running side by side don't share a subnet.
    network = ClusterNetwork(prefix, subnet=f"198.19.{uuid.uuid4().int % 250 + 1}.0/24")
    try:
        network.create(["cloud", "edge-1", "edge-2"])
        yield network
    finally:
        network.destroy()
        ClusterNetwork.cleanup(prefix)


def test_layout_addresses_and_names(net: ClusterNetwork) -> None:
    cloud, edge1 = net.interfaces["cloud"], net.interfaces["edge-1"]
    assert cloud.netns == f"{net.prefix}-cloud"
    assert [iface.address for iface in net.interfaces.values()] == [
        str(net.subnet.network_address + index) for index in (1, 2, 3)
    ]
    assert net.host_address == str(net.subnet.network_address + 254)
    assert all(len(iface.host_veth) <= 15 for iface in net.interfaces.values())
    # eth0 with the node's address inside the namespace, and htb at its root
    shown = subprocess.run(
        ["ip", "-n", edge1.netns, "-o", "-4", "addr", "show", "dev", "eth0"], capture_output=True, text=True, check=True
    ).stdout
    assert f"{edge1.address}/24" in shown
    qdisc = subprocess.run(["tc", "-n", edge1.netns, "qdisc", "show", "dev", "eth0"], capture_output=True, text=True)
    assert "qdisc htb 1: root" in qdisc.stdout
    # the host reaches a node's services through the bridge, as a port-forward would
    assert transfer(net, None, "cloud", 5000, size=10_000) < 5


def test_links_are_shaped_per_direction_and_counted_by_the_kernel(net: ClusterNetwork) -> None:
    # 2 Mbit/s: 250 KB plus headers need ~1.05 s
    net.set_bandwidth("edge-1", "cloud", 2)
    before = net.link_bytes("edge-1", "cloud")
    assert transfer(net, "edge-1", "cloud", 5001) >= 0.8
    sent = net.link_bytes("edge-1", "cloud") - before
    # Ethernet, IP and TCP headers (66 bytes per ~1448-byte segment) add ~4.6%; plus the handshake.
    assert PAYLOAD * 1.02 <= sent <= PAYLOAD * 1.08
    assert net.bandwidth_mbps("edge-1", "cloud") == 2

    # The other direction and the other links stay unlimited.
    assert transfer(net, "cloud", "edge-1", 5002) < 0.5
    assert transfer(net, "edge-2", "cloud", 5003) < 0.5
    assert net.link_bytes("edge-2", "edge-1") < 1000  # nothing sent there but, perhaps, a few frames

    # A live change: 20 Mbit/s carries the same in ~0.1 s
    net.set_bandwidth("edge-1", "cloud", 20)
    assert transfer(net, "edge-1", "cloud", 5004) < 0.6


def test_a_link_goes_down_and_comes_back(net: ClusterNetwork) -> None:
    net.set_bandwidth("edge-1", "edge-2", 0)
    assert net.bandwidth_mbps("edge-1", "edge-2") == 0
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            net.netns("edge-2"),
            sys.executable,
            "-c",
            SERVER,
            net.interfaces["edge-2"].address,
            "5005",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        stalled = client(net, "edge-1", "edge-2", 5005, 100_000, timeout_s=1.5)
        assert stalled.returncode != 0 and "timed out" in stalled.stderr
    finally:
        server.kill()
        server.wait()
    counted = net.link_bytes("edge-1", "edge-2")
    net.set_bandwidth("edge-1", "edge-2", 50)  # back up at once, not after htb's debt of the outage
    assert transfer(net, "edge-1", "edge-2", 5006) < 0.6
    assert net.link_bytes("edge-1", "edge-2") >= counted + PAYLOAD  # the count goes on across the new class


def test_hosts_resolve_inside_the_namespace(net: ClusterNetwork) -> None:
    cloud = net.interfaces["cloud"].address
    net.write_hosts("edge-1", {"scheduler.cloud": cloud, "cloud": cloud})
    found = subprocess.run(
        ["ip", "netns", "exec", net.netns("edge-1"), "getent", "hosts", "scheduler.cloud"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert found.stdout.split() == [cloud, "scheduler.cloud"]
    assert "localhost" in Path(f"/etc/netns/{net.netns('edge-1')}/hosts").read_text()


def test_destroy_and_cleanup_leave_nothing() -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}"
    subnet = f"198.19.{uuid.uuid4().int % 250 + 1}.0/24"
    first = ClusterNetwork(prefix, subnet)
    crashed = ClusterNetwork(prefix, subnet)
    try:
        first.create(["a", "b"])
        first.write_hosts("a", {"b": first.interfaces["b"].address})
        with pytest.raises(FileExistsError, match="cleanup"):
            ClusterNetwork(prefix, subnet).create(["a", "b"])
        # the refused one removed nothing of the cluster it found in place
        assert first.link_bytes("a", "b") >= 0
        assert sorted(leftovers(prefix)) == sorted(
            [f"{prefix}-a", f"{prefix}-b", f"{prefix}-br", f"{prefix}-v0", f"{prefix}-v1", f"/etc/netns/{prefix}-a"]
        )
        first.destroy()
        first.destroy()  # idempotent
        assert leftovers(prefix) == []

        crashed.create(["a", "b"])
        crashed.write_hosts("b", {})
        removed = ClusterNetwork.cleanup(prefix)  # as after a crash: from the names alone
        expected = [f"link {prefix}-{name}" for name in ("v0", "v1", "br")]
        expected += [f"netns {prefix}-a", f"netns {prefix}-b", f"dir /etc/netns/{prefix}-b"]
        assert sorted(removed) == sorted(expected)
        assert leftovers(prefix) == []
        assert ClusterNetwork.cleanup(prefix) == []
    finally:
        first.destroy()
        crashed.destroy()


def test_names_are_checked() -> None:
    with pytest.raises(ValueError, match="1 to 8"):
        ClusterNetwork("much-too-long")
    with pytest.raises(ValueError, match=r"inside 198\.18\.0\.0/15"):
        ClusterNetwork("t", subnet="10.0.0.0/24")
    with pytest.raises(ValueError, match="unique"):
        ClusterNetwork("t").create(["a", "a"])
