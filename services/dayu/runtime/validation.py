"""Validation of dayu.v1 messages, shared by every component that accepts them.

Each check raises InvalidArgument naming the field path (as in `task.dag.stages[1].parents[0]`)
and what was expected, so a caller can fix the request without reading server logs."""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from graphlib import CycleError, TopologicalSorter

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from dayu.runtime import limits
from dayu.runtime.errors import InvalidArgument, shown
from dayu.v1 import decision_pb2, task_pb2, types_pb2

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
_PER_FRAME_CODECS = (types_pb2.CODEC_JPEG, types_pb2.CODEC_RAW_BGR)


_TIMESTAMP = timestamp_pb2.Timestamp.DESCRIPTOR
TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)  # 0001-01-01 to 9999-12-31, what protobuf reads back
MAX_ID_CHARS = 128  # ids and names (streams, sources, nodes, stages, pipelines): room to spare, not a megabyte


def _enum_name(enum: object, value: int) -> str:
    return enum.Name(value)  # type: ignore[attr-defined, no-any-return]


def check_request(message: Message, field: str = "") -> None:
    """Checks what every request must respect, whatever its RPC, anywhere in the message: enum
    numbers that the contract defines (proto3 keeps unknown numbers; stored, they would be read back
    as nothing the contract knows), times that protobuf can read back, and the field limits of
    dayu.runtime.limits."""
    for descriptor, value in message.ListFields():
        path = f"{field}.{descriptor.name}" if field else descriptor.name
        if descriptor.is_repeated:  # maps too: a map is a repeated entry message
            _check_size(path, len(value), "items", limits.FIELD_ITEMS.get(descriptor.full_name, limits.ITEMS))
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            _check_map(descriptor, path, value)
            continue
        items = value if descriptor.is_repeated else [value]
        for i, item in enumerate(items):
            _check_value(descriptor, f"{path}[{i}]" if descriptor.is_repeated else path, item)


def _check_value(descriptor: FieldDescriptor, path: str, value: object) -> None:
    if descriptor.type == FieldDescriptor.TYPE_ENUM:
        if value not in descriptor.enum_type.values_by_number:
            names = sorted(descriptor.enum_type.values_by_name)
            raise InvalidArgument(path, f"one of {names}, got {shown(value)}")
    elif descriptor.type == FieldDescriptor.TYPE_STRING:
        limit = limits.FIELD_SIZES.get(descriptor.full_name, limits.STRING_CHARS)
        _check_size(path, len(value), "characters", limit)  # type: ignore[arg-type]
    elif descriptor.type == FieldDescriptor.TYPE_BYTES:
        _check_size(path, len(value), "bytes", limits.FIELD_SIZES.get(descriptor.full_name, limits.BYTES))  # type: ignore[arg-type]
    elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
        if descriptor.message_type is _TIMESTAMP:
            _check_timestamp(value, path)  # type: ignore[arg-type]
        else:
            check_request(value, path)  # type: ignore[arg-type]


def _check_timestamp(time: timestamp_pb2.Timestamp, path: str) -> None:
    # proto3 takes any seconds and nanos; protobuf reads back (ToNanoseconds, JSON) only years 1 to 9999
    # and nanos within the second. Stored, such a time would make every later export of the records fail;
    # taken by a controller, its task could be neither delivered nor recorded as dropped.
    if not (TIMESTAMP_SECONDS[0] <= time.seconds <= TIMESTAMP_SECONDS[1] and 0 <= time.nanos <= 999_999_999):
        raise InvalidArgument(
            path,
            f"a time of years 1 to 9999 (seconds {TIMESTAMP_SECONDS[0]} to {TIMESTAMP_SECONDS[1]}, nanos "
            f"0 to 999999999), got seconds {time.seconds}, nanos {time.nanos}",
        )


def _check_map(descriptor: FieldDescriptor, path: str, entries: Mapping[object, object]) -> None:
    key, value = descriptor.message_type.fields_by_name["key"], descriptor.message_type.fields_by_name["value"]
    for k, v in entries.items():
        where = f"{path}[{shown(k)}]"
        _check_value(key, f"{path} key {shown(k)}", k)
        _check_value(value, where, v)


def _check_size(path: str, size: int, unit: str, limit: int) -> None:
    if size > limit:
        raise InvalidArgument(path, f"at most {limit} {unit}, got {size}")


def require_id(value: str, field: str) -> None:
    if not value or len(value) > MAX_ID_CHARS or not _ID.match(value):
        expected = f"an id of 1 to {MAX_ID_CHARS} letters, digits, '_', '.' or '-'"
        raise InvalidArgument(field, f"{expected}, got {shown(value)}")


def require_name(value: str, field: str) -> None:
    if not value or len(value) > MAX_ID_CHARS or not _NAME.match(value):
        expected = f"a name of 1 to {MAX_ID_CHARS} of [a-z0-9_-] starting with a letter or digit"
        raise InvalidArgument(field, f"{expected}, got {shown(value)}")


def require_uuid(value: str, field: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(field, f"a UUID, got {shown(value)}") from None


def validate_stages(
    stages: Sequence[types_pb2.StageSpec], field: str, processors: Collection[str] | None = None
) -> list[str]:
    """Checks a DAG of stages; returns the stage names in topological order (parents first)."""
    if not stages:
        raise InvalidArgument(field, "at least one stage")
    by_name: dict[str, tuple[int, types_pb2.StageSpec]] = {}
    for i, stage in enumerate(stages):
        require_name(stage.name, f"{field}[{i}].name")
        if stage.name in by_name:
            raise InvalidArgument(f"{field}[{i}].name", f"a unique stage name, but {shown(stage.name)} is used twice")
        by_name[stage.name] = (i, stage)
    for i, stage in enumerate(stages):
        where = f"{field}[{i}]"
        if not stage.processor:
            raise InvalidArgument(f"{where}.processor", "the name of a processor kind")
        if processors is not None and stage.processor not in processors:
            raise InvalidArgument(
                f"{where}.processor", f"one of the processor kinds {sorted(processors)}, got {shown(stage.processor)}"
            )
        for attr in ("input_type", "output_type"):
            if getattr(stage, attr) == types_pb2.DATA_TYPE_UNSPECIFIED:
                raise InvalidArgument(f"{where}.{attr}", "a data type (FRAMES, BOXES or LABELS)")
        if not stage.parents and stage.input_type != types_pb2.DATA_TYPE_FRAMES:
            raise InvalidArgument(
                f"{where}.input_type",
                f"DATA_TYPE_FRAMES for a stage without parents, got {_enum_name(types_pb2.DataType, stage.input_type)}",
            )
        for j, parent in enumerate(stage.parents):
            if parent not in by_name:
                stage_names = sorted(by_name)
                raise InvalidArgument(
                    f"{where}.parents[{j}]", f"the name of a stage of this pipeline {stage_names}, got {shown(parent)}"
                )
            parent_output = by_name[parent][1].output_type
            if parent_output != stage.input_type:
                raise InvalidArgument(
                    f"{where}.input_type",
                    f"{_enum_name(types_pb2.DataType, parent_output)} to match the output of parent {shown(parent)}, "
                    f"got {_enum_name(types_pb2.DataType, stage.input_type)}",
                )
    graph = {stage.name: list(stage.parents) for stage in stages}
    try:
        return list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        cycle = " -> ".join(reversed(error.args[1]))
        raise InvalidArgument(field, f"an acyclic graph, but stages form a cycle: {cycle}") from None


def validate_pipeline(
    pipeline: types_pb2.Pipeline, field: str = "pipeline", processors: Collection[str] | None = None
) -> list[str]:
    require_name(pipeline.name, f"{field}.name")
    return validate_stages(pipeline.stages, f"{field}.stages", processors)


def validate_configuration(config: types_pb2.Configuration, field: str) -> None:
    if config.resolution.width == 0 or config.resolution.height == 0:
        raise InvalidArgument(
            f"{field}.resolution", f"width and height > 0, got {config.resolution.width}x{config.resolution.height}"
        )
    if not config.fps > 0:
        raise InvalidArgument(f"{field}.fps", f"a frame rate > 0, got {config.fps}")
    if not 1 <= config.quality <= 100:
        raise InvalidArgument(f"{field}.quality", f"a quality in 1..100, got {config.quality}")
    if config.frames_per_segment < 1:
        raise InvalidArgument(f"{field}.frames_per_segment", "at least 1")
    if config.codec == types_pb2.CODEC_UNSPECIFIED:
        raise InvalidArgument(f"{field}.codec", "a codec (JPEG, H264 or RAW_BGR)")


def validate_segment(segment: task_pb2.Segment, field: str, with_data: bool = True) -> None:
    """Checks the segment's description, and its encoded frames unless with_data is False (finished
    tasks travel to the distributor without them)."""
    if segment.codec == types_pb2.CODEC_UNSPECIFIED:
        raise InvalidArgument(f"{field}.codec", "a codec (JPEG, H264 or RAW_BGR)")
    if not segment.frame_indices:
        raise InvalidArgument(f"{field}.frame_indices", "at least one frame index")
    if not with_data:
        return
    if segment.codec in _PER_FRAME_CODECS:
        if len(segment.frames) != len(segment.frame_indices):
            raise InvalidArgument(
                f"{field}.frames",
                f"one encoded frame per frame index ({len(segment.frame_indices)}), got {len(segment.frames)}",
            )
    elif not segment.stream:
        raise InvalidArgument(f"{field}.stream", "the encoded segment for a stream codec")


def validate_task(
    task: task_pb2.Task,
    field: str = "task",
    nodes: Collection[str] | None = None,
    processors: Collection[str] | None = None,
    with_data: bool = True,
) -> list[str]:
    """Checks a task end to end; returns its stage names in topological order."""
    require_id(task.stream_id, f"{field}.stream_id")
    require_uuid(task.task_id, f"{field}.task_id")
    require_uuid(task.root_id, f"{field}.root_id")
    stages = f"{field}.dag.stages"
    order = validate_stages([s.spec for s in task.dag.stages], stages, processors)
    for i, stage in enumerate(task.dag.stages):
        if not stage.node:
            raise InvalidArgument(f"{stages}[{i}].node", "the node assigned to run the stage")
        if nodes is not None and stage.node not in nodes:
            raise InvalidArgument(f"{stages}[{i}].node", f"one of the nodes {sorted(nodes)}, got {shown(stage.node)}")
    validate_segment(task.segment, f"{field}.segment", with_data)
    return order


def validate_stream_spec(stream: decision_pb2.StreamSpec, field: str = "stream") -> None:
    require_id(stream.stream_id, f"{field}.stream_id")
    require_id(stream.source_id, f"{field}.source_id")
    require_id(stream.node, f"{field}.node")
    validate_pipeline(stream.pipeline, f"{field}.pipeline")
    if not stream.latency_budget_s > 0:
        raise InvalidArgument(f"{field}.latency_budget_s", f"a budget > 0 seconds, got {stream.latency_budget_s}")
    validate_configuration(stream.max_configuration, f"{field}.max_configuration")
