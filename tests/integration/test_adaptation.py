"""The adaptive loop on real servers: under a scripted bandwidth drop, the latency-budget policy
changes its decisions and the stream's latency comes back within its budget."""

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
DROP_AT_S = 6


async def test_latency_budget_policy_recovers_from_a_bandwidth_drop(tmp_path: Path) -> None:
    (tmp_path / "pipelines.yaml").write_text(PIPELINES)
    # 40 Mbit/s, then 1.5 Mbit/s from DROP_AT_S on (the trace's last point lasts long enough).
    (tmp_path / "drop.txt").write_text(f"0 40\n{DROP_AT_S} 1.5\n{DROP_AT_S * 20} 1.5\n")
    config = MeshConfig.model_validate(
        {
            "nodes": {"cloud": {"processors": ["noop"]}, "edge-1": {}},  # the stage runs on the cloud
            "links": [{"between": ["edge-1", "cloud"], "delay_ms": 10, "trace": str(tmp_path / "drop.txt")}],
            "pipelines_file": str(tmp_path / "pipelines.yaml"),
            "sources": [
                {"source_id": "street", "kind": "synthetic", "params": {"width": 960, "height": 540, "fps": 10}}
            ],
            "streams": [
                {
                    "stream_id": "cam",
                    "source_id": "street",
                    "node": "edge-1",
                    "pipeline": "one",
                    "latency_budget_s": 0.6,
                    "max_configuration": {
                        "width": 960,
                        "height": 540,
                        "fps": 5,
                        "quality": 90,
                        "frames_per_segment": 2,
                    },
                    "policy": {"name": "latency_budget"},
                }
            ],
        }
    )
    mesh = Mesh(config, tmp_path)
    await mesh.start()
    try:
        await asyncio.sleep(DROP_AT_S + 34)
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

    (stream,) = stats.streams
    current = stream.current
    assert current.version > 1, "the policy never reacted"
    config = current.configuration
    # Lighter on the uplink: fewer pixels, frames per second or frames per segment (or lower quality).
    knobs, best = (config.resolution.height, config.fps, config.frames_per_segment, config.quality), (540, 5, 2, 90)
    assert all(k <= b for k, b in zip(knobs, best, strict=True)) and knobs != best
    delivered = [r for r in reply.records if r.outcome == task_pb2.TASK_OUTCOME_DELIVERED]
    started = min(r.task.created_at.ToNanoseconds() for r in delivered)

    def made_after(seconds: float) -> list[task_pb2.TaskRecord]:
        return [r for r in delivered if r.task.created_at.ToNanoseconds() - started >= seconds * 1e9]

    # The drop hurts at first: tasks made before the policy reacted arrive late, or the
    # controller drops them for it: superseded (their decision replaced, sure to arrive late) or
    # overtaken (called off on the link once late, the stream's next tasks behind them). From a
    # second before the drop (`started` is the first delivered task's making, after the link's start):
    # the tasks on the link when it falls are the first it catches.
    caught = started + (DROP_AT_S - 1) * 1e9
    late = [r.latency_s for r in made_after(DROP_AT_S - 1) if r.latency_s > 0.6]
    given_way = [
        r.reason
        for r in reply.records
        if r.outcome == task_pb2.TASK_OUTCOME_DROPPED
        and r.task.created_at.ToNanoseconds() >= caught
        and r.reason.startswith(("superseded", "overtaken"))
    ]
    assert late or given_way, "the drop should have hurt at first"
    recovered = [r.latency_s for r in made_after(DROP_AT_S + 24)]
    assert len(recovered) >= 5
    within = sum(latency <= 0.6 for latency in recovered) / len(recovered)
    assert within >= 0.7, f"latencies after adapting: {recovered}"
    assert sorted(recovered)[len(recovered) // 2] <= 0.6
