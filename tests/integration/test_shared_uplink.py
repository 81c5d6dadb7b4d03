"""Streams that share an uplink, on real servers: four streams of one edge send over one 8 Mbit/s link.
With shares (latency_budget's default) they stay within budget and none starves; beside them, in the
same run, four streams on another edge decide each as if it had the link to itself (share_uplink off),
which asks the link for about four times what it carries."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from dayu.mesh.embedded import Mesh
from dayu.mesh.model import MeshConfig
from dayu.v1 import distributor_pb2, distributor_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, task_pb2

PIPELINES = """
pipelines:
  - name: one
    stages:
      - {name: detect, processor: noop, input_type: DATA_TYPE_FRAMES, output_type: DATA_TYPE_BOXES}
"""
BUDGET_S = 1.0
STREAMS = 4  # per edge
RUN_S = 45
SETTLED_S = 15  # tasks made before this are the policies finding their feet


def _stream(edge: str, index: int, share: bool) -> dict[str, object]:
    return {
        "stream_id": f"{edge}-cam-{index}",
        "source_id": f"{edge}-street-{index}",
        "node": edge,
        "pipeline": "one",
        "latency_budget_s": BUDGET_S,
        "max_configuration": {"width": 960, "height": 540, "fps": 5, "quality": 90, "frames_per_segment": 2},
        "policy": {"name": "latency_budget", "params": {"share_uplink": share}},
    }


async def test_four_streams_on_one_uplink_share_it_and_stay_within_budget(tmp_path: Path) -> None:
    (tmp_path / "pipelines.yaml").write_text(PIPELINES)
    edges = {"shared": True, "alone": False}  # edge -> whether its streams share the uplink
    config = MeshConfig.model_validate(
        {
            "nodes": {"cloud": {"processors": ["noop"]}, **{edge: {} for edge in edges}},
            "links": [{"between": [edge, "cloud"], "delay_ms": 10, "bandwidth_mbps": 8} for edge in edges],
            "pipelines_file": str(tmp_path / "pipelines.yaml"),
            "sources": [
                {
                    "source_id": f"{edge}-street-{i}",
                    "kind": "synthetic",
                    "params": {"width": 960, "height": 540, "fps": 10, "seed": i},
                }
                for edge in edges
                for i in range(STREAMS)
            ],
            "streams": [_stream(edge, i, share) for edge, share in edges.items() for i in range(STREAMS)],
        }
    )
    mesh = Mesh(config, tmp_path)
    await mesh.start()
    try:
        await asyncio.sleep(RUN_S)
        async with grpc.aio.insecure_channel(mesh.addresses["scheduler"]) as channel:
            stats = await scheduler_pb2_grpc.SchedulerServiceStub(channel).GetSchedulerStats(
                scheduler_pb2.GetSchedulerStatsRequest(), timeout=5
            )
        async with grpc.aio.insecure_channel(mesh.addresses["distributor"]) as channel:
            reply = await distributor_pb2_grpc.DistributorServiceStub(channel).QueryRecords(
                distributor_pb2.QueryRecordsRequest(limit=1000), timeout=5
            )
    finally:
        await mesh.abort()

    started = min(r.task.created_at.ToNanoseconds() for r in reply.records)
    settled = [r for r in reply.records if r.task.created_at.ToNanoseconds() - started >= SETTLED_S * 1e9]
    within: dict[str, float] = {}
    delivered: dict[str, int] = {}
    for stream in stats.streams:
        mine = [r for r in settled if r.task.stream_id == stream.stream_id]
        good = [r for r in mine if r.outcome == task_pb2.TASK_OUTCOME_DELIVERED and r.latency_s <= BUDGET_S]
        within[stream.stream_id] = len(good) / len(mine) if mine else 0.0
        delivered[stream.stream_id] = len(good)
    shared = {s: w for s, w in within.items() if s.startswith("shared")}
    alone = {s: w for s, w in within.items() if s.startswith("alone")}
    summary = f"within budget, shared: {shared}; each on its own: {alone}; delivered within budget: {delivered}"
    assert len(shared) == STREAMS, summary
    assert min(shared.values()) >= 0.9, summary
    # None starves: each stream delivers at least half of what the streams of its edge deliver on average.
    shared_delivered = [delivered[s] for s in shared]
    assert min(shared_delivered) >= 0.5 * sum(shared_delivered) / STREAMS, summary
    assert sum(shared.values()) >= sum(alone.values()), summary
    # Together the streams sharing the link asked no more of it than it carries (each kept to its share;
    # the bytes of every task they made after settling, over that time).
    sent = sum(max(h.bytes for h in r.task.hops) for r in settled if r.task.stream_id.startswith("shared"))
    asked_mbps = sent * 8 / (RUN_S - SETTLED_S) / 1e6
    assert asked_mbps <= 8.0, f"{asked_mbps:.1f} Mbit/s asked of the 8 Mbit/s link; {summary}"
