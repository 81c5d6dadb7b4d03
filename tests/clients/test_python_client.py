"""The Python dataclass client (gen/betterproto: betterproto2 messages, async grpclib stubs): its
messages on the wire against the protobuf classes the servers use (oneofs, proto3 optional, maps,
Struct, Timestamp). Its example is checked with the others' in test_examples.py."""

from __future__ import annotations

import datetime
import sys
from types import ModuleType

from google.protobuf import json_format, struct_pb2

from clients.support import BETTERPROTO, require_python_client
from dayu.v1 import decision_pb2, task_pb2, types_pb2


def client_modules() -> tuple[ModuleType, ModuleType]:
    """dayu_client.dayu.v1 and dayu_client.google.protobuf."""
    require_python_client()
    if str(BETTERPROTO) not in sys.path:
        sys.path.insert(0, str(BETTERPROTO))
    from dayu_client.dayu import v1
    from dayu_client.google import protobuf

    return v1, protobuf


# The client's messages on the wire: written by one side, read by the other.


def test_round_trip_with_the_protobuf_classes() -> None:
    v1, wkt = client_modules()
    params = {"gain": 1.5, "mode": "fast", "on": True, "off": False, "zero": 0, "none": None, "list": [1, "two", {}]}

    # Struct (its Value's `kind` is a oneof, every member here, defaults included): client -> protobuf.
    spec = v1.PolicySpec(name="fixed", params=wkt.Struct.from_dict(params))
    parsed = decision_pb2.PolicySpec.FromString(bytes(spec))
    assert parsed.name == "fixed"
    assert json_format.MessageToDict(parsed.params) == params
    assert parsed.params.fields["off"].WhichOneof("kind") == "bool_value"
    assert parsed.params.fields["zero"].WhichOneof("kind") == "number_value"
    assert parsed.params.fields["none"].WhichOneof("kind") == "null_value"
    # ... and back: protobuf -> client.
    expected = struct_pb2.Struct()
    expected.update(params)
    back = v1.PolicySpec.parse(decision_pb2.PolicySpec(name="fixed", params=expected).SerializeToString())
    assert back == spec
    assert back.params.to_dict() == params
    assert v1.PolicySpec.parse(bytes(spec)).params.fields["off"].is_set("bool_value")
    # An empty Struct is sent (present), an absent one is not.
    assert decision_pb2.PolicySpec.FromString(bytes(v1.PolicySpec(name="x", params=wkt.Struct()))).HasField("params")
    assert not decision_pb2.PolicySpec.FromString(bytes(v1.PolicySpec(name="x"))).HasField("params")

    # Timestamp (a datetime on the client, microseconds kept), maps of scalars and of messages, uint64.
    made_at = datetime.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=datetime.UTC)
    decision = v1.Decision(
        stream_id="cam-1",
        version=2**64 - 1,
        made_at=made_at,
        placement={"detect": "edge-1"},
        deployment={"detect": v1.NodeList(nodes=["edge-1", "cloud"])},
        paused=True,
    )
    read = decision_pb2.Decision.FromString(bytes(decision))
    assert read.made_at.ToDatetime(tzinfo=datetime.UTC) == made_at
    assert read.version == 2**64 - 1
    assert dict(read.placement) == {"detect": "edge-1"}
    assert list(read.deployment["detect"].nodes) == ["edge-1", "cloud"]
    assert v1.Decision.parse(read.SerializeToString()) == decision
    assert v1.Decision.parse(read.SerializeToString()).made_at == made_at
    # Proto JSON agrees too (camelCase names, RFC 3339 time, 64-bit integers as strings).
    assert decision.to_dict() == json_format.MessageToDict(read)

    # proto3 `optional` (a synthetic oneof): zero set is present, unset is absent, both ways.
    zero = types_pb2.Detection.FromString(bytes(v1.Detection(label="car", parent_index=0)))
    assert zero.HasField("parent_index")
    assert not types_pb2.Detection.FromString(bytes(v1.Detection(label="car"))).HasField("parent_index")
    assert v1.Detection.parse(types_pb2.Detection(parent_index=0).SerializeToString()).parent_index == 0
    assert v1.Detection.parse(types_pb2.Detection().SerializeToString()).parent_index is None
    record = task_pb2.TaskRecord(accuracy=0.0, latency_s=1.25)
    assert v1.TaskRecord.parse(record.SerializeToString()).accuracy == 0.0
    assert v1.TaskRecord.parse(task_pb2.TaskRecord().SerializeToString()).accuracy is None
