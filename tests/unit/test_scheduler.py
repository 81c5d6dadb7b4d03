from __future__ import annotations

import asyncio

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from structlog.testing import capture_logs

from dayu.runtime.errors import InvalidArgument, NotFound, ResourceExhausted
from dayu.runtime.tracing import STREAM
from dayu.scheduler import core as core_module
from dayu.scheduler import traces
from dayu.scheduler.core import SchedulerCore
from dayu.scheduler.service import SchedulerServicer
from dayu.v1 import decision_pb2, resources_pb2, scheduler_pb2, task_pb2

from conftest import latency_budget_from_best, make_stream_spec, transfer_spans

FIXED = decision_pb2.PolicySpec(name="fixed")


def policy(name: str, **params: object) -> decision_pb2.PolicySpec:
    spec = decision_pb2.PolicySpec(name=name)
    spec.params.update(params)
    return spec


async def test_startup_decision_follows_fixed_policy() -> None:
    core = SchedulerCore(FIXED)
    decision = await core.register(make_stream_spec())
    assert decision.version == 1 and decision.policy == "fixed"
    assert decision.configuration.resolution.width == 1280
    assert dict(decision.placement) == {s: "edge-1" for s in ("detect", "classify", "count", "merge")}
    assert core.decision("stream-1") == decision


async def test_set_policy_pushes_a_new_version_to_watchers() -> None:
    core = SchedulerCore(FIXED)
    await core.register(make_stream_spec())
    watcher = core.watch("stream-1")
    assert (await asyncio.wait_for(anext(watcher), 5)).version == 1
    pending = asyncio.create_task(anext(watcher))
    await asyncio.sleep(0.01)
    assert not pending.done()
    await core.set_policy("stream-1", policy("fixed", width=640, height=360, fps=5, placement={"detect": "cloud"}))
    pushed = await asyncio.wait_for(pending, 5)
    assert pushed.version == 2
    assert (pushed.configuration.resolution.width, pushed.configuration.fps) == (640, 5)
    assert pushed.placement["detect"] == "cloud" and pushed.placement["merge"] == "edge-1"
    (stats,), _ = core.stats()
    assert stats.decisions == 2 and stats.decision_time_p50_s > 0


async def test_bad_policy_and_unknown_stream_are_named() -> None:
    core = SchedulerCore(FIXED)
    await core.register(make_stream_spec())
    not_json = policy("fixed", fps=5)
    not_json.params.fields["fps"].number_value = float("nan")  # found by the fuzz: INTERNAL from json_format
    with pytest.raises(InvalidArgument, match=r"^policy\.params: numbers JSON can hold, got NaN or an infinity"):
        await core.set_policy("stream-1", not_json)
    with pytest.raises(InvalidArgument) as unknown:
        await core.set_policy("stream-1", decision_pb2.PolicySpec(name="nope"))
    assert unknown.value.field == "policy.name"
    with pytest.raises(InvalidArgument) as bad:
        await core.set_policy("stream-1", policy("fixed", fps=-1))
    assert bad.value.field == "policy.params.fps"
    with pytest.raises(NotFound):
        await core.feedback(task_pb2.TaskRecord(task=task_pb2.Task(stream_id="other")))


async def test_admission_pauses_the_newest_stream_on_an_overloaded_node_and_resumes_it() -> None:
    from dayu.scheduler.core import Admission
    from dayu.v1 import resources_pb2

    core = SchedulerCore(FIXED, admission=Admission(max_queue=10, resume_queue=2))
    first, second = make_stream_spec(), make_stream_spec()
    second.stream_id = "stream-2"
    await core.register(first)
    await core.register(second)
    busy = resources_pb2.NodeResources(node="edge-1", queue_lengths={"noop": 11})
    await core.report_resources(busy)
    assert core.decision("stream-2").paused and "11 tasks queued on edge-1" in core.decision("stream-2").reason
    assert not core.decision("stream-1").paused
    await core.report_resources(resources_pb2.NodeResources(node="edge-1", queue_lengths={"noop": 5}))
    assert core.decision("stream-2").paused  # not yet under resume_queue
    await core.report_resources(resources_pb2.NodeResources(node="edge-1", queue_lengths={"noop": 1}))
    resumed = core.decision("stream-2")
    assert not resumed.paused and "resumed" in resumed.reason


async def test_admission_acts_on_the_node_that_reported_only() -> None:
    """An overloaded node's next stream is paused on its own next report, not on other nodes' (whose
    reports say nothing new about it, and would each cost a look at every stream)."""
    from dayu.scheduler.core import Admission
    from dayu.v1 import resources_pb2

    core = SchedulerCore(FIXED, admission=Admission(max_queue=10, resume_queue=2))
    specs = [make_stream_spec() for _ in range(3)]
    for i, spec in enumerate(specs):
        spec.stream_id = f"stream-{i}"
        await core.register(spec)
    await core.report_resources(resources_pb2.NodeResources(node="edge-1", queue_lengths={"noop": 11}))
    assert [core.decision(s.stream_id).paused for s in specs] == [False, False, True]
    await core.report_resources(resources_pb2.NodeResources(node="cloud", queue_lengths={"noop": 0}))
    assert [core.decision(s.stream_id).paused for s in specs] == [False, False, True]  # still edge-1's last figures
    await core.report_resources(resources_pb2.NodeResources(node="edge-1", queue_lengths={"noop": 11}))
    assert [core.decision(s.stream_id).paused for s in specs] == [False, True, True]


async def test_fallback_plan_when_feedback_stops_and_policy_again_when_it_returns() -> None:
    clock = Clock()
    core = SchedulerCore(decision_pb2.PolicySpec(name="cloud_only"), fallback_after_s=0.05, clock=clock)
    await core.register(make_stream_spec())  # budget 1 s, 10 frames a segment at 30 fps
    assert set(core.decision("stream-1").placement.values()) == {"cloud"}
    clock.now += 1.9  # under its budget and three segments: not silent yet, whatever fallback_after_s says
    await core.check_feedback()
    assert core.decision("stream-1").version == 1
    await core.report_resources(resources_pb2.NodeResources(node="edge-1", cpu_count=2))
    clock.now += 0.2
    await core.report_resources(resources_pb2.NodeResources(node="edge-1", cpu_count=2, cpu_limit_cores=0.2))
    await core.check_feedback()
    assert core.decision("stream-1").version == 1  # its CPU was cut: its tasks are slow, the policy's to handle
    await core.report_resources(resources_pb2.NodeResources(node="edge-1", cpu_count=2))
    await core.check_feedback()
    fallback = core.decision("stream-1")
    assert "fallback" in fallback.reason and set(fallback.placement.values()) == {"edge-1"}
    assert fallback.configuration.resolution.height < 720
    record = task_pb2.TaskRecord(task=task_pb2.Task(stream_id="stream-1", decision_version=fallback.version))
    await core.feedback(record)
    back = core.decision("stream-1")
    assert back.version == fallback.version + 1 and set(back.placement.values()) == {"cloud"}


async def test_traces_of_a_slower_uplink_change_the_decision_before_late_tasks_return() -> None:
    core = SchedulerCore(latency_budget_from_best(), decision_interval_s=0.0)
    start = await core.register(make_stream_spec())
    for _ in range(2):  # in time, 1.2 MB per task: about 29 Mbit/s at 30 fps
        task = task_pb2.Task(stream_id="stream-1", decision_version=start.version)
        task.dag.stages.add().timings.transfer_s = 0.1
        task.hops.add(bytes=1_200_000)
        await core.feedback(task_pb2.TaskRecord(task=task, outcome=task_pb2.TASK_OUTCOME_DELIVERED, latency_s=0.4))
    assert core.decision("stream-1").version == start.version
    await core.receive_spans(transfer_spans("edge-1", "cloud", [(250_000, 0.51)]))  # 4 Mbit/s
    refit = core.decision("stream-1")
    assert refit.version > start.version and refit.reason.startswith("traces: uplink now 4.0 Mbit/s")


async def test_stats_keep_a_bounded_history_of_decisions_with_their_reasons() -> None:
    from dayu.scheduler.core import DECISION_HISTORY

    core = SchedulerCore(FIXED)
    await core.register(make_stream_spec())
    await core.set_policy("stream-1", policy("fixed", fps=5))
    (stats,), _ = core.stats()
    assert [d.version for d in stats.history] == [1, 2]
    assert stats.history[0].reason.startswith("startup plan") and "policy switched to fixed" in stats.history[1].reason
    assert stats.history[1].configuration.fps == 5 and stats.history[1].made_at.ToNanoseconds() > 0
    assert stats.history[0].made_at.ToNanoseconds() >= stats.registered_at.ToNanoseconds() > 0
    registered_at = stats.registered_at.ToNanoseconds()
    for _ in range(DECISION_HISTORY + 3):
        await core.set_policy("stream-1", FIXED)
    await core.register(make_stream_spec())  # a re-registration goes on with the same history
    (stats,), _ = core.stats()
    last = DECISION_HISTORY + 6
    assert len(stats.history) == DECISION_HISTORY and stats.current.version == last
    assert [d.version for d in stats.history] == list(range(last - DECISION_HISTORY + 1, last + 1))
    assert stats.registered_at.ToNanoseconds() == registered_at


class Clock:
    """The core's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_decisions_carry_the_epoch_and_a_restarted_core_has_a_newer_one() -> None:
    old = SchedulerCore(FIXED)
    await old.register(make_stream_spec())
    for _ in range(4):
        await old.set_policy("stream-1", FIXED)
    before = old.decision("stream-1")
    assert before.version == 5 and before.epoch == old.epoch > 0
    assert {d.epoch for d in old.stats()[0][0].history} == {old.epoch}
    restarted = SchedulerCore(FIXED)
    after = await restarted.register(make_stream_spec())
    assert after.version == 1 and after.epoch == restarted.epoch > old.epoch
    assert (after.epoch, after.version) > (before.epoch, before.version)
    assert (await SchedulerCore(FIXED, epoch=7).register(make_stream_spec())).epoch == 7


async def test_watch_yields_the_current_decision_first_whatever_version_the_caller_knew() -> None:
    core = SchedulerCore(FIXED, epoch=2)
    await core.register(make_stream_spec())
    # A caller (that may have known a version of an older epoch) gets the current decision first, then the next.
    request = scheduler_pb2.WatchDecisionsRequest(stream_id="stream-1")
    watcher = SchedulerServicer(core).WatchDecisions(request, None)
    first = (await asyncio.wait_for(anext(watcher), 5)).decision
    assert (first.epoch, first.version) == (2, 1)
    pending = asyncio.create_task(anext(watcher))
    await asyncio.sleep(0.01)
    assert not pending.done()
    await core.set_policy("stream-1", FIXED)
    assert (await asyncio.wait_for(pending, 5)).decision.version == 2
    await watcher.aclose()
    later = await asyncio.wait_for(anext(core.watch("stream-1")), 5)
    assert later.version == 2  # a later watcher: the current one at once


async def test_a_silent_node_turns_stale_gets_no_stages_and_is_trusted_again_when_it_reports() -> None:
    clock = Clock()
    core = SchedulerCore(
        policy("fixed", placement={"detect": "edge-2"}),
        stale_after_s=10,
        clock=clock,
    )
    for node in ("edge-1", "edge-2", "cloud"):
        await core.report_resources(resources_pb2.NodeResources(node=node, queue_lengths={"noop": 0}))
    assert (await core.register(make_stream_spec())).placement["detect"] == "edge-2"
    clock.now += 10
    await core.check_nodes()
    assert not core.resources["edge-2"].stale and core.decision("stream-1").version == 1
    for node in ("edge-1", "cloud"):  # they keep reporting; edge-2 does not
        await core.report_resources(resources_pb2.NodeResources(node=node, queue_lengths={"noop": 0}))
    clock.now += 0.5
    with capture_logs() as logs:
        await core.check_nodes()
        clock.now += 5
        await core.check_nodes()  # still stale: no second log, no new decision
    assert [entry["node"] for entry in logs if entry["event"].startswith("node stale")] == ["edge-2"]
    assert core.resources["edge-2"].stale and not core.resources["edge-1"].stale
    moved = core.decision("stream-1")
    assert moved.version == 2 and moved.placement["detect"] == "cloud" and moved.placement["merge"] == "edge-1"
    assert moved.reason == "no report from edge-2 for 10 s (stale edge-2: detect on cloud)"

    # Policies see no figures of a stale node and place nothing new there.
    spec = make_stream_spec()
    spec.stream_id, spec.node = "stream-2", "edge-2"
    spec.policy.name = "latency_budget"
    started = await core.register(spec)
    assert set(started.placement.values()) == {"cloud"} and "stale" not in started.reason
    view = core._streams["stream-2"].view
    assert "edge-2" not in view.resources and view.stale == {"edge-2"}

    with capture_logs() as logs:
        await core.report_resources(resources_pb2.NodeResources(node="edge-2", queue_lengths={"noop": 0}))
    assert [entry["event"] for entry in logs] == ["node reporting again: trusted again"]
    assert not core.resources["edge-2"].stale
    back = core.decision("stream-1")
    assert back.version == 3 and back.placement["detect"] == "edge-2" and back.reason == "edge-2 reporting again"


async def test_a_stale_nodes_queues_neither_pause_nor_hold_a_stream() -> None:
    from dayu.scheduler.core import Admission

    for cloud_reports in (True, False):
        clock = Clock()
        core = SchedulerCore(FIXED, admission=Admission(max_queue=10, resume_queue=2), stale_after_s=5, clock=clock)
        await core.register(make_stream_spec())
        await core.report_resources(resources_pb2.NodeResources(node="cloud"))
        await core.report_resources(resources_pb2.NodeResources(node="edge-1", queue_lengths={"noop": 50}))
        assert core.decision("stream-1").paused
        clock.now += 6
        if cloud_reports:
            await core.report_resources(resources_pb2.NodeResources(node="cloud"))
        await core.check_nodes()
        resumed = core.decision("stream-1")
        # Moved to the cloud; or, the cloud stale too, left on edge-1 (nowhere better), whose queue is old news.
        assert not resumed.paused and set(resumed.placement.values()) == {"cloud" if cloud_reports else "edge-1"}


async def test_streams_and_nodes_past_their_limits_are_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_module, "MAX_STREAMS", 1)
    monkeypatch.setattr(core_module, "MAX_NODES", 1)
    core = SchedulerCore(FIXED)
    await core.register(make_stream_spec())
    await core.register(make_stream_spec())  # the same stream again is no new one
    other = make_stream_spec()
    other.stream_id = "stream-2"
    with pytest.raises(ResourceExhausted, match=r"stream\.stream_id: 'stream-2'"):
        await core.register(other)
    await core.report_resources(resources_pb2.NodeResources(node="edge-1"))
    await core.report_resources(resources_pb2.NodeResources(node="edge-1"))
    with pytest.raises(ResourceExhausted, match="node: 'edge-2'"):
        await core.report_resources(resources_pb2.NodeResources(node="edge-2"))


def _inference_spans(*streams: str) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for stream in streams:
        span = spans.add(name="processor.inference", start_time_unix_nano=1, end_time_unix_nano=2)
        span.attributes.add(key=STREAM).value.string_value = stream
    return request


def test_traced_streams_are_bounded_forgetting_the_longest_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(traces, "MAX_STREAMS", 2)
    hops = traces.HopLatencies()
    hops.add(_inference_spans("a", "b", "a", "c"))  # b has gone longest without a span
    assert hops.of("b") == {} and hops.of("a") and hops.of("c")
    (samples,) = hops.of("a").values()
    assert samples.spans == 2


async def test_a_cut_of_a_nodes_cpu_changes_the_decision_before_slow_tasks_return() -> None:
    core = SchedulerCore(latency_budget_from_best(), decision_interval_s=0.0)
    start = await core.register(make_stream_spec())  # budget 1 s; the start runs on edge-1
    node = start.placement["detect"]
    await core.report_resources(resources_pb2.NodeResources(node=node, cpu_count=2, cpu_limit_cores=0.5))
    for _ in range(3):  # in budget: 0.3 s of processing on the node at half a core
        task = task_pb2.Task(stream_id="stream-1", decision_version=start.version)
        stage = task.dag.stages.add(executed_on=node)
        stage.timings.process_s = 0.3
        task.hops.add(bytes=50_000)
        await core.feedback(task_pb2.TaskRecord(task=task, outcome=task_pb2.TASK_OUTCOME_DELIVERED, latency_s=0.4))
    assert core.decision("stream-1").version == start.version
    # A tenth of that: the same processing would take 3 s now, before any slow task came back.
    await core.report_resources(resources_pb2.NodeResources(node=node, cpu_count=2, cpu_limit_cores=0.05))
    cut = core.decision("stream-1")
    assert cut.version > start.version and f"{node} CPU 0.5 -> 0.05 cores" in cut.reason


async def test_a_probe_that_finds_the_uplink_collapsed_changes_the_decision_before_any_trace() -> None:
    core = SchedulerCore(latency_budget_from_best(), decision_interval_s=0.0)
    start = await core.register(make_stream_spec())
    for _ in range(2):  # in time, 1.2 MB per task
        task = task_pb2.Task(stream_id="stream-1", decision_version=start.version)
        task.dag.stages.add().timings.transfer_s = 0.1
        task.hops.add(bytes=1_200_000)
        await core.feedback(task_pb2.TaskRecord(task=task, outcome=task_pb2.TASK_OUTCOME_DELIVERED, latency_s=0.4))

    def report(mbps: float) -> resources_pb2.NodeResources:
        link = resources_pb2.LinkBandwidth(from_node="edge-1", to_node="cloud", bandwidth_mbps=mbps)
        return resources_pb2.NodeResources(node="edge-1", cpu_count=2, links=[link])

    await core.report_resources(report(100.0))
    await core.report_resources(report(80.0))  # probes wobble: not news
    assert core.decision("stream-1").version == start.version
    await core.report_resources(report(0.2))
    collapsed = core.decision("stream-1")
    assert collapsed.version > start.version and collapsed.reason.startswith("probes: uplink now 0.2 Mbit/s")


async def test_stats_of_one_stream_or_of_all_in_pages_that_fit_in_the_budget() -> None:
    core = SchedulerCore(FIXED)
    for name in ("a", "b", "c"):
        spec = make_stream_spec()
        spec.stream_id = name
        await core.register(spec)
    everything, token = core.stats()
    assert [s.stream_id for s in everything] == ["a", "b", "c"] and token == ""
    first, token = core.stats(page_size=2)
    rest, last = core.stats(page_size=2, page_token=token)
    assert [s.stream_id for s in first + rest] == ["a", "b", "c"] and token and last == ""
    one = everything[0].ByteSize()
    some, token = core.stats(budget_bytes=2 * one + 1)  # a page ends early at the byte budget
    assert [s.stream_id for s in some] == ["a", "b"]
    assert [s.stream_id for s in core.stats(page_token=token)[0]] == ["c"]
    (only,), token = core.stats("b")
    assert only.stream_id == "b" and token == ""
    with pytest.raises(InvalidArgument):
        core.stats(page_token="not a token of ours!")
    with pytest.raises(InvalidArgument):
        core.stats(page_size=1001)
    with pytest.raises(NotFound):
        core.stats("nobody")


async def test_an_unregistered_stream_is_forgotten_and_its_watchers_end() -> None:
    core = SchedulerCore(FIXED)
    await core.register(make_stream_spec())
    await core.set_policy("stream-1", FIXED)
    await core.receive_spans(_inference_spans("stream-1"))
    assert core.hops.of("stream-1")
    watcher = core.watch("stream-1")
    assert (await asyncio.wait_for(anext(watcher), 5)).version == 2
    pending = asyncio.create_task(anext(watcher))
    await asyncio.sleep(0.01)
    assert not pending.done()

    assert await core.unregister("stream-1")
    with pytest.raises(StopAsyncIteration):  # its watcher's stream ends, cleanly
        await asyncio.wait_for(pending, 5)
    assert not await core.unregister("stream-1")  # not registered: no error
    with pytest.raises(NotFound):
        core.decision("stream-1")
    with pytest.raises(NotFound):
        await core.feedback(task_pb2.TaskRecord(task=task_pb2.Task(stream_id="stream-1")))
    with pytest.raises(NotFound):
        await anext(core.watch("stream-1"))
    assert core.stats() == ([], "") and core.hops.of("stream-1") == {}
    with pytest.raises(InvalidArgument, match=r"^stream_id:"):
        await core.unregister("")

    # Registered again, it starts over, but its versions go on: its generator keeps only newer ones.
    again = await core.register(make_stream_spec())
    assert again.version == 3 and again.reason.startswith("startup plan")
    (stats,), _ = core.stats()
    assert [d.version for d in stats.history] == [3] and stats.feedback_received == 0


async def test_a_watcher_of_a_stream_registered_again_goes_on_until_it_is_unregistered() -> None:
    core = SchedulerCore(FIXED)
    await core.register(make_stream_spec())
    watcher = core.watch("stream-1")
    assert (await anext(watcher)).version == 1
    await core.register(make_stream_spec())  # re-registration: the same watchers
    assert (await asyncio.wait_for(anext(watcher), 5)).version == 2
    pending = asyncio.create_task(anext(watcher))
    await asyncio.sleep(0.01)
    await core.unregister("stream-1")
    await core.register(make_stream_spec())  # before the watcher woke: a new registration, not its own
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 5)
    assert (await asyncio.wait_for(anext(core.watch("stream-1")), 5)).version == 3


async def test_a_stream_unregistered_while_a_loop_over_every_stream_waits_is_skipped() -> None:
    clock = Clock()
    core = SchedulerCore(FIXED, fallback_after_s=1, clock=clock)
    for name in ("a", "b"):
        spec = make_stream_spec()
        spec.stream_id = name
        await core.register(spec)
    clock.now += 60  # neither has had feedback: both are due for the fallback plan
    held = core._streams["a"].changed
    await held.acquire()  # a's watchers hold its decision: the check waits there, in the middle of its loop
    check = asyncio.create_task(core.check_feedback())
    await asyncio.sleep(0.01)
    assert not check.done()
    assert await core.unregister("b")
    held.release()
    await asyncio.wait_for(check, 5)  # no "dictionary changed size during iteration"
    assert "fallback" in core.decision("a").reason
    assert not core.resources and [s.stream_id for s in core.stats()[0]] == ["a"]

    # Admission too: the paused stream goes, the other one is decided on as before.
    from dayu.scheduler.core import Admission

    core = SchedulerCore(FIXED, admission=Admission(max_queue=10, resume_queue=2))
    for name in ("a", "b"):
        spec = make_stream_spec()
        spec.stream_id = name
        await core.register(spec)
    await core.report_resources(resources_pb2.NodeResources(node="edge-1", queue_lengths={"noop": 11}))
    assert core.decision("b").paused and not core.decision("a").paused
    await core.unregister("b")
    await core.report_resources(resources_pb2.NodeResources(node="edge-1", queue_lengths={"noop": 1}))
    assert not core.decision("a").paused


async def test_a_tasks_spans_are_kept_by_root_id_and_answered_by_start_time() -> None:
    from dayu.runtime.tracing import NODE, TASK

    core = SchedulerCore(FIXED)
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "dayu-processor"
    resource_spans.resource.attributes.add(key=NODE).value.string_value = "cloud"
    spans = resource_spans.scope_spans.add().spans
    for name, start in (("processor.inference", 20), ("processor.queue", 10)):
        span = spans.add(name=name, start_time_unix_nano=start * 10**9, end_time_unix_nano=(start + 1) * 10**9)
        span.attributes.add(key=TASK).value.string_value = "4f0b7e56-0f6c-4b36-9d3b-1f4f0a0f0c01"
    await core.receive_spans(request)
    queue, inference = core.task_trace("4f0b7e56-0f6c-4b36-9d3b-1f4f0a0f0c01")
    assert (queue.name, queue.component, queue.node, queue.start.seconds, queue.end.seconds) == (
        "processor.queue",
        "processor",
        "cloud",
        10,
        11,
    )
    assert inference.name == "processor.inference"
    with pytest.raises(NotFound, match="latest 2048 tasks"):
        core.task_trace("4f0b7e56-0f6c-4b36-9d3b-1f4f0a0f0c02")
    with pytest.raises(InvalidArgument, match=r"^root_id:"):
        core.task_trace("")


async def test_unregistering_and_task_traces_are_for_admins(monkeypatch: pytest.MonkeyPatch) -> None:
    from dayu.runtime.errors import PermissionDenied
    from dayu.runtime.tls import Identity

    core = SchedulerCore(FIXED)
    await core.register(make_stream_spec())
    servicer = SchedulerServicer(core)
    caller = Identity("generator", "edge-1")
    monkeypatch.setattr("dayu.runtime.tls.peer_identity", lambda context: caller)
    with pytest.raises(PermissionDenied, match="UnregisterStream: only backend, operator may call it"):
        await servicer.UnregisterStream(scheduler_pb2.UnregisterStreamRequest(stream_id="stream-1"), None)
    with pytest.raises(PermissionDenied, match="GetTaskTrace: only backend, operator"):
        await servicer.GetTaskTrace(scheduler_pb2.GetTaskTraceRequest(root_id="x"), None)
    caller = Identity("backend", "cloud")
    reply = await servicer.UnregisterStream(scheduler_pb2.UnregisterStreamRequest(stream_id="stream-1"), None)
    assert reply.unregistered
