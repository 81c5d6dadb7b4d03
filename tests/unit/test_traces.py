"""Hop latency from real OpenTelemetry spans, encoded as the OTLP exporter sends them."""

from __future__ import annotations

import time

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dayu.runtime.tracing import NODE, STAGE, STREAM, TO_NODE
from dayu.scheduler.traces import HopKey, HopLatencies

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
