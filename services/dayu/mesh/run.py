"""Runs a mesh for a while, in any mode, and summarizes what it did: progress every 5 s, then the
generators stop, the tasks in flight settle (delivered or dropped), the rest stops, and the summary
is read from the distributor's records, the generators', controllers' and scheduler's counters."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dayu.mesh.model import MeshConfig
from dayu.mesh.plan import Instance
from dayu.mesh.summary import ResultTally, format_summary, percentiles
from dayu.runtime.auth import TokensFile
from dayu.runtime.client import Channels
from dayu.runtime.paging import every_page
from dayu.runtime.tls import TlsSettings
from dayu.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    decision_pb2,
    distributor_pb2,
    distributor_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)


class RunningMesh(Protocol):
    """A mode's mesh, as the run loop drives it: the embedded mesh, or the cluster of namespaces."""

    config: MeshConfig
    instances: list[Instance]
    triton_statistics: dict[str, dict[str, dict[str, float | int]]]
    kernel_link_bytes: dict[str, int]  # "a->b" -> bytes the kernel counted, once stopped; {} if not real links
    records: Path  # the distributor's SQLite file, as this machine sees it
    tls: TlsSettings  # the certificate this machine's clients show the mesh (the operator's); empty: plaintext
    tokens: TokensFile  # the operator API's bearer tokens (the backend's console, the scheduler's SetPolicy)
    tokens_path: Path  # where they are, for the operator
    traces_started_at: float | None  # wall clock when the links' bandwidth traces started (once started)

    @property
    def console_url(self) -> str:
        """The console's URL once started; empty without one."""

    def reset(self) -> None:
        """Forgets what an earlier run left in the working folder (records, task journals, sequence
        numbers): a run starts fresh. (Within a run they survive restarts: that is what they are for.)"""

    async def start(self) -> None: ...
    def address(self, instance: Instance) -> str:
        """HOST:PORT at which this process reaches the instance."""

    async def stop_generators(self) -> None: ...
    async def stop(self) -> None:
        """Stops the rest, in STOP_ORDER, once the tasks in flight settled."""

    async def abort(self) -> None:
        """Stops whatever still runs, at once; safe to call after stop()."""


def _cloud(mesh: RunningMesh, component: str) -> str:
    return mesh.address(Instance(component, mesh.config.cloud_node))


@dataclass(frozen=True)
class Tick:
    """How a run is going, every `tick_s` of run_mesh."""

    running_s: float  # since the mesh was up
    generated: int
    delivered: int
    dropped: int
    latency_p50_s: float | None


async def run_mesh(
    mesh: RunningMesh,
    duration_s: float | None,
    progress: Callable[[str], None] = print,
    stop_event: asyncio.Event | None = None,
    on_tick: Callable[[Tick], None] = lambda tick: None,
    tick_s: float = 5.0,
) -> dict[str, Any]:
    """Runs the mesh until `duration_s` passes or `stop_event` is set; returns the summary. Every
    `tick_s` it says how it goes: a line to `progress`, and the figures to `on_tick`."""
    config = mesh.config
    stop_event = stop_event or asyncio.Event()
    tally = ResultTally()
    started = time.monotonic()
    channels: Channels | None = None
    try:
        await mesh.start()
        channels = Channels(64 * 1024 * 1024, mesh.tls)  # once started: the cluster's certificates are made
        progress(
            f"dayu: mesh up with nodes {sorted(config.nodes)}, {len(config.streams)} streams; "
            f"scheduler {_cloud(mesh, 'scheduler')}, backend {_cloud(mesh, 'backend')}"
        )
        if mesh.console_url and mesh.tokens.admin:
            # The token rides in the fragment, which the browser never sends: the console reads it, once.
            progress(f"dayu: console {mesh.console_url}#token={mesh.tokens.admin[0]}  (tokens: {mesh.tokens_path})")
        # The embedded mesh serves every component's metrics once (the cluster's pods each their own).
        if metrics_url := getattr(mesh, "metrics_url", ""):
            triton = getattr(mesh, "triton_metrics_url", "")
            progress(f"dayu: metrics {metrics_url}" + (f"  (Triton's: {triton})" if triton else ""))
        distributor = channels.stub(distributor_pb2_grpc.DistributorServiceStub, _cloud(mesh, "distributor"))
        watcher = asyncio.create_task(_watch(distributor, tally))

        running = time.monotonic()  # the duration counts from when the mesh is up
        deadline = running + duration_s if duration_s else None
        while not stop_event.is_set() and (deadline is None or time.monotonic() < deadline):
            wait = tick_s if deadline is None else max(0.0, min(tick_s, deadline - time.monotonic()))
            try:
                await asyncio.wait_for(stop_event.wait(), timeout=wait)
            except TimeoutError:
                pass
            generated = sum((await generated_per_stream(mesh, channels)).values())
            latency = percentiles(tally.latencies)["p50"]
            progress(
                f"dayu: {time.monotonic() - started:5.0f} s  generated {generated}  delivered {tally.delivered}"
                f"  dropped {tally.dropped}  latency p50 {latency or 0:.2f} s"
            )
            on_tick(Tick(time.monotonic() - running, generated, tally.delivered, tally.dropped, latency))
        # Read before the generators stop (they may still make a task or two until they do).
        generator_counts = await generated_per_stream(mesh, channels)
        link_bytes = await bytes_per_link(mesh, channels)
        scheduling = await scheduling_stats(mesh, channels)
        progress("dayu: stopping: generators first, then waiting for tasks in flight")
        await mesh.stop_generators()
        # Until every task made is delivered or dropped, while they keep settling: a backlog on a busy
        # machine drains for longer than any fixed wait, and what is still in flight when the rest
        # stops is lost unrecorded. Tasks made after the count above show in the records' sequences.
        await tally.wait_for_total(generator_counts, config.join_timeout_s + 10)
        # What never arrived is recorded as lost, with that reason (the watcher then counts it).
        settle = distributor_pb2.SettleStreamsRequest(generated=tally.generated(generator_counts))
        if (await distributor.SettleStreams(settle, timeout=30)).recorded:
            await tally.wait_for_total(generator_counts, 5)
        await mesh.stop()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        generator_counts = tally.generated(generator_counts)
    finally:
        await mesh.abort()
        if channels is not None:
            await channels.close()
    summary = {
        "duration_s": round(time.monotonic() - started, 1),
        "generated": sum(generator_counts.values()),
        "generated_per_stream": generator_counts,
        **tally.summary(),
        "bytes_per_link": link_bytes,
        "kernel_bytes_per_link": mesh.kernel_link_bytes,
        "scheduling": scheduling,
        "triton": mesh.triton_statistics,
    }
    summary["unaccounted"] = summary["generated"] - summary["delivered"] - summary["dropped"]
    progress(format_summary(summary))
    return summary


async def _watch(distributor: distributor_pb2_grpc.DistributorServiceStub, tally: ResultTally) -> None:
    request = distributor_pb2.WatchRecordsRequest(filter=distributor_pb2.RecordFilter())
    async for reply in distributor.WatchRecords(request):
        await tally.add(reply.record)


def _of(mesh: RunningMesh, component: str) -> list[Instance]:
    return [instance for instance in mesh.instances if instance.component == component]


async def generated_per_stream(mesh: RunningMesh, channels: Channels) -> dict[str, int]:
    counts: dict[str, int] = {}
    for instance in _of(mesh, "generator"):
        stub = channels.stub(generator_pb2_grpc.GeneratorServiceStub, mesh.address(instance))
        # Waiting for the channel to be ready: the components dial each other while the mesh starts, the
        # generators last, and a connection refused then leaves gRPC's subchannel (shared by the
        # process's channels to that address) in backoff for a second or more, failing calls at once.
        listing = functools.partial(stub.ListStreams, wait_for_ready=True)
        streams, _ = await every_page(listing, generator_pb2.ListStreamsRequest(), "streams", 5)
        counts.update({stream.spec.stream_id: stream.tasks_generated for stream in streams})
    return counts


async def scheduling_stats(mesh: RunningMesh, channels: Channels) -> dict[str, Any]:
    """Per stream: its policy, how many decisions it made and how long they took, its most recent
    decisions (when, relative to the first stream's registration; version; configuration,
    placement, pause; reason) and the latency of its hops from the traces the scheduler received."""
    stub = channels.stub(scheduler_pb2_grpc.SchedulerServiceStub, _cloud(mesh, "scheduler"))
    streams, _ = await every_page(stub.GetSchedulerStats, scheduler_pb2.GetSchedulerStatsRequest(), "streams", 5)
    registered = [s.registered_at.ToNanoseconds() for s in streams if s.HasField("registered_at")]
    start_ns = min(registered, default=0)

    def decided(d: decision_pb2.Decision) -> dict[str, Any]:
        c = d.configuration
        return {
            "version": d.version,
            "at_s": round((d.made_at.ToNanoseconds() - start_ns) / 1e9, 3) if start_ns else None,
            "configuration": {
                "width": c.resolution.width,
                "height": c.resolution.height,
                "fps": c.fps,
                "quality": c.quality,
                "frames_per_segment": c.frames_per_segment,
            },
            "placement": dict(sorted(d.placement.items())),
            "paused": d.paused,
            "reason": d.reason,
        }

    return {
        s.stream_id: {
            "policy": s.policy,
            "decisions": s.decisions,
            "decision_time_p50_s": s.decision_time_p50_s,
            "decision_time_p95_s": s.decision_time_p95_s,
            "last_reason": s.current.reason,
            "history": [decided(d) for d in s.history],
            "hops": [
                {"hop": h.hop, "stage": h.stage, "node": h.node, "spans": h.spans, "p50_s": h.p50_s, "p95_s": h.p95_s}
                for h in s.hop_latencies
            ],
        }
        for s in streams
    }


async def link_stats(mesh: RunningMesh, channels: Channels) -> list[controller_pb2.LinkStats]:
    """Every controller's counters of the links from its node."""
    found: list[controller_pb2.LinkStats] = []
    for instance in _of(mesh, "controller"):
        stub = channels.stub(controller_pb2_grpc.ControllerServiceStub, mesh.address(instance))
        reply = await stub.GetLinkStats(controller_pb2.GetLinkStatsRequest(), timeout=5)
        found.extend(reply.links)
    return found


async def bytes_per_link(mesh: RunningMesh, channels: Channels) -> dict[str, int]:
    return {f"{link.from_node}->{link.to_node}": link.bytes_sent for link in await link_stats(mesh, channels)}
