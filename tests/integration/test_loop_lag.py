"""No event loop blocks on disk or CPU work: the default mesh (`dayu up`'s, every component in this
process on one event loop, real models on the mesh's tritonserver) runs its streams while a careless
client exports, queries and watches records, rewrites policies and pipelines at their size limits and
sends requests past them; a probe that times every callback on the loop by its CPU time sees none
hold it for 50 ms (tests/looplag.py: a loop late because the machine was busy is reported, not counted)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

import grpc

from dayu.mesh.embedded import Mesh
from dayu.mesh.model import load_mesh_config
from dayu.runtime import limits
from dayu.v1 import (
    backend_pb2,
    backend_pb2_grpc,
    controller_pb2,
    controller_pb2_grpc,
    decision_pb2,
    distributor_pb2,
    distributor_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    types_pb2,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a program too: the careless client
from looplag import LoopLag

from conftest import make_stream_spec

ROOT = Path(__file__).resolve().parents[2]
RUN_S = 20
LAG_LIMIT_S = 0.050
OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


async def careless_client(addresses: dict[str, str], run_s: float) -> dict[str, int]:
    """Calls that cost the most to serve, again and again for run_s; returns counts. It runs in a
    process of its own (`python test_loop_lag.py ADDRESSES RUN_S`): a client is another program, and
    its own work (32 MiB made and serialized) must not hold this one's interpreter."""
    loop = asyncio.get_running_loop()
    until = loop.time() + run_s
    done = dict.fromkeys(["export", "query", "watch", "policy", "pipeline", "probe", "refused"], 0)
    policy = decision_pb2.PolicySpec(name="fixed")
    policy.params.update({f"k{i}": [i, i] for i in range(850)})  # many made-up parameters
    probe = controller_pb2.ProbeRequest(payload=bytes(limits.FIELD_SIZES["dayu.v1.ProbeRequest.payload"]))
    pipeline = pipeline_of(50 << 10)  # about 50 KiB, under the 64 KiB of PutPipeline
    async with contextlib.AsyncExitStack() as stack:
        channel = {
            name: await stack.enter_async_context(grpc.aio.insecure_channel(addresses[name], options=OPTIONS))
            for name in ("distributor", "scheduler", "backend", "controller@cloud")
        }
        admin = (("authorization", f"Bearer {addresses['token']}"),)  # the operator's (dayu.runtime.auth)
        records = distributor_pb2_grpc.DistributorServiceStub(channel["distributor"])
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel["scheduler"])
        backend = backend_pb2_grpc.BackendServiceStub(channel["backend"])
        controller = controller_pb2_grpc.ControllerServiceStub(channel["controller@cloud"])
        spec = make_stream_spec()
        spec.stream_id = "careless"
        await scheduler.RegisterStream(scheduler_pb2.RegisterStreamRequest(stream=spec), timeout=10)
        while loop.time() < until:
            async for _ in records.ExportRecords(distributor_pb2.ExportRecordsRequest(), timeout=30):
                pass
            done["export"] += 1
            await records.QueryRecords(distributor_pb2.QueryRecordsRequest(limit=1000), timeout=30)
            done["query"] += 1
            watch = records.WatchRecords(distributor_pb2.WatchRecordsRequest(), timeout=30)
            async for reply in watch:
                if reply.record.cursor >= 20:
                    break
            watch.cancel()
            done["watch"] += 1
            request = scheduler_pb2.SetPolicyRequest(stream_id="careless", policy=policy)
            with contextlib.suppress(grpc.aio.AioRpcError):  # "fixed" may refuse the made-up keys
                await scheduler.SetPolicy(request, timeout=10, metadata=admin)
            done["policy"] += 1
            await backend.PutPipeline(backend_pb2.PutPipelineRequest(pipeline=pipeline), timeout=10, metadata=admin)
            await backend.ListPipelines(backend_pb2.ListPipelinesRequest(), timeout=10, metadata=admin)
            done["pipeline"] += 1
            # The largest probe there may be: parsed, checked, counted.
            await controller.Probe(probe, timeout=30)
            done["probe"] += 1
            try:
                request = backend_pb2.PutPipelineRequest(pipeline=pipeline_of(200 << 10))
                await backend.PutPipeline(request, timeout=10, metadata=admin)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
                done["refused"] += 1
        stats = await scheduler.GetSchedulerStats(scheduler_pb2.GetSchedulerStatsRequest(), timeout=10)
        done["decision_p95_ms"] = max(round(s.decision_time_p95_s * 1000) for s in stats.streams)
    return done


def pipeline_of(size: int) -> types_pb2.Pipeline:
    """A chain of text detector stages (a processor the mesh runs: the backend checks) whose model names
    add up to about `size` bytes (each within its field's limit: a pipeline this size is valid when it
    is small enough for PutPipeline)."""
    pipeline = types_pb2.Pipeline(name="careless")
    frames, boxes = types_pb2.DATA_TYPE_FRAMES, types_pb2.DATA_TYPE_BOXES
    for i in range(-(-size // 1000)):
        stage = pipeline.stages.add(name=f"s{i}", processor="text_detector", model="m" * 1000, output_type=boxes)
        stage.input_type = boxes if i else frames
        stage.parents.extend([f"s{i - 1}"] if i else [])
    return pipeline


async def _records_made(mesh: Mesh, count: int, within_s: float = 90.0) -> None:
    """Waits until the distributor holds `count` records (the careless client's watch reads that many):
    with Triton loading models as they are first asked for, the first tasks of a mesh take seconds."""
    async with grpc.aio.insecure_channel(mesh.addresses["distributor"]) as channel:
        stub = distributor_pb2_grpc.DistributorServiceStub(channel)
        for _ in range(int(within_s)):
            reply = await stub.QueryRecords(distributor_pb2.QueryRecordsRequest(limit=count), timeout=10)
            if len(reply.records) >= count:
                return
            await asyncio.sleep(1)
    raise AssertionError(f"the mesh made fewer than {count} records in {within_s:.0f} s")


async def test_no_event_loop_blocks_for_50_ms_under_streams_and_a_careless_client(tmp_path: Path) -> None:
    mesh = Mesh(load_mesh_config(ROOT / "configs" / "embedded.yaml"), tmp_path)
    await mesh.start()
    try:
        await _records_made(mesh, 20)  # past the start: the first decisions, models warmed up and loaded
        async with LoopLag() as lag:
            client = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                json.dumps({**mesh.addresses, "token": mesh.tokens.admin[0]}),
                str(RUN_S),
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await client.communicate()
            assert client.returncode == 0, out
            done = json.loads(out.decode().splitlines()[-1])
    finally:
        await mesh.abort()
    print(lag.summary(), done)
    assert done["export"] >= 3 and done["refused"] >= 2, done
    assert lag.worst_held_s < LAG_LIMIT_S, lag.summary()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(careless_client(json.loads(sys.argv[1]), float(sys.argv[2])))))
