"""The mesh's own cost, with no-op stages, on loopback (no emulated link limits), against bare gRPC calls
and against Triton called directly, all in one run on the same machine.

Measures, medians (p50) and 95th percentiles:
  - bare: a grpc.aio unary call on loopback carrying 10 KB, 200 KB and 2 MB of bytes (no protobuf,
    no interceptors, nothing else), alone and as many in a row as a task's path through the mesh makes;
  - for tasks of five frames of 10 KB, 100 KB (the original benchmark's task), 200 KB and 2 MB in all:
      direct   a Process call on a processor (what a stage costs without the mesh);
      local    a one-stage task through controller -> processor -> distributor on one node
               (gRPC calls carrying the task: submit, process, deliver: 3);
      forward  a two-stage task whose second stage runs on the cloud (submit, process, forward,
               process, deliver: 5);
      dag3     a 3-stage DAG: a on edge-1, then b and c in parallel on the cloud (the fork is made
               there), joined at the end (submit, process a, forward, process b | c, deliver: 5);
    each for the same mesh with every task traced (spans exported over OTLP to the scheduler) and with
    tracing off, measured interleaved so that noise hits both alike; the mesh's cost over the bare
    calls of the same count and payload; its overhead over the stages' direct Process calls;
  - throughput: two-stage tasks per second with 32 submissions in flight (100 KB tasks), traced or not;
  - Triton (unless --no-triton): a mesh whose one stage runs a model on the tritonserver the mesh
    starts (the nvidia-pytriton wheel's, CPU path), against the same Triton called directly with
    the processor's input tensors, by the same number of clients (--clients), segments per second;
    once with the processors' input tensors in shared memory (their default) and once in the requests
    (as the direct clients send them).

A task arrives when the distributor's WatchRecords stream hands its record to the benchmark.

    .venv/bin/python hack/bench_mesh.py [--repeats 100] [--tasks 200] [--no-triton | --only-triton] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from dayu.mesh.embedded import Mesh
from dayu.mesh.model import MeshConfig, load_mesh_config
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

ROOT = Path(__file__).resolve().parent.parent
FRAMES = 5
SIZES = {"10 KB": 10_000, "100 KB": 100_000, "200 KB": 200_000, "2 MB": 2_000_000}  # a task's frames in all
BARE_SIZES = ("10 KB", "200 KB", "2 MB")
ORIGINAL = "100 KB"  # the original benchmark's task: about a 5-frame JPEG segment at 640x360
SCENARIOS = {  # stage -> (parents, node), and the gRPC calls carrying the task on its critical path
    "local": ({"a": ((), "edge-1")}, 3),
    "forward": ({"a": ((), "edge-1"), "b": (("a",), "cloud")}, 5),
    "dag3": ({"a": ((), "edge-1"), "b": (("a",), "cloud"), "c": (("a",), "cloud")}, 5),
}
STAGE_RUNS = {"local": 1, "forward": 2, "dag3": 2}  # stage runs one after another on the critical path
PIPELINES = """
pipelines:
  - name: local
    stages:
      - {name: a, processor: noop, input_type: DATA_TYPE_FRAMES, output_type: DATA_TYPE_BOXES}
  - name: forward
    stages:
      - {name: a, processor: noop, input_type: DATA_TYPE_FRAMES, output_type: DATA_TYPE_BOXES}
      - {name: b, processor: noop, parents: [a], input_type: DATA_TYPE_BOXES, output_type: DATA_TYPE_BOXES}
  - name: dag3
    stages:
      - {name: a, processor: noop, input_type: DATA_TYPE_FRAMES, output_type: DATA_TYPE_BOXES}
      - {name: b, processor: noop, parents: [a], input_type: DATA_TYPE_BOXES, output_type: DATA_TYPE_BOXES}
      - {name: c, processor: noop, parents: [a], input_type: DATA_TYPE_BOXES, output_type: DATA_TYPE_BOXES}
"""
TIMEOUT_S = 60.0  # a task not stored by then is reported, not waited for forever


def make_task(
    scenario: str, frame_bytes: int, processor: str = "noop", frames: list[bytes] | None = None
) -> task_pb2.Task:
    task_id = str(uuid.uuid4())
    task = task_pb2.Task(stream_id="bench", task_id=task_id, root_id=task_id)
    task.created_at.GetCurrentTime()
    task.dag.pipeline = scenario
    stages, _ = SCENARIOS[scenario]
    for name, (parents, node) in stages.items():
        spec = types_pb2.StageSpec(
            name=name,
            processor=processor,
            parents=parents,
            input_type=types_pb2.DATA_TYPE_BOXES if parents else types_pb2.DATA_TYPE_FRAMES,
            output_type=types_pb2.DATA_TYPE_BOXES,
        )
        task.dag.stages.add(spec=spec, node=node)
    task.segment.codec = types_pb2.CODEC_JPEG
    frames = frames if frames is not None else [b"\0" * frame_bytes] * FRAMES
    task.segment.frame_indices.extend(range(len(frames)))
    task.segment.frames.extend(frames)
    task.segment.resolution.width, task.segment.resolution.height = 640, 360
    return task


def p50(values: list[float]) -> float:
    return statistics.median(values) * 1000


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))] * 1000


# -- bare gRPC --------------------------------------------------------------------------------------


class Bare:
    """A grpc.aio server with one unary method taking bytes and answering nothing, and its client."""

    async def start(self) -> None:
        async def call(request: bytes, context: object) -> bytes:
            return b""

        handler = grpc.method_handlers_generic_handler(
            "bench.Bare", {"Call": grpc.unary_unary_rpc_method_handler(call)}
        )
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        self.server = grpc.aio.server(options=options)
        self.server.add_generic_rpc_handlers((handler,))
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
        self.call = self.channel.unary_unary("/bench.Bare/Call")

    async def calls(self, payload: bytes, count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            await self.call(payload)
        return time.perf_counter() - started

    async def stop(self) -> None:
        await self.channel.close()
        await self.server.stop(None)


# -- the mesh ---------------------------------------------------------------------------------------


class MeshProbe:
    """One embedded mesh (cloud + edge-1) and the calls that measure it."""

    def __init__(self, workdir: Path, config: MeshConfig, processor: str = "noop") -> None:
        workdir.mkdir()
        self.mesh = Mesh(config, workdir)
        self.processor_name = processor
        self.arrivals: dict[str, float] = {}
        self.arrived = asyncio.Condition()
        # The distributor stores one task per (stream, sequence), and records the sequences a stream
        # skips as lost: each mesh numbers the tasks it is sent 0, 1, 2, ...
        self.sequence = itertools.count()

    @classmethod
    def noop(cls, workdir: Path, sample_ratio: float) -> MeshProbe:
        workdir.mkdir()
        (workdir / "pipelines.yaml").write_text(PIPELINES)
        config = {
            "nodes": {"cloud": {"processors": ["noop"]}, "edge-1": {"processors": ["noop"]}},
            "pipelines_file": str(workdir / "pipelines.yaml"),
            "processors": {"noop": {"workers": 4, "queue_capacity": 1024}},
            "trace_sample_ratio": sample_ratio,
        }
        return cls(workdir / "mesh", MeshConfig.model_validate(config))

    async def start(self) -> None:
        await self.mesh.start()
        addresses = self.mesh.addresses
        self.controller = controller_pb2_grpc.ControllerServiceStub(
            grpc.aio.insecure_channel(addresses["controller@edge-1"])
        )
        self.processor = processor_pb2_grpc.ProcessorServiceStub(
            grpc.aio.insecure_channel(addresses[f"processor@edge-1/{self.processor_name}"])
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
            if record.outcome != task_pb2.TASK_OUTCOME_DELIVERED:
                print(f"task {record.task.task_id} dropped: {record.reason}")

    async def through_mesh(self, task: task_pb2.Task) -> float:
        task.sequence = next(self.sequence)
        started = time.perf_counter()
        await self.controller.SubmitTask(controller_pb2.SubmitTaskRequest(task=task))
        await self.arrival(task)
        return self.arrivals[task.task_id] - started

    async def arrival(self, task: task_pb2.Task) -> None:
        async def arrived() -> None:
            async with self.arrived:
                await self.arrived.wait_for(lambda: task.task_id in self.arrivals)

        try:
            await asyncio.wait_for(arrived(), TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(f"task {task.task_id} ({task.dag.pipeline}) not stored after {TIMEOUT_S} s") from None

    async def direct(self, task: task_pb2.Task) -> float:
        task.stream_id = "direct"  # never delivered: no sequence of the mesh's stream
        started = time.perf_counter()
        await self.processor.Process(processor_pb2.ProcessRequest(task=task, stage="a"))
        return time.perf_counter() - started

    async def throughput(self, make: Callable[[], task_pb2.Task], tasks: int, in_flight: int = 32) -> float:
        """Tasks per second with up to `in_flight` submissions at once."""
        started = time.perf_counter()
        batch = [make() for _ in range(tasks)]
        for task in batch:
            task.sequence = next(self.sequence)
        limit = asyncio.Semaphore(in_flight)

        async def submit(task: task_pb2.Task) -> None:
            async with limit:
                await self.controller.SubmitTask(controller_pb2.SubmitTaskRequest(task=task))

        await asyncio.gather(*(submit(task) for task in batch))
        for task in batch:  # in the order submitted: each wait looks at one task
            await self.arrival(task)
        return tasks / (time.perf_counter() - started)

    async def clients(self, make: Callable[[], task_pb2.Task], clients: int, tasks: int) -> float:
        """Tasks per second of `clients` clients, each submitting a task and waiting for it to arrive."""
        started = time.perf_counter()
        per_client = tasks // clients

        async def client() -> None:
            for _ in range(per_client):
                await self.through_mesh(make())

        await asyncio.gather(*(client() for _ in range(clients)))
        return per_client * clients / (time.perf_counter() - started)

    async def spans_received(self) -> int:
        """Spans the scheduler got over OTLP (the batch processors export every 0.5 s)."""
        stub = scheduler_pb2_grpc.SchedulerServiceStub(grpc.aio.insecure_channel(self.mesh.addresses["scheduler"]))
        await asyncio.sleep(1.5)
        reply = await stub.GetSchedulerStats(scheduler_pb2.GetSchedulerStatsRequest())
        return reply.spans_received

    async def stop(self) -> None:
        self.watcher.cancel()
        await self.mesh.abort()


async def measure_mesh(
    tmp: Path, repeats: int, tasks: int, sizes: list[str]
) -> tuple[dict[str, list[float]], dict[str, dict[str, list[float]]], dict[str, list[float]], float]:
    """(bare calls, mesh times per mode and case, throughput per mode, spans per traced task)."""
    bare = Bare()
    await bare.start()
    meshes = {"untraced": MeshProbe.noop(tmp / "untraced", 0.0), "traced": MeshProbe.noop(tmp / "traced", 1.0)}
    for probe in meshes.values():
        await probe.start()
    bare_times: dict[str, list[float]] = {}
    times: dict[str, dict[str, list[float]]] = {mode: {} for mode in meshes}
    try:
        for size in sizes:
            payload = b"\0" * SIZES[size]
            frame_bytes = SIZES[size] // FRAMES
            for _ in range(5):  # warm-up
                await bare.calls(payload, 1)
                for probe in meshes.values():
                    await probe.direct(make_task("local", frame_bytes))
                    await probe.through_mesh(make_task("dag3", frame_bytes))
            for _ in range(repeats if SIZES[size] < 1_000_000 else max(repeats // 3, 10)):
                if size in BARE_SIZES:
                    bare_times.setdefault(f"{size} x1", []).append(await bare.calls(payload, 1))
                    for count in sorted({calls for _, calls in SCENARIOS.values()}):
                        bare_times.setdefault(f"{size} x{count}", []).append(await bare.calls(payload, count))
                for mode, probe in meshes.items():
                    times[mode].setdefault(f"{size} direct", []).append(
                        await probe.direct(make_task("local", frame_bytes))
                    )
                    for scenario in SCENARIOS:
                        measured = await probe.through_mesh(make_task(scenario, frame_bytes))
                        times[mode].setdefault(f"{size} {scenario}", []).append(measured)
        rates: dict[str, list[float]] = {mode: [] for mode in meshes}
        original = SIZES[ORIGINAL] // FRAMES
        for _ in range(3):
            for mode, probe in meshes.items():
                rates[mode].append(await probe.throughput(lambda: make_task("forward", original), tasks))
        spans = await meshes["traced"].spans_received()
        per_task = spans / len(meshes["traced"].arrivals)
    finally:
        for probe in meshes.values():
            await probe.stop()
        await bare.stop()
    return bare_times, times, rates, per_task


# -- Triton -----------------------------------------------------------------------------------------


def jpeg_frames(width: int, height: int, count: int) -> list[bytes]:
    """Frames of a street scene (the benchmark models' own synthetic street), JPEG-encoded."""
    import cv2

    frames = []
    rng = np.random.default_rng(0)
    for i in range(count):
        image = np.full((height, width, 3), 90, np.uint8)
        image[height // 2 :, :] = 60  # road
        for _ in range(6):  # blobs: something for the detectors to look at
            x, y = int(rng.integers(0, width - 80)), int(rng.integers(0, height - 60))
            image[y : y + 60, x : x + 80] = rng.integers(0, 255, 3)
        image = np.roll(image, i * 7, axis=1)
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        assert ok
        frames.append(encoded.tobytes())
    return frames


def processor_params(processor: str) -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((ROOT / "configs" / "processors.yaml").read_text())[processor]["params"])


async def triton_direct(address: str, model: str, frames: int, per_call: int, clients: int, tasks: int) -> float:
    """Segments per second of `clients` clients each calling Triton for a segment's frames (`per_call`
    frames a request), with random input tensors of the model's input shape."""
    import tritonclient.grpc.aio as triton_grpc

    client = triton_grpc.InferenceServerClient(address)
    try:
        metadata = await client.get_model_metadata(model, as_json=True)
        (tensor,) = metadata["inputs"]
        shape = [int(d) for d in tensor["shape"][1:]]
        outputs = [triton_grpc.InferRequestedOutput(o["name"]) for o in metadata["outputs"]]
        batch = np.random.default_rng(0).random((per_call, *shape), dtype=np.float32)

        async def segment() -> None:
            for _ in range(0, frames, per_call):
                request = triton_grpc.InferInput(tensor["name"], list(batch.shape), tensor["datatype"])
                request.set_data_from_numpy(batch)
                await client.infer(model, [request], outputs=outputs)

        await segment()  # warm-up
        per_client = tasks // clients
        started = time.perf_counter()

        async def one_client() -> None:
            for _ in range(per_client):
                await segment()

        await asyncio.gather(*(one_client() for _ in range(clients)))
        return per_client * clients / (time.perf_counter() - started)
    finally:
        await client.close()


async def measure_triton(
    tmp: Path, processor: str, clients: int, tasks: int, frames: int, shared_memory: bool
) -> tuple[float, float]:
    """(mesh segments/s, direct segments/s) for a one-stage pipeline on `processor`."""
    workdir = tmp / f"triton-{processor}-{'shared' if shared_memory else 'wired'}"
    workdir.mkdir()
    params = processor_params(processor)
    on_triton = {"backend": "triton", "triton": {"shared_memory": shared_memory}}
    config = {
        "nodes": {"cloud": {"processors": [processor]}, "edge-1": {"processors": [processor]}},
        "pipelines_file": str(workdir / "pipelines.yaml"),
        "processors_file": str(ROOT / "configs" / "processors.yaml"),
        "processors": {processor: {"params": on_triton, "workers": clients, "queue_capacity": 256}},
        "trace_sample_ratio": 0.0,
    }
    (workdir / "pipelines.yaml").write_text(
        "pipelines:\n  - name: local\n    stages:\n"
        f"      - {{name: a, processor: {processor}, input_type: DATA_TYPE_FRAMES, output_type: DATA_TYPE_BOXES}}\n"
    )
    probe = MeshProbe(workdir / "mesh", load_mesh_config(workdir / "mesh.yaml", config), processor)
    await probe.start()
    try:
        segment = jpeg_frames(640, 360, frames)

        def make() -> task_pb2.Task:
            return make_task("local", 0, processor=processor, frames=segment)

        await probe.clients(make, clients, clients)  # warm-up
        per_call = frames if params.get("batch_size", 1) >= frames else 1
        (address,) = probe.mesh.triton_addresses
        mesh_rates, direct_rates = [], []
        for _ in range(2):  # interleaved
            mesh_rates.append(await probe.clients(make, clients, tasks))
            model = str(params["model"])
            direct_rates.append(await triton_direct(address, model, frames, per_call, clients, tasks))
    finally:
        await probe.stop()
    return max(mesh_rates), max(direct_rates)


# -- the report -------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    configure_logging(LogSettings(level="error", format="console"))
    out = io.StringIO()

    def say(line: str = "") -> None:
        print(line)
        out.write(line + "\n")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sizes = list(SIZES) if not args.sizes else args.sizes.split(",")
        if not args.only_triton:
            bare, times, rates, spans_per_task = await measure_mesh(tmp, args.repeats, args.tasks, sizes)
        triton: dict[tuple[str, bool], tuple[float, float]] = {}
        if not args.no_triton:
            for processor in args.triton_processors.split(","):
                for shared in (True, False):
                    triton[processor, shared] = await measure_triton(
                        tmp, processor, args.clients, args.triton_tasks, 2, shared
                    )

    if not args.only_triton:
        report_mesh(say, args, sizes, bare, times, rates, spans_per_task)
    report_triton(say, triton, args.clients)
    if args.output:
        await asyncio.to_thread(Path(args.output).write_text, out.getvalue())


def report_mesh(
    say: Callable[..., None],
    args: argparse.Namespace,
    sizes: list[str],
    bare: dict[str, list[float]],
    times: dict[str, dict[str, list[float]]],
    rates: dict[str, list[float]],
    spans_per_task: float,
) -> None:
    say("bare grpc.aio unary call on loopback (bytes in, nothing back):")
    say()
    say("| payload | 1 call p50 | 3 calls p50 | 5 calls p50 |")
    say("|---|---|---|---|")
    for size in (s for s in BARE_SIZES if f"{s} x1" in bare):
        cells = " | ".join(f"{p50(bare[f'{size} x{n}']):.2f} ms" for n in (1, 3, 5))
        say(f"| {size} | {cells} |")
    say()
    say("the mesh, no-op stages, p50 (p95), tracing off:")
    say()
    say("| task's frames | direct Process | local (3 calls) | forward (5 calls) | dag3 (5 calls) |")
    say("|---|---|---|---|---|")
    untraced = times["untraced"]
    for size in sizes:
        cells = " | ".join(
            f"{p50(untraced[f'{size} {case}']):.2f} ({p95(untraced[f'{size} {case}']):.2f}) ms"
            for case in ("direct", *SCENARIOS)
        )
        say(f"| {size} | {cells} |")
    say()
    say("the mesh against bare calls of the same count and payload (p50 mesh / p50 bare calls), and its")
    say("overhead over the stages' direct Process calls (p50 mesh - stage runs x p50 direct):")
    say()
    say("| task's frames | local / 3 bare | forward / 5 bare | dag3 / 5 bare | overhead local | forward | dag3 |")
    say("|---|---|---|---|---|---|---|")
    for size in sizes:
        if f"{size} x1" not in bare:
            continue
        ratios = " | ".join(
            f"{p50(untraced[f'{size} {case}']) / p50(bare[f'{size} x{calls}']):.2f}x"
            for case, (_, calls) in SCENARIOS.items()
        )
        direct = p50(untraced[f"{size} direct"])
        overheads = " | ".join(
            f"{p50(untraced[f'{size} {case}']) - STAGE_RUNS[case] * direct:.2f} ms" for case in SCENARIOS
        )
        say(f"| {size} | {ratios} | {overheads} |")
    say()
    say("tracing (every task traced, spans exported over OTLP) against none, p50:")
    say()
    say("| task's frames | forward untraced | forward traced | cost | dag3 untraced | dag3 traced | cost |")
    say("|---|---|---|---|---|---|---|")
    for size in sizes:
        cells = []
        for case in ("forward", "dag3"):
            off, on = p50(untraced[f"{size} {case}"]), p50(times["traced"][f"{size} {case}"])
            cells.append(f"{off:.2f} ms | {on:.2f} ms | {on - off:+.2f} ms ({(on - off) / off:+.0%})")
        say(f"| {size} | {' | '.join(cells)} |")
    say()
    say(f"spans the scheduler received per traced task: {spans_per_task:.1f}")
    say()
    throughput = {mode: statistics.median(values) for mode, values in rates.items()}
    say(
        f"throughput, two-stage {ORIGINAL} tasks, 32 in flight (median of 3 batches of {args.tasks}): "
        f"{throughput['untraced']:.0f} tasks/s untraced, {throughput['traced']:.0f} traced"
    )


def report_triton(say: Callable[..., None], triton: dict[tuple[str, bool], tuple[float, float]], clients: int) -> None:
    if not triton:
        return
    say()
    say(f"Triton (CPU path), one-stage tasks of 2 JPEG frames 640x360, {clients} clients, segments/s:")
    say()
    say("| processor (model) | processor's tensors | through the mesh | Triton directly | mesh / direct |")
    say("|---|---|---|---|---|")
    for (processor, shared), (mesh_rate, direct_rate) in triton.items():
        model = processor_params(processor)["model"]
        how = "shared memory" if shared else "in the requests"
        say(f"| {processor} ({model}) | {how} | {mesh_rate:.1f} | {direct_rate:.1f} | {mesh_rate / direct_rate:.0%} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200, help="tasks per throughput batch")
    parser.add_argument("--repeats", type=int, default=100, help="tasks per latency case (a third for 2 MB)")
    parser.add_argument("--sizes", default="", help=f"comma-separated among {', '.join(SIZES)} (default: all)")
    parser.add_argument("--no-triton", action="store_true", help="leave out the Triton comparison")
    parser.add_argument("--only-triton", action="store_true", help="only the Triton comparison")
    parser.add_argument("--triton-processors", default="face_detector,vehicle_detector")
    parser.add_argument("--clients", type=int, default=4, help="clients of the Triton comparison")
    parser.add_argument("--triton-tasks", type=int, default=48, help="segments per client batch in the Triton case")
    parser.add_argument("--output", default="", help="also write the tables to this file")
    asyncio.run(main(parser.parse_args()))
