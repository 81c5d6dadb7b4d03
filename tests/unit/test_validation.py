from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

from dayu.runtime.errors import InvalidArgument
from dayu.runtime.pipelines import load_pipelines
from dayu.runtime.validation import validate_stages, validate_stream_spec, validate_task
from dayu.v1 import decision_pb2, task_pb2, types_pb2

from conftest import BOXES, LABELS, fork_join_pipeline, make_stream_spec, make_task, stage


def test_topological_order_puts_parents_first() -> None:
    order = validate_stages(fork_join_pipeline().stages, "stages")
    assert order.index("detect") < order.index("classify") < order.index("merge")
    assert order.index("count") < order.index("merge")


def test_cycle_is_reported_with_its_stages() -> None:
    stages = [stage("a"), stage("b", ("a", "c"), BOXES, BOXES), stage("c", ("b",), BOXES, BOXES)]
    with pytest.raises(InvalidArgument) as caught:
        validate_stages(stages, "stages")
    assert caught.value.field == "stages"
    assert "b -> c" in caught.value.expected or "c -> b" in caught.value.expected


def test_unknown_processor_is_refused_when_the_kinds_are_known() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_stages([stage("a", processor="magic")], "stages", processors={"noop"})
    assert caught.value.field == "stages[0].processor"


def test_task_checks() -> None:
    validate_task(make_task(), nodes={"edge-1"})
    task = make_task()
    task.task_id = "not-a-uuid"
    with pytest.raises(InvalidArgument, match=r"^task.task_id: a UUID"):
        validate_task(task)
    task = make_task()
    task.segment.codec = types_pb2.CODEC_H264
    with pytest.raises(InvalidArgument, match=r"^task.segment.stream:"):
        validate_task(task)


def test_stream_spec_checks_budget_and_configuration() -> None:
    spec = make_stream_spec()
    validate_stream_spec(spec)
    spec.max_configuration.quality = 101
    with pytest.raises(InvalidArgument, match=r"^stream.max_configuration.quality:"):
        validate_stream_spec(spec)
    spec = make_stream_spec()
    spec.latency_budget_s = 0
    with pytest.raises(InvalidArgument, match=r"^stream.latency_budget_s:"):
        validate_stream_spec(spec)


def test_pipelines_from_yaml(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "pipelines.yaml"
    path.write_text(
        """
pipelines:
  - name: two-stage
    stages:
      - {name: detect, processor: noop, input_type: DATA_TYPE_FRAMES, output_type: DATA_TYPE_BOXES}
      - {name: classify, processor: noop, parents: [detect], input_type: DATA_TYPE_BOXES, output_type: DATA_TYPE_LABELS}
"""
    )
    pipelines = load_pipelines(path)
    assert [s.name for s in pipelines["two-stage"].stages] == ["detect", "classify"]
    assert pipelines["two-stage"].stages[1].output_type == LABELS

    path.write_text("pipelines:\n  - name: bad\n    stages:\n      - {name: a, procesor: noop}\n")
    with pytest.raises(InvalidArgument) as caught:
        load_pipelines(path)
    assert caught.value.field.endswith("pipelines[0]") and "procesor" in caught.value.expected


def test_every_limit_names_a_field_or_method_of_the_contract() -> None:
    from google.protobuf import descriptor_pool
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: F401 (its descriptors)

    import dayu.v1
    from dayu.runtime import limits

    for module in pkgutil.iter_modules(dayu.v1.__path__):
        importlib.import_module(f"dayu.v1.{module.name}")  # every service's descriptors

    pool = descriptor_pool.Default()
    for name in [*limits.FIELD_SIZES, *limits.FIELD_ITEMS]:
        pool.FindFieldByName(name)  # KeyError for a misspelt or removed field
    for name in limits.FIELD_ITEMS:
        assert pool.FindFieldByName(name).is_repeated, name
    for method in limits.REQUEST_BYTES_BY_METHOD:
        pool.FindMethodByName(method)


def test_check_request_names_the_field_past_its_limit_even_in_maps() -> None:
    from dayu.runtime.validation import check_request

    decision = decision_pb2.Decision(stream_id="stream-1")
    decision.placement["k" * 2000] = "edge-1"
    with pytest.raises(InvalidArgument) as caught:
        check_request(decision)
    assert caught.value.field.startswith("placement key 'kkkk") and len(str(caught.value)) < 200
    decision.placement.clear()
    decision.placement["detect"] = "n" * 2000
    with pytest.raises(InvalidArgument, match=r"^placement\['detect'\]: at most 1024 characters, got 2000$"):
        check_request(decision)


def _bad_times() -> list[tuple[str, task_pb2.Task]]:
    stored_then_unexportable = make_task()
    stored_then_unexportable.dag.stages[1].timings.started_at.nanos = -30843
    year_10000 = make_task()
    year_10000.hops.add(component="controller", node="edge-1").entered_at.seconds = 253_402_300_800
    before_year_1 = make_task()
    before_year_1.created_at.seconds = -(2**63)
    return [
        ("dag.stages[1].timings.started_at", stored_then_unexportable),
        ("hops[0].entered_at", year_10000),
        ("created_at", before_year_1),
    ]


@pytest.mark.parametrize(("path", "task"), _bad_times())
def test_a_time_protobuf_cannot_read_back_is_refused_where_it_is(path: str, task: task_pb2.Task) -> None:
    from dayu.runtime.validation import check_request

    with pytest.raises(InvalidArgument, match=rf"^{re.escape(path)}: a time of years 1 to 9999"):
        check_request(task)
