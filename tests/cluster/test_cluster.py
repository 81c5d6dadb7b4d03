"""A cluster of three real nodes on this machine: namespaces, kernel links, cgroups, one process per
pod of the mesh's manifests. Needs root (CI runs as root)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from dayu.backend.http import STATIC
from dayu.cluster.cluster import Cluster, cleanup, running, status, subnet_of
from dayu.mesh.model import CONFIGS, load_mesh_config, read_mesh_file
from dayu.mesh.plan import Instance
from dayu.mesh.run import run_mesh
from dayu.runtime.tls import open_channel
from dayu.runtime.tracing import BYTES, NODE, TO_NODE
from dayu.v1 import monitor_pb2, monitor_pb2_grpc

from conftest import SpanCollector

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="a cluster makes namespaces, links and cgroups: needs root"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux (unshare, nsenter)"),
    pytest.mark.timeout(240),
]
RUN_S = 30  # how long the mesh runs
OTHER_CALLS_BYTES_PER_S = 5_000  # an edge's span exports and monitor reports, about (a few KB/s)
LINK_SPANS = ("link.transfer", "link.probe")  # every byte a controller sends over a link is in one of these


def _bytes_per_link(spans: list[trace_pb2.Span]) -> dict[str, int]:
    """What the link spans say each link carried: "edge-1->cloud" -> bytes."""
    sent: dict[str, int] = defaultdict(int)
    for span in spans:
        if span.name in LINK_SPANS:
            values = {a.key: a.value for a in span.attributes}
            sent[f"{values[NODE].string_value}->{values[TO_NODE].string_value}"] += values[BYTES].int_value
    return sent


def _http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, or of a POST with a body; straight to the address (no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="GET" if body is None else "POST")
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read()


def _namespaces(name: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [entry for entry in listed.split() if entry.startswith(f"{name}-")]


def _mesh_data(collector: str) -> dict[str, Any]:
    """configs/cluster.yaml, with steady links and a fixed plan that sends every frame to the cloud (the
    edges only encode and forward) in large segments, so the tasks are most of what crosses a link (their
    spans and the monitors' reports are the rest), and its spans sent to the test's collector too."""
    data = read_mesh_file(CONFIGS / "cluster.yaml")
    data["pipelines_file"] = str(CONFIGS / data["pipelines_file"])
    data["links"] = [{k: v for k, v in link.items() if k != "trace"} for link in data["links"]]
    data["otlp_collectors"] = [collector]
    for stream in data["streams"]:
        placement = {"detect": "cloud", "read": "cloud", "colour": "cloud", "merge": "cloud"}
        if stream["pipeline"] == "plates":
            placement = {"detect": "cloud", "read": "cloud"}
        params = {"width": 960, "height": 540, "fps": 1, "frames_per_segment": 4, "placement": placement}
        stream["policy"] = {"name": "fixed", "params": params}
        stream["max_configuration"]["codec"] = "jpeg"
    return data


async def test_three_nodes_carry_tasks_over_kernel_links_within_their_cpu_limits(
    tmp_path: Path, collect_spans: Callable[..., Awaitable[SpanCollector]]
) -> None:
    # On every address, so the namespaces reach it through the bridge's host address.
    collector = await collect_spans(host="0.0.0.0")
    name = f"t{uuid.uuid4().hex[:6]}"
    host = ipaddress.ip_network(subnet_of(name)).broadcast_address - 1  # the bridge's address
    # http://: the collector is outside the mesh, so the pods send it their spans in plaintext.
    config = load_mesh_config(tmp_path / "cluster.yaml", _mesh_data(f"http://{host}:{collector.port}"))
    lines: list[str] = []
    cluster = Cluster(config, tmp_path / "cluster", name=name, progress=lines.append)
    reports: list[monitor_pb2.GetResourcesResponse] = []

    async def watch_monitor() -> None:
        """Reads the edge's monitor, kills it, and reads it again once the supervisor restarted it."""
        for _ in range(600):  # until every pod runs
            if cluster.pods and all(r.process for r in cluster.pods.values()):
                break
            await asyncio.sleep(0.5)
        address = cluster.address(Instance("monitor", "edge-1"))
        monitor = cluster.pods["dayu-monitor@edge-1"]
        for _ in range(2):
            await asyncio.sleep(8)  # a few reports in
            async with open_channel(address, cluster.tls) as channel:  # the operator's certificate (mTLS)
                stub = monitor_pb2_grpc.MonitorServiceStub(channel)
                reports.append(await stub.GetResources(monitor_pb2.GetResourcesRequest(), timeout=10))
            if monitor.restarts == 0:
                assert monitor.process is not None
                monitor.process.kill()

    console: dict[str, tuple[int, str, bytes]] = {}

    async def call_console() -> None:
        """Once the cluster runs: the console from this machine, at the cloud node's address."""
        for _ in range(600):  # until the cluster runs
            if cluster.console_url:
                break
            await asyncio.sleep(0.5)
        url = cluster.console_url
        console["url"] = (0, url, b"")
        if (STATIC / "index.html").exists():  # the UI's files, where they are built
            console["index"] = await asyncio.to_thread(_http, url)
        method = f"{url}dayu.v1.BackendService/ListPipelines"
        json_body = {"Content-Type": "application/json"}
        admin = {**json_body, "Authorization": f"Bearer {cluster.tokens.admin[0]}"}
        console["admin"] = await asyncio.to_thread(_http, method, b"{}", admin)
        console["anonymous"] = await asyncio.to_thread(_http, method, b"{}", json_body)

    watcher = asyncio.create_task(watch_monitor())
    console_caller = asyncio.create_task(call_console())
    printed: list[str] = []
    try:
        summary = await run_mesh(cluster, RUN_S, progress=printed.append)
    finally:
        for task in (watcher, console_caller):
            task.cancel()
        await asyncio.gather(watcher, console_caller, return_exceptions=True)
        await cluster.abort()

    assert summary["delivered"] > 0, summary
    assert summary["unaccounted"] == 0, summary
    # The console, served by the backend on the cloud node (the manifests' console port), answers this
    # machine; run_mesh said where, with the admin token of the cluster's tokens file.
    console_caller.result()  # raises what the calls raised
    url = f"http://{cluster.node_address(config.cloud_node)}:8080/"
    assert console["url"][1] == url, console
    assert f"dayu: console {url}#token={cluster.tokens.admin[0]}  (tokens: {cluster.tokens_path})" in printed
    if "index" in console:
        status_code, content_type, body = console["index"]
        assert status_code == 200 and content_type.startswith("text/html"), console["index"][:2]
        assert body == (STATIC / "index.html").read_bytes()
    status_code, content_type, body = console["admin"]
    assert status_code == 200 and content_type.startswith("application/json"), console["admin"]
    names = {pipeline["name"] for pipeline in json.loads(body)["pipelines"]}
    assert {stream.pipeline for stream in config.streams} <= names, names
    assert console["anonymous"][0] == 401, console["anonymous"]  # no token, no answer
    kernel, traced = cluster.kernel_link_bytes, _bytes_per_link(collector.spans)
    for link in ("edge-1->cloud", "edge-2->cloud"):
        spans = traced[link]
        assert spans > 100_000, (link, spans)
        # The kernel counts frames with their TCP/IP headers, gRPC framing and the other calls on the
        # link (spans, monitor reports); the spans count the tasks' and probes' own bytes. The other
        # calls go at about the same rate whatever the tasks' size (which the policy lowers when the
        # machine is busy): an allowance per second for them, beside a share of the tasks' bytes.
        allowed = 0.10 * spans + OTHER_CALLS_BYTES_PER_S * RUN_S
        assert abs(kernel[link] - spans) <= allowed, (link, kernel[link], spans)
    # The edge's monitor reports its node's cgroup: half a core, not the machine's two; killed, it
    # was restarted, said so, and reports again.
    assert len(reports) == 2
    for report in reports:
        assert report.resources.cpu_limit_cores == pytest.approx(0.5)
        assert report.resources.memory_total_bytes == 2048 * 1024 * 1024
        assert report.resources.cpu_percent > 0
    assert cluster.pods["dayu-monitor@edge-1"].restarts == 1
    assert any("pod dayu-monitor@edge-1 exited with -9; restart 1" in line for line in lines), lines
    # Nothing of the cluster is left.
    assert not _namespaces(name)


def test_down_removes_what_a_crashed_run_left(tmp_path: Path) -> None:
    """`dayu cluster up` killed with SIGKILL leaves its pods running in their namespaces and cgroups;
    `dayu cluster down` removes them all, and nothing else."""
    name = f"t{uuid.uuid4().hex[:6]}"
    dayu = str(Path(sys.executable).parent / "dayu")
    up = subprocess.Popen(
        [dayu, "cluster", "up", "--name", name, "--config", str(CONFIGS / "cluster.yaml"), "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert up.stdout is not None
        for line in up.stdout:  # bounded by the test's timeout
            if line.startswith("dayu: mesh up"):
                break
        state = status(name)
        assert state is not None and all(pod["alive"] for pod in state["pods"].values()), state
    except BaseException:
        cleanup(name)
        raise
    finally:
        up.kill()
        up.wait()
    pids = [pod["pid"] for pod in state["pods"].values()]
    assert any(running(pid) for pid in pids)  # orphaned, still running

    down = subprocess.run([dayu, "cluster", "down", "--name", name], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert f"netns {name}-cloud" in down.stdout, down.stdout
    assert not [pid for pid in pids if running(pid)]
    assert not _namespaces(name)
    assert not list(Path("/sys/fs/cgroup/cpu").glob(f"**/{name}"))
    assert status(name) is None
    again = subprocess.run([dayu, "cluster", "down", "--name", name], capture_output=True, text=True, timeout=60)
    assert "nothing" in again.stdout
