"""The validation's parts (dayu.simulator.validation): repeated runs combined as the medians of each side,
the lighter workload (the mesh file's first streams) that the machine carries, and the load sampled on
the cluster's nodes for the simulator to replay."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dayu.mesh.model import CONFIGS, load_mesh_config
from dayu.simulator.validation import (
    LoadSampler,
    _state,
    combine,
    compare,
    lighter,
    markdown,
    read_node_threads,
    stored_cluster,
    stored_rows,
    write_node_threads,
)


def _side(policy: str, in_budget: float | None, p50: float | None, p95: float, tasks: int = 120) -> dict[str, Any]:
    return {
        "policy": policy,
        "generated": tasks,
        "dropped": 0,
        "within_budget": in_budget,
        "in_budget_of_made": in_budget,
        "latency_p50_s": p50,
        "latency_p95_s": p95,
    }


def _run(cluster: dict[str, Any], sim: dict[str, Any]) -> list[dict[str, Any]]:
    return compare("drop.txt", [cluster], [sim])


def test_repeated_runs_compare_each_sides_median_and_count_the_runs_that_passed_alone() -> None:
    runs = [
        # Alone: 30 points apart (fails); 1.0 against 1.5 s at p50 (fails).
        _run(_side("fixed", 0.90, 1.0, 2.0), _side("fixed", 0.60, 1.5, 2.0)),
        # The cluster's run that moved: its median is the other two's middle.
        _run(_side("fixed", 0.65, 1.4, 2.2, tasks=118), _side("fixed", 0.62, 1.45, 2.1)),
        _run(_side("fixed", 0.70, 1.3, 2.4, tasks=121), _side("fixed", 0.66, 1.35, 2.3)),
    ]
    assert [run[0]["passed"] for run in runs] == [False, True, True]

    (row,) = combine(runs)

    assert row["policy"] == "fixed" and row["trace"] == "drop.txt"
    assert (row["tasks_cluster"], row["tasks_sim"]) == (120, 120)
    assert (row["in_budget_cluster"], row["in_budget_sim"]) == (0.70, 0.62)
    assert (row["p50_cluster_s"], row["p50_sim_s"]) == (1.3, 1.45)
    assert (row["p95_cluster_s"], row["p95_sim_s"]) == (2.2, 2.1)
    assert row["in_budget_points"] == pytest.approx(-8.0)
    assert row["p50_relative"] == pytest.approx(0.15 / 1.3)
    assert row["passed"] and row["checks"] == {"in_budget": True, "p50": True, "p95": True}
    assert (row["runs"], row["passed_runs"]) == (3, 2)
    assert row["spread"]["in_budget_cluster"] == [0.65, 0.90]
    assert row["spread"]["p50_sim_s"] == [1.35, 1.5]
    assert "| 2 of 3 |" in markdown([row])


def test_a_figure_missing_in_one_run_is_left_out_of_its_median_and_missing_everywhere_fails() -> None:
    nothing_delivered = _run(_side("x", None, None, 5.0), _side("x", None, None, 5.0))
    delivered = _run(_side("x", 0.5, 2.0, 5.0), _side("x", 0.5, 2.0, 5.0))

    (row,) = combine([nothing_delivered, delivered, delivered])
    assert row["passed"] and row["p50_cluster_s"] == 2.0 and row["passed_runs"] == 2

    (row,) = combine([nothing_delivered, nothing_delivered])
    assert not row["passed"] and row["in_budget_points"] is None and row["spread"]["p50_cluster_s"] is None


def test_policies_are_combined_apart_in_the_order_of_the_first_run() -> None:
    run = _run(_side("a", 0.9, 1.0, 2.0), _side("a", 0.9, 1.0, 2.0)) + _run(
        _side("b", 0.5, 3.0, 4.0), _side("b", 0.1, 9.0, 9.0)
    )
    rows = combine([run, run, run])
    assert [(r["policy"], r["passed"], r["passed_runs"]) for r in rows] == [("a", True, 3), ("b", False, 0)]


def test_the_lighter_workload_is_the_mesh_file_less_its_other_streams_and_their_sources(tmp_path: Path) -> None:
    whole = load_mesh_config(CONFIGS / "experiment.yaml")

    path = lighter(CONFIGS / "experiment.yaml", 1, tmp_path)

    assert path == tmp_path / "experiment-1streams.yaml"
    light = load_mesh_config(path)  # found from another folder: its paths are absolute
    assert [s.stream_id for s in light.streams] == [whole.streams[0].stream_id]
    assert [s["source_id"] for s in light.sources] == [whole.streams[0].source_id]
    assert light.pipelines_file == whole.pipelines_file
    expected = whole.model_dump(exclude={"streams", "sources"})
    assert light.model_dump(exclude={"streams", "sources"}) == expected


@pytest.mark.parametrize("streams", [0, 3])
def test_the_lighter_workload_needs_streams_the_file_has(tmp_path: Path, streams: int) -> None:
    with pytest.raises(ValueError, match=r"streams: experiment\.yaml has 2 streams"):
        lighter(CONFIGS / "experiment.yaml", streams, tmp_path)


def test_the_load_sampler_counts_runnable_threads_and_the_cores_they_use(tmp_path: Path) -> None:
    """Each node's cgroup is read through its `tasks` file: here plain files listing a busy process (a
    processor's, on node a), another busy one (the rest, on node b) and a sleeping one (on node c)."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    sleeping = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        deadline = time.monotonic() + 10
        while _state(str(sleeping.pid)) != "S" and time.monotonic() < deadline:  # past the interpreter's start
            time.sleep(0.01)
        directories = {}
        for node, process in zip("abc", [*busy, sleeping], strict=True):
            directories[node] = tmp_path / node
            directories[node].mkdir()
            (directories[node] / "tasks").write_text(f"{process.pid}\n")
        sampler = LoadSampler(directories, lambda: [busy[0].pid], every_s=0.1)
        sampler.start()
        time.sleep(1.0)
        sampler.stop()
    finally:
        for process in [*busy, sleeping]:
            process.kill()
            process.wait()

    assert len(sampler.samples) >= 5
    processors_cores, rest_cores = sampler.mean(3), sampler.mean(4)
    # Generous bounds: the machine may be busy; a busy process uses a core when it has one.
    assert processors_cores["a"] > 0.2 and rest_cores["a"] == 0
    assert rest_cores["b"] > 0.2 and processors_cores["b"] == 0
    assert rest_cores["c"] < 0.05 and processors_cores["c"] == 0
    runnable_of_processors, runnable_rest = sampler.mean(1), sampler.mean(2)
    assert runnable_of_processors["a"] > 0 and runnable_rest["a"] == 0
    assert runnable_rest["b"] > 0 and runnable_rest["c"] == 0
    # What the simulator replays: the rest's runnable threads, or the cores it used, over time by node.
    assert [node for node, _ in sampler.node_threads({})[0][1]] == ["a", "b", "c"]
    replayed = sampler.node_threads({"c": 0.5}, column=4)
    assert all(dict(sample)["c"] >= 0.5 for _, sample in replayed)


def test_a_replayed_load_reads_back_as_it_was_written(tmp_path: Path) -> None:
    samples = ((0.25, (("cloud", 1.5), ("edge-1", 0.0))), (0.5, (("cloud", 0.75), ("edge-1", 0.125))))
    write_node_threads(tmp_path / "background.csv", samples)
    assert read_node_threads(tmp_path / "background.csv") == samples


def test_a_table_of_combined_and_single_rows_says_how_many_runs_passed_for_each() -> None:
    once = _run(_side("a", 0.9, 1.0, 2.0), _side("a", 0.9, 1.0, 2.0))
    twice = combine([_run(_side("b", 0.9, 1.0, 2.0), _side("b", 0.9, 1.0, 2.0))] * 2)
    table = markdown(once + twice)
    assert "| a | 120 / 120 |" in table and table.splitlines()[2].endswith("| PASS | 1 of 1 |")
    assert table.splitlines()[3].endswith("| PASS | 2 of 2 |")


def test_stored_cluster_runs_read_back_as_the_cluster_gave_them(tmp_path: Path) -> None:
    """--resimulate's input: an earlier validation's rows and replayed load, the cluster's side as run_cluster
    returns it; a policy it did not run, or its load missing, is a clear error."""
    rows = _run(_side("fixed", 0.8, 1.1, 4.7, tasks=118), _side("fixed", 0.7, 1.2, 5.0))
    rows[0]["machine"] = {"processing": 1.3}
    (tmp_path / "comparison.json").write_text(json.dumps({"rows": rows}))
    samples = ((0.25, (("cloud", 0.25), ("edge-1", 0.125))),)
    (tmp_path / "cluster" / "run-fixed").mkdir(parents=True)
    write_node_threads(tmp_path / "cluster" / "run-fixed" / "background.csv", samples)

    stored = stored_rows(tmp_path)
    cluster, loads, threads = stored_cluster(tmp_path, stored, ["fixed"])
    assert cluster == [_side("fixed", 0.8, 1.1, 4.7, tasks=118)]
    assert loads == {"fixed": {"processing": 1.3}} and threads == {"fixed": samples}
    with pytest.raises(ValueError, match="no cluster run of latency_budget"):
        stored_cluster(tmp_path, stored, ["fixed", "latency_budget"])
    (tmp_path / "cluster" / "run-fixed" / "background.csv").unlink()
    with pytest.raises(ValueError, match="the load of a cluster run"):
        stored_cluster(tmp_path, stored, ["fixed"])
    with pytest.raises(ValueError, match="a comparison written by an earlier validation"):
        stored_rows(tmp_path / "nowhere")
