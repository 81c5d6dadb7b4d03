"""NodeCgroup and the cgroup usage reader on the real kernel (cgroup v1 cpu, cpuacct and memory)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from dayu.cluster.cgroups import NodeCgroup
from dayu.monitor.core import ResourceSampler
from dayu.runtime.cgroup_usage import CGROUP_ROOT, CONTROLLERS, CgroupPaths, CgroupUsageReader, own_cgroup

MIB = 2**20
BUSY = [sys.executable, "-c", "while True: pass"]
# A process with 3 threads besides its main one.
THREADS = """
import threading, time
for _ in range(3):
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print("ready", flush=True)
time.sleep(60)
"""


def _cgroups_available() -> str:
    """Why these tests can't run here, or "" when they can."""
    if os.geteuid() != 0:
        return "needs root (creates cgroups and moves processes into them)"
    for controller in CONTROLLERS:
        try:
            directory = CGROUP_ROOT / controller / own_cgroup(controller).lstrip("/")
        except (OSError, ValueError) as error:
            return f"no cgroup v1 {controller} hierarchy: {error}"
        if not os.access(directory, os.W_OK):
            return f"{directory} is not writable"
    return ""


SKIP_REASON = _cgroups_available()
needs_cgroups = pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON)


@pytest.fixture
def cgroup() -> Iterator[NodeCgroup]:
    node = NodeCgroup(f"t{uuid.uuid4().hex[:6]}", "edge-1")
    try:
        yield node
    finally:
        node.destroy()
        NodeCgroup.cleanup(node.prefix)


def cpu_cores_over(reader: CgroupUsageReader, seconds: float) -> float:
    reader.read()  # starts a fresh window
    time.sleep(seconds)
    return reader.read().cpu_usage_cores


def in_cgroup(pid: int, cgroup: NodeCgroup) -> bool:
    return all(own_cgroup(controller, pid) == cgroup.paths[controller] for controller in CONTROLLERS)


def test_paths_parse_as_one_path_or_per_hierarchy() -> None:
    assert CgroupPaths.parse("/dayu/edge-1") == CgroupPaths("/dayu/edge-1", "/dayu/edge-1", "/dayu/edge-1")
    split = CgroupPaths.parse("cpu,cpuacct:/dayu/edge-1;memory:/process_api/x/dayu/edge-1")
    assert split == CgroupPaths("/dayu/edge-1", "/dayu/edge-1", "/process_api/x/dayu/edge-1")
    assert CgroupPaths.parse(str(split)) == split
    with pytest.raises(ValueError, match="no path for memory"):
        CgroupPaths.parse("cpu,cpuacct:/dayu/edge-1")


@needs_cgroups
def test_cpu_limit_holds_and_changes_live(cgroup: NodeCgroup) -> None:
    cgroup.create(cpus=0.25, memory_bytes=256 * MIB)
    busy = subprocess.Popen(BUSY, preexec_fn=cgroup.preexec())
    try:
        assert cgroup.pids() == [busy.pid] and in_cgroup(busy.pid, cgroup)
        reader = CgroupUsageReader(cgroup.spec)
        # a busy loop gets ~0.25 of a core; other load on the machine can only make it less
        assert 0.02 < cpu_cores_over(reader, 1.0) < 0.45
        usage = reader.read()
        assert usage.cpu_limit_cores == 0.25
        assert usage.memory_limit_bytes == 256 * MIB
        assert 0 < usage.memory_used_bytes < 256 * MIB

        cgroup.set_cpus(0.05)
        assert cpu_cores_over(reader, 1.0) < 0.12
        assert reader.read().cpu_limit_cores == 0.05

        # the monitor's view of the node: its limit, its usage as a share of it, its memory
        sampler = ResourceSampler("edge-1", cgroup=cgroup.spec)
        time.sleep(0.5)
        report = sampler.sample()
        assert report.cpu_count == 1  # 0.05 rounded up
        assert 0 < report.cpu_percent <= 100
        assert report.memory_total_bytes == 256 * MIB
        assert report.memory_used_bytes == pytest.approx(usage.memory_used_bytes, rel=0.5)

        cgroup.set_cpus(None)
        assert reader.read().cpu_limit_cores is None
    finally:
        busy.kill()
        busy.wait()


@needs_cgroups
def test_unlimited_cgroup(cgroup: NodeCgroup) -> None:
    cgroup.create(cpus=None, memory_bytes=None)
    usage = CgroupUsageReader(cgroup.spec).read()
    assert usage.cpu_limit_cores is None and usage.memory_limit_bytes is None
    report = ResourceSampler("edge-1", cgroup=cgroup.spec).sample()
    assert report.cpu_count == os.cpu_count()
    with pytest.raises(ValueError, match=r"at least 0\.01"):
        cgroup.set_cpus(0.001)


@needs_cgroups
def test_add_moves_every_thread_and_destroy_kills_and_removes(cgroup: NodeCgroup) -> None:
    cgroup.create(cpus=1, memory_bytes=None)
    threaded = subprocess.Popen([sys.executable, "-c", THREADS], stdout=subprocess.PIPE, text=True)
    wrapped = subprocess.Popen(cgroup.wrap_command(["sleep", "60"]))
    try:
        assert threaded.stdout is not None and threaded.stdout.readline().strip() == "ready"
        cgroup.add(threaded.pid)
        threads = os.listdir(f"/proc/{threaded.pid}/task")
        assert len(threads) == 4
        assert all(own_cgroup("memory", f"{threaded.pid}/task/{tid}") == cgroup.paths["memory"] for tid in threads)
        deadline = time.monotonic() + 5
        while wrapped.pid not in cgroup.pids() and time.monotonic() < deadline:
            time.sleep(0.01)  # the shell moves itself in, then execs sleep
        assert cgroup.pids() == sorted([threaded.pid, wrapped.pid])

        cgroup.destroy()
        assert threaded.wait(timeout=5) == -9 and wrapped.wait(timeout=5) == -9
        assert not any(cgroup.directory(controller).exists() for controller in CONTROLLERS)
        cgroup.destroy()  # idempotent
    finally:
        for process in (threaded, wrapped):
            process.kill()
            process.wait()


@needs_cgroups
def test_cleanup_removes_a_crashed_runs_cgroups() -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}"
    nodes = [NodeCgroup(prefix, "cloud"), NodeCgroup(prefix, "edge-1")]
    sleeper = None
    try:
        for node in nodes:
            node.create(cpus=0.5, memory_bytes=64 * MIB)
        sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=nodes[1].preexec())
        removed = NodeCgroup.cleanup(prefix)  # as after a crash: nothing but the prefix
        assert sleeper.wait(timeout=5) == -9
        for node in nodes:
            assert str(node.directory("memory")) in removed
            assert not any(node.directory(controller).parent.exists() for controller in CONTROLLERS)
        assert NodeCgroup.cleanup(prefix) == []
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        for node in nodes:
            node.destroy()


@needs_cgroups
def test_a_quota_cut_holds_over_its_window_and_goes_back_to_the_mesh_files(cgroup: NodeCgroup) -> None:
    """`dayu experiment --cpu-cut`: the node's CFS quota cut for the window, then the mesh file's again."""
    import asyncio
    from types import SimpleNamespace

    from dayu.compute_changes import QuotaCut, play

    cgroup.create(cpus=1.5, memory_bytes=None)
    quota = cgroup.directory("cpu") / "cpu.cfs_quota_us"
    section = SimpleNamespace(resources=SimpleNamespace(cpus=1.5))
    mesh = SimpleNamespace(cgroups={"edge-1": cgroup}, config=SimpleNamespace(nodes={"edge-1": section}))
    cut = QuotaCut.parse("edge-1:0.25@0.1-0.4", "--cpu-cut")

    async def scenario() -> list[int]:
        mesh.traces_started_at = time.time()
        playing = asyncio.create_task(play([cut], mesh, poll_s=0.01))
        seen = []
        for wait in (0.05, 0.2, 0.3):  # before, during, after the window
            await asyncio.sleep(wait)
            seen.append(int(quota.read_text()))
        await playing
        return seen

    assert asyncio.run(scenario()) == [150_000, 25_000, 150_000]
