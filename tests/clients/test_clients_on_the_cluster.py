"""The three examples against a cluster of real nodes with mutual TLS: namespaces, kernel links,
cgroups, one process per pod of the manifests (dayu.cluster), on the light mesh (noop stages, a
synthetic camera: no models, so it starts fast). Each example dials the cluster's backend and
scheduler across the bridge with the operator's certificate, verifying them as dayu-mesh (the
default --server-name), and the cluster's admin token (its workdir's tokens.yaml). Needs root (CI runs
as root), as the other cluster tests."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from clients.support import (
    LANGUAGES,
    STREAM,
    Examples,
    assert_live_result,
    last_json,
    light_mesh,
    mesh_tokens,
    run_example,
    tls_args,
    tls_files,
)
from dayu.cluster.cluster import Cluster, status
from dayu.mesh.model import load_mesh_config
from dayu.mesh.plan import Instance
from dayu.mesh.run import run_mesh
from dayu.runtime.tls import open_channel
from dayu.v1 import scheduler_pb2, scheduler_pb2_grpc

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="a cluster makes namespaces, links and cgroups: needs root"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux (unshare, nsenter)"),
    pytest.mark.timeout(300),
]
MESH_UP_S = 180  # every pod started and listening (dayu.cluster READY_TIMEOUT_S is per wave)
RUN_CAP_S = 120  # the mesh runs until the examples are done, this at most once it is up


def _namespaces(name: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [entry for entry in listed.split() if entry.startswith(f"{name}-")]


def _left_of(name: str) -> list[str]:
    """What a cluster of that name left: network namespaces, CPU cgroups, its state file."""
    cgroups = [str(path) for path in Path("/sys/fs/cgroup/cpu").glob(f"**/{name}")]
    return [*_namespaces(name), *cgroups, *(["state"] if status(name) is not None else [])]


async def _scheduler_knows(cluster: Cluster, address: str, stream: str) -> None:
    """Until the scheduler's statistics list the stream (its generator registered it): SetPolicy and
    WatchDecisions need it."""
    async with open_channel(address, cluster.tls) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        for _ in range(120):
            reply = await stub.GetSchedulerStats(scheduler_pb2.GetSchedulerStatsRequest(), timeout=10)
            if stream in [stats.stream_id for stats in reply.streams]:
                return
            await asyncio.sleep(0.5)
    pytest.fail(f"the scheduler at {address} never listed stream {stream}")


async def test_examples_on_a_cluster_with_mutual_tls(tmp_path: Path, examples: Examples) -> None:
    built = [examples[language] for language in LANGUAGES]  # before the cluster: a build takes its time
    config = load_mesh_config(light_mesh(tmp_path), None)
    name = f"t{uuid.uuid4().hex[:6]}"
    lines: list[str] = []
    cluster = Cluster(config, tmp_path / "cluster", name=name, progress=lines.append)
    up, done = asyncio.Event(), asyncio.Event()

    def progress(line: str) -> None:
        lines.append(line)
        if line.startswith("dayu: mesh up"):  # every pod runs and listens
            up.set()

    runner = asyncio.create_task(run_mesh(cluster, RUN_CAP_S, progress=progress, stop_event=done))
    results: dict[str, tuple[int, str, str]] = {}
    try:
        waiting = asyncio.create_task(up.wait())
        await asyncio.wait({runner, waiting}, timeout=MESH_UP_S, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if runner.done():
            runner.result()  # its error
            pytest.fail("the mesh ended before the examples ran:\n" + "\n".join(lines[-20:]))
        assert up.is_set(), f"the cluster is not up after {MESH_UP_S} s:\n" + "\n".join(lines[-20:])
        assert cluster.tls.enabled, "the cluster's manifests did not turn mutual TLS on"
        backend = cluster.address(Instance("backend", config.cloud_node))
        scheduler = cluster.address(Instance("scheduler", config.cloud_node))
        await _scheduler_knows(cluster, scheduler, STREAM)
        token = mesh_tokens(cluster.workdir / "tokens.yaml").admin[0]  # the cluster wrote its tokens there
        args = ["--backend", backend, "--scheduler", scheduler, "--stream", STREAM, "--watch-seconds", "2"]
        args += ["--token", token]
        runs = [run_example(example, *args, *tls_args(tls_files(cluster.tls))) for example in built]
        for example, result in zip(built, await asyncio.gather(*runs), strict=True):
            results[example.language] = result
    finally:
        done.set()  # run_mesh stops the pods in order and tears the cluster down
        if not up.is_set():
            runner.cancel()
        finished, _ = await asyncio.wait({runner}, timeout=120)
        if not finished:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        await cluster.abort()  # idempotent: what a failed or stuck run_mesh left

    assert not _left_of(name)  # nothing of the cluster is left
    if runner.cancelled():
        pytest.fail("run_mesh did not stop within 120 s of the examples' end:\n" + "\n".join(lines[-20:]))
    summary = runner.result()  # or run_mesh's error
    for language, (code, out, err) in results.items():
        assert code == 0, f"the {language} example failed on the cluster ({code}):\n{out}\n{err}"
        assert_live_result(last_json(out, err), STREAM)
    assert sorted(results) == sorted(LANGUAGES)
    assert summary["delivered"] > 0, summary
