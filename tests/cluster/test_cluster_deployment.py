"""Deployment decisions in the cluster of real nodes: edge-2 hosts the text detector as a deployable
processor (it starts unloaded). Its stream's detections cross its 8 Mbit/s uplink to the cloud until
the scheduler's plan loads the detector there, in edge-2's own processor process and cgroup; once the
stream stops, the detector is idle and the plan unloads it. Every task is delivered or dropped with a
reason throughout. The models run in process, or on each node's Triton (explicit model control: the
plan loads edge-2's detector into its Triton and frees it there). Needs root (CI runs as root)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from dayu.cluster.cluster import Cluster
from dayu.mesh.model import CONFIGS, load_mesh_config, read_mesh_file
from dayu.mesh.plan import Instance
from dayu.mesh.run import run_mesh
from dayu.processor.triton_server import client_arguments
from dayu.runtime.pipelines import load_pipelines
from dayu.runtime.tls import open_channel
from dayu.v1 import (
    backend_pb2,
    backend_pb2_grpc,
    decision_pb2,
    processor_pb2,
    processor_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    types_pb2,
)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="a cluster makes namespaces, links and cgroups: needs root"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux (unshare, nsenter)"),
    pytest.mark.timeout(300),
]
RUN_S = 60
LOCAL_S = 8  # how long the stream runs on edge-2's loaded detector before it is stopped


def _stream() -> decision_pb2.StreamSpec:
    """configs/cluster.yaml's cam-2, its detection placed on edge-2: until the detector is loaded there,
    edge-2's controller falls back to the cloud, over the uplink."""
    policy = decision_pb2.PolicySpec(name="fixed")
    policy.params.update({"fps": 1, "frames_per_segment": 2, "placement": {"detect": "edge-2"}})
    return decision_pb2.StreamSpec(
        stream_id="cam-2",
        source_id="street-2",
        node="edge-2",
        pipeline=load_pipelines(CONFIGS / "pipelines.yaml")["plates"],
        latency_budget_s=2.0,
        max_configuration=types_pb2.Configuration(
            resolution=types_pb2.Resolution(width=960, height=540),
            fps=4,
            quality=85,
            frames_per_segment=4,
            codec=types_pb2.CODEC_JPEG,
        ),
        policy=policy,
    )


def _mesh_data(backend: str) -> dict[str, Any]:
    """configs/cluster.yaml's cloud and edge-2 (and their link, steady), edge-2's detector deployable; the
    models in process, or on each node's Triton (the manifests' dayu-triton-NODE, in explicit model
    control mode: edge-2's loads nothing at start)."""
    data = read_mesh_file(CONFIGS / "cluster.yaml")
    if backend == "triton":
        for section in data["processors"].values():
            section.setdefault("params", {})["backend"] = "triton"
    data["pipelines_file"] = str(CONFIGS / data["pipelines_file"])
    data["nodes"] = {"cloud": data["nodes"]["cloud"], "edge-2": data["nodes"]["edge-2"]}
    data["nodes"]["edge-2"].update(processors=[], deployable=["text_detector"])
    data["links"] = [{"between": ["edge-2", "cloud"], "bandwidth_mbps": 8}]
    data["streams"] = []  # installed at run time (the backend's InstallStream), so that it can be uninstalled
    # The stream sends the detector 0.55 to 1 Mbit/s, 7 to 15% of the uplink: over the default horizon
    # (60 s) that saves 4 to 9 s, about the 5 s a first load is assumed to take, so the load was a
    # toss-up (the test failed 5 times in 7 one evening). Over 300 s it saves 20 s at least.
    deployment = {"settle_s": 2, "idle_after_s": 8, "min_hold_s": 4, "window_s": 10, "horizon_s": 300}
    data["scheduler"] = {"deployment": deployment}
    return data


async def _triton_state(cluster: Cluster, node: str, model: str) -> str:
    """The model's state in the repository index of the node's Triton ("" never loaded, READY, UNAVAILABLE)."""
    address = cluster.address(Instance("triton", node))
    async with triton_grpc.InferenceServerClient(address, **client_arguments(cluster.tls)) as client:
        for _ in range(120):  # until it has started
            with contextlib.suppress(InferenceServerException):
                if await client.is_server_ready(client_timeout=2):
                    break
            await asyncio.sleep(0.5)
        index = await client.get_model_repository_index(client_timeout=10)
    return next((entry.state for entry in index.models if entry.name == model), "missing")


# On each node's Triton: opt-in (DAYU_CLUSTER_TRITON=1). It passed alone three times, and failed once
# after the other cluster tests in one run (no record of the stream within 60 s; cause not found yet).
# With horizon_s 300 (2026-12-08) it passed alone and after every other cluster test, once each.
ON_TRITON = pytest.param(
    "triton",
    marks=pytest.mark.skipif(
        os.environ.get("DAYU_CLUSTER_TRITON") != "1", reason="opt-in (DAYU_CLUSTER_TRITON=1): flaky after other tests"
    ),
)


@pytest.mark.parametrize("models_on", ["onnxruntime", ON_TRITON])
async def test_edge_2_gains_the_detector_when_its_stream_crosses_the_uplink_and_loses_it_when_idle(
    tmp_path: Path, models_on: str
) -> None:
    config = load_mesh_config(tmp_path / "cluster.yaml", _mesh_data(models_on))
    name = f"t{uuid.uuid4().hex[:6]}"
    cluster = Cluster(config, tmp_path / "cluster", name=name, progress=lambda line: None)
    seen: list[tuple[float, scheduler_pb2.KindDeployment]] = []  # the plan for edge-2's detector over time
    processed: dict[str, int | str] = {}

    async def plan(stub: scheduler_pb2_grpc.SchedulerServiceStub) -> scheduler_pb2.KindDeployment | None:
        reply = await stub.GetDeploymentPlan(
            scheduler_pb2.GetDeploymentPlanRequest(node="edge-2"), timeout=10, wait_for_ready=True
        )
        entry = reply.nodes[0].kinds[0] if reply.nodes else None
        if entry is not None and (not seen or (seen[-1][1].load, seen[-1][1].loaded) != (entry.load, entry.loaded)):
            seen.append((time.monotonic(), entry))
        return entry

    async def until(stub: scheduler_pb2_grpc.SchedulerServiceStub, done: Any) -> None:
        entry = None
        for _ in range(2 * RUN_S):
            entry = await plan(stub)
            if entry is not None and done(entry):
                return
            await asyncio.sleep(0.5)
        last = entry.reason if entry is not None else "no plan for edge-2"
        raise AssertionError(f"the plan never got there: {seen}; its reason now: {last}")

    async def watch() -> None:
        for _ in range(600):  # until every pod runs
            if cluster.pods and all(r.process for r in cluster.pods.values()):
                break
            await asyncio.sleep(0.5)
        async with (
            open_channel(cluster.address(Instance("scheduler", "cloud")), cluster.tls) as scheduler,
            open_channel(cluster.address(Instance("processor", "edge-2", "text_detector")), cluster.tls) as processor,
            open_channel(cluster.address(Instance("backend", "cloud")), cluster.tls) as backend,
        ):
            stub = scheduler_pb2_grpc.SchedulerServiceStub(scheduler)
            status = processor_pb2_grpc.ProcessorServiceStub(processor)
            streams = backend_pb2_grpc.BackendServiceStub(backend)
            admin = (("authorization", f"Bearer {cluster.tokens.admin[0]}"),)
            install = backend_pb2.InstallStreamRequest(stream=_stream())
            await streams.InstallStream(install, metadata=admin, timeout=60, wait_for_ready=True)
            if models_on == "triton":  # its Triton is up (the processors started after it): nothing loaded
                processed["triton_at_start"] = await _triton_state(cluster, "edge-2", "text_detection")
            await until(stub, lambda entry: entry.loaded)
            if models_on == "triton":
                processed["triton_loaded"] = await _triton_state(cluster, "edge-2", "text_detection")
            before = await status.GetProcessorStatus(processor_pb2.GetProcessorStatusRequest(), timeout=10)
            await asyncio.sleep(LOCAL_S)
            after = await status.GetProcessorStatus(processor_pb2.GetProcessorStatusRequest(), timeout=10)
            processed.update(before=before.processed, after=after.processed, load_ms=int(after.load_s * 1000))
            uninstall = backend_pb2.UninstallStreamRequest(stream_id="cam-2")  # its generator stops it
            await streams.UninstallStream(uninstall, metadata=admin, timeout=60)
            await until(stub, lambda entry: not entry.loaded and not entry.load)
            final = await status.GetProcessorStatus(processor_pb2.GetProcessorStatusRequest(), timeout=10)
            processed["unloaded"] = int(final.unloaded)
            if models_on == "triton":
                processed["triton_unloaded"] = await _triton_state(cluster, "edge-2", "text_detection")

    watcher = asyncio.create_task(watch())
    try:
        summary = await run_mesh(cluster, RUN_S, progress=lambda line: None)
    finally:
        done = watcher.done()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await cluster.abort()
    assert done, f"the plan did not go through its changes within {RUN_S} s: {seen}"
    watcher.result()  # raises what the calls raised
    states = [(entry.load, entry.loaded) for _, entry in seen]
    reasons = [entry.reason for _, entry in seen]
    print(
        "plan of edge-2's text_detector:",
        [(round(t - seen[0][0], 1), s, r) for (t, _), s, r in zip(seen, states, reasons, strict=True)],
    )
    print(
        "processed on edge-2:", processed, "summary:", {k: summary[k] for k in ("delivered", "dropped", "unaccounted")}
    )
    # Unloaded at first; planned loaded because its stream's detections crossed the uplink; loaded by
    # edge-2; planned unloaded once idle; unloaded by edge-2.
    assert states == [(False, False), (True, False), (True, True), (False, True), (False, False)], (states, reasons)
    assert "over the uplink" in reasons[1] and reasons[3].startswith("idle: no task of edge-2's streams"), reasons
    assert seen[2][1].load_s > 0 and seen[2][1].model_bytes > 1_000_000
    # While loaded, edge-2's own processor ran the stream's detections; unloaded at the end.
    assert processed["after"] > processed["before"], processed
    assert processed["unloaded"] == 1, processed
    assert summary["delivered"] > 0 and summary["unaccounted"] == 0, summary
    if models_on == "triton":  # edge-2's own Triton: loaded by the plan through its repository API, then freed
        states = [processed[key] for key in ("triton_at_start", "triton_loaded", "triton_unloaded")]
        assert states == ["", "READY", "UNAVAILABLE"], processed
