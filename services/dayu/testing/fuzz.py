"""Fuzzing of every RPC of every service, from the contracts' descriptors alone.

One implementation for the default suite (tests/integration/test_fuzz.py, bounded and deterministic)
and the long campaign (hack/fuzz.py): docs/testing.md, "Fuzzing".

- Discovery: every service of the dayu.v1 package (its generated modules imported, their file
  descriptors read) and the services the runtime serves from other packages (the scheduler's OTLP
  receiver), every method of each: a new RPC is fuzzed without new test code.
- Strategies: hypothesis strategies for any message class, built from its descriptor: scalars of
  every type with their edge values (huge, negative, NaN and infinite floats; empty, long and
  unicode strings; bytes up to a size bound), enums with numbers outside the contract, bounded
  repeated fields and maps, nested messages to a bounded depth (recursive messages are safe), oneofs.
  Near-valid messages start from a valid request of the fuzz mesh (SEEDS) and change one field, so
  the fuzz gets past the first check; garbage is bytes that do not parse as the request.
- Calls: raw generic calls (`channel.unary_unary("/pkg.Service/Method")` and the stream kinds), so no
  per-service code; client streams get a few messages, server streams are read for a few messages
  or a short while and cancelled. Every call has a deadline.
- Oracle (judge()): the mesh's process is alive; no call outlives its deadline (a live stream that
  the fuzz cut is fine); the status is one of ALLOWED (never INTERNAL or UNKNOWN, nor UNAVAILABLE:
  every dependency is up in the fuzz mesh); garbage gets INVALID_ARGUMENT; error details are at most
  MAX_DETAILS characters; a reply parses as the response type. After a campaign, check_mesh(): every
  server SERVING, every read-only RPC (List*, Query*, Get*, Export*) OK, known answers right, and
  no exception in the mesh's logs.
- The mesh (FuzzMesh): the lightest one with every component (a cloud node with a no-op processor,
  an edge node, one small synthetic camera), in a process of its own, so a crash is seen as one and
  the fuzzing process does not compete for its event loop.

Needs the dev extra (hypothesis); nothing in the components imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import itertools
import json
import math
import os
import pkgutil
import resource
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from dayu.runtime.errors import cut
from dayu.runtime.server import MAX_DETAILS_CHARS, channel_options
from dayu.runtime.validation import MAX_ID_CHARS
from dayu.v1 import decision_pb2, resources_pb2, task_pb2, types_pb2

# -- discovery --------------------------------------------------------------------------------------

CONTRACT_PACKAGE = "dayu.v1"
# Services that components serve from other packages, through the same runtime: the scheduler
# receives the mesh's spans over OTLP.
EXTRA_SERVICES = {
    "opentelemetry.proto.collector.trace.v1.TraceService": "opentelemetry.proto.collector.trace.v1.trace_service_pb2"
}
STANDARD_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")


@dataclass(frozen=True)
class Rpc:
    """One method of one service, with its message classes."""

    service: str  # full name, e.g. dayu.v1.SchedulerService
    method: str
    request: type[Message]
    response: type[Message]
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"

    @property
    def name(self) -> str:
        """SchedulerService.GetDecision: how tables and test ids show it."""
        return f"{self.service.rsplit('.', 1)[-1]}.{self.method}"

    @property
    def read_only(self) -> bool:
        """Methods whose name says they only read: after a campaign they must still answer OK."""
        return self.method.startswith(("List", "Query", "Get", "Export"))


def contract_modules() -> list[Any]:
    """Every generated message module of the contracts package, imported."""
    package = importlib.import_module(CONTRACT_PACKAGE)
    return [
        importlib.import_module(f"{CONTRACT_PACKAGE}.{info.name}")
        for info in pkgutil.iter_modules(package.__path__)
        if info.name.endswith("_pb2")
    ]


def services() -> list[ServiceDescriptor]:
    """Every service of the contracts package, and EXTRA_SERVICES, by full name."""
    found = {s.full_name: s for module in contract_modules() for s in module.DESCRIPTOR.services_by_name.values()}
    for name, module in EXTRA_SERVICES.items():
        importlib.import_module(module)
        found[name] = descriptor_pool.Default().FindServiceByName(name)
    return [found[name] for name in sorted(found)]


def rpcs() -> list[Rpc]:
    return [
        Rpc(
            service.full_name,
            method.name,
            message_factory.GetMessageClass(method.input_type),
            message_factory.GetMessageClass(method.output_type),
            method.client_streaming,
            method.server_streaming,
        )
        for service in services()
        for method in service.methods
    ]


# -- strategies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Bounds of generated messages."""

    max_depth: int = 4  # nested messages below the request
    max_items: int = 3  # elements of a repeated field, entries of a map
    max_bytes: int = 4096  # longest bytes or string field


_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_EDGE_DOUBLES = (0.0, -0.0, 1.0, -1.0, 1e-9, 5e-324, 1e308, -1e308, math.inf, -math.inf, math.nan, 2.0**63)
_EDGE_FLOATS = (0.0, -0.0, 1.0, -1.0, 1.4e-45, 3.4e38, -3.4e38, math.inf, -math.inf, math.nan)
# Strings that mean something somewhere: the fuzz mesh's ids and names (so a field reaches what it
# names), ids just past the length limits, paths, SQL, format strings, YAML that nests deep or aliases.
_EDGE_STRINGS = (
    "",
    " ",
    "\x00",
    "cam",
    "fuzz",
    "street",
    "cloud",
    "edge-1",
    "one",
    "detect",
    "noop",
    "fixed",
    "latency_budget",
    "x" * MAX_ID_CHARS,
    "x" * (MAX_ID_CHARS + 1),
    "../../../etc/passwd",
    "'; DROP TABLE records; --",
    "%s%s%n%x",
    "{}",
    "[]",
    "null",
    "NaN",
    "-1",
    "1e400",
    "a: &a [1, 2, 3, 4, 5, 6, 7, 8]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b]",
    "[" * 5000,
    "{a: " * 2000,
    "é漢字🙂\u202e\ufeff",
    "00000000-0000-0000-0000-000000000000",
    "cam#1",
)
_UNICODE_CHARS = ("é", "漢", "🙂", "\u202e", "\x00", "\n")


def is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _synthetic(oneof: Any) -> bool:
    """The oneof protoc makes for a proto3 `optional` field: presence only, not a choice."""
    return len(oneof.fields) == 1 and oneof.name == f"_{oneof.fields[0].name}"


def set_field(message: Message, field: FieldDescriptor, value: Any) -> None:
    """Sets any field from a plain value: a list for repeated fields, a dict for maps."""
    target = getattr(message, field.name)
    if is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value.items():
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        target.extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def _build(cls: type[Message], values: dict[str, Any], choices: Sequence[tuple[str, Any] | None]) -> Message:
    message = cls()
    fields = cls.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        set_field(message, fields[name], value)
    for choice in choices:
        if choice is not None:
            set_field(message, fields[choice[0]], choice[1])
    return message


class Strategies:
    """Hypothesis strategies for messages, fields and single values, from descriptors, within Limits."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._messages: dict[tuple[str, int], st.SearchStrategy[Message]] = {}

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        key = (descriptor.full_name, depth)
        if key not in self._messages:
            self._messages[key] = st.deferred(lambda: self._message(descriptor, depth))
        return self._messages[key]

    def _message(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(descriptor)
        optional: dict[str, st.SearchStrategy[Any]] = {}
        choices: list[st.SearchStrategy[tuple[str, Any] | None]] = []
        for oneof in descriptor.oneofs:
            if _synthetic(oneof):
                continue
            members = [
                st.tuples(st.just(f.name), self.field(f, depth + 1)) for f in oneof.fields if self._within(f, depth)
            ]
            choices.append(st.one_of(st.none(), *members))
        for f in descriptor.fields:
            if f.containing_oneof is not None and not _synthetic(f.containing_oneof):
                continue  # a choice above
            if self._within(f, depth):
                optional[f.name] = self.field(f, depth + 1)
        return st.builds(_build, st.just(cls), st.fixed_dictionaries({}, optional=optional), st.tuples(*choices))

    def _within(self, f: FieldDescriptor, depth: int) -> bool:
        """Message fields stop at the depth bound: recursive messages end there."""
        if f.type != FieldDescriptor.TYPE_MESSAGE:
            return True
        if is_map(f):
            value = f.message_type.fields_by_name["value"]
            return value.type != FieldDescriptor.TYPE_MESSAGE or depth < self.limits.max_depth
        return depth < self.limits.max_depth

    def field(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        """The whole value of a field: a list for repeated fields, a dict for maps."""
        items = self.limits.max_items
        if is_map(f):
            key = self.element(f.message_type.fields_by_name["key"], depth)
            value = self.element(f.message_type.fields_by_name["value"], depth)
            return st.dictionaries(key, value, max_size=items)
        if f.is_repeated:
            return st.lists(self.element(f, depth), max_size=items)
        return self.element(f, depth)

    def element(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        """One value of a field's type."""
        kind = f.type
        if kind == FieldDescriptor.TYPE_MESSAGE:
            return self.message(f.message_type, depth)
        if kind == FieldDescriptor.TYPE_ENUM:
            defined = sorted(f.enum_type.values_by_number)
            return st.one_of(st.sampled_from(defined), st.integers(-(2**31), 2**31 - 1))
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind in _INT_RANGES:
            low, high = _INT_RANGES[kind]
            edges = sorted({low, high, 0, 1, -1 if low < 0 else 2, high // 2 + 1, 2**31 - 1 if high > 2**31 else high})
            return st.one_of(st.sampled_from(edges), st.integers(low, high), st.integers(0, 100))
        if kind == FieldDescriptor.TYPE_DOUBLE:
            return st.one_of(st.sampled_from(_EDGE_DOUBLES), st.floats(), st.floats(0, 100))
        if kind == FieldDescriptor.TYPE_FLOAT:
            return st.one_of(st.sampled_from(_EDGE_FLOATS), st.floats(width=32))
        if kind == FieldDescriptor.TYPE_STRING:
            return self.strings()
        if kind == FieldDescriptor.TYPE_BYTES:
            return self.bytes_()
        raise TypeError(f"no strategy for field {f.full_name} of type {kind}")

    def strings(self) -> st.SearchStrategy[str]:
        longest = self.limits.max_bytes
        return st.one_of(
            st.sampled_from(_EDGE_STRINGS),
            st.text(max_size=16),
            st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,16}", fullmatch=True),
            st.integers(longest // 2, longest).map(lambda n: "s" * n),
            st.tuples(st.sampled_from(_UNICODE_CHARS), st.integers(1, longest // 4)).map(lambda t: t[0] * t[1]),
        )

    def bytes_(self) -> st.SearchStrategy[bytes]:
        return st.one_of(
            st.binary(max_size=32),
            st.integers(0, self.limits.max_bytes).map(lambda n: b"\xff" * n),
        )

    # -- near-valid and garbage -------------------------------------------------------------------

    def near_valid(self, seeds: Sequence[Callable[[], Message]]) -> st.SearchStrategy[Message]:
        """A valid message with one field changed: replaced by any value of its type, cleared, or (an
        element of a repeated field or map) replaced, removed or repeated."""
        return _mutated(self, tuple(seeds))

    def garbage(self, cls: type[Message]) -> st.SearchStrategy[bytes]:
        """Bytes that mostly do not parse as `cls`: random bytes, a message cut short, a length past the end."""
        cut = st.tuples(self.message(cls.DESCRIPTOR), st.floats(0, 1)).map(
            lambda pair: pair[0].SerializeToString()[: int(len(pair[0].SerializeToString()) * pair[1])]
        )
        return st.one_of(
            st.binary(min_size=1, max_size=64),
            cut,
            st.sampled_from([b"\x0a\xff\xff\xff\xff\x0f", b"\xff", b"\x08", b"\x0a\x05ab", b"\x80" * 11]),
        )


@dataclass
class _Spot:
    """Where a mutation lands: a field of a message, or one element (index) or entry (key) of it."""

    message: Message
    field: FieldDescriptor
    index: int | None = None
    key: Any = None
    keyed: bool = False


def _spots(message: Message, depth: int = 0) -> Iterator[_Spot]:
    """Every field of the message and of the messages in it, set or not, and every element."""
    for f in message.DESCRIPTOR.fields:
        yield _Spot(message, f)
        value = getattr(message, f.name)
        if is_map(f):
            message_values = f.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE
            for key in list(value):
                yield _Spot(message, f, key=key, keyed=True)
                if message_values and depth < 6:
                    yield from _spots(value[key], depth + 1)
        elif f.is_repeated:
            for i in range(len(value)):
                yield _Spot(message, f, index=i)
                if f.type == FieldDescriptor.TYPE_MESSAGE and depth < 6:
                    yield from _spots(value[i], depth + 1)
        elif f.type == FieldDescriptor.TYPE_MESSAGE and message.HasField(f.name) and depth < 6:
            yield from _spots(value, depth + 1)


@st.composite
def _mutated(draw: st.DrawFn, strategies: Strategies, seeds: tuple[Callable[[], Message], ...]) -> Message:
    root = draw(st.sampled_from(seeds))()
    spots = list(_spots(root))
    if not spots:
        return root  # a message without fields
    spot = draw(st.sampled_from(spots))
    f, target = spot.field, getattr(spot.message, spot.field.name)
    if spot.keyed:
        action = draw(st.sampled_from(["replace", "remove"]))
        del target[spot.key]
        if action == "replace":
            value_field = f.message_type.fields_by_name["value"]
            set_field(spot.message, f, {spot.key: draw(strategies.element(value_field, 2))})
    elif spot.index is not None:
        action = draw(st.sampled_from(["replace", "remove", "repeat"]))
        if action == "remove":
            del target[spot.index]
        elif action == "repeat":
            copies = draw(st.integers(1, 64))
            target.extend([target[spot.index]] * copies)
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            target[spot.index].CopyFrom(draw(strategies.element(f, 2)))
        else:
            target[spot.index] = draw(strategies.element(f, 2))
    else:
        action = draw(st.sampled_from(["replace", "clear"]))
        spot.message.ClearField(f.name)
        if action == "replace":
            set_field(spot.message, f, draw(strategies.field(f, 2)))
    return root


# -- the fuzz mesh and its valid requests -----------------------------------------------------------

STREAM, SOURCE, PIPELINE, STAGE, PROCESSOR = "cam", "street", "one", "detect", "noop"
CLOUD, EDGE = "cloud", "edge-1"
FUZZ_STREAM = "fuzz"  # the stream of the tasks the fuzz makes (the camera's is STREAM)
STARTED_STREAM = "fuzz-started"  # the stream the fuzz starts and stops on the generator (StartStream)
ADDED_SOURCE = "fuzz-added"  # the source the fuzz adds to and removes from the datasource (AddSource)
PIPELINES_YAML = f"""
pipelines:
  - name: {PIPELINE}
    stages:
      - {{name: {STAGE}, processor: {PROCESSOR}, input_type: DATA_TYPE_FRAMES, output_type: DATA_TYPE_BOXES}}
"""


def mesh_data(workdir: Path) -> dict[str, Any]:
    """The lightest mesh with every component: a cloud node with a no-op processor and an edge node
    with a small synthetic camera, a link between them; short gap and join timeouts, so that what
    the fuzz leaves missing is recorded while it runs."""
    return {
        "nodes": {CLOUD: {"processors": [PROCESSOR]}, EDGE: {}},
        "links": [{"between": [EDGE, CLOUD], "delay_ms": 1}],
        "pipelines_file": str(workdir / "pipelines.yaml"),
        "processors": {PROCESSOR: {"params": {"delay_s": 0.0}}},
        "sources": [{"source_id": SOURCE, "kind": "synthetic", "params": {"width": 160, "height": 120, "fps": 2}}],
        "streams": [
            {
                "stream_id": STREAM,
                "source_id": SOURCE,
                "node": EDGE,
                "pipeline": PIPELINE,
                "latency_budget_s": 2.0,
                "max_configuration": {"width": 160, "height": 120, "fps": 2, "quality": 80, "frames_per_segment": 2},
            }
        ],
        "join_timeout_s": 2.0,
        "gap_timeout_s": 2.0,
    }


_ids = itertools.count(1)


def _uuid() -> str:
    return str(uuid.UUID(int=next(_ids)))


def _stage_spec() -> types_pb2.StageSpec:
    return types_pb2.StageSpec(
        name=STAGE,
        processor=PROCESSOR,
        input_type=types_pb2.DATA_TYPE_FRAMES,
        output_type=types_pb2.DATA_TYPE_BOXES,
    )


def _configuration() -> types_pb2.Configuration:
    return types_pb2.Configuration(
        resolution=types_pb2.Resolution(width=160, height=120),
        fps=2,
        quality=80,
        frames_per_segment=2,
        codec=types_pb2.CODEC_JPEG,
    )


def _task(done: bool = False) -> task_pb2.Task:
    """A task of the fuzz's own stream, its one stage on the cloud (its frames are not JPEG: the
    no-op processor does not decode them)."""
    task_id = _uuid()
    task = task_pb2.Task(
        stream_id=FUZZ_STREAM,
        sequence=next(_ids),
        task_id=task_id,
        root_id=task_id,
        configuration=_configuration(),
        decision_version=1,
        latency_budget_s=2.0,
        age_s=0.01,
    )
    task.created_at.GetCurrentTime()
    task.dag.pipeline = PIPELINE
    stage = task.dag.stages.add(spec=_stage_spec(), node=CLOUD)
    segment = task.segment
    segment.codec = types_pb2.CODEC_JPEG
    segment.resolution.CopyFrom(types_pb2.Resolution(width=160, height=120))
    segment.fps = 2
    segment.source_resolution.CopyFrom(types_pb2.Resolution(width=160, height=120))
    segment.frame_indices.extend([0, 1])
    segment.frames.extend([b"\xff\xd8 not decoded by noop"] * 2)
    segment.ground_truth.add(frame_index=0).detections.add(box=types_pb2.Box(x1=1, y1=1, x2=20, y2=10), label="car")
    if done:
        stage.state = task_pb2.STAGE_STATE_DONE
        stage.executed_on = CLOUD
        stage.results.add(frame_index=0).detections.add(
            box=types_pb2.Box(x1=1, y1=1, x2=20, y2=10), label="car", score=0.9, parent_index=0
        )
        stage.timings.process_s = 0.01
        del segment.frames[:]
    return task


def _stream_spec(stream_id: str = FUZZ_STREAM) -> decision_pb2.StreamSpec:
    return decision_pb2.StreamSpec(
        stream_id=stream_id,
        source_id=SOURCE,
        node=EDGE,
        pipeline=types_pb2.Pipeline(name=PIPELINE, stages=[_stage_spec()]),
        latency_budget_s=2.0,
        max_configuration=_configuration(),
        policy=decision_pb2.PolicySpec(name="fixed"),
    )


def _installed_spec() -> decision_pb2.StreamSpec:
    """A stream the fuzz installs through the backend: its generator starts it for real, so a slow one
    (a frame every 4 s): the fuzz may install a few dozen."""
    spec = _stream_spec()
    spec.max_configuration.fps, spec.max_configuration.frames_per_segment = 0.25, 1
    return spec


def _resources(node: str = EDGE) -> resources_pb2.NodeResources:
    report = resources_pb2.NodeResources(
        node=node, cpu_percent=12.5, cpu_count=2, memory_used_bytes=1 << 30, memory_total_bytes=1 << 33
    )
    report.measured_at.GetCurrentTime()
    report.queue_lengths[PROCESSOR] = 1
    report.links.add(from_node=node, to_node=CLOUD, bandwidth_mbps=40, rtt_ms=2)
    report.gpus.add(index=0, name="none", utilization_percent=0)
    return report


def _record_filter() -> Any:
    from dayu.v1 import distributor_pb2

    where = distributor_pb2.RecordFilter(stream_id=FUZZ_STREAM, after_cursor=1)
    where.since.FromSeconds(0)
    where.until.GetCurrentTime()
    return where


def _spans() -> Message:
    """An OTLP export of one processor span, as the components send them."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2

    request = trace_service_pb2.ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add()
    span = spans.spans.add(
        trace_id=bytes(range(16)),
        span_id=bytes(range(8)),
        name="processor.inference",
        start_time_unix_nano=1_000_000_000,
        end_time_unix_nano=1_250_000_000,
    )
    for key, value in (("dayu.stream_id", STREAM), ("dayu.stage", STAGE), ("dayu.node", CLOUD)):
        span.attributes.add(key=key, value=common_pb2.AnyValue(string_value=value))
    return request


def _seeds() -> dict[str, list[Callable[[], Message]]]:
    """Valid requests of the fuzz mesh, by request message name; each call makes a fresh one."""
    from dayu.v1 import (
        backend_pb2,
        controller_pb2,
        datasource_pb2,
        distributor_pb2,
        generator_pb2,
        monitor_pb2,
        processor_pb2,
        scheduler_pb2,
    )

    def decision() -> decision_pb2.Decision:
        made = decision_pb2.Decision(
            stream_id=STREAM,
            version=next(_ids),
            configuration=_configuration(),
            placement={STAGE: CLOUD},
            reason="fuzz",
            policy="fixed",
            epoch=1,
        )
        made.deployment[CLOUD].nodes.append(CLOUD)
        return made

    def added_source() -> datasource_pb2.SourceSpec:
        spec = datasource_pb2.SourceSpec(source_id=ADDED_SOURCE, kind="synthetic")
        spec.params.update({"width": 160, "height": 120, "fps": 1})
        return spec

    def record() -> task_pb2.TaskRecord:
        return task_pb2.TaskRecord(
            task=_task(done=True), outcome=task_pb2.TASK_OUTCOME_DELIVERED, latency_s=0.2, accuracy=0.9
        )

    return {
        "dayu.v1.ListPipelinesRequest": [backend_pb2.ListPipelinesRequest],
        "dayu.v1.PutPipelineRequest": [
            lambda: backend_pb2.PutPipelineRequest(pipeline=types_pb2.Pipeline(name="fuzz", stages=[_stage_spec()]))
        ],
        "dayu.v1.DeletePipelineRequest": [lambda: backend_pb2.DeletePipelineRequest(name="fuzz")],
        "dayu.v1.InstallStreamRequest": [lambda: backend_pb2.InstallStreamRequest(stream=_installed_spec())],
        "dayu.v1.UninstallStreamRequest": [lambda: backend_pb2.UninstallStreamRequest(stream_id=FUZZ_STREAM)],
        "dayu.v1.SetStreamPolicyRequest": [
            lambda: backend_pb2.SetStreamPolicyRequest(stream_id=STREAM, policy=decision_pb2.PolicySpec(name="fixed"))
        ],
        "dayu.v1.GetSystemStatusRequest": [backend_pb2.GetSystemStatusRequest],
        "dayu.v1.DescribeMeshRequest": [backend_pb2.DescribeMeshRequest],
        "dayu.v1.ValidatePipelineRequest": [
            lambda: backend_pb2.ValidatePipelineRequest(
                pipeline=types_pb2.Pipeline(name="fuzz", stages=[_stage_spec()])
            )
        ],
        "dayu.v1.WatchSystemStatusRequest": [lambda: backend_pb2.WatchSystemStatusRequest(interval_s=0.5)],
        "dayu.v1.ListResultsRequest": [lambda: backend_pb2.ListResultsRequest(stream_id=STREAM, limit=5)],
        "dayu.v1.WatchResultsRequest": [lambda: backend_pb2.WatchResultsRequest(stream_id=STREAM)],
        "dayu.v1.GetLatestFrameRequest": [lambda: backend_pb2.GetLatestFrameRequest(stream_id=STREAM)],
        "dayu.v1.GetTaskTimelineRequest": [lambda: backend_pb2.GetTaskTimelineRequest(root_id=_uuid())],
        "dayu.v1.ExportResultsRequest": [
            lambda: backend_pb2.ExportResultsRequest(stream_id=STREAM, format=backend_pb2.EXPORT_FORMAT_CSV),
            lambda: backend_pb2.ExportResultsRequest(stream_id=STREAM),
        ],
        "dayu.v1.SubmitTaskRequest": [
            lambda: controller_pb2.SubmitTaskRequest(task=_task()),
            lambda: controller_pb2.SubmitTaskRequest(task=_task(), from_node=EDGE),
        ],
        "dayu.v1.MeasureLinkRequest": [lambda: controller_pb2.MeasureLinkRequest(to_node=EDGE, probe_bytes=4096)],
        "dayu.v1.ProbeRequest": [lambda: controller_pb2.ProbeRequest(payload=b"probe")],
        "dayu.v1.ListSourcesRequest": [datasource_pb2.ListSourcesRequest],
        "dayu.v1.StreamFramesRequest": [
            lambda: datasource_pb2.StreamFramesRequest(source_id=SOURCE, max_frames=2),
            lambda: datasource_pb2.StreamFramesRequest(source_id=SOURCE),
        ],
        "dayu.v1.AddSourceRequest": [lambda: datasource_pb2.AddSourceRequest(source=added_source())],
        "dayu.v1.RemoveSourceRequest": [lambda: datasource_pb2.RemoveSourceRequest(source_id=ADDED_SOURCE)],
        "dayu.v1.DeliverRequest": [lambda: distributor_pb2.DeliverRequest(task=_task(done=True))],
        "dayu.v1.RecordDropRequest": [lambda: distributor_pb2.RecordDropRequest(task=_task(), reason="fuzz")],
        "dayu.v1.QueryRecordsRequest": [
            lambda: distributor_pb2.QueryRecordsRequest(filter=_record_filter(), limit=10),
            distributor_pb2.QueryRecordsRequest,
        ],
        "dayu.v1.ExportRecordsRequest": [lambda: distributor_pb2.ExportRecordsRequest(filter=_record_filter())],
        "dayu.v1.WatchRecordsRequest": [lambda: distributor_pb2.WatchRecordsRequest(filter=_record_filter())],
        "dayu.v1.SettleStreamsRequest": [
            lambda: distributor_pb2.SettleStreamsRequest(generated={FUZZ_STREAM: 2, "fuzz-settled": 3})
        ],
        "dayu.v1.GetLatestTaskRequest": [lambda: distributor_pb2.GetLatestTaskRequest(stream_id=STREAM)],
        "dayu.v1.ListStreamsRequest": [generator_pb2.ListStreamsRequest],
        "dayu.v1.ApplyDecisionRequest": [lambda: generator_pb2.ApplyDecisionRequest(decision=decision())],
        "dayu.v1.StartStreamRequest": [lambda: generator_pb2.StartStreamRequest(stream=_stream_spec(STARTED_STREAM))],
        "dayu.v1.StopStreamRequest": [lambda: generator_pb2.StopStreamRequest(stream_id=STARTED_STREAM)],
        "dayu.v1.GetResourcesRequest": [monitor_pb2.GetResourcesRequest],
        "dayu.v1.WatchResourcesRequest": [lambda: monitor_pb2.WatchResourcesRequest(interval_s=0.5)],
        "dayu.v1.ProcessRequest": [lambda: processor_pb2.ProcessRequest(task=_task(), stage=STAGE)],
        "dayu.v1.GetProcessorStatusRequest": [processor_pb2.GetProcessorStatusRequest],
        "dayu.v1.RegisterStreamRequest": [
            lambda: scheduler_pb2.RegisterStreamRequest(stream=_stream_spec()),
            lambda: scheduler_pb2.RegisterStreamRequest(stream=_stream_spec("fuzz-2")),
        ],
        "dayu.v1.GetDecisionRequest": [lambda: scheduler_pb2.GetDecisionRequest(stream_id=STREAM)],
        "dayu.v1.WatchDecisionsRequest": [lambda: scheduler_pb2.WatchDecisionsRequest(stream_id=STREAM)],
        "dayu.v1.ReportFeedbackRequest": [lambda: scheduler_pb2.ReportFeedbackRequest(record=record())],
        "dayu.v1.NodeResources": [_resources, lambda: _resources(CLOUD)],
        "dayu.v1.SetPolicyRequest": [
            lambda: scheduler_pb2.SetPolicyRequest(stream_id=FUZZ_STREAM, policy=decision_pb2.PolicySpec(name="fixed"))
        ],
        "dayu.v1.GetSchedulerStatsRequest": [scheduler_pb2.GetSchedulerStatsRequest],
        "dayu.v1.UnregisterStreamRequest": [lambda: scheduler_pb2.UnregisterStreamRequest(stream_id="fuzz-2")],
        "dayu.v1.GetTaskTraceRequest": [lambda: scheduler_pb2.GetTaskTraceRequest(root_id=_uuid())],
        "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest": [_spans],
    }


SEEDS = _seeds()


def seeds(rpc: Rpc) -> list[Callable[[], Message]]:
    return SEEDS.get(rpc.request.DESCRIPTOR.full_name, [])


# -- requests ---------------------------------------------------------------------------------------


@dataclass
class Request:
    """What one call sends: one message, or several for a client stream; `garbage` when one of them
    is bytes that do not parse as the request type."""

    raw: list[bytes]
    kind: str  # near-valid, random, garbage
    garbage: bool = False

    def __repr__(self) -> str:
        shown = [r[:200] + (b"..." if len(r) > 200 else b"") for r in self.raw]
        return f"Request({self.kind}, {len(self.raw)} message(s), {sum(map(len, self.raw))} bytes: {shown!r})"


def _parses(cls: type[Message], raw: bytes) -> bool:
    try:
        cls.FromString(raw)
    except DecodeError:
        return False
    return True


def requests(rpc: Rpc, strategies: Strategies) -> st.SearchStrategy[Request]:
    """Requests for one RPC: near-valid ones (where the RPC has seeds) most often, then random
    messages, then garbage bytes."""
    cls = rpc.request
    valid = seeds(rpc)
    random = strategies.message(cls.DESCRIPTOR).map(lambda m: (m.SerializeToString(), "random"))
    near = strategies.near_valid(valid).map(lambda m: (m.SerializeToString(), "near-valid")) if valid else random
    garbage = strategies.garbage(cls).map(lambda raw: (raw, "garbage"))
    weights = ("near-valid",) * 5 + ("random",) * 3 + ("garbage",) * 2  # by share of the examples
    branches = {"near-valid": near, "random": random, "garbage": garbage}
    one = st.sampled_from(weights).flatmap(branches.__getitem__)
    if rpc.client_streaming:
        messages = st.lists(one, min_size=0, max_size=4)
    else:
        messages = one.map(lambda item: [item])

    def request(items: list[tuple[bytes, str]]) -> Request:
        kinds = {kind for _, kind in items}
        broken = any(kind == "garbage" and not _parses(cls, raw) for raw, kind in items)
        kind = "garbage" if "garbage" in kinds else "near-valid" if "near-valid" in kinds else "random"
        return Request([raw for raw, _ in items], kind, broken)

    return messages.map(request)


# -- calls and the oracle ---------------------------------------------------------------------------

CALL_TIMEOUT_S = 5.0  # every call's deadline
STREAM_READ_S = 0.3  # a server stream is read this long at most, then cancelled
STREAM_MESSAGES = 3  # or until this many messages came
# The most a status's details may be: the server's cut of anything longer (runtime/server.py).
MAX_DETAILS = len(cut("x" * (MAX_DETAILS_CHARS + 1), MAX_DETAILS_CHARS))
OK = "OK"
# Statuses an RPC may answer to anything: the caller can act on each.
ALLOWED = frozenset(
    {
        "OK",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "RESOURCE_EXHAUSTED",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "UNIMPLEMENTED",
        "OUT_OF_RANGE",
        "ABORTED",
    }
)
CUT = "CUT"  # a server stream the fuzz cancelled after STREAM_MESSAGES or STREAM_READ_S


@dataclass
class Outcome:
    rpc: Rpc
    request: Request
    code: str  # a grpc.StatusCode name, or CUT
    details: str = ""
    replies: list[bytes] = field(default_factory=list)
    mesh_alive: bool = True


@dataclass(frozen=True)
class Finding:
    rpc: str
    what: str  # one line: what went wrong
    request: str = ""  # the input, shortened

    def __str__(self) -> str:
        return f"{self.rpc}: {self.what}" + (f"\n    input: {self.request}" if self.request else "")


def judge(outcome: Outcome) -> list[Finding]:
    """What is wrong with one call's outcome (nothing, mostly)."""
    rpc, code, request = outcome.rpc, outcome.code, repr(outcome.request)
    found: list[str] = []
    if not outcome.mesh_alive:
        found.append("the mesh process died")
    if code == "DEADLINE_EXCEEDED":
        found.append(f"no answer within the {CALL_TIMEOUT_S} s deadline")
    elif code not in ALLOWED and code != CUT:
        found.append(f"status {code}: {outcome.details[:300]!r}")
    if outcome.request.garbage and code not in ("INVALID_ARGUMENT", "UNIMPLEMENTED"):
        found.append(f"garbage bytes answered {code}, not INVALID_ARGUMENT")
    size = len(outcome.details)
    if size > MAX_DETAILS:
        found.append(f"{size} characters of details (at most {MAX_DETAILS}): {outcome.details[:120]!r}...")
    for reply in outcome.replies:
        if not _parses(rpc.response, reply):
            found.append(f"a reply does not parse as {rpc.response.DESCRIPTOR.full_name}")
            break
    return [Finding(rpc.name, what, request) for what in found]


CHANNEL_OPTIONS = [
    *channel_options(64 << 20),
    ("grpc.max_metadata_size", 1 << 20),  # so a long status details is seen, and measured, whole
]


class Caller:
    """Raw generic calls to the mesh's servers, one channel per address."""

    def __init__(self, alive: Callable[[], bool] = lambda: True) -> None:
        self._channels: dict[str, grpc.Channel] = {}
        self.alive = alive
        # The operator's admin token on every call, so that the fuzz reaches past the token check
        # (tests/integration/test_backend.py checks the refusals without one).
        self.metadata: tuple[tuple[str, str], ...] = ()

    def channel(self, address: str) -> grpc.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        return self._channels[address]

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def call(
        self, address: str, rpc: Rpc, request: Request, timeout_s: float = CALL_TIMEOUT_S, whole: bool = False
    ) -> Outcome:
        """Calls `rpc` at `address` with the request's bytes; a server stream is read for a few
        messages or a short while and cut, or `whole`, to its end (within the deadline)."""
        channel = self.channel(address)
        replies: list[bytes] = []
        code, details = OK, ""
        try:
            if not rpc.server_streaming:
                if rpc.client_streaming:
                    reply = channel.stream_unary(rpc.path)(iter(request.raw), timeout=timeout_s, metadata=self.metadata)
                else:
                    reply = channel.unary_unary(rpc.path)(request.raw[0], timeout=timeout_s, metadata=self.metadata)
                replies.append(reply)
            else:
                if rpc.client_streaming:
                    call = channel.stream_stream(rpc.path)(iter(request.raw), timeout=timeout_s, metadata=self.metadata)
                else:
                    call = channel.unary_stream(rpc.path)(request.raw[0], timeout=timeout_s, metadata=self.metadata)
                most, seconds = (10**6, timeout_s) if whole else (STREAM_MESSAGES, STREAM_READ_S)
                code = _read_some(call, replies, most, seconds)
        except grpc.RpcError as error:
            code, details = error.code().name, error.details() or ""  # type: ignore[attr-defined]
        return Outcome(rpc, request, code, details, replies, self.alive())


def _read_some(call: Any, replies: list[bytes], most: int, seconds: float) -> str:
    """Reads a server stream for `most` messages or `seconds`, then cancels it."""
    cut = threading.Event()

    def cancel() -> None:
        cut.set()
        call.cancel()

    timer = threading.Timer(seconds, cancel)
    timer.start()
    try:
        for reply in call:
            replies.append(reply)
            if len(replies) >= most:
                cancel()
                return CUT
    except grpc.RpcError as error:
        if cut.is_set() and error.code() == grpc.StatusCode.CANCELLED:
            return CUT
        raise
    finally:
        timer.cancel()
    return OK


# -- the mesh in a process of its own --------------------------------------------------------------

MAX_DISK_BYTES = 256 << 20  # what the mesh's files may take after a campaign
MESH_MEMORY_BYTES = 8 << 30  # address space of the mesh's process: a runaway allocation fails there


class FuzzMesh:
    """The fuzz mesh (mesh_data) run by `python -m dayu.testing.fuzz serve WORKDIR`: addresses of its
    instances, the services each serves, its log."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.addresses: dict[str, str] = {}  # instance key -> HOST:PORT
        self.services: dict[str, list[str]] = {}  # instance key -> services it serves
        self.log = workdir / "mesh.log"
        self.caller = Caller(self.alive)

    def start(self, timeout_s: float = 90.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dayu.testing.fuzz", "serve", str(self.workdir)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=self.workdir,
            )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError(f"the fuzz mesh did not start; its log:\n{self.log.read_text()[-4000:]}")
        started = json.loads(line)
        self.addresses, self.services = started["addresses"], started["services"]
        admin = yaml.safe_load((self.workdir / "tokens.yaml").read_text())["admin"][0]  # the mesh made it
        self.caller.metadata = (("authorization", f"Bearer {admin}"),)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        self.caller.close()
        if self.process is None:
            return None
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # the mesh stops when its input ends
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code

    def address(self, service: str) -> str:
        """The instance that serves `service`: a cloud singleton, else the cloud node's."""
        keys = [key for key, served in self.services.items() if service in served]
        if not keys:
            raise LookupError(f"no instance of the fuzz mesh serves {service}")
        return self.addresses[min(keys, key=lambda key: ("@" in key, f"@{CLOUD}" not in key, key))]

    def call(self, rpc: Rpc, request: Request, timeout_s: float = CALL_TIMEOUT_S, whole: bool = False) -> Outcome:
        return self.caller.call(self.address(rpc.service), rpc, request, timeout_s, whole)

    def disk_bytes(self) -> int:
        """What the mesh's files take (records, journals, sequences, its log)."""
        return sum(path.stat().st_size for path in self.workdir.rglob("*") if path.is_file())

    def logged_errors(self) -> list[str]:
        """Exceptions and errors in the mesh's log: a failed RPC, a background loop that failed."""
        errors = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                if "Traceback" in line:
                    errors.append(line[:300])
                continue
            if event.get("level") in ("error", "critical") or "exception" in event:
                where = event.get("component", "?")
                first = str(event.get("exception", "")).strip().splitlines()[-1:] or [""]
                errors.append(f"{where}: {event.get('event')} {first[0][:300]}".strip())
        return errors


def unserved(mesh: FuzzMesh, fuzzed: Sequence[Rpc]) -> list[str]:
    """Services of the contracts that no instance of the mesh serves, and services it serves that the
    fuzz does not know: both must be empty for the fuzz to cover every RPC."""
    known = {rpc.service for rpc in fuzzed}
    served = {s for names in mesh.services.values() for s in names} - set(STANDARD_SERVICES)
    return sorted((known - served) | (served - known))


# -- after a campaign -------------------------------------------------------------------------------


def _request_of(message: Message) -> Request:
    return Request([message.SerializeToString()], "check")


def _valid_pipeline(pipeline: types_pb2.Pipeline) -> bool:
    from dayu.runtime.errors import InvalidArgument
    from dayu.runtime.validation import validate_pipeline

    try:
        validate_pipeline(pipeline)
    except InvalidArgument:
        return False
    return True


# Read-only RPCs that look one item up by its id: their seeds name items the mesh may not hold (a task
# whose spans the scheduler never got: NOT_FOUND is the right answer there), so after the fuzz they
# are asked about a task that check_mesh itself sends through the mesh (_checked_task), and must
# answer OK about it. No NOT_FOUND is let through.
LOOKUPS_BY_ID = (
    ("dayu.v1.SchedulerService", "GetTaskTrace"),
    ("dayu.v1.DistributorService", "GetLatestTask"),
    ("dayu.v1.BackendService", "GetTaskTimeline"),
)
TRACED_BY = {"controller", "processor", "distributor"}  # the checked task's spans come from these


def _checked_task(mesh: FuzzMesh, by_name: dict[tuple[str, str], Rpc]) -> tuple[task_pb2.Task | None, str]:
    """Submits a task without ground truth (its frames reach the distributor) to the cloud's
    controller and waits until the distributor has it as its stream's latest task and the scheduler
    its spans from TRACED_BY; returns it, or None and what did not happen. The first task of a stream
    of its own: the fuzz's stream has sequences recorded as lost (gaps) that it could collide with."""
    from dayu.v1 import controller_pb2, distributor_pb2, scheduler_pb2

    task = _task()
    task.stream_id, task.sequence = f"{FUZZ_STREAM}-checked-{uuid.uuid4().hex[:8]}", 0
    del task.segment.ground_truth[:]
    submit = by_name[("dayu.v1.ControllerService", "SubmitTask")]
    outcome = mesh.call(submit, _request_of(controller_pb2.SubmitTaskRequest(task=task)), timeout_s=10.0)
    if outcome.code != OK:
        return None, f"SubmitTask answered {outcome.code}: {outcome.details[:300]!r}"
    latest, trace = by_name[LOOKUPS_BY_ID[1]], by_name[LOOKUPS_BY_ID[0]]
    delivered = traced = False
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline and not (delivered and traced):
        if not delivered:
            request = distributor_pb2.GetLatestTaskRequest(stream_id=task.stream_id)
            outcome = mesh.call(latest, _request_of(request))
            delivered = outcome.code == OK and (
                distributor_pb2.GetLatestTaskResponse.FromString(outcome.replies[0]).record.task.task_id == task.task_id
            )
        if not traced:
            outcome = mesh.call(trace, _request_of(scheduler_pb2.GetTaskTraceRequest(root_id=task.root_id)))
            traced = outcome.code == OK and TRACED_BY <= {
                span.component for span in scheduler_pb2.GetTaskTraceResponse.FromString(outcome.replies[0]).spans
            }
        time.sleep(0.2)
    if not (delivered and traced):
        return None, f"within 20 s: delivered as its stream's latest {delivered}, traced by {TRACED_BY} {traced}"
    return task, ""


def check_mesh(mesh: FuzzMesh, fuzzed: Sequence[Rpc]) -> list[Finding]:
    """After fuzzing: the mesh is alive and every server SERVING; every read-only RPC still answers
    OK (with its valid request, else an empty one; those of LOOKUPS_BY_ID about a task sent through
    the mesh now) within its deadline; known answers are right; and the mesh logged no exception."""
    from dayu.v1 import (
        backend_pb2,
        datasource_pb2,
        distributor_pb2,
        generator_pb2,
        monitor_pb2,
        processor_pb2,
        scheduler_pb2,
    )

    found: list[Finding] = []
    if not mesh.alive():
        return [Finding("mesh", "the mesh process died")]
    for key, address in sorted(mesh.addresses.items()):
        try:
            health = health_pb2_grpc.HealthStub(mesh.caller.channel(address)).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S
            )
            if health.status != health_pb2.HealthCheckResponse.SERVING:
                found.append(Finding(key, f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}"))
        except grpc.RpcError as error:
            found.append(Finding(key, f"health check failed: {error.code().name}"))  # type: ignore[attr-defined]
    by_name = {(rpc.service, rpc.method): rpc for rpc in fuzzed}
    task, missing = _checked_task(mesh, by_name)
    if task is None:
        found.append(Finding("mesh", f"after the fuzz, a task sent through the mesh was not: {missing}"))
        task = _task()  # the lookups below then answer NOT_FOUND, each a finding too
    lookups: dict[tuple[str, str], Message] = {
        LOOKUPS_BY_ID[0]: scheduler_pb2.GetTaskTraceRequest(root_id=task.root_id),
        LOOKUPS_BY_ID[1]: distributor_pb2.GetLatestTaskRequest(stream_id=task.stream_id),
        LOOKUPS_BY_ID[2]: backend_pb2.GetTaskTimelineRequest(root_id=task.root_id),
    }
    for rpc in fuzzed:
        if not rpc.read_only or rpc.client_streaming:
            continue
        valid = seeds(rpc)
        message = lookups.get((rpc.service, rpc.method)) or (valid[0]() if valid else rpc.request())
        outcome = mesh.call(rpc, _request_of(message), timeout_s=10.0, whole=True)
        if outcome.code not in (OK, "UNIMPLEMENTED") or (outcome.code == "UNIMPLEMENTED" and valid):
            found.append(
                Finding(rpc.name, f"after the fuzz, a valid request answered {outcome.code}: {outcome.details[:300]!r}")
            )
    expectations: list[tuple[str, str, Message, Callable[[Any], bool], str]] = [
        ("dayu.v1.DatasourceService", "ListSources", datasource_pb2.ListSourcesRequest(),
         lambda r: SOURCE in [s.source_id for s in r.sources], f"source {SOURCE} listed"),
        ("dayu.v1.GeneratorService", "ListStreams", generator_pb2.ListStreamsRequest(),
         lambda r: [s.spec.stream_id for s in r.streams if s.origin == generator_pb2.STREAM_ORIGIN_SETTINGS]
         == [STREAM], f"stream {STREAM} listed, the only one of the settings (the fuzz starts others)"),
        ("dayu.v1.BackendService", "ListPipelines", backend_pb2.ListPipelinesRequest(),
         lambda r: all(_valid_pipeline(p) for p in r.pipelines), "only valid pipelines (the fuzz may delete some)"),
        ("dayu.v1.SchedulerService", "GetDecision", scheduler_pb2.GetDecisionRequest(stream_id=STREAM),
         lambda r: r.decision.stream_id == STREAM and r.decision.version >= 1, f"a decision for {STREAM}"),
        ("dayu.v1.SchedulerService", "GetSchedulerStats", scheduler_pb2.GetSchedulerStatsRequest(),
         lambda r: STREAM in [s.stream_id for s in r.streams], f"{STREAM} in the scheduler's stats"),
        ("dayu.v1.MonitorService", "GetResources", monitor_pb2.GetResourcesRequest(),
         lambda r: r.resources.node == CLOUD and r.resources.cpu_count > 0, "the cloud's resources"),
        ("dayu.v1.ProcessorService", "GetProcessorStatus", processor_pb2.GetProcessorStatusRequest(),
         lambda r: r.kind == PROCESSOR, f"a {PROCESSOR} processor"),
        ("dayu.v1.SchedulerService", "GetTaskTrace", lookups[LOOKUPS_BY_ID[0]],
         lambda r: TRACED_BY <= {s.component for s in r.spans}
         and [s.start.ToNanoseconds() for s in r.spans] == sorted(s.start.ToNanoseconds() for s in r.spans),
         f"the spans of the task sent, from {sorted(TRACED_BY)}, by start time"),
        ("dayu.v1.DistributorService", "GetLatestTask", lookups[LOOKUPS_BY_ID[1]],
         lambda r: (r.record.task.task_id, r.record.task.segment.frames) == (task.task_id, task.segment.frames),
         "the task sent, with the frames it was sent with"),
    ]  # fmt: skip
    for service, method, message, right, what in expectations:
        rpc = by_name[(service, method)]
        outcome = mesh.call(rpc, _request_of(message), timeout_s=10.0)
        if outcome.code != OK or not right(rpc.response.FromString(outcome.replies[0])):
            found.append(Finding(rpc.name, f"after the fuzz, expected {what}; got {outcome.code} {outcome.details!r}"))
    found.extend(Finding("mesh log", error) for error in dict.fromkeys(mesh.logged_errors()))
    if (size := mesh.disk_bytes()) > MAX_DISK_BYTES:
        found.append(Finding("mesh files", f"{size >> 20} MiB on disk after the fuzz (at most {MAX_DISK_BYTES >> 20})"))
    return found


# -- tallies ----------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Calls, statuses and findings per RPC, for the campaign's table."""

    calls: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    findings: dict[tuple[str, str], Finding] = field(default_factory=dict)  # (rpc, what's kind) -> smallest

    def add(self, outcome: Outcome, found: Sequence[Finding]) -> None:
        name = outcome.rpc.name
        self.calls[name] += 1
        self.statuses.setdefault(name, Counter())[outcome.code] += 1
        for finding in found:
            key = (finding.rpc, finding.what.split(":")[0][:60])
            kept = self.findings.get(key)
            if kept is None or len(finding.request) < len(kept.request):
                self.findings[key] = finding

    def table(self) -> str:
        width = max([len(name) for name in self.calls] + [3])
        lines = [f"{'rpc':<{width}}  {'calls':>6}  {'findings':>8}  statuses"]
        for name in sorted(self.calls):
            statuses = ", ".join(f"{code} {n}" for code, n in self.statuses[name].most_common())
            findings = sum(1 for rpc, _ in self.findings if rpc == name)
            lines.append(f"{name:<{width}}  {self.calls[name]:>6}  {findings:>8}  {statuses}")
        total = sum(self.calls.values())
        lines.append(f"{'all':<{width}}  {total:>6}  {len(self.findings):>8}")
        return "\n".join(lines)


# -- the mesh's process -----------------------------------------------------------------------------


async def _serve(workdir: Path) -> None:
    from dayu.mesh.embedded import Mesh
    from dayu.mesh.model import MeshConfig
    from dayu.runtime.config import LogSettings
    from dayu.runtime.logs import configure_logging

    configure_logging(LogSettings(level="warning", format="json"), component="fuzz-mesh")
    (workdir / "pipelines.yaml").write_text(PIPELINES_YAML)
    mesh = Mesh(MeshConfig.model_validate(mesh_data(workdir)), workdir)
    await mesh.start()
    served = {
        key: [binding.service for binding in server.component.bindings()] + list(STANDARD_SERVICES)
        for key, server in mesh.servers.items()
    }
    print(json.dumps({"addresses": mesh.addresses, "services": served}), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ended = loop.run_in_executor(None, sys.stdin.buffer.read)  # the fuzz closed our input: stop
    await asyncio.wait({ended, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    await mesh.abort()
    os._exit(0)  # the thread still reading stdin would hold the exit


def main() -> None:
    parser = argparse.ArgumentParser(description="runs the fuzz mesh (for FuzzMesh)")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_AS, (MESH_MEMORY_BYTES, MESH_MEMORY_BYTES))
    asyncio.run(_serve(args.workdir))


if __name__ == "__main__":
    main()
