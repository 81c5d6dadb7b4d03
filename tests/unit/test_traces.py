"""Hop latency, and the spans of the latest tasks, from real OpenTelemetry spans, encoded as the OTLP
exporter sends them."""

from __future__ import annotations

import time

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dayu.runtime.tracing import NODE, STAGE, STREAM, TASK, TO_NODE
from dayu.scheduler import traces as traces_module
from dayu.scheduler.core import MAX_NODES
from dayu.scheduler.traces import RECENT_SPANS, HopKey, HopLatencies, HopSamples, TaskTraces, spans_of

from conftest import transfer_spans


def _spans(node: str) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({NODE: node}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    for delay in (0.01, 0.03, 0.02):
        with tracer.start_as_current_span("generator.task", attributes={STREAM: "cam"}):
            with tracer.start_as_current_span("processor.inference", attributes={STREAM: "cam", STAGE: "detect"}):
                time.sleep(delay)
            with tracer.start_as_current_span("link.transfer", attributes={STREAM: "cam", TO_NODE: "cloud"}):
                pass
    with tracer.start_as_current_span("unrelated"):  # not a task's span: no stream
        pass
    return exporter


def test_spans_become_latency_per_hop_stage_and_node() -> None:
    latencies = HopLatencies()
    ignored = latencies.add(encode_spans(_spans("edge-1").get_finished_spans()))

    assert ignored == 1
    assert latencies.received == 10 and latencies.ignored == 1
    hops = latencies.of("cam")
    inference = hops[HopKey("processor.inference", "detect", "edge-1")]
    assert inference.spans == 3
    assert 0.02 <= inference.p50_s < 0.03  # the median of 10, 30 and 20 ms
    assert inference.p95_s >= 0.03
    assert HopKey("link.transfer", "", "edge-1->cloud") in hops
    assert latencies.of("other") == {}
    (detect,) = [h for h in latencies.stats("cam") if h.hop == "processor.inference"]
    assert (detect.stage, detect.node, detect.spans) == ("detect", "edge-1", 3)


def test_transfer_spans_give_each_links_bandwidth() -> None:
    latencies = HopLatencies()
    # 250 kB in 1 s plus the link's 10 ms delay: 2 Mbit/s. The small one says nothing about the rate.
    latencies.add(transfer_spans("edge-1", "cloud", [(250_000, 1.01), (250_000, 1.01), (500, 0.2)]))
    assert latencies.link_bandwidth() == {("edge-1", "cloud"): pytest.approx(2.0)}
    latencies.add(transfer_spans("edge-1", "cloud", [(250_000, 4.01)]))  # a drop counts at once
    assert latencies.link_bandwidth()[("edge-1", "cloud")] == pytest.approx(0.5)
    latencies.add(transfer_spans("edge-1", "cloud", [(250_000, 0.11)]))  # a rise once it holds
    assert latencies.link_bandwidth()[("edge-1", "cloud")] == pytest.approx(2.0)


def _task_spans(task_ids: list[str], spans_each: int = 1) -> trace_service_pb2.ExportTraceServiceRequest:
    """The spans of tasks as two components export them, encoded as the exporter sends them."""
    exporters = []
    for service, node in (("dayu-controller", "edge-1"), ("dayu-processor", "cloud")):
        exporter = InMemorySpanExporter()
        provider = TracerProvider(resource=Resource.create({"service.name": service, NODE: node}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        for task_id in task_ids:
            for i in range(spans_each):
                start = time.time_ns() + i
                attributes = {STREAM: "cam", TASK: task_id, STAGE: "detect"}
                if service == "dayu-controller":
                    attributes[TO_NODE] = "cloud"
                name = "link.transfer" if service == "dayu-controller" else "processor.inference"
                tracer.start_span(name, attributes=attributes, start_time=start).end(end_time=start + 1000)
        exporters.append(exporter)
    processor, controller = (encode_spans(e.get_finished_spans()) for e in reversed(exporters))
    processor.resource_spans.extend(controller.resource_spans)  # the processor's came first
    return processor


def test_a_tasks_spans_are_kept_with_their_component_node_stage_and_times() -> None:
    traces = TaskTraces()
    traces.add_spans(spans_of(_task_spans(["task-1", "task-2"])))
    transfer, inference = traces.spans("task-1")  # by start time, whatever the order they came in
    assert (transfer.name, transfer.component, transfer.node, transfer.stage, transfer.to_node) == (
        "link.transfer",
        "controller",
        "edge-1",
        "detect",
        "cloud",
    )
    assert (inference.component, inference.node, inference.to_node) == ("processor", "cloud", "")
    assert transfer.start.ToNanoseconds() <= inference.start.ToNanoseconds()
    assert inference.end.ToNanoseconds() - inference.start.ToNanoseconds() == 1000
    assert traces.spans("task-3") == []
    traces.add_spans(spans_of(encode_spans(_spans("edge-1").get_finished_spans())))  # spans without a task id
    assert len(traces) == 2


def test_kept_traces_are_bounded_in_tasks_spans_a_task_and_spans_in_all() -> None:
    traces = TaskTraces(max_tasks=2, max_spans=3, max_kept=5)
    traces.add_spans(spans_of(_task_spans(["a", "b"])))
    traces.add_spans(spans_of(_task_spans(["a"])))  # a traced again: b is the least recent
    traces.add_spans(spans_of(_task_spans(["c"])))
    assert (len(traces.spans("a")), traces.spans("b"), len(traces.spans("c"))) == (3, [], 2)  # a: 3 spans at most
    traces.add_spans(spans_of(_task_spans(["d"], spans_each=2)))  # 3 spans of d, 5 in all at most: a goes
    assert (traces.spans("a"), len(traces.spans("c")), len(traces.spans("d"))) == ([], 2, 3)
    traces.add_spans(spans_of(_task_spans(["x" * 129])))  # no task id (a UUID): not kept, nor a key of megabytes
    assert len(traces) == 2


def test_a_hops_recent_durations_are_the_latest_ones() -> None:
    samples = HopSamples()
    for duration in range(1, RECENT_SPANS + 101):
        samples.add(float(duration))
    assert (samples.spans, samples.last_s) == (RECENT_SPANS + 100, RECENT_SPANS + 100.0)
    latest = range(101, RECENT_SPANS + 101)  # the first 100 went
    assert samples.p50_s == pytest.approx(sum(latest) / len(latest))
    assert samples.p95_s == latest[int(0.95 * len(latest))]


def test_the_links_a_batch_moved_are_told_once_with_their_bandwidth_before() -> None:
    latencies = HopLatencies()
    latencies.add(transfer_spans("edge-1", "cloud", [(250_000, 1.01)]))  # 2 Mbit/s
    assert latencies.moved_links() == {("edge-1", "cloud"): None}  # new
    assert latencies.moved_links() == {}
    latencies.add(transfer_spans("edge-1", "cloud", [(250_000, 4.01), (250_000, 4.01)]))
    assert latencies.moved_links() == {("edge-1", "cloud"): pytest.approx(2.0)}
    assert latencies.bandwidth == latencies.link_bandwidth() == {("edge-1", "cloud"): pytest.approx(0.5)}


def test_the_link_silent_longest_is_forgotten_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(traces_module, "MAX_LINKS", 2)
    latencies = HopLatencies()
    for node in ("a", "b", "a", "c"):
        latencies.add_link_rate((node, "cloud"), 10.0)
    assert set(latencies.bandwidth) == set(latencies.moved_links()) == {("a", "cloud"), ("c", "cloud")}


def test_every_edges_uplink_and_downlink_are_kept_at_the_most_nodes() -> None:
    """A link forgotten comes back as new, and the streams of its nodes decide again for nothing: the
    scheduler's most nodes (1024) each keep their links to and from the cloud."""
    latencies = HopLatencies()
    links = [link for i in range(MAX_NODES) for link in ((f"edge-{i}", "cloud"), ("cloud", f"edge-{i}"))]
    for link in links:
        latencies.add_link_rate(link, 10.0)
    latencies.moved_links()
    for link in links:  # the same rates again: every link known, none moved from nothing
        latencies.add_link_rate(link, 10.0)
    assert len(latencies.bandwidth) == len(links)
    assert set(latencies.moved_links().values()) == {10.0}


def test_a_spans_own_attributes_count_over_its_resources() -> None:
    request = encode_spans(_spans("edge-1").get_finished_spans())
    request.resource_spans[0].scope_spans[0].spans[1].attributes.add(key=NODE).value.string_value = "edge-2"
    request.resource_spans[0].scope_spans[0].spans[1].attributes.add(key="other").value.int_value = 1
    spans = list(spans_of(request))
    assert [span.attributes.get(NODE) for span in spans[:3]] == ["edge-1", "edge-2", "edge-1"]
    assert all("other" not in span.attributes for span in spans)  # only what the scheduler reads
