"""Shared fixtures: valid messages to start from, and components served on loopback."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dayu.components import COMPONENTS
from dayu.runtime.config import load_settings
from dayu.runtime.server import ComponentServer
from dayu.runtime.tracing import BYTES, DELAY, NODE, STREAM, TO_NODE
from dayu.v1 import decision_pb2, task_pb2, types_pb2

FRAMES, BOXES, LABELS = types_pb2.DATA_TYPE_FRAMES, types_pb2.DATA_TYPE_BOXES, types_pb2.DATA_TYPE_LABELS
# The operator's tokens of components served by `serve` and `serve_process` (dayu.runtime.auth).
ADMIN_TOKEN, READ_TOKEN = "test-admin-token-0123456789", "test-read-token-0123456789"
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)  # metadata of an operator's admin call


class _WithAdminToken(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def _with_token(self, continuation: Any, details: Any, request: Any) -> Any:
        details = details._replace(metadata=[*(details.metadata or ()), *ADMIN])
        return await continuation(details, request)

    intercept_unary_unary = _with_token
    intercept_unary_stream = _with_token


def operator_channel(address: str, **options: Any) -> grpc.aio.Channel:
    """A plaintext channel whose every call carries the admin token, as an operator's tools do."""
    return grpc.aio.insecure_channel(address, interceptors=[_WithAdminToken()], **options)


def stage(
    name: str,
    parents: tuple[str, ...] = (),
    input_type: int = FRAMES,
    output_type: int = BOXES,
    processor: str = "noop",
) -> types_pb2.StageSpec:
    return types_pb2.StageSpec(
        name=name, processor=processor, parents=parents, input_type=input_type, output_type=output_type
    )


def fork_join_pipeline() -> types_pb2.Pipeline:
    """detect -> (classify, count) -> merge: a fork and a join."""
    return types_pb2.Pipeline(
        name="fork-join",
        stages=[
            stage("detect"),
            stage("classify", ("detect",), BOXES, LABELS),
            stage("count", ("detect",), BOXES, LABELS),
            stage("merge", ("classify", "count"), LABELS, LABELS),
        ],
    )


# The same DAG as fork_join_pipeline(), as a pipelines file for a mesh of no-op processors.
FORK_JOIN_PIPELINES = """
pipelines:
  - name: fork-join
    stages:
      - {name: detect, processor: noop, input_type: DATA_TYPE_FRAMES, output_type: DATA_TYPE_BOXES}
      - {name: classify, processor: noop, parents: [detect], input_type: DATA_TYPE_BOXES, output_type: DATA_TYPE_LABELS}
      - {name: count, processor: noop, parents: [detect], input_type: DATA_TYPE_BOXES, output_type: DATA_TYPE_LABELS}
      - {name: merge, processor: noop, parents: [classify, count], input_type: DATA_TYPE_LABELS,
         output_type: DATA_TYPE_LABELS}
"""


_sequences = itertools.count()  # the distributor keeps one task per stream and sequence


def make_task(pipeline: types_pb2.Pipeline | None = None, node: str = "edge-1", frames: int = 2) -> task_pb2.Task:
    pipeline = pipeline or fork_join_pipeline()
    task_id = str(uuid.uuid4())
    sequence = next(_sequences)
    task = task_pb2.Task(stream_id="stream-1", sequence=sequence, task_id=task_id, root_id=task_id)
    task.created_at.GetCurrentTime()
    task.dag.pipeline = pipeline.name
    for spec in pipeline.stages:
        task.dag.stages.add(spec=spec, node=node)
    task.segment.codec = types_pb2.CODEC_JPEG
    task.segment.frame_indices.extend(range(frames))
    task.segment.frames.extend([b"\xff\xd8 not decoded by noop"] * frames)
    return task


def make_stream_spec(pipeline: types_pb2.Pipeline | None = None) -> decision_pb2.StreamSpec:
    return decision_pb2.StreamSpec(
        stream_id="stream-1",
        source_id="camera-1",
        node="edge-1",
        pipeline=pipeline or fork_join_pipeline(),
        latency_budget_s=1.0,
        max_configuration=types_pb2.Configuration(
            resolution=types_pb2.Resolution(width=1280, height=720),
            fps=30,
            quality=90,
            frames_per_segment=10,
            codec=types_pb2.CODEC_JPEG,
        ),
    )


class SpanCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """Stands in for an external OTLP collector (Jaeger, Tempo): keeps every span it receives."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.port = 0

    async def Export(
        self, request: ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def collect_spans() -> AsyncIterator[Callable[..., Awaitable[SpanCollector]]]:
    """Starts OTLP receivers: `collector = await collect_spans(host="127.0.0.1")`, at `collector.port`."""
    servers: list[grpc.aio.Server] = []

    async def start(host: str = "127.0.0.1") -> SpanCollector:
        collector = SpanCollector()
        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
        collector.port = server.add_insecure_port(f"{host}:0")
        await server.start()
        servers.append(server)
        return collector

    yield start
    for server in servers:
        await server.stop(0)


def tokens_file(folder: Path) -> Path:
    path = folder / "tokens.yaml"
    path.write_text(f"admin: [{ADMIN_TOKEN}]\nread: [{READ_TOKEN}]\n")
    return path


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Starts components in this process on loopback: `address = await serve("scheduler", **settings)`."""
    servers: list[ComponentServer] = []

    async def start(name: str, **settings: Any) -> str:
        component_class = COMPONENTS.entry(name).factory
        settings.setdefault("server", {}).setdefault("listen", "127.0.0.1:0")
        if name in ("backend", "scheduler"):
            settings.setdefault("auth", {"tokens_file": str(tokens_file(tmp_path))})
        if name == "distributor":
            settings.setdefault("distributor", {"database": str(tmp_path / "records.sqlite")})
        loaded = load_settings(component_class.settings_class, None, **settings)  # type: ignore[attr-defined]
        server = ComponentServer(component_class(loaded), loaded)  # type: ignore[call-arg]
        servers.append(server)
        return await server.start()

    yield start
    for server in servers:
        await server.stop(grace=0)


@dataclass
class ServedProcess:
    """A `dayu serve` subprocess and the address it reported."""

    process: subprocess.Popen[str]
    address: str

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., ServedProcess]]:
    """Runs `dayu serve COMPONENT --listen 127.0.0.1:0 [--config FILE]` and waits for its 'serving' log line."""
    started: list[subprocess.Popen[str]] = []

    def start(component: str, config: str | None = None) -> ServedProcess:
        args = [sys.executable, "-m", "dayu.cli", "serve", component, "--listen", "127.0.0.1:0"]
        if config is not None:
            path = tmp_path / f"{component}.yaml"
            path.write_text(config)
            args += ["--config", str(path)]
        env = {**os.environ, "DAYU_DISTRIBUTOR__DATABASE": str(tmp_path / "records.sqlite")}
        env |= {"DAYU_ADMIN_TOKEN": ADMIN_TOKEN, "DAYU_READ_TOKEN": READ_TOKEN}
        process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
        started.append(process)
        assert process.stderr is not None
        for line in process.stderr:
            event = json.loads(line)
            if event.get("event") == "serving":
                return ServedProcess(process, event["address"])
        raise AssertionError(f"{component} exited with {process.wait()} before serving")

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def transfer_spans(
    from_node: str, to_node: str, transfers: list[tuple[int, float]], delay_s: float = 0.01
) -> ExportTraceServiceRequest:
    """An OTLP export request, as the exporter encodes it, of one stream's link.transfer spans: each
    (bytes, seconds) took that long over the link, its delay included."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({NODE: from_node}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    start = time.time_ns()
    for nbytes, seconds in transfers:
        attributes = {STREAM: "stream-1", TO_NODE: to_node, BYTES: nbytes, DELAY: delay_s}
        tracer.start_span("link.transfer", attributes=attributes, start_time=start).end(
            end_time=start + int(seconds * 1e9)
        )
    return encode_spans(exporter.get_finished_spans())


def latency_budget_from_best(**params: Any) -> Any:
    """A PolicySpec of latency_budget starting at the stream's best configuration (its default start is
    light), for tests of what it does once tasks come back."""
    from dayu.v1 import decision_pb2

    spec = decision_pb2.PolicySpec(name="latency_budget")
    spec.params.update({"start": {}, **params})
    return spec
