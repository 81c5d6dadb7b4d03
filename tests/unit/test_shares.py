"""Shares of what streams share (an uplink, a processor): max-min fair over what each needs, kept per resource."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dayu.scheduler.core import SchedulerCore
from dayu.scheduler.shares import Shares, water_fill
from dayu.v1 import decision_pb2, resources_pb2, task_pb2, types_pb2

from conftest import make_stream_spec, stage

LINK = ("link", "edge-1", "cloud")
DETECTOR = ("processor", "cloud", "detector")


def test_an_equal_split_when_every_stream_wants_more_than_its_share() -> None:
    assert water_fill(8.0, {"a": None, "b": 5.0, "c": 9.0, "d": None}) == {"a": 2.0, "b": 2.0, "c": 2.0, "d": 2.0}


def test_what_a_small_stream_leaves_goes_to_the_others() -> None:
    shares = water_fill(8.0, {"small": 1.0, "big": 10.0, "unknown": None})
    assert shares["small"] == pytest.approx(1.0)
    assert shares["big"] == pytest.approx(3.5) and shares["unknown"] == pytest.approx(3.5)


def test_spare_bandwidth_is_handed_out_evenly_once_every_need_is_met() -> None:
    assert water_fill(10.0, {"a": 1.0, "b": 3.0}) == {"a": 4.0, "b": 6.0}


@given(
    st.floats(0.1, 1000),
    st.dictionaries(st.text(min_size=1, max_size=3), st.none() | st.floats(0, 1000), min_size=1, max_size=12),
)
def test_shares_add_up_to_the_link_and_none_starves(capacity: float, needs: dict[str, float | None]) -> None:
    shares = water_fill(capacity, needs)
    assert sum(shares.values()) == pytest.approx(capacity)
    fair = capacity / len(needs)
    for stream, need in needs.items():
        # Max-min fair: each gets what it needs, or at least an equal share.
        assert shares[stream] >= min(fair, need if need is not None else fair) - 1e-9


def test_streams_come_and_go_on_a_link_and_a_processor() -> None:
    """Each is told the level the shares fill to: what it may use at most."""
    shares = Shares()
    assert shares.share("a", LINK, 8.0) == 8.0  # alone (a newcomer on an unused link)
    shares.set_needs("a", {LINK: None, DETECTOR: 0.5})
    assert shares.share("b", LINK, 8.0) == 4.0  # a newcomer's fair share, before it is filed
    shares.set_needs("b", {LINK: 2.0, DETECTOR: None})
    assert shares.share("a", LINK, 8.0) == 6.0  # b needs 2: a may use the other 6
    assert shares.share("b", LINK, 8.0) == 6.0  # and b is not held to the 2 it said (it uses less)
    assert shares.share("a", LINK, 4.0) == 2.0  # the link's bandwidth fell: the level follows it
    assert shares.share("b", DETECTOR, 1.6) == pytest.approx(1.1)
    shares.set_needs("b", {LINK: 2.0, DETECTOR: 0.3})
    assert shares.share("a", DETECTOR, 1.6) == 1.6  # their needs fit together: all of it
    assert shares.others("a", LINK) == 1 and shares.others("c", LINK) == 2
    shares.set_needs("b", {DETECTOR: 1.0})  # b keeps its frames on its node now: it sends nothing
    assert shares.others("a", LINK) == 0 and shares.share("a", LINK, 8.0) == 8.0
    assert shares.on(DETECTOR) == {"a": 0.5, "b": 1.0}
    shares.forget("a")
    shares.forget("a")  # twice is fine
    assert shares.on(LINK) == {} and shares.on(DETECTOR) == {"b": 1.0}
    shares.set_needs("b", {})  # paused: uses nothing
    assert shares.on(DETECTOR) == {}


def _spec(stream_id: str, node: str) -> decision_pb2.StreamSpec:
    spec = make_stream_spec(types_pb2.Pipeline(name="one", stages=[stage("detect", processor="detector")]))
    spec.stream_id, spec.node = stream_id, node
    spec.policy.name = "latency_budget"
    return spec


async def _report(core: SchedulerCore) -> None:
    cloud = resources_pb2.NodeResources(
        node="cloud", cpu_count=4, queue_lengths={"detector": 0}, workers={"detector": 2}
    )
    edge = resources_pb2.NodeResources(
        node="edge-1", cpu_count=4, queue_lengths={}
    )  # no detector: it runs on the cloud
    edge.links.add(from_node="edge-1", to_node="cloud", bandwidth_mbps=20.0)
    await core.report_resources(cloud)
    await core.report_resources(edge)


async def _feed(core: SchedulerCore, stream_id: str, tasks: int, process_s: float) -> None:
    for _ in range(tasks):
        current = core.decision(stream_id)
        task = task_pb2.Task(stream_id=stream_id, decision_version=current.version)
        task.configuration.CopyFrom(current.configuration)
        done = task.dag.stages.add(executed_on="cloud")
        done.spec.name = "detect"
        done.timings.process_s = process_s
        task.hops.add(bytes=200_000)
        await core.feedback(task_pb2.TaskRecord(task=task, outcome=task_pb2.TASK_OUTCOME_DELIVERED, latency_s=0.5))


async def test_the_core_divides_a_link_and_a_processor_among_the_streams_that_use_them() -> None:
    now = [0.0]
    core = SchedulerCore(decision_pb2.PolicySpec(name="fixed"), clock=lambda: now[0])
    await _report(core)
    for stream_id in ("a", "b"):
        await core.register(_spec(stream_id, "edge-1"))
    link, detector = ("link", "edge-1", "cloud"), ("processor", "cloud", "detector")
    assert set(core.shares.on(link)) == {"a", "b"} and set(core.shares.on(detector)) == {"a", "b"}
    for _ in range(3):  # feedback, a decision interval apart, so that each stream tells its needs
        now[0] += 1
        await _feed(core, "a", 2, process_s=0.2)
        await _feed(core, "b", 2, process_s=0.2)
    needs = core.shares.on(detector)
    assert all(need is not None and need > 0 for need in needs.values()), needs
    # Two workers at most 80% busy: 1.6 s of processing a second between them; neither may use more
    # than the level their shares fill to.
    level = core.shares.share("a", detector, 1.6)
    assert sum(min(need, level) for need in needs.values()) == pytest.approx(min(1.6, sum(needs.values())))
    now[0] += 1
    await _feed(core, "a", 2, process_s=0.2)
    view = core._streams["a"].view
    assert view.load_shares and view.load_shares["detect"] <= 1.6
    assert view.uplink_share_mbps is not None and view.uplink_share_mbps <= 20.0  # told, whole when they fit
    await core.unregister("b")
    assert set(core.shares.on(detector)) == {"a"}


def test_a_changed_need_moves_the_level_within_refresh_s_and_a_changed_capacity_at_once() -> None:
    now = [0.0]
    shares = Shares(lambda: now[0], refresh_s=1.0)
    shares.set_needs("a", {DETECTOR: 0.2})
    shares.set_needs("b", {DETECTOR: None})
    assert shares.share("b", DETECTOR, 1.6) == pytest.approx(1.4)
    shares.set_needs("a", {DETECTOR: 1.0})  # a needs more: the level waits for the next refresh
    assert shares.share("b", DETECTOR, 1.6) == pytest.approx(1.4)
    now[0] = 1.0
    assert shares.share("b", DETECTOR, 1.6) == pytest.approx(0.8)
    assert shares.share("b", DETECTOR, 0.8) == pytest.approx(0.4)  # the capacity moved: at once


async def test_nodes_behind_one_shared_uplink_divide_it_among_all_their_streams() -> None:
    """Two edges behind one uplink (scheduler.shared_uplinks): their streams are one group on it, whose
    capacity is the most either edge measured; an edge of its own keeps its link to its own streams."""
    now = [0.0]
    core = SchedulerCore(
        decision_pb2.PolicySpec(name="fixed"), clock=lambda: now[0], shared_uplinks={"site-a": ["edge-1", "edge-2"]}
    )
    for node, mbps in (("edge-1", 12.0), ("edge-2", 9.0), ("edge-3", 20.0)):
        report = resources_pb2.NodeResources(node=node, cpu_count=4)
        report.links.add(from_node=node, to_node="cloud", bandwidth_mbps=mbps)
        await core.report_resources(report)
    await core.report_resources(resources_pb2.NodeResources(node="cloud", cpu_count=4, workers={"detector": 8}))
    for stream_id, node in (("a", "edge-1"), ("b", "edge-2"), ("c", "edge-2"), ("d", "edge-3"), ("e", "edge-3")):
        await core.register(_spec(stream_id, node))
    site = ("uplink", "site-a")
    assert set(core.shares.on(site)) == {"a", "b", "c"}
    assert set(core.shares.on(("link", "edge-3", "cloud"))) == {"d", "e"}
    assert core.shares.on(("link", "edge-1", "cloud")) == {}
    now[0] += 1
    await _feed(core, "a", 2, process_s=0.1)  # a decision: its view is told its share
    view = core._streams["a"].view
    assert view.uplink_share_mbps == pytest.approx(12.0 / 3)  # needs unknown: an equal part of the most measured
    assert view.uplink_mbps() == pytest.approx(4.0) and view.uplink_mbps(shared=False) == 12.0


def test_a_node_is_behind_one_shared_uplink_and_never_the_cloud() -> None:
    from pydantic import ValidationError

    from dayu.scheduler.service import SchedulerSection

    assert SchedulerSection(shared_uplinks={"a": ["edge-1", "edge-2"]}).shared_uplinks == {"a": ["edge-1", "edge-2"]}
    for uplinks, message in (
        ({"a": ["edge-1"], "b": ["edge-1"]}, "shared_uplinks.b: 'edge-1' is behind 'a' already"),
        ({"a": ["cloud"]}, "shared_uplinks.a: 'cloud' is the cloud node"),
        ({"a": []}, "shared_uplinks.a: the nodes behind it, got none"),
    ):
        with pytest.raises(ValidationError, match=message):
            SchedulerSection(shared_uplinks=uplinks)


def test_a_mesh_file_naming_an_unknown_node_behind_a_shared_uplink_is_refused() -> None:
    from dayu.mesh.model import CONFIGS, load_mesh_config, read_mesh_file
    from dayu.runtime.errors import InvalidArgument

    data = read_mesh_file(CONFIGS / "cluster.yaml")
    data["scheduler"] = {**data.get("scheduler", {}), "shared_uplinks": {"site-a": ["edge-1", "edge-9"]}}
    with pytest.raises(InvalidArgument, match=r"scheduler.shared_uplinks.site-a names unknown nodes \['edge-9'\]"):
        load_mesh_config(CONFIGS / "cluster.yaml", data)
    behind = {"site-a": ["edge-1", "edge-2"]}
    data["scheduler"]["shared_uplinks"] = behind
    assert load_mesh_config(CONFIGS / "cluster.yaml", data).scheduler["shared_uplinks"] == behind


async def test_a_shared_uplink_redecides_all_its_nodes_only_when_its_capacity_moves() -> None:
    now = [0.0]
    core = SchedulerCore(
        decision_pb2.PolicySpec(name="fixed"), clock=lambda: now[0], shared_uplinks={"site-a": ["edge-1", "edge-2"]}
    )
    for stream_id, node in (("a", "edge-1"), ("b", "edge-2")):
        await core.register(_spec(stream_id, node))
    decided = {s: core._streams[s].decided_at for s in ("a", "b")}

    async def rates(**mbps: float) -> set[str]:
        """Transfers at these rates on the nodes' links; the streams decided again."""
        now[0] += 1
        for node, rate in mbps.items():
            core.hops.add_link_rate((node.replace("_", "-"), "cloud"), rate)
        await core._after_link_rates(core.hops.moved_links(), "traces")
        again = {s for s in decided if core._streams[s].decided_at != decided[s]}
        decided.update({s: core._streams[s].decided_at for s in decided})
        return again

    assert await rates(edge_1=20.0, edge_2=10.0) == {"a", "b"}  # first measured: news to both
    assert await rates(edge_2=5.0) == {"b"}  # edge-1 measures the uplink at 20 still: its share holds
    assert await rates(edge_1=8.0) == {"a", "b"}  # the uplink itself fell: both shares follow
