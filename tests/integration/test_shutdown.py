"""SIGTERM drains: an in-flight call finishes, new calls are refused, the process exits 0."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from dayu.v1 import processor_pb2, processor_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, task_pb2

from conftest import make_stream_spec, make_task

CONFIG = """
node: edge-1
server:
  shutdown_grace_s: 20
processor:
  kind: noop
  params: {delay_s: 1.5}
"""


def test_sigterm_lets_in_flight_call_finish(serve_process) -> None:  # type: ignore[no-untyped-def]
    served = serve_process("processor", CONFIG)
    with grpc.insecure_channel(served.address) as channel, ThreadPoolExecutor(1) as pool:
        stub = processor_pb2_grpc.ProcessorServiceStub(channel)
        in_flight = pool.submit(
            stub.Process, processor_pb2.ProcessRequest(task=make_task(), stage="detect"), timeout=30
        )
        time.sleep(0.5)  # the stage takes 1.5 s: the call is in flight now
        assert not in_flight.done()
        served.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)

        with pytest.raises(grpc.RpcError) as refused:
            stub.GetProcessorStatus(processor_pb2.GetProcessorStatusRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        stage = in_flight.result(timeout=30).stage
        assert stage.state == task_pb2.STAGE_STATE_DONE
        assert stage.executed_on == "edge-1"
        assert stage.timings.process_s >= 1.4
        assert [r.frame_index for r in stage.results] == [0, 1]

    assert served.process.wait(timeout=30) == 0


def test_sigterm_ends_live_streams_with_unavailable(serve_process) -> None:  # type: ignore[no-untyped-def]
    served = serve_process("scheduler")  # default shutdown grace: 30 s
    with grpc.insecure_channel(served.address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        stub.RegisterStream(scheduler_pb2.RegisterStreamRequest(stream=make_stream_spec()), timeout=5)
        watch = stub.WatchDecisions(scheduler_pb2.WatchDecisionsRequest(stream_id="stream-1"), timeout=60)
        assert next(watch).decision.version == 1
        started = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as ended:
            next(watch)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert served.process.wait(timeout=30) == 0
    assert time.monotonic() - started < 10  # not held for the grace period
