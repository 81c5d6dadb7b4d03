"""The cluster's network (dayu.cluster.network) driven from a process of its own.

pyroute2 forks into a namespace to configure it, and the child goes on running Python. Forked from
a process with gRPC threads (the cluster's own, an experiment's, a test's), that child inherits
gRPC's state mid-flight: gRPC then fails a check and aborts (`ev_epoll1_linux.cc: Check failed:
next_worker->state == KICKED`) and the parent waits for it forever. So every netlink call runs in a
worker, `python -m dayu.cluster.netproc`, a fresh interpreter that never loads gRPC, asked over its
stdin and answering on its stdout (pickles: both ends are this program)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from typing import Any, BinaryIO

from dayu.cluster.network import ClusterNetwork, NodeInterface


class NetworkProcess:
    """ClusterNetwork's operations, each run in the worker; names and addresses are known here."""

    def __init__(self, prefix: str, subnet: str = "198.18.0.0/24", unshaped_ports: tuple[int, ...] = ()) -> None:
        self.local = ClusterNetwork(prefix, subnet, unshaped_ports)  # checks the arguments; no netlink
        self._key = (prefix, subnet, unshaped_ports)
        self._worker: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one question at a time (trace replays ask from threads)
        self.interfaces: dict[str, NodeInterface] = {}

    def _run(self, method: str, *args: Any) -> Any:
        with self._lock:
            if self._worker is None:
                self._worker = _start_worker()
            return _ask(self._worker, (self._key, method, args))

    @property
    def prefix(self) -> str:
        return self.local.prefix

    @property
    def subnet(self) -> Any:
        return self.local.subnet

    @property
    def host_address(self) -> str:
        return self.local.host_address

    def netns(self, node: str) -> str:
        return self.local.netns(node)

    def create(self, nodes: list[str]) -> dict[str, NodeInterface]:
        self.interfaces = self._run("create", nodes)
        return self.interfaces

    def set_bandwidth(self, src: str, dst: str, mbps: float) -> None:
        self._run("set_bandwidth", src, dst, mbps)

    def bandwidth_mbps(self, src: str, dst: str) -> float:
        return float(self._run("bandwidth_mbps", src, dst))

    def link_bytes(self, src: str, dst: str) -> int:
        return int(self._run("link_bytes", src, dst))

    def write_hosts(self, node: str, names: dict[str, str]) -> None:
        self._run("write_hosts", node, names)

    def destroy(self) -> None:
        try:
            if self._worker is not None:
                self._run("destroy")
        finally:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._worker is not None:
                _stop_worker(self._worker)
                self._worker = None

    @staticmethod
    def cleanup(prefix: str) -> list[str]:
        worker = _start_worker()
        try:
            return list(_ask(worker, (None, "cleanup", (prefix,))))
        finally:
            _stop_worker(worker)


def _start_worker() -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "dayu.cluster.netproc"]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    assert worker.stdin is not None
    worker.stdin.close()  # end of questions: the worker exits
    worker.wait(timeout=30)


def _ask(worker: subprocess.Popen[bytes], question: tuple[Any, str, tuple[Any, ...]]) -> Any:
    assert worker.stdin is not None and worker.stdout is not None
    pickle.dump(question, worker.stdin)
    worker.stdin.flush()
    try:
        ok, value = pickle.load(worker.stdout)
    except EOFError:
        raise RuntimeError(f"the cluster's network worker exited with {worker.wait()}") from None
    if not ok:
        raise value
    return value


def _serve(questions: BinaryIO, answers: BinaryIO) -> None:
    networks: dict[str, ClusterNetwork] = {}  # one per cluster name
    while True:
        try:
            key, method, args = pickle.load(questions)
        except EOFError:
            return
        try:
            if key is None:  # a class method: cleanup
                value: Any = getattr(ClusterNetwork, method)(*args)
            else:
                network = networks.setdefault(key[0], ClusterNetwork(*key))
                value = getattr(network, method)(*args)
            answer: tuple[bool, Any] = (True, value)
        except Exception as error:
            answer = (False, error)
        pickle.dump(answer, answers)
        answers.flush()


if __name__ == "__main__":
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, not into the answers
    _serve(sys.stdin.buffer, answers)
