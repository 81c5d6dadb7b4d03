"""The validation's arithmetic (dayu.simulator.validation): repeated runs combined as the medians of each
side, and the lighter workload (the mesh file's first streams) that the machine carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dayu.mesh.model import CONFIGS, load_mesh_config
from dayu.simulator.validation import combine, compare, lighter, markdown


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
    with pytest.raises(ValueError, match="streams: experiment.yaml has 2 streams"):
        lighter(CONFIGS / "experiment.yaml", streams, tmp_path)
