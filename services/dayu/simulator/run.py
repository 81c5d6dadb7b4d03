"""`dayu simulate`: the same scenario once per policy, in simulated time, with a progress bar, then
the table, CSV, JSON and plots (report.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dayu.experiment import progress_bar
from dayu.simulator.costs import Profile
from dayu.simulator.engine import SimulatedMesh
from dayu.simulator.report import format_table, write_results
from dayu.simulator.scenario import Scenario


def simulate(
    make_scenario: Callable[[str], Scenario],
    policies: list[str],
    profile: Profile,
    duration_s: float,
    out: Path,
    seed: int,
    title: str,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Runs `make_scenario(policy)` for each policy with the same seed; writes the results to `out`."""
    runs = []
    for policy in policies:
        scenario = make_scenario(policy)
        bar = progress_bar(policy, duration_s, "sim s", shown=progress)

        def tick(mesh: SimulatedMesh, bar: Any = bar) -> None:
            if mesh.env.now <= duration_s:
                bar.update(1)
            else:
                bar.set_description(f"{mesh.results.policy} draining")
            bar.set_postfix(tasks=mesh.made_tasks, dropped=mesh.results.dropped, in_flight=len(mesh.in_flight))

        tasks_csv = out / f"run-{policy}" / "tasks.csv"  # each task's row, written as the run goes
        mesh = SimulatedMesh(scenario, profile, policy, duration_s, seed, on_second=tick, tasks_csv=tasks_csv)
        with bar:
            results = mesh.run()
        runs.append(results)
    about = {
        "scenario": runs and scenario.notes,
        "profile": profile.source,
        "seed": seed,
        "duration_s": duration_s,
        "streams": len(scenario.streams) if runs else 0,
        "nodes": len(scenario.nodes) if runs else 0,
    }
    rows = write_results(runs, out, title, about)
    print(format_table(rows))
    return rows
