from __future__ import annotations

import asyncio

import pytest

from dayu.runtime.errors import InvalidArgument, NotFound
from dayu.scheduler.core import SchedulerCore
from dayu.v1 import decision_pb2, task_pb2

from conftest import make_stream_spec, transfer_spans

FIXED = decision_pb2.PolicySpec(name="fixed")


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
    watcher = core.watch("stream-1", after_version=0)
    assert (await anext(watcher)).version == 1
    pending = asyncio.create_task(anext(watcher))
    await asyncio.sleep(0.01)
    assert not pending.done()
    params = "{width: 640, height: 360, fps: 5, placement: {detect: cloud}}"
    await core.set_policy("stream-1", decision_pb2.PolicySpec(name="fixed", params_yaml=params))
    pushed = await asyncio.wait_for(pending, 5)
    assert pushed.version == 2
    assert (pushed.configuration.resolution.width, pushed.configuration.fps) == (640, 5)
    assert pushed.placement["detect"] == "cloud" and pushed.placement["merge"] == "edge-1"
    (stats,) = core.stats()
    assert stats.decisions == 2 and stats.decision_time_p50_s > 0


async def test_bad_policy_and_unknown_stream_are_named() -> None:
    core = SchedulerCore(FIXED)
    await core.register(make_stream_spec())
    with pytest.raises(InvalidArgument) as unknown:
        await core.set_policy("stream-1", decision_pb2.PolicySpec(name="nope"))
    assert unknown.value.field == "policy.name"
    with pytest.raises(InvalidArgument) as bad:
        await core.set_policy("stream-1", decision_pb2.PolicySpec(name="fixed", params_yaml="{fps: -1}"))
    assert bad.value.field == "policy.params_yaml.fps"
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


async def test_fallback_plan_when_feedback_stops_and_policy_again_when_it_returns() -> None:
    core = SchedulerCore(decision_pb2.PolicySpec(name="cloud_only"), fallback_after_s=0.05)
    await core.register(make_stream_spec())
    assert set(core.decision("stream-1").placement.values()) == {"cloud"}
    await asyncio.sleep(0.1)
    await core.check_feedback()
    fallback = core.decision("stream-1")
    assert "fallback" in fallback.reason and set(fallback.placement.values()) == {"edge-1"}
    assert fallback.configuration.resolution.height < 720
    record = task_pb2.TaskRecord(task=task_pb2.Task(stream_id="stream-1", decision_version=fallback.version))
    await core.feedback(record)
    back = core.decision("stream-1")
    assert back.version == fallback.version + 1 and set(back.placement.values()) == {"cloud"}


async def test_traces_of_a_slower_uplink_change_the_decision_before_late_tasks_return() -> None:
    core = SchedulerCore(decision_pb2.PolicySpec(name="latency_budget"), decision_interval_s=0.0)
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
    await core.set_policy("stream-1", decision_pb2.PolicySpec(name="fixed", params_yaml="{fps: 5}"))
    (stats,) = core.stats()
    assert [d.version for d in stats.history] == [1, 2]
    assert stats.history[0].reason.startswith("startup plan") and "policy switched to fixed" in stats.history[1].reason
    assert stats.history[1].configuration.fps == 5 and stats.history[1].made_at.ToNanoseconds() > 0
    assert stats.history[0].made_at.ToNanoseconds() >= stats.registered_at.ToNanoseconds() > 0
    registered_at = stats.registered_at.ToNanoseconds()
    for _ in range(DECISION_HISTORY + 3):
        await core.set_policy("stream-1", FIXED)
    await core.register(make_stream_spec())  # a re-registration goes on with the same history
    (stats,) = core.stats()
    last = DECISION_HISTORY + 6
    assert len(stats.history) == DECISION_HISTORY and stats.current.version == last
    assert [d.version for d in stats.history] == list(range(last - DECISION_HISTORY + 1, last + 1))
    assert stats.registered_at.ToNanoseconds() == registered_at
