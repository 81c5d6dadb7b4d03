"""Validation of dayu.v1 messages, shared by every component that accepts them.

Each check raises InvalidArgument naming the field path (as in `task.dag.stages[1].parents[0]`)
and what was expected, so a caller can fix the request without reading server logs."""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import Any, NamedTuple

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
    dayu.runtime.limits. Every request passes here: what each field needs is worked out once per
    field of the contract (_rule), and a field's path is only spelled out for an error."""
    _check_message(message, field or None)


# Where a value is, spelled out only for an error: (where its message is, field name, index or None).
_Where = tuple[Any, str, int | None] | str | None


def _path(where: _Where) -> str:
    if where is None or isinstance(where, str):
        return where or ""
    parent, name, index = where
    above = _path(parent)
    path = f"{above}.{name}" if above else name
    return path if index is None else f"{path}[{index}]"


@dataclass(frozen=True)
class _Rule:
    """What one field of the contract needs checked."""

    name: str
    repeated: bool
    items: int  # the most items, when repeated
    map_entry: FieldDescriptor | None  # a map's value field (its key is checked by `key`)
    key: Callable[[Any, _Where], None] | None
    value: Callable[[Any, _Where], None] | None  # None: any value of its type is fine (numbers, bools)


@functools.cache
def _rule(descriptor: FieldDescriptor) -> _Rule:
    entry = descriptor.message_type
    is_map = entry is not None and entry.GetOptions().map_entry
    items = limits.FIELD_ITEMS.get(descriptor.full_name, limits.ITEMS)
    if is_map:
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        return _Rule(descriptor.name, True, items, value, _value_check(key), _value_check(value))
    return _Rule(descriptor.name, descriptor.is_repeated, items, None, None, _value_check(descriptor))


def _value_check(descriptor: FieldDescriptor) -> Callable[[Any, _Where], None] | None:
    if descriptor.type == FieldDescriptor.TYPE_ENUM:
        numbers = frozenset(descriptor.enum_type.values_by_number)
        names = sorted(descriptor.enum_type.values_by_name)

        def enum(value: Any, where: _Where) -> None:
            if value not in numbers:
                raise InvalidArgument(_path(where), f"one of {names}, got {shown(value)}")

        return enum
    if descriptor.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        string = descriptor.type == FieldDescriptor.TYPE_STRING
        unit = "characters" if string else "bytes"
        limit = limits.FIELD_SIZES.get(descriptor.full_name, limits.STRING_CHARS if string else limits.BYTES)

        def size(value: Any, where: _Where) -> None:
            if len(value) > limit:
                raise InvalidArgument(_path(where), f"at most {limit} {unit}, got {len(value)}")

        return size
    if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
        if descriptor.message_type is _TIMESTAMP:
            return lambda value, where: _check_timestamp(value, where)
        return _check_message
    return None


def _check_message(message: Message, where: _Where) -> None:
    for descriptor, value in message.ListFields():
        rule = _rule(descriptor)
        check = rule.value
        if not rule.repeated:
            if check is not None:
                check(value, (where, rule.name, None))
            continue
        if len(value) > rule.items:
            raise InvalidArgument(_path((where, rule.name, None)), f"at most {rule.items} items, got {len(value)}")
        if rule.map_entry is not None:
            _check_map(rule, _path((where, rule.name, None)), value)
        elif check is not None:
            for i, item in enumerate(value):
                check(item, (where, rule.name, i))


def _check_timestamp(time: timestamp_pb2.Timestamp, where: _Where) -> None:
    # proto3 takes any seconds and nanos; protobuf reads back (ToNanoseconds, JSON) only years 1 to 9999
    # and nanos within the second. Stored, such a time would make every later export of the records fail;
    # taken by a controller, its task could be neither delivered nor recorded as dropped.
    if not (TIMESTAMP_SECONDS[0] <= time.seconds <= TIMESTAMP_SECONDS[1] and 0 <= time.nanos <= 999_999_999):
        raise InvalidArgument(
            _path(where),
            f"a time of years 1 to 9999 (seconds {TIMESTAMP_SECONDS[0]} to {TIMESTAMP_SECONDS[1]}, nanos "
            f"0 to 999999999), got seconds {time.seconds}, nanos {time.nanos}",
        )


def _check_map(rule: _Rule, path: str, entries: Mapping[object, object]) -> None:
    for k, v in entries.items():
        if rule.key is not None:
            rule.key(k, f"{path} key {shown(k)}")
        if rule.value is not None:
            rule.value(v, f"{path}[{shown(k)}]")


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


class _StageShape(NamedTuple):
    """What validate_stages looks at in a StageSpec: a key for the DAGs it already checked."""

    name: str
    processor: str
    parents: tuple[str, ...]
    input_type: int
    output_type: int


def validate_stages(
    stages: Sequence[types_pb2.StageSpec], field: str, processors: Collection[str] | None = None
) -> list[str]:
    """Checks a DAG of stages; returns the stage names in topological order (parents first). Every
    component checks every task's DAG, and a stream's tasks share theirs: a DAG checked once is not
    checked again (the last DAGS_KEPT of them)."""
    shapes = tuple(_StageShape(s.name, s.processor, tuple(s.parents), s.input_type, s.output_type) for s in stages)
    return list(_checked_stages(shapes, field, None if processors is None else frozenset(processors)))


DAGS_KEPT = 256  # a mesh runs a handful of pipelines; at most 256 x 64 stages of bounded names


@functools.lru_cache(maxsize=DAGS_KEPT)
def _checked_stages(stages: tuple[_StageShape, ...], field: str, processors: frozenset[str] | None) -> tuple[str, ...]:
    if not stages:
        raise InvalidArgument(field, "at least one stage")
    by_name: dict[str, tuple[int, _StageShape]] = {}
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
        return tuple(TopologicalSorter(graph).static_order())
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
