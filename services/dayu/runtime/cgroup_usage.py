"""CPU and memory of one cgroup (v1) against its limits: what a node of a cluster on one machine has.

A cgroup is named per hierarchy, as in /proc/self/cgroup. Where the cpu, cpuacct and memory paths are
the same, one path says it ("/dayu/edge-1"); otherwise `controller[,controller]:path` entries joined
by ";" ("cpu,cpuacct:/dayu/edge-1;memory:/process_api/x/dayu/edge-1").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("cpu", "cpuacct", "memory")
UNLIMITED_BYTES = 2**60  # memory.limit_in_bytes at or above this means "no limit" (v1 writes ~2**63)


@dataclass(frozen=True)
class CgroupPaths:
    """The cgroup's path in each hierarchy, relative to that hierarchy's root."""

    cpu: str
    cpuacct: str
    memory: str

    @classmethod
    def parse(cls, spec: str) -> CgroupPaths:
        spec = spec.strip()
        if spec.startswith("/"):
            return cls(spec, spec, spec)
        paths: dict[str, str] = {}
        for entry in filter(None, (part.strip() for part in spec.split(";"))):
            controllers, sep, path = entry.partition(":")
            if not sep or not path.startswith("/"):
                raise ValueError(f"cgroup {spec!r}: expected '/path' or 'controller[,controller]:/path;...' entries")
            for controller in controllers.split(","):
                paths[controller.strip()] = path
        missing = [controller for controller in CONTROLLERS if controller not in paths]
        if missing:
            raise ValueError(f"cgroup {spec!r}: no path for {', '.join(missing)} (needs {', '.join(CONTROLLERS)})")
        return cls(paths["cpu"], paths["cpuacct"], paths["memory"])

    def __str__(self) -> str:
        if self.cpu == self.cpuacct == self.memory:
            return self.cpu
        return f"cpu:{self.cpu};cpuacct:{self.cpuacct};memory:{self.memory}"

    def directory(self, controller: str, root: Path = CGROUP_ROOT) -> Path:
        return root / controller / getattr(self, controller).lstrip("/")


def own_cgroup(controller: str, pid: int | str = "self") -> str:
    """The path of a process's cgroup in a v1 hierarchy, from /proc/<pid>/cgroup."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    raise FileNotFoundError(f"/proc/{pid}/cgroup: no cgroup v1 hierarchy with the {controller} controller")


@dataclass(frozen=True)
class CgroupUsage:
    cpu_limit_cores: float | None  # cfs quota / period; None when there is no quota
    cpu_usage_cores: float  # CPU time used per wall second since the previous read
    memory_used_bytes: int  # memory.usage_in_bytes (includes the page cache the cgroup is charged)
    memory_limit_bytes: int | None  # None when unlimited


class CgroupUsageReader:
    """Reads a cgroup's usage; CPU usage is measured over the interval since the previous read (the
    first read: since the reader was made)."""

    def __init__(self, cgroup: str, root: Path = CGROUP_ROOT) -> None:
        self.paths = CgroupPaths.parse(cgroup)
        self.root = root
        for controller in CONTROLLERS:
            directory = self.paths.directory(controller, root)
            if not directory.is_dir():
                raise FileNotFoundError(
                    f"cgroup {self.paths}: {directory} is missing (expected a cgroup v1 {controller} hierarchy "
                    f"mounted at {root / controller} with that cgroup in it)"
                )
        self._last = (time.monotonic(), self._cpu_ns())

    def _value(self, controller: str, name: str) -> int:
        return int((self.paths.directory(controller, self.root) / name).read_text().split()[0])

    def _cpu_ns(self) -> int:
        return self._value("cpuacct", "cpuacct.usage")

    def cpu_limit_cores(self) -> float | None:
        quota = self._value("cpu", "cpu.cfs_quota_us")
        return None if quota < 0 else quota / self._value("cpu", "cpu.cfs_period_us")

    def read(self) -> CgroupUsage:
        now, cpu_ns = time.monotonic(), self._cpu_ns()
        last_at, last_ns = self._last
        self._last = (now, cpu_ns)
        elapsed = now - last_at
        limit = self._value("memory", "memory.limit_in_bytes")
        return CgroupUsage(
            cpu_limit_cores=self.cpu_limit_cores(),
            cpu_usage_cores=max(0, cpu_ns - last_ns) / 1e9 / elapsed if elapsed > 0 else 0.0,
            memory_used_bytes=self._value("memory", "memory.usage_in_bytes"),
            memory_limit_bytes=None if limit >= UNLIMITED_BYTES else limit,
        )
