"""The CPU and memory of a node of a cluster on one machine: a cgroup (v1) per node, holding the node's
processes, under this process's own cgroup in the cpu, cpuacct and memory hierarchies:

    /sys/fs/cgroup/<controller>/<own cgroup>/<prefix>/<node>

Its usage against its limits is read by dayu.runtime.cgroup_usage (the monitor takes `NodeCgroup.spec`
as its `node_cgroup`). Needs write access to those hierarchies (root).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from dayu.runtime.cgroup_usage import CGROUP_ROOT, CONTROLLERS, CgroupPaths, own_cgroup

CFS_PERIOD_US = 100_000
MIN_CFS_QUOTA_US = 1_000  # the kernel's floor (1 ms per period), i.e. 0.01 CPU
KILL_TIMEOUT_S = 5.0

_PREFIX = re.compile(r"^[a-z0-9-]{1,8}$")
_NODE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _prefix_paths(prefix: str) -> dict[str, str]:
    if not _PREFIX.match(prefix):
        raise ValueError(f"cluster prefix: 1 to 8 lowercase letters, digits or '-', got {prefix!r}")
    return {controller: f"{own_cgroup(controller).rstrip('/')}/{prefix}" for controller in CONTROLLERS}


def _directories(paths: dict[str, str]) -> list[Path]:
    """One directory per hierarchy; co-mounted hierarchies (cpu,cpuacct) share one, listed once."""
    directories: dict[Path, Path] = {}
    for controller, path in paths.items():
        directory = CGROUP_ROOT / controller / path.lstrip("/")
        directories.setdefault(directory.resolve(), directory)
    return list(directories.values())


def _procs(directory: Path) -> set[int]:
    try:
        return {int(line) for line in (directory / "cgroup.procs").read_text().split()}
    except FileNotFoundError:
        return set()


def _kill_until_empty(directories: list[Path], what: str) -> None:
    """SIGKILLs what is in the cgroups until they are empty (processes may fork meanwhile)."""
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while pids := set().union(*(_procs(directory) for directory in directories)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: processes {sorted(pids)} still there {KILL_TIMEOUT_S} s after SIGKILL")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _rmdir(directory: Path, in_use_ok: bool = False) -> bool:
    """Removes an (empty) cgroup; False if it was absent or, with in_use_ok, still has children."""
    try:
        directory.rmdir()
    except FileNotFoundError:
        return False
    except OSError as error:
        if in_use_ok and error.errno in (errno.ENOTEMPTY, errno.EBUSY):
            return False
        raise OSError(error.errno, f"removing cgroup {directory}: {error.strerror}") from error
    return True


def _cpu_quota_us(cpus: float | None) -> int:
    if cpus is None:
        return -1
    quota = round(cpus * CFS_PERIOD_US)
    if quota < MIN_CFS_QUOTA_US:
        raise ValueError(f"cpus: at least {MIN_CFS_QUOTA_US / CFS_PERIOD_US} (or None: no limit), got {cpus}")
    return quota


class NodeCgroup:
    """The cgroup of one node, in the cpu, cpuacct and memory hierarchies."""

    def __init__(self, prefix: str, node: str) -> None:
        if not _NODE.match(node):
            raise ValueError(f"cluster node {node!r}: lowercase letters, digits and '-', 1 to 63 characters")
        self.prefix, self.node = prefix, node
        self.paths = {controller: f"{path}/{node}" for controller, path in _prefix_paths(prefix).items()}
        self._parents = _directories(_prefix_paths(prefix))
        self._directories = _directories(self.paths)

    @property
    def spec(self) -> str:
        """The cgroup as dayu.runtime.cgroup_usage (and the monitor's node_cgroup) names it."""
        return str(CgroupPaths(**self.paths))

    def directory(self, controller: str) -> Path:
        return CGROUP_ROOT / controller / self.paths[controller].lstrip("/")

    def create(self, cpus: float | None, memory_bytes: int | None) -> None:
        """Makes the cgroup (idempotent) with these limits; None means no limit."""
        if memory_bytes is not None and memory_bytes <= 0:
            raise ValueError(f"memory_bytes: a positive number of bytes (or None: no limit), got {memory_bytes}")
        quota = _cpu_quota_us(cpus)
        for directory in self._directories:
            directory.mkdir(parents=True, exist_ok=True)
        self._write("cpu", "cpu.cfs_period_us", CFS_PERIOD_US)
        self._write("cpu", "cpu.cfs_quota_us", quota)
        self._write("memory", "memory.limit_in_bytes", -1 if memory_bytes is None else memory_bytes)

    def set_cpus(self, cpus: float | None) -> None:
        """Changes the CPU limit of the running node (a compute trace: "the edge got slower")."""
        self._write("cpu", "cpu.cfs_quota_us", _cpu_quota_us(cpus))

    def _write(self, controller: str, name: str, value: int) -> None:
        path = self.directory(controller) / name
        try:
            path.write_text(str(value))
        except OSError as error:
            # e.g. EINVAL: a quota above the parent cgroup's, or a memory limit below current usage
            raise OSError(error.errno, f"writing {value} to {path}: {error.strerror}") from error

    def add(self, pid: int) -> None:
        """Moves a process, with all its threads (cgroup.procs in v1), into the cgroup in every hierarchy.
        Memory it already has stays charged where it was (v1 moves no charges by default); a child
        started with `preexec` or `wrap_command` is charged here from its first page."""
        for directory in self._directories:
            (directory / "cgroup.procs").write_text(str(pid))

    def preexec(self) -> Callable[[], None]:
        """A `preexec_fn` for subprocess.Popen: the child joins the cgroup before it execs, so the
        program never runs outside it. The paths are prepared here, the child only writes.
        (preexec_fn is unsafe in a process with threads; there, start the child through
        `wrap_command` instead.)"""
        procs = [os.fsencode(directory / "cgroup.procs") for directory in self._directories]

        def join() -> None:
            for path in procs:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, b"0")  # 0: the writing process itself
                finally:
                    os.close(fd)

        return join

    def wrap_command(self, argv: list[str]) -> list[str]:
        """argv started by a shell that first moves itself into the cgroup, then execs argv (the
        thread-safe alternative to `preexec`)."""
        joins = " && ".join(f"echo $$ > '{directory / 'cgroup.procs'}'" for directory in self._directories)
        return ["/bin/sh", "-c", f'{joins} && exec "$@"', "dayu-cgroup", *argv]

    def pids(self) -> list[int]:
        """The processes in the cgroup (in any of its hierarchies)."""
        return sorted(set().union(*(_procs(directory) for directory in self._directories)))

    def kill_all(self) -> None:
        """SIGKILLs every process in the cgroup and waits (up to KILL_TIMEOUT_S) until it is empty."""
        _kill_until_empty(self._directories, f"cgroup {self.prefix}/{self.node}")

    def destroy(self) -> None:
        """Kills what runs in the cgroup and removes it, and the prefix's cgroup once empty; idempotent."""
        self.kill_all()
        for directory in self._directories:
            _rmdir(directory)
        for directory in self._parents:
            _rmdir(directory, in_use_ok=True)  # stays while other nodes of the cluster have cgroups in it

    @classmethod
    def cleanup(cls, prefix: str) -> list[str]:
        """Kills the processes in, and removes, the cgroups a crashed run left under this process's
        "<prefix>" cgroup; returns the directories removed."""
        removed = []
        for parent in _directories(_prefix_paths(prefix)):
            if not parent.is_dir():
                continue
            # deepest first: a cgroup can only be removed once its children are
            children = sorted((path for path in parent.rglob("*") if path.is_dir()), key=lambda path: -len(path.parts))
            for directory in [*children, parent]:
                _kill_until_empty([directory], f"cgroup {directory}")
                if _rmdir(directory):
                    removed.append(str(directory))
        return removed
