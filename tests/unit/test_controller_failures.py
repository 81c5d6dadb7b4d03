"""The controller core when others fail: a full or gone processor sends the stage to another node
that hosts it, an unreachable peer is waited for and then routed around, and no task bounces."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from dayu.controller.core import FALLBACK, ControllerCore, called_off, superseded
from dayu.controller.links import CALL_OFF_CHECK_S, Link
from dayu.runtime import retry
from dayu.runtime.errors import RemoteError
from dayu.v1 import decision_pb2, resources_pb2, task_pb2, types_pb2

from conftest import BOXES, LABELS, make_task, stage


def linear_pipeline() -> types_pb2.Pipeline:
    """a -> b: one stage after another."""
    return types_pb2.Pipeline(name="linear", stages=[stage("a"), stage("b", ("a",), BOXES, LABELS)])


class Mesh:
    """What one controller sees: its processor answers `process_code` (or runs the stage), peers
    answer `forward_code` (or take the task)."""

    def __init__(self, process_code: str = "", forward_code: str = "") -> None:
        self.process_code, self.forward_code = process_code, forward_code
        self.forwarded: list[tuple[str, task_pb2.Task]] = []
        self.delivered: list[task_pb2.Task] = []
        self.dropped: list[str] = []

    async def process(self, kind: str, task: task_pb2.Task, stage: str) -> task_pb2.TaskStage:
        if self.process_code:
            raise RemoteError(self.process_code, "processor says no")
        (done,) = (task_pb2.TaskStage(spec=s.spec, node=s.node) for s in task.dag.stages if s.spec.name == stage)
        done.state = task_pb2.STAGE_STATE_DONE
        return done  # the stage alone, as a processor answers

    async def forward(self, node: str, task: task_pb2.Task, timeout_s: float) -> None:
        if self.forward_code:
            raise RemoteError(self.forward_code, "peer away")
        copy = task_pb2.Task()
        copy.CopyFrom(task)
        self.forwarded.append((node, copy))

    async def deliver(self, task: task_pb2.Task, timeout_s: float) -> None:
        self.delivered.append(task)

    async def probe(self, node: str, nbytes: int) -> None: ...

    async def record_drop(self, task: task_pb2.Task, reason: str) -> None:
        self.dropped.append(reason)


def edge(mesh: Mesh, kinds: set[str]) -> ControllerCore:
    return ControllerCore("edge-1", "cloud", {"edge-2"}, kinds, {}, mesh, patience_s=1.0)


async def settle(core: ControllerCore) -> None:
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not core._work:
            return


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "RETRY_S", (0.01, 0.05))


async def test_a_full_processor_sends_the_stage_to_a_node_the_decision_deploys_it_on() -> None:
    mesh = Mesh(process_code="RESOURCE_EXHAUSTED")
    core = edge(mesh, {"noop"})
    decision = decision_pb2.Decision(stream_id="stream-1", version=1)
    decision.deployment["a"].nodes.extend(["edge-1", "edge-2"])
    core.apply_decision(decision)
    await core.submit(make_task(linear_pipeline()), "")
    await settle(core)
    ((node, task),) = mesh.forwarded
    assert node == "edge-2"  # deployed there; the cloud only after the deployment
    hop = task.hops[-1]
    assert (hop.node, hop.component, hop.stage) == ("edge-1", FALLBACK, "a")
    assert core.stats.fallbacks == 1 and not mesh.dropped


async def test_a_stage_never_goes_back_to_a_node_that_fell_back_from_it() -> None:
    mesh = Mesh(process_code="UNAVAILABLE")
    core = edge(mesh, {"noop"})
    task = make_task(linear_pipeline())
    # It already fell back from edge-2 and from the cloud for stage a: nowhere is left.
    task.hops.add(component=FALLBACK, node="edge-2", stage="a")
    task.hops.add(component=FALLBACK, node="cloud", stage="a")
    await core.submit(task, "cloud")
    await settle(core)
    assert not mesh.forwarded
    (reason,) = mesh.dropped
    assert "processor 'noop' on edge-1 failed stage a: UNAVAILABLE" in reason


async def test_an_unreachable_peer_is_tried_until_patience_then_the_stage_runs_here() -> None:
    mesh = Mesh(forward_code="UNAVAILABLE")
    core = edge(mesh, {"noop"})
    task = make_task(linear_pipeline())
    for each in task.dag.stages:
        each.node = "edge-2"
    await core.submit(task, "")
    await settle(core)
    # Hosted here too: after a second of UNAVAILABLE from edge-2, every stage ran on edge-1.
    (delivered,) = mesh.delivered
    assert all(s.state == task_pb2.STAGE_STATE_DONE for s in delivered.dag.stages)
    assert core.stats.fallbacks >= 1 and not mesh.dropped


async def test_a_refusal_that_is_not_transient_drops_the_task_at_once() -> None:
    mesh = Mesh(forward_code="INVALID_ARGUMENT")
    core = edge(mesh, set())
    task = make_task(linear_pipeline())
    await core.submit(task, "")
    await settle(core)
    (reason,) = mesh.dropped
    assert "refused the task from edge-1: INVALID_ARGUMENT" in reason


async def test_streams_past_the_bound_forget_the_least_recently_routed(monkeypatch: pytest.MonkeyPatch) -> None:
    from dayu.controller import core as core_module

    monkeypatch.setattr(core_module, "MAX_STREAMS", 2)
    followed: list[str] = []
    forgotten: list[str] = []
    core = ControllerCore(
        "edge-1",
        "cloud",
        {"edge-2"},
        {"noop"},
        {},
        Mesh(),
        patience_s=1.0,
        on_new_stream=followed.append,
        on_forgotten_stream=forgotten.append,
    )
    for stream in ("a", "b", "a", "c"):  # "a" routed again: "b" is the least recent when "c" comes
        task = make_task(linear_pipeline())
        task.stream_id = stream
        await core.submit(task, "")
    await settle(core)
    assert followed == ["a", "b", "c"] and forgotten == ["b"]
    assert list(core.decisions) == ["a", "c"]


async def test_a_processor_held_unloaded_sends_the_stage_elsewhere_at_once_or_drops_it_with_its_reason() -> None:
    """FAILED_PRECONDITION: a deployable processor the deployment plan holds unloaded. The stage goes to
    the node the decision deploys it on, without waiting; with none left, the task is dropped at once."""
    mesh = Mesh(process_code="FAILED_PRECONDITION")
    core = edge(mesh, {"noop"})
    decision = decision_pb2.Decision(stream_id="stream-1", version=1)
    decision.deployment["a"].nodes.append("edge-2")
    core.apply_decision(decision)
    await core.submit(make_task(linear_pipeline()), "")
    await settle(core)
    ((node, _),) = mesh.forwarded
    assert node == "edge-2" and core.stats.fallbacks == 1 and not mesh.dropped
    nowhere = make_task(linear_pipeline())
    nowhere.task_id = nowhere.root_id = str(uuid.uuid4())
    for tried in ("edge-2", "cloud"):
        nowhere.hops.add(component=FALLBACK, node=tried, stage="a")
    started = asyncio.get_running_loop().time()
    await core.submit(nowhere, "cloud")
    await settle(core)
    (reason,) = mesh.dropped
    assert "processor 'noop' on edge-1 failed stage a: FAILED_PRECONDITION: processor says no" in reason
    assert asyncio.get_running_loop().time() - started < 0.5  # not waited for, as an away one would be


def test_a_task_of_a_replaced_decision_that_would_arrive_past_its_budget_is_superseded() -> None:
    slow = resources_pb2.LinkBandwidth(from_node="edge-1", to_node="cloud", bandwidth_mbps=0.5)
    late = superseded((1, 3), (1, 4), 1.5, 0.5, 230_000, slow, 0.015)  # 3.7 s of transfer at 0.5 Mbit/s
    assert late == (
        "superseded: its decision replaced, at 0.50 Mbit/s to cloud it would arrive 4.2 s old, over its 1.5 s budget"
    )
    assert superseded((1, 4), (1, 4), 1.5, 0.5, 230_000, slow, 0.015) == ""  # the current decision's: its feedback
    assert superseded((1, 3), (1, 4), 1.5, 0.5, 20_000, slow, 0.015) == ""  # small enough to make it
    assert superseded((1, 3), (1, 4), 1.5, 1.4, 20_000, slow, 0.015).startswith("superseded")  # but not this late
    fast = resources_pb2.LinkBandwidth(from_node="cloud", to_node="edge-2", bandwidth_mbps=200.0)
    assert superseded((1, 3), (1, 4), 1.5, 4.5, 230_000, fast, 0.0) == ""  # late, but the link carries it at once
    assert superseded((1, 3), (1, 4), 1.5, 0.5, 230_000, None, 0.015) == ""  # the link not measured yet
    assert superseded((1, 3), None, 1.5, 0.5, 230_000, slow, 0.015) == ""  # no decision seen
    assert superseded((1, 3), (1, 4), 0.0, 0.5, 230_000, slow, 0.015) == ""  # no budget
    assert superseded((2, 1), (1, 9), 1.5, 0.5, 230_000, slow, 0.015) == ""  # of a newer scheduler's epoch


async def test_a_superseded_task_gives_its_turn_on_the_link_to_the_new_decisions_tasks() -> None:
    mesh = Mesh()
    core = ControllerCore("edge-1", "cloud", {"cloud"}, set(), {"cloud": Link("edge-1", "cloud")}, mesh)
    core.apply_decision(decision_pb2.Decision(stream_id="stream-1", epoch=1, version=4))
    core.measured_links["cloud"] = resources_pb2.LinkBandwidth(from_node="edge-1", to_node="cloud", bandwidth_mbps=0.5)
    tasks = []
    for version, frames in ((3, 40), (4, 40), (3, 1)):
        task = make_task(linear_pipeline(), frames=frames)
        for spec_stage in task.dag.stages:
            spec_stage.node = "cloud"  # nothing runs on this edge: the frames cross the link
        task.latency_budget_s, task.decision_epoch, task.decision_version = 1.5, 1, version
        del task.segment.frames[:]
        task.segment.frames.extend([bytes(6_000)] * frames)  # 240 KB: 3.8 s at 0.5 Mbit/s
        tasks.append(task)
        await core.submit(task, "")
    await settle(core)
    forwarded = [task.decision_version for _, task in mesh.forwarded]
    assert forwarded == [4, 3]  # the current decision's, and a small one that still makes it
    assert len(mesh.dropped) == 1 and mesh.dropped[0].startswith("superseded: its decision replaced, at 0.50 Mbit/s")


def test_a_late_task_of_a_replaced_decision_is_called_off_on_the_link() -> None:
    assert called_off((1, 3), (1, 4), 1.5, 1.6) == (
        "superseded: its decision replaced, called off on the link 1.6 s old, over its 1.5 s budget"
    )
    assert called_off((1, 3), (1, 4), 1.5, 1.4) == ""  # it may still make it
    assert called_off((1, 4), (1, 4), 1.5, 9.0) == ""  # the current decision's: its feedback
    assert called_off((1, 3), None, 1.5, 9.0) == ""  # no decision seen
    assert called_off((1, 3), (1, 4), 0.0, 9.0) == ""  # no budget
    assert called_off((2, 1), (1, 9), 1.5, 9.0) == ""  # of a newer scheduler's epoch


async def test_a_transfer_whose_task_went_late_under_a_replaced_decision_frees_the_link() -> None:
    """A link that fell under a transfer: once the task's decision is replaced and its budget passed,
    the emulator lets go of its bytes (dropped, said why), and the new decision's task goes next."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from dayu.runtime.tracing import BYTES, DELAY, Tracing, TracingSettings

    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing("controller", "edge-1", TracingSettings())
    tracing.tracer = provider.get_tracer("test")
    mesh = Mesh()
    link = Link("edge-1", "cloud", bandwidth_mbps=0.5)
    core = ControllerCore("edge-1", "cloud", {"cloud"}, set(), {"cloud": link}, mesh, tracing=tracing)
    core.apply_decision(decision_pb2.Decision(stream_id="stream-1", epoch=1, version=3))

    def task_of(version: int, frames: int) -> task_pb2.Task:
        task = make_task(linear_pipeline(), frames=frames)
        for spec_stage in task.dag.stages:
            spec_stage.node = "cloud"  # nothing runs on this edge: the frames cross the link
        task.latency_budget_s, task.decision_epoch, task.decision_version = 1.0, 1, version
        del task.segment.frames[:]
        task.segment.frames.extend([bytes(6_000)] * frames)
        return task

    started = asyncio.get_running_loop().time()
    await core.submit(task_of(3, 40), "")  # 240 KB: 3.8 s at 0.5 Mbit/s
    await asyncio.sleep(0.5)
    core.apply_decision(decision_pb2.Decision(stream_id="stream-1", epoch=1, version=4))
    await core.submit(task_of(4, 1), "")  # 6 KB: 0.1 s
    await settle(core)
    took = asyncio.get_running_loop().time() - started
    assert [task.decision_version for _, task in mesh.forwarded] == [4]
    (reason,) = mesh.dropped
    assert reason.startswith("superseded: its decision replaced, called off on the link")
    assert took < 1.0 + 2 * CALL_OFF_CHECK_S + 0.5  # called off once past its budget, not after 3.8 s
    assert 0 < link.bytes_sent < 240_000 * 0.5  # what went of it before, and the new task's
    assert link.tasks_sent == 1
    # Its transfer span says what went, over the time it went: the link's rate, for the scheduler.
    off = next(s for s in exporter.get_finished_spans() if s.name == "link.transfer" and s.status.description)
    assert off.status.description == "called off" and off.attributes[DELAY] == 0.0
    seconds = (off.end_time - off.start_time) / 1e9
    assert off.attributes[BYTES] * 8 / seconds / 1e6 == pytest.approx(0.5, rel=0.15)


def test_a_late_task_on_the_link_gives_way_to_the_newer_tasks_of_its_stream_behind_it() -> None:
    # The current decision's, older than its budget, other tasks of its stream behind it on the link.
    assert called_off((1, 4), (1, 4), 1.5, 1.6, behind=1) == (
        "overtaken: 1.6 s old, over its 1.5 s budget, other tasks of its stream behind it on the link"
    )
    assert called_off((1, 4), (1, 4), 1.5, 1.6) == ""  # nothing behind it: it goes on
    assert called_off((1, 4), (1, 4), 1.5, 1.4, behind=2) == ""  # it may still make it
    assert called_off((1, 4), (1, 4), 0.0, 9.0, behind=2) == ""  # no budget


async def test_a_task_stuck_on_a_stopped_link_gives_way_to_its_streams_next_task() -> None:
    """A link that nearly stopped (a 2 s outage) holds a task; the stream's next one queues behind it.
    Once the first is past its budget it is called off (dropped, said why) and the next goes, so one
    task is lost to the outage, not two."""
    mesh = Mesh()
    link = Link("edge-1", "cloud", bandwidth_mbps=0.05)  # 50 kbit/s: a 12 KB task takes 2 s
    core = ControllerCore("edge-1", "cloud", {"cloud"}, set(), {"cloud": link}, mesh)
    core.apply_decision(decision_pb2.Decision(stream_id="stream-1", epoch=1, version=4))

    def task_of(frames: int) -> task_pb2.Task:
        task = make_task(linear_pipeline(), frames=frames)
        for spec_stage in task.dag.stages:
            spec_stage.node = "cloud"  # nothing runs on this edge: the frames cross the link
        task.task_id = task.root_id = str(uuid.uuid4())
        task.latency_budget_s, task.decision_epoch, task.decision_version = 0.6, 1, 4
        del task.segment.frames[:]
        task.segment.frames.extend([bytes(4_000)] * frames)
        return task

    started = asyncio.get_running_loop().time()
    await core.submit(task_of(3), "")  # 12 KB: 2 s
    await asyncio.sleep(0.2)
    await core.submit(task_of(1), "")  # 4 KB: 0.64 s
    await settle(core)
    took = asyncio.get_running_loop().time() - started
    assert [len(task.segment.frames) for _, task in mesh.forwarded] == [1]
    (reason,) = mesh.dropped
    assert reason.startswith("overtaken: ") and reason.endswith("other tasks of its stream behind it on the link")
    assert took < 0.6 + 2 * CALL_OFF_CHECK_S + 0.64 + 0.3  # the first called off once late, not after 2 s
    assert not core._on_link  # nothing left counted once the link is clear
