"""What lets the simulator run ten thousand streams: spans written in the wire format, generators that
wake only where they make a task, and task rows streamed to tasks.csv with bounded summaries. Each must
give what the plain way gives."""

from __future__ import annotations

import csv
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import simpy
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from test_simulator_engine import profile, run, scenario, stream

from dayu.experiment import TIMELINE_COLUMNS, write_csv
from dayu.media.frames import FrameRateFilter
from dayu.mesh.summary import percentiles, reason_kind
from dayu.runtime.tracing import BYTES, DELAY, NODE, STAGE, STREAM, TASK, TO_NODE
from dayu.scheduler.traces import SERVICE_NAME, spans_of
from dayu.simulator import tasklog
from dayu.simulator.engine import SimulatedMesh, _Generator, _Stream
from dayu.simulator.report import timeline_rows
from dayu.simulator.tasklog import TaskLog, TaskOutcome
from dayu.simulator.telemetry import SpanExporter
from dayu.v1 import decision_pb2, types_pb2

# -- spans ------------------------------------------------------------------------------------------


def _message_attribute(key: str, value: Any) -> common_pb2.KeyValue:
    if isinstance(value, bool | str):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=str(value)))
    if isinstance(value, int):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(int_value=value))
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(double_value=value))


class MessageExporter:
    """The spans built as messages, field by field: what the encoded ones must equal."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch, self.held = max_batch, []

    def add(self, service: str, node: str, name: str, start_s: float, end_s: float, **attributes: Any) -> None:
        span = trace_pb2.Span(
            name=name,
            start_time_unix_nano=round(start_s * 1e9),
            end_time_unix_nano=round(end_s * 1e9),
            attributes=[_message_attribute(NODE, node), *(_message_attribute(k, v) for k, v in attributes.items())],
        )
        self.held.append((f"dayu-{service}", node, span))

    def requests(self) -> list[trace_service_pb2.ExportTraceServiceRequest]:
        out = []
        for start in range(0, len(self.held), self.max_batch):
            request = trace_service_pb2.ExportTraceServiceRequest()
            scopes: dict[tuple[str, str], trace_pb2.ScopeSpans] = {}
            for service, node, span in self.held[start : start + self.max_batch]:
                if (service, node) not in scopes:
                    resource = resource_pb2.Resource(
                        attributes=[_message_attribute(SERVICE_NAME, service), _message_attribute(NODE, node)]
                    )
                    scopes[(service, node)] = request.resource_spans.add(resource=resource).scope_spans.add()
                scopes[(service, node)].spans.append(span)
            out.append(request)
        return out


def test_encoded_spans_are_the_messages_built_field_by_field() -> None:
    draw = random.Random(5)
    encoded, built = SpanExporter(max_batch=7), MessageExporter(max_batch=7)
    for i in range(60):
        attributes = {
            STREAM: f"cam-{draw.randrange(3)}",
            TASK: f"cam#{i}",
            draw.choice((STAGE, TO_NODE)): draw.choice(("detect", "cloud", "é")),
            BYTES: draw.choice((0, 1, 300, 10**12, -5)),
            DELAY: draw.choice((0.0, 0.015, 1e-9)),
            "flag": draw.choice((True, 1, 1.0)),  # equal keys, told apart
        }
        where = (draw.choice(("processor", "controller")), draw.choice(("cloud", "edge-1", "é")))
        times = (draw.random() * 100, 100 + draw.random() * 100)
        name = draw.choice(("link.transfer", "processor.queue"))
        for exporter in (encoded, built):
            exporter.add(*where, name, *times, **attributes)
    requests = encoded.requests()
    assert requests == built.requests() and len(requests) == 9
    assert encoded.exported == 60 and not encoded.requests()
    spans = [span for request in requests for span in spans_of(request)]
    assert len(spans) == 60 and spans[0].attributes[TASK] == "cam#0"


def test_spans_past_the_queue_are_dropped_and_counted() -> None:
    exporter = SpanExporter(max_batch=4, max_queue=5)
    for i in range(8):
        exporter.add("processor", "cloud", "processor.queue", i, i + 1, **{STREAM: "a", TASK: f"a#{i}"})
    assert len(exporter) == 5 and exporter.dropped == 3
    assert [len(r.resource_spans[0].scope_spans[0].spans) for r in exporter.requests()] == [4, 1]


# -- generators -------------------------------------------------------------------------------------


class _Core:
    def __init__(self) -> None:
        self.current: decision_pb2.Decision | None = None

    def decision(self, stream_id: str) -> decision_pb2.Decision:
        assert self.current is not None
        return self.current


class _Costs:
    def frame_bytes(self, width: int, height: int, quality: int) -> float:
        return float(width * height)


class _Mesh:
    """What a _Generator uses of SimulatedMesh."""

    def __init__(self, duration_s: float) -> None:
        self.env, self.core, self.profile, self.duration_s = simpy.Environment(), _Core(), _Costs(), duration_s
        self.made: list[tuple[float, int, int]] = []

    def wake_at(self, when: float, callback: Any) -> simpy.Event:
        event = self.env.timeout(when - self.env.now)
        event.callbacks.append(callback)
        return event

    def _make_task(
        self, stream: Any, decision: Any, frames: int, placement: Any, frame_bytes: float, size: Any
    ) -> None:
        self.made.append((self.env.now, decision.version, frames))


def _decision(version: int, fps: float, per_segment: int, paused: bool = False) -> decision_pb2.Decision:
    config = types_pb2.Configuration(fps=fps, frames_per_segment=per_segment)
    return decision_pb2.Decision(version=version, configuration=config, paused=paused)


def _reference(changes: list[tuple[float, decision_pb2.Decision]], first_s: float, duration_s: float) -> list[Any]:
    """The generator as it was, a simpy process going over every frame with the real FrameRateFilter."""
    env, made = simpy.Environment(), []
    current = [changes[0][1]]

    def change() -> Any:
        for at, decision in changes[1:]:
            yield env.timeout(at - env.now)
            current[0] = decision

    def generate() -> Any:
        rates, kept = FrameRateFilter(8.0, 8.0), 0
        yield env.timeout(first_s)
        while env.now < duration_s:
            decision = current[0]
            if decision.paused:
                kept = 0
            else:
                target = min(decision.configuration.fps, 8.0)
                if rates.target_fps != target:
                    rates.target_fps = target
                if rates.keep():
                    kept += 1
                    if kept >= decision.configuration.frames_per_segment:
                        made.append((env.now, decision.version, kept))
                        kept = 0
            yield env.timeout(1 / 8.0)

    env.process(change())
    env.process(generate())
    env.run()
    return made


@pytest.mark.parametrize("seed", range(6))
def test_a_generator_that_wakes_only_for_its_tasks_makes_the_tasks_of_one_going_over_every_frame(seed: int) -> None:
    draw = random.Random(seed)
    duration_s, first_s = 40.0, draw.uniform(0, 1 / 8)
    changes = [(0.0, _decision(1, 2, 2))]
    for version in range(2, 30):  # at times between frames, as the core's calls come
        at = changes[-1][0] + draw.uniform(0.05, 3.0)
        fps = draw.choice((0.5, 1, 2, 3, 4, 8, 12))
        changes.append((at, _decision(version, fps, draw.choice((1, 2, 4)), paused=draw.random() < 0.2)))

    mesh = _Mesh(duration_s)
    model = stream("a", "edge-1")
    generator = _Generator(mesh, _Stream(model), first_s)  # type: ignore[arg-type]
    mesh.core.current = changes[0][1]
    generator.start()

    def change() -> Any:
        for at, decision in changes[1:]:
            yield mesh.env.timeout(at - mesh.env.now)
            mesh.core.current = decision
            generator.changed(mesh.env.now)

    mesh.env.process(change())
    mesh.env.run()
    expected = _reference(changes, first_s, duration_s)
    assert len(expected) > 20
    assert [(version, frames) for _, version, frames in mesh.made] == [(v, n) for _, v, n in expected]
    assert [at for at, _, _ in mesh.made] == pytest.approx([at for at, _, _ in expected], abs=1e-9)


# -- task rows and summaries -------------------------------------------------------------------------


def _outcomes(count: int, seed: int) -> list[TaskOutcome]:
    draw = random.Random(seed)
    config = types_pb2.Configuration(
        resolution=types_pb2.Resolution(width=1280, height=720), fps=2, frames_per_segment=2, quality=85
    )
    out = []
    for i in range(count):
        delivered = draw.random() < 0.7
        out.append(
            TaskOutcome(
                made_s=round(draw.uniform(0, 30), 2),
                stream_id=f"cam-{i}",
                decision_version=draw.randrange(1, 5),
                configuration=config,
                placement="detect@cloud read@edge-1",
                delivered=delivered,
                latency_s=draw.uniform(0.1, 8),
                budget_s=draw.choice((1.0, 1.5, 3.0)),
                accuracy=draw.choice((0.81, 0.9, 0.333)) if delivered else None,
                reason="" if delivered else f"late: {draw.uniform(4, 9):.1f} s old at edge-1, over 4 times",
                transfer_s=0.1,
            )
        )
    return out


def test_rows_streamed_as_tasks_settle_are_the_rows_written_at_the_end(tmp_path: Path) -> None:
    outcomes = _outcomes(500, seed=1)
    log = TaskLog(tmp_path / "streamed.csv", keep_tasks=True)
    settled = sorted(outcomes, key=lambda t: t.made_s + t.latency_s)  # in the order they settle
    for i, outcome in enumerate(settled):
        log.add(outcome)
        if i % 37 == 0:  # what the engine knows each second: nothing made before this is in flight
            in_flight = [t.made_s for t in settled[i + 1 :]]
            log.flush(min(in_flight, default=float("inf")))
    log.close()
    write_csv(tmp_path / "at_end.csv", TIMELINE_COLUMNS, timeline_rows(outcomes))
    assert (tmp_path / "streamed.csv").read_text() == (tmp_path / "at_end.csv").read_text()
    with (tmp_path / "streamed.csv").open() as file:
        assert len(list(csv.DictReader(file))) == 500

    delivered = [t for t in outcomes if t.delivered]
    assert log.generated == 500 and log.delivered == len(delivered)
    assert log.latency_percentiles() == percentiles([t.latency_s for t in delivered])
    assert log.mean_accuracy() == statistics.fmean(t.accuracy for t in delivered if t.accuracy is not None)
    assert log.in_budget == sum(t.in_budget for t in outcomes)
    assert log.drop_reasons == Counter(reason_kind(t.reason) for t in outcomes if not t.delivered)


def test_the_latencies_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasklog, "LATENCIES_KEPT", 100)
    log = TaskLog()
    outcomes = [t for t in _outcomes(3000, seed=2) if t.delivered]
    for outcome in outcomes:
        log.add(outcome)
    assert len(log.latencies) == 100 and log.delivered == len(outcomes) and not log.tasks
    exact = percentiles([t.latency_s for t in outcomes])["p50"]
    assert log.latency_percentiles()["p50"] == pytest.approx(exact, abs=1.5)  # a sample's median


def test_a_run_streams_its_rows_to_the_csv_as_it_goes(tmp_path: Path) -> None:
    s = scenario([stream("a", "edge-1", {"detect": "cloud"}), stream("b", "edge-2")], uplink_mbps=1.0)
    kept = run(s)
    streamed = SimulatedMesh(s, profile(), "fixed", 20.0, 0, tasks_csv=tmp_path / "tasks.csv", keep_tasks=False)
    results = streamed.run()
    assert not results.tasks and results.log.generated == len(kept.results.tasks) > 20
    write_csv(tmp_path / "kept.csv", TIMELINE_COLUMNS, timeline_rows(kept.results.tasks))
    assert (tmp_path / "tasks.csv").read_text() == (tmp_path / "kept.csv").read_text()
