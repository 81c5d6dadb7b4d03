"""The mesh's own cost, with no-op stages, on loopback (no emulated link limits).

Measures side by side in one run:
  - direct: a Process call on a processor (what a stage costs without the mesh);
  - local: a one-stage task through controller -> processor -> distributor on one node;
  - forward: a two-stage task whose second stage runs on another node (one controller-to-controller hop);
  - throughput: tasks per second through the mesh with many tasks in flight;
each for the same mesh with every task traced (spans exported over OTLP) and with tracing off.

    .venv/bin/python hack/bench_mesh.py [--tasks 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from dayu.mesh.embedded import Mesh
from dayu.mesh.model import MeshConfig
from dayu.runtime.config import LogSettings
from dayu.runtime.logs import configure_logging
from dayu.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    distributor_pb2,
    distributor_pb2_grpc,
    processor_pb2,
    processor_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
    types_pb2,
)

PIPELINES = """
pipelines:
  - name: one
    stages:
      - {name: a, processor: noop, input_type: DATA_TYPE_FRAMES, output_type: DATA_TYPE_BOXES}
  - name: two
    stages:
      - {name: a, processor: noop, input_type: DATA_TYPE_FRAMES, output_type: DATA_TYPE_BOXES}
      - {name: b, processor: noop, parents: [a], input_type: DATA_TYPE_BOXES, output_type: DATA_TYPE_BOXES}
"""


def make_task(nodes: list[str]) -> task_pb2.Task:
    task_id = str(uuid.uuid4())
    task = task_pb2.Task(stream_id="bench", task_id=task_id, root_id=task_id)
    task.created_at.GetCurrentTime()
    previous = None
    for i, node in enumerate(nodes):
        name = "ab"[i]
        spec = types_pb2.StageSpec(
            name=name,
            processor="noop",
            parents=[previous] if previous else [],
            input_type=types_pb2.DATA_TYPE_BOXES if previous else types_pb2.DATA_TYPE_FRAMES,
            output_type=types_pb2.DATA_TYPE_BOXES,
        )
        task.dag.stages.add(spec=spec, node=node)
        previous = name
    task.segment.codec = types_pb2.CODEC_JPEG
    task.segment.frame_indices.extend(range(5))
    task.segment.frames.extend([b"\0" * 20_000] * 5)  # about a 5-frame JPEG segment at 640x360
    return task


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return f"p50 {statistics.median(ordered) * 1000:7.2f} ms   p95 {p95 * 1000:7.2f} ms"


class MeshProbe:
    """One embedded mesh (cloud + edge-1, no-op stages) and the calls that measure it."""

    def __init__(self, workdir: Path, sample_ratio: float) -> None:
        workdir.mkdir()
        (workdir / "pipelines.yaml").write_text(PIPELINES)
        config = MeshConfig.model_validate(
            {
                "nodes": {"cloud": {"processors": ["noop"]}, "edge-1": {"processors": ["noop"]}},
                "pipelines_file": str(workdir / "pipelines.yaml"),
                "processors": {"noop": {"workers": 4, "queue_capacity": 1024}},
                "trace_sample_ratio": sample_ratio,
            }
        )
        self.mesh = Mesh(config, workdir)
        self.arrivals: dict[str, float] = {}
        self.arrived = asyncio.Condition()

    async def start(self) -> None:
        await self.mesh.start()
        addresses = self.mesh.addresses
        self.controller = controller_pb2_grpc.ControllerServiceStub(
            grpc.aio.insecure_channel(addresses["controller@edge-1"])
        )
        self.processor = processor_pb2_grpc.ProcessorServiceStub(
            grpc.aio.insecure_channel(addresses["processor@edge-1/noop"])
        )
        distributor = distributor_pb2_grpc.DistributorServiceStub(grpc.aio.insecure_channel(addresses["distributor"]))
        self.watcher = asyncio.create_task(self._watch(distributor))

    async def _watch(self, distributor: distributor_pb2_grpc.DistributorServiceStub) -> None:
        request = distributor_pb2.WatchRecordsRequest(filter=distributor_pb2.RecordFilter())
        async for reply in distributor.WatchRecords(request):
            record = reply.record
            async with self.arrived:
                self.arrivals[record.task.task_id] = time.perf_counter()
                self.arrived.notify_all()

    async def through_mesh(self, nodes: list[str]) -> float:
        task = make_task(nodes)
        started = time.perf_counter()
        await self.controller.SubmitTask(controller_pb2.SubmitTaskRequest(task=task))
        async with self.arrived:
            await self.arrived.wait_for(lambda: task.task_id in self.arrivals)
        return self.arrivals[task.task_id] - started

    async def direct(self) -> float:
        started = time.perf_counter()
        await self.processor.Process(processor_pb2.ProcessRequest(task=make_task(["edge-1"]), stage="a"))
        return time.perf_counter() - started

    async def throughput(self, tasks: int) -> float:
        """Two-stage tasks per second with up to 32 submissions in flight."""
        started = time.perf_counter()
        batch = [make_task(["edge-1", "cloud"]) for _ in range(tasks)]
        limit = asyncio.Semaphore(32)

        async def submit(task: task_pb2.Task) -> None:
            async with limit:
                await self.controller.SubmitTask(controller_pb2.SubmitTaskRequest(task=task))

        await asyncio.gather(*(submit(task) for task in batch))
        async with self.arrived:
            await self.arrived.wait_for(lambda: all(t.task_id in self.arrivals for t in batch))
        return tasks / (time.perf_counter() - started)

    async def spans_received(self) -> int:
        """Spans the scheduler got over OTLP (the batch processors export every 0.5 s)."""
        stub = scheduler_pb2_grpc.SchedulerServiceStub(grpc.aio.insecure_channel(self.mesh.addresses["scheduler"]))
        await asyncio.sleep(1.5)
        reply = await stub.GetSchedulerStats(scheduler_pb2.GetSchedulerStatsRequest())
        return reply.spans_received

    async def stop(self) -> None:
        self.watcher.cancel()
        await self.mesh.abort()


async def main(tasks: int, repeats: int) -> None:
    configure_logging(LogSettings(level="error", format="console"))
    with tempfile.TemporaryDirectory() as tmp:
        # The same mesh twice: every task traced (spans exported over OTLP to the scheduler), and
        # not traced at all, measured interleaved so that noise hits both alike.
        meshes = {"traced": MeshProbe(Path(tmp) / "traced", 1.0), "untraced": MeshProbe(Path(tmp) / "untraced", 0.0)}
        for probe in meshes.values():
            await probe.start()
        try:
            results: dict[str, dict[str, list[float]]] = {
                name: {"direct": [], "local": [], "forward": []} for name in meshes
            }
            for _ in range(repeats):
                for name, probe in meshes.items():
                    results[name]["direct"].append(await probe.direct())
                    results[name]["local"].append(await probe.through_mesh(["edge-1"]))
                    results[name]["forward"].append(await probe.through_mesh(["edge-1", "cloud"]))
            rates = {name: [] for name in meshes}  # type: dict[str, list[float]]
            for _ in range(3):
                for name, probe in meshes.items():
                    rates[name].append(await probe.throughput(tasks))
            spans = await meshes["traced"].spans_received()
            sent = len(meshes["traced"].arrivals)
        finally:
            for probe in meshes.values():
                await probe.stop()

    for name, measured in results.items():
        print(f"-- {name}")
        print(f"{'direct Process call':42s} {summary(measured['direct'])}")
        print(f"{'one stage through the mesh (1 node)':42s} {summary(measured['local'])}")
        print(f"{'two stages, one forward hop (2 nodes)':42s} {summary(measured['forward'])}")
        local = statistics.median(measured["local"]) - statistics.median(measured["direct"])
        hop = statistics.median(measured["forward"]) - statistics.median(measured["local"])
        print(
            f"mesh overhead over a direct call (p50): {local * 1000:.2f} ms; "
            f"a forward hop plus a stage: {hop * 1000:.2f} ms"
        )
        print(f"throughput: {statistics.median(rates[name]):.0f} two-stage tasks/s (median of 3 batches of {tasks})")
    traced, untraced = (statistics.median(results[n]["forward"]) for n in ("traced", "untraced"))
    print(f"tracing costs a two-stage task {(traced - untraced) * 1000:.2f} ms at p50 ({traced / untraced:.2f}x)")
    print(
        f"the scheduler received {spans} spans for {sent} traced tasks ({spans / sent:.1f} per task, bursts included)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.repeats))
