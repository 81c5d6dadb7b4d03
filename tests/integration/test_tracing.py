"""One trace per task across the mesh: spans exported over OTLP by every component, to the
scheduler (hop latency) and to an external collector given by configuration."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from dayu.mesh.embedded import Mesh
from dayu.mesh.model import MeshConfig
from dayu.v1 import distributor_pb2, distributor_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, task_pb2

from conftest import FORK_JOIN_PIPELINES, SpanCollector

NOOP_DELAY_S = 0.02
INFERENCE = [("detect", "edge-1"), ("classify", "cloud"), ("count", "edge-1"), ("merge", "edge-1")]
EXPECTED_HOPS = [
    *[(hop, stage, node) for stage, node in INFERENCE for hop in ("processor.queue", "processor.inference")],
    ("link.queue", "", "edge-1->cloud"),
    ("link.transfer", "", "edge-1->cloud"),
    ("controller.join_wait", "merge", "edge-1"),
    ("distributor.store", "", "cloud"),
]


async def _delivered(distributor: str, count: int) -> list[task_pb2.TaskRecord]:
    async with grpc.aio.insecure_channel(distributor) as channel:
        stub = distributor_pb2_grpc.DistributorServiceStub(channel)
        for _ in range(200):
            reply = await stub.QueryRecords(distributor_pb2.QueryRecordsRequest(), timeout=5)
            delivered = [r for r in reply.records if r.outcome == task_pb2.TASK_OUTCOME_DELIVERED]
            if len(delivered) >= count:
                return delivered
            await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} tasks delivered")


async def test_every_hop_of_a_task_is_a_span_of_one_trace(
    tmp_path: Path, collect_spans: Callable[..., Awaitable[SpanCollector]]
) -> None:
    collector = await collect_spans()
    (tmp_path / "pipelines.yaml").write_text(FORK_JOIN_PIPELINES)
    config = MeshConfig.model_validate(
        {
            "nodes": {"cloud": {"processors": ["noop"]}, "edge-1": {"processors": ["noop"]}},
            "links": [{"between": ["edge-1", "cloud"], "bandwidth_mbps": 50, "delay_ms": 5}],
            "pipelines_file": str(tmp_path / "pipelines.yaml"),
            "processors": {"noop": {"params": {"delay_s": NOOP_DELAY_S}}},
            "sources": [{"source_id": "s", "kind": "synthetic", "params": {"width": 640, "height": 360, "fps": 10}}],
            "streams": [
                {
                    "stream_id": "cam",
                    "source_id": "s",
                    "node": "edge-1",
                    "pipeline": "fork-join",
                    "latency_budget_s": 2.0,
                    "max_configuration": {"width": 640, "height": 360, "fps": 10, "frames_per_segment": 2},
                    "policy": {
                        "name": "fixed",
                        "params": {"fps": 5, "placement": {"detect": "edge-1", "classify": "cloud", "count": "edge-1"}},
                    },
                }
            ],
            "otlp_collectors": [f"127.0.0.1:{collector.port}"],
        }
    )
    mesh = Mesh(config, tmp_path)
    try:
        await mesh.start()
        records = await _delivered(mesh.addresses["distributor"], 3)
        async with grpc.aio.insecure_channel(mesh.addresses["scheduler"]) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            for _ in range(100):  # spans are exported in batches, every 0.5 s
                stats = await stub.GetSchedulerStats(scheduler_pb2.GetSchedulerStatsRequest(), timeout=5)
                hops = {(h.hop, h.stage, h.node): h for s in stats.streams for h in s.hop_latencies}
                if all(key in hops for key in EXPECTED_HOPS) and len(collector.spans) >= 30:
                    break
                await asyncio.sleep(0.1)
    finally:
        await mesh.abort()

    # The scheduler's OTLP receiver turned the spans into per-stage, per-node latency.
    assert stats.spans_received > 0
    assert all(key in hops for key in EXPECTED_HOPS), sorted(hops)
    for stage, node in INFERENCE:
        inference = hops[("processor.inference", stage, node)]
        assert inference.spans >= 1
        assert NOOP_DELAY_S * 0.9 <= inference.p50_s < 1.0, inference
    transfer = hops[("link.transfer", "", "edge-1->cloud")]
    assert 0.005 <= transfer.p50_s < 1.0  # at least the emulated 5 ms delay
    (uplink,) = [link for link in stats.traced_links if (link.from_node, link.to_node) == ("edge-1", "cloud")]
    assert 15 < uplink.bandwidth_mbps <= 55  # emulated at 50 Mbit/s (timers overshoot under load)

    # The same spans went to the external collector: one trace per task, every hop in it.
    by_trace: dict[bytes, list[trace_pb2.Span]] = defaultdict(list)
    for span in collector.spans:
        by_trace[span.trace_id].append(span)
    record = records[0]
    trace_id = bytes.fromhex(record.task.trace_context.traceparent.split("-")[1])
    spans = by_trace[trace_id]
    names = {span.name for span in spans}
    assert names >= {
        "generator.task",
        "generator.encode",
        "generator.submit",
        "controller.route",
        "link.queue",
        "link.transfer",
        "processor.queue",
        "processor.inference",
        "controller.join_wait",
        "distributor.store",
    }
    # A tree: one root (the generator's task span), every other span's parent is in the trace, and
    # the hops on the cloud descend from the edge's spans through the gRPC metadata.
    ids = {span.span_id for span in spans}
    (root,) = [span for span in spans if not span.parent_span_id]
    assert root.name == "generator.task"
    assert all(span.parent_span_id in ids for span in spans if span is not root)
    for span in spans:
        assert span.end_time_unix_nano >= span.start_time_unix_nano
