"""The network of a cluster on one machine: one Linux network namespace per logical node, each joined
to one bridge in the root namespace by a veth pair, with the bandwidth of every directed link between
two nodes shaped in the kernel (htb) at the sending node's end.

Layout for prefix "dayu" and nodes [cloud, edge-1] on 198.18.0.0/24:

    root namespace:   bridge dayu-br 198.18.0.254/24, ports dayu-v0, dayu-v1
    netns dayu-cloud:  eth0 198.18.0.1/24 (peer of dayu-v0), htb root 1: on eth0
    netns dayu-edge-1: eth0 198.18.0.2/24 (peer of dayu-v1), htb root 1: on eth0

On each node's eth0, class 1:1 is the unlimited default (traffic to the host, ARP, IPv6) and class
1:(2+j) carries the IPv4 packets for node j (u32 filter on the destination address, prio 100+j), so
the two directions of a link are shaped independently, each by its sender.

Processes of a node run with `ip netns exec <netns> ...`, which also bind-mounts the files of
/etc/netns/<netns>/ over /etc/ (write_hosts uses it as the cluster's DNS). Needs root.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

# RFC 2544 benchmarking range: never routed anywhere, so our addresses can't shadow a real network.
BENCHMARK_RANGE = ipaddress.ip_network("198.18.0.0/15")
NETNS_DIR = Path(netns.NETNS_RUN_DIR)
ETC_NETNS = Path("/etc/netns")

ETH_P_IP = 0x0800
ROOT_QDISC = 0x10000  # 1:
DEFAULT_CLASS = 0x10001  # 1:1
PEER_FILTER_PRIO = 100
UNSHAPED_FILTER_PRIO = 10
UNLIMITED_BYTES_S = 10_000_000_000 // 8  # 10 Gbit/s: faster than a veth carries on one core
# htb rejects a rate of 0, so a link that is "down" gets 1 byte/s (8 bit/s), the smallest rate htb
# takes. A frame then puts the class in debt, which htb caps at 60 s: about one frame a minute still
# passes, so TCP stalls as on a cut cable (connections are not reset; they time out, or resume when
# the link comes back up).
DOWN_BYTES_S = 1
FRAME_BYTES = 1600  # a full Ethernet frame with room to spare, as tc's default burst has
BURST_S = 0.01  # each class may send 10 ms worth of its rate at once (at least one frame)
MAX_BUFFER_S = 100.0  # htb's buffer is a u32 of 64 ns ticks (~274 s): cap it for tiny rates
# TCP hands the qdisc up to 64 KB at once (GSO), and htb lets a class send a whole one into debt: at
# 2 Mbit/s that is 0.26 s of traffic in one go, and measured transfers came out ~15% off the rate.
# Up to 8 segments (12 KB, 48 ms at 2 Mbit/s) kept 250 KB transfers within 3% of the rate at 2 and
# 20 Mbit/s and still let an unshaped link carry ~3 Gbit/s (1 segment: ~0.7 Gbit/s).
GSO_MAX_SEGS = 8

_PREFIX = re.compile(r"^[a-z0-9-]{1,8}$")
_NODE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class NodeInterface:
    node: str  # logical node name
    netns: str  # namespace name, f"{prefix}-{node}"
    address: str  # the node's IPv4 address on the cluster subnet
    host_veth: str  # the veth end on the bridge (root namespace)


def check_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ValueError(f"cluster prefix: 1 to 8 lowercase letters, digits or '-' (interface names), got {prefix!r}")
    return prefix


def bridge_name(prefix: str) -> str:
    return f"{check_prefix(prefix)}-br"


def veth_name(prefix: str, index: int) -> str:
    return f"{check_prefix(prefix)}-v{index}"  # at most 8 + 2 + 5 digits: fits IFNAMSIZ (15)


def _ignore_missing(error: NetlinkError) -> None:
    if error.code not in (errno.ENODEV, errno.ENOENT, errno.ESRCH):
        raise error


def _delete_link(ipr: IPRoute, name: str) -> bool:
    """Deletes a link of the root namespace by name (a veth takes its peer with it); False if absent."""
    for index in ipr.link_lookup(ifname=name):
        try:
            ipr.link("del", index=index)
        except NetlinkError as error:
            _ignore_missing(error)
            return False
        return True
    return False


def _remove_netns(name: str) -> bool:
    if not (NETNS_DIR / name).exists():
        return False
    netns.remove(name)
    return True


def _class_params(bytes_s: int) -> dict[str, int]:
    burst = min(max(FRAME_BYTES, int(bytes_s * BURST_S)), max(1, int(bytes_s * MAX_BUFFER_S)))
    # Explicit quantum (the kernel's rate/r2q, clamped as it would) keeps the kernel from warning.
    quantum = min(max(bytes_s // 10, 1000), 200_000)
    return {"rate": bytes_s, "ceil": bytes_s, "burst": burst, "cburst": burst, "quantum": quantum}


def _peer_class(index: int) -> int:
    return ROOT_QDISC | (2 + index)


class ClusterNetwork:
    """Creates, shapes and removes the namespaces, veths and bridge of one cluster (see the module)."""

    def __init__(self, prefix: str, subnet: str = "198.18.0.0/24", unshaped_ports: tuple[int, ...] = ()) -> None:
        """`unshaped_ports`: TCP ports whose traffic no link shapes (a camera's feed to its edge node is
        on the site's LAN, not on the uplinks between nodes)."""
        self.prefix = check_prefix(prefix)
        self.unshaped_ports = unshaped_ports
        try:
            self.subnet = ipaddress.ip_network(subnet)
        except ValueError as error:
            raise ValueError(f"cluster subnet: an IPv4 network such as 198.18.0.0/24, got {subnet!r}") from error
        inside = self.subnet.version == 4 and self.subnet.subnet_of(BENCHMARK_RANGE)  # type: ignore[arg-type]
        if not inside or self.subnet.prefixlen > 30:
            raise ValueError(f"cluster subnet: a /30 or larger inside {BENCHMARK_RANGE}, got {subnet}")
        self.bridge = bridge_name(prefix)
        self.host_address = str(self.subnet.broadcast_address - 1)  # the last usable address
        self.interfaces: dict[str, NodeInterface] = {}
        self._nodes: list[str] = []  # the nodes create() was asked for, in address order
        self._rates: dict[tuple[str, str], int] = {}  # (src, dst) -> bytes/s
        self._bytes_before: dict[tuple[str, str], int] = {}  # counted by classes since replaced
        # What this object made, so destroy() removes that and never a namesake it found in place.
        self._links: list[str] = []
        self._namespaces: list[str] = []

    # --- creation -----------------------------------------------------------------------------

    def create(self, nodes: list[str]) -> dict[str, NodeInterface]:
        """Builds the bridge and one namespace per node; on any failure removes what it built."""
        if self._nodes:
            raise RuntimeError(f"cluster {self.prefix}: create() was already called; destroy() it first")
        self._check_nodes(nodes)
        self._nodes = list(nodes)
        try:
            with IPRoute() as ipr:
                self._check_free(ipr)
                self._create_bridge(ipr)
                for index, node in enumerate(nodes):
                    self.interfaces[node] = self._create_node(ipr, index, node)
        except BaseException:
            self.destroy()
            raise
        return dict(self.interfaces)

    def _check_nodes(self, nodes: list[str]) -> None:
        if not nodes:
            raise ValueError("cluster nodes: at least one node name")
        for node in nodes:
            if not _NODE.match(node):
                raise ValueError(f"cluster node {node!r}: lowercase letters, digits and '-', 1 to 63 characters")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"cluster nodes: names must be unique, got {nodes}")
        usable = self.subnet.num_addresses - 3  # network, broadcast and the host's address
        if len(nodes) > usable:
            raise ValueError(f"cluster subnet {self.subnet}: room for {usable} nodes, asked for {len(nodes)}")

    def _check_free(self, ipr: IPRoute) -> None:
        """Refuses to reuse names or addresses in use: they would be another cluster's (or a crash's)."""
        names = [self.bridge] + [veth_name(self.prefix, index) for index in range(len(self._nodes))]
        taken = [name for name in names if ipr.link_lookup(ifname=name)]
        taken += [self.netns(node) for node in self._nodes if (NETNS_DIR / self.netns(node)).exists()]
        if taken:
            raise FileExistsError(
                f"cluster {self.prefix}: {', '.join(taken)} already exist; if an earlier run crashed, "
                f"ClusterNetwork.cleanup({self.prefix!r}) removes its leftovers"
            )
        for message in ipr.addr("dump", family=2):
            address = ipaddress.ip_interface(f"{message.get('address')}/{message['prefixlen']}")
            if address.network.overlaps(self.subnet):
                raise FileExistsError(f"cluster subnet {self.subnet} overlaps {address} already on this machine")

    def _create_bridge(self, ipr: IPRoute) -> None:
        ipr.link("add", ifname=self.bridge, kind="bridge")
        self._links.append(self.bridge)
        index = ipr.link_lookup(ifname=self.bridge)[0]
        ipr.addr("add", index=index, address=self.host_address, prefixlen=self.subnet.prefixlen)
        ipr.link("set", index=index, state="up")

    def _create_node(self, ipr: IPRoute, index: int, node: str) -> NodeInterface:
        name = self.netns(node)
        netns.create(name)
        self._namespaces.append(name)
        interface = NodeInterface(
            node, name, str(self.subnet.network_address + 1 + index), veth_name(self.prefix, index)
        )
        # The peer is born inside the namespace as eth0, so no temporary name is needed in the root.
        ipr.link("add", ifname=interface.host_veth, kind="veth", peer={"ifname": "eth0", "net_ns_fd": name})
        self._links.insert(0, interface.host_veth)  # veths go before the bridge
        host_end = ipr.link_lookup(ifname=interface.host_veth)[0]
        ipr.link("set", index=host_end, master=ipr.link_lookup(ifname=self.bridge)[0], state="up")
        with self._in_netns(node) as nsr:
            nsr.link("set", index=nsr.link_lookup(ifname="lo")[0], state="up")
            eth0 = nsr.link_lookup(ifname="eth0")[0]
            nsr.addr("add", index=eth0, address=interface.address, prefixlen=self.subnet.prefixlen)
            nsr.link("set", index=eth0, gso_max_segs=GSO_MAX_SEGS)
            nsr.link("set", index=eth0, state="up")
            nsr.tc("add", "htb", eth0, ROOT_QDISC, default=DEFAULT_CLASS & 0xFFFF)
            nsr.tc("add-class", "htb", eth0, DEFAULT_CLASS, parent=ROOT_QDISC, **_class_params(UNLIMITED_BYTES_S))
            # Before the peers' filters (lower prio): the TCP source or destination port (the first
            # and second half of the word after an IPv4 header of 20 bytes), so the replies and the
            # acknowledgements of a port's connections both go unshaped.
            ports = [
                (f"0x{port:04x}0000/0xffff0000+20", f"0x0000{port:04x}/0x0000ffff+20") for port in self.unshaped_ports
            ]
            for rank, key in enumerate(key for pair in ports for key in pair):
                nsr.tc(
                    "add-filter",
                    "u32",
                    eth0,
                    parent=ROOT_QDISC,
                    prio=UNSHAPED_FILTER_PRIO + rank,
                    protocol=ETH_P_IP,
                    target=DEFAULT_CLASS,
                    keys=[key],
                )
            for peer_index, peer in enumerate(self._nodes):
                if peer != node:
                    address = str(self.subnet.network_address + 1 + peer_index)
                    self._add_peer_class(nsr, eth0, peer_index, address, UNLIMITED_BYTES_S)
                    self._rates[node, peer] = UNLIMITED_BYTES_S
        return interface

    @staticmethod
    def _add_peer_class(nsr: IPRoute, eth0: int, peer_index: int, address: str, bytes_s: int) -> None:
        classid = _peer_class(peer_index)
        nsr.tc("add-class", "htb", eth0, classid, parent=ROOT_QDISC, **_class_params(bytes_s))
        nsr.tc(
            "add-filter",
            "u32",
            eth0,
            parent=ROOT_QDISC,
            prio=PEER_FILTER_PRIO + peer_index,
            protocol=ETH_P_IP,
            target=classid,
            keys=[f"0x{int(ipaddress.ip_address(address)):08x}/0xffffffff+16"],  # IPv4 destination
        )

    # --- live changes and counters ------------------------------------------------------------

    def set_bandwidth(self, src: str, dst: str, mbps: float) -> None:
        """Sets the rate (= ceil) of the src -> dst link, live. mbps <= 0 means down (see DOWN_BYTES_S)."""
        self._check_link(src, dst)
        bytes_s = max(DOWN_BYTES_S, round(mbps * 1_000_000 / 8)) if mbps > 0 else DOWN_BYTES_S
        previous = self._rates[src, dst]
        dst_index = self._nodes.index(dst)
        classid = _peer_class(dst_index)
        with self._in_netns(src) as nsr:
            eth0 = nsr.link_lookup(ifname="eth0")[0]
            if previous == DOWN_BYTES_S and bytes_s != DOWN_BYTES_S:
                # While down the class ran up a debt of up to 60 s (htb keeps it, in time, across a
                # change: measured, a link set back to 20 Mbit/s stayed stalled), so a link coming
                # back gets a fresh class; the frames queued while it was down are dropped, as on an
                # outage.
                self._bytes_before[src, dst] = self.link_bytes(src, dst)
                prio = PEER_FILTER_PRIO + dst_index
                nsr.tc("del-filter", "u32", eth0, parent=ROOT_QDISC, prio=prio, protocol=ETH_P_IP, target=classid)
                nsr.tc("del-class", index=eth0, handle=classid, parent=ROOT_QDISC)
                self._add_peer_class(nsr, eth0, dst_index, self.interfaces[dst].address, bytes_s)
            elif bytes_s == DOWN_BYTES_S:
                self._set_down(src, classid)
            else:
                nsr.tc("change-class", "htb", eth0, classid, parent=ROOT_QDISC, **_class_params(bytes_s))
        self._rates[src, dst] = bytes_s

    def _set_down(self, src: str, classid: int) -> None:
        # The tc binary, because pyroute2 can't: it also encodes a rate table (which the kernel no
        # longer reads for htb) and that table's u32 transmission times overflow below 8 bytes/s.
        params = _class_params(DOWN_BYTES_S)
        command = ["tc", "-n", self.netns(src), "class", "change", "dev", "eth0", "parent", "1:"]
        command += ["classid", f"1:{classid & 0xFFFF:x}", "htb", "rate", f"{DOWN_BYTES_S * 8}bit"]
        command += ["ceil", f"{DOWN_BYTES_S * 8}bit", "burst", f"{params['burst']}b", "cburst", f"{params['cburst']}b"]
        command += ["quantum", str(params["quantum"])]
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")

    def bandwidth_mbps(self, src: str, dst: str) -> float:
        """The rate set for src -> dst (0 when down)."""
        self._check_link(src, dst)
        bytes_s = self._rates[src, dst]
        return 0.0 if bytes_s == DOWN_BYTES_S else bytes_s * 8 / 1_000_000

    def link_bytes(self, src: str, dst: str) -> int:
        """Bytes src sent to dst since create(), as the kernel counted them in the link's class(es)
        (Ethernet frames with all headers, like `tc -s class show`)."""
        self._check_link(src, dst)
        classid = _peer_class(self._nodes.index(dst))
        with self._in_netns(src) as nsr:
            for message in nsr.get_classes(nsr.link_lookup(ifname="eth0")[0]):
                if message["handle"] == classid:
                    counted = message.get_attr("TCA_STATS2").get_attr("TCA_STATS_BASIC")["bytes"]
                    return self._bytes_before.get((src, dst), 0) + int(counted)
        raise RuntimeError(f"cluster {self.prefix}: class {classid:#x} for {src} -> {dst} is missing")

    def _check_link(self, src: str, dst: str) -> None:
        for node in (src, dst):
            if node not in self.interfaces:
                raise KeyError(
                    f"cluster {self.prefix}: unknown node {node!r}, expected one of {sorted(self.interfaces)}"
                )
        if src == dst:
            raise ValueError(f"cluster {self.prefix}: a link joins two different nodes, got {src} -> {dst}")

    # --- names ----------------------------------------------------------------------------------

    def netns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def write_hosts(self, node: str, names: dict[str, str]) -> None:
        """Writes /etc/netns/<netns>/hosts: localhost plus name -> address, so the node's processes
        (started with `ip netns exec`) resolve service names as with a cluster DNS."""
        if node not in self.interfaces:
            raise KeyError(f"cluster {self.prefix}: unknown node {node!r}, expected one of {sorted(self.interfaces)}")
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        for name, address in sorted(names.items()):
            if not _HOSTNAME.match(name):
                raise ValueError(f"host name {name!r}: letters, digits, '.' and '-'")
            lines.append(f"{ipaddress.ip_address(address)}\t{name}")
        directory = ETC_NETNS / self.netns(node)
        directory.mkdir(parents=True, exist_ok=True)
        # Rewritten in place, not renamed: a running process sees the file through its bind mount
        # of this inode, so a rename would leave it with the old names.
        with open(directory / "hosts", "w") as hosts:
            hosts.write("\n".join(lines) + "\n")

    # --- removal --------------------------------------------------------------------------------

    def destroy(self) -> None:
        """Removes the veths, bridge, namespaces and /etc/netns dirs this object created; idempotent.
        Kill the nodes' processes first: a namespace lives on (without eth0) while a process is in it."""
        if self._links:
            with IPRoute() as ipr:
                for name in self._links:
                    _delete_link(ipr, name)  # a veth takes its peer, the namespace's eth0, with it
        for name in self._namespaces:
            _remove_netns(name)
            shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
        self._links.clear()
        self._namespaces.clear()
        self._nodes.clear()
        self.interfaces.clear()
        self._rates.clear()
        self._bytes_before.clear()

    @classmethod
    def cleanup(cls, prefix: str) -> list[str]:
        """Removes the leftovers of a crashed run with this prefix and returns what it removed:
        namespaces and /etc/netns dirs named "<prefix>-*", links named "<prefix>-br" or "<prefix>-v<N>".
        A prefix that is another one plus "-..." (e.g. "dayu" and "dayu-t") would also match that
        other cluster's namespaces: give concurrent clusters prefixes that don't extend each other."""
        check_prefix(prefix)
        removed = []
        ours = re.compile(rf"^{re.escape(prefix)}-(br|v\d+)$")
        with IPRoute() as ipr:
            names = [message.get("ifname") for message in ipr.link("dump")]
            # veths first: deleting the bridge first would only detach them
            for name in sorted(names, key=lambda name: name.endswith("-br")):
                if ours.match(name) and _delete_link(ipr, name):
                    removed.append(f"link {name}")
        for name in sorted(netns.listnetns()):
            if name.startswith(f"{prefix}-") and _remove_netns(name):
                removed.append(f"netns {name}")
        if ETC_NETNS.is_dir():
            for directory in sorted(ETC_NETNS.glob(f"{prefix}-*")):
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(f"dir {directory}")
        return removed

    def _in_netns(self, node: str) -> IPRoute:
        # flags=0: never create a namespace as a side effect (pyroute2's default is O_CREAT).
        return IPRoute(netns=self.netns(node), flags=0)


def namespace_pids(name: str) -> list[int]:
    """Processes whose network namespace is `name` (to kill before destroy)."""
    target = os.stat(NETNS_DIR / name)
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found = os.stat(f"/proc/{entry}/ns/net")
                if (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
                    pids.append(int(entry))
            except OSError:
                continue
    return sorted(pids)
