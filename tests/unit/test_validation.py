from __future__ import annotations

import pytest

from dayu.runtime.errors import InvalidArgument
from dayu.runtime.pipelines import load_pipelines
from dayu.runtime.validation import validate_stages, validate_stream_spec, validate_task
from dayu.v1 import types_pb2

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
