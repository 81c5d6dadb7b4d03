"""The simulator's compute contention (dayu.simulator.compute) and the cluster's scenario: segments
sharing a machine's cores fairly, node by node (each node a cgroup of the same weight), within a node's
CPU limit, with the nodes' other threads replayed and threads outside the nodes; kernel links without
delay and with their packets' headers."""

from __future__ import annotations

import pytest
import simpy

from dayu.mesh.model import CONFIGS
from dayu.simulator import scenario
from dayu.simulator.compute import Machine, MachineSpec, fair_shares


def _finish_times(spec: MachineSpec, jobs: list[tuple[float, str, float]]) -> list[float]:
    """Each job (start s, node, core-seconds) run on the machine: when it ended."""
    env = simpy.Environment()
    machine = Machine(env, spec)
    ends: list[float] = [0.0] * len(jobs)

    def job(i: int, start: float, node: str, work: float):  # type: ignore[no-untyped-def]
        yield env.timeout(start)
        yield from machine.run(node, work)
        ends[i] = env.now

    for i, (start, node, work) in enumerate(jobs):
        env.process(job(i, start, node, work))
    env.run()
    return ends


def test_segments_run_at_full_speed_while_a_core_is_free_for_each() -> None:
    assert _finish_times(MachineSpec(cores=2), [(0, "a", 1.0), (0, "b", 0.5)]) == pytest.approx([1.0, 0.5])


def test_more_segments_than_cores_share_them() -> None:
    # Three segments of 1 core-second on 2 cores: each at 2/3 until the first ends.
    assert _finish_times(MachineSpec(cores=2), [(0, "a", 1.0)] * 3) == pytest.approx([1.5] * 3)
    # One core, a second segment half-way through the first: 0.5 alone, then both at half speed.
    assert _finish_times(MachineSpec(cores=1), [(0, "a", 1.0), (0.5, "a", 1.0)]) == pytest.approx([1.5, 2.0])


def test_threads_outside_the_nodes_take_their_share() -> None:
    # Two cores, three other runnable threads (each weighs as a node): a lone segment gets 2/4 of a core.
    assert _finish_times(MachineSpec(cores=2, background=3), [(0, "a", 1.0)]) == pytest.approx([2.0])


def test_the_cores_are_shared_node_by_node_then_between_a_nodes_threads() -> None:
    # The cloud's two segments while each edge encodes (one thread each): the three nodes get 2/3 of
    # a core each, the cloud's segments 1/3 each (a share per thread would give them 1/2).
    busy_edges = ((0.0, (("edge-1", 1.0), ("edge-2", 1.0))),)
    spec = MachineSpec(cores=2, node_threads=busy_edges)
    assert _finish_times(spec, [(0, "cloud", 1.0), (0, "cloud", 1.0)]) == pytest.approx([3.0, 3.0])
    # An edge with a lone thread asks for less than its share: the cloud gets the rest.
    light = ((0.0, (("edge-1", 0.5),)),)
    assert _finish_times(MachineSpec(cores=2, node_threads=light), [(0, "cloud", 1.0)] * 2) == pytest.approx(
        [4 / 3] * 2
    )
    # Replayed: the edges idle for the first second, then three threads on edge-1: from then on a lone
    # segment on the cloud still has a core (each node gets a core), where per thread it would get half.
    later = ((0.0, ()), (1.0, (("edge-1", 3.0),)))
    assert _finish_times(MachineSpec(cores=2, node_threads=later), [(0, "cloud", 1.5)]) == pytest.approx([1.5])


def test_fair_shares_give_the_small_demands_theirs_and_split_the_rest_by_weight() -> None:
    assert fair_shares(2.0, {"a": (0.5, 1.0), "b": (3.0, 1.0), "c": (3.0, 1.0)}) == pytest.approx(
        {"a": 0.5, "b": 0.75, "c": 0.75}
    )
    assert fair_shares(2.0, {"a": (3.0, 1.0), "outside": (3.0, 3.0)}) == pytest.approx({"a": 0.5, "outside": 1.5})
    assert fair_shares(4.0, {"a": (1.0, 1.0), "b": (2.0, 1.0)}) == pytest.approx({"a": 1.0, "b": 2.0})  # room to spare


def test_a_node_cpu_limit_caps_its_segments() -> None:
    spec = MachineSpec(cores=2, node_cpus=(("edge", 0.5),))
    assert _finish_times(spec, [(0, "edge", 1.0), (0, "cloud", 1.0)]) == pytest.approx([2.0, 1.0])
    assert _finish_times(spec, [(0, "edge", 1.0), (0, "edge", 1.0)]) == pytest.approx([4.0, 4.0])


def test_the_cluster_scenario_has_kernel_links_and_one_machine() -> None:
    config = CONFIGS / "experiment.yaml"
    embedded = scenario.from_mesh(config, "fixed")
    cluster = scenario.from_mesh(config, "fixed", target="cluster", background=1.5, cores=2)
    assert embedded.machine is None and {c.delay_ms for c in embedded.channels} == {15.0, 5.0}
    assert {c.delay_ms for c in cluster.channels} == {0.0}  # no netem on the cluster's links
    assert cluster.machine == MachineSpec(cores=2, background=1.5)  # experiment.yaml sets no CPU limits
    channel = cluster.channels[0]
    assert channel.wire_bytes(1448) == 1448 + 66 and channel.wire_bytes(1449) == 1449 + 2 * 66
    assert embedded.channels[0].wire_bytes(1449) == 1449
    with pytest.raises(Exception, match="--target"):
        scenario.from_mesh(config, "fixed", target="kubernetes")
