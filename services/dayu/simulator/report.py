"""The results of `dayu simulate`, per policy: the table, results.csv and results.json, each run's tasks
(run-POLICY/tasks.csv, the columns of `dayu experiment`'s), and the plots: the bars of `dayu
experiment`, the latency CDF and the share within budget over time per policy, and, for a handful of
streams, `dayu experiment`'s timeline of each task."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from dayu.experiment import TIMELINE_COLUMNS, table, write_csv
from dayu.experiment_plots import plot, plot_timelines, pyplot
from dayu.simulator.engine import RunResults
from dayu.simulator.tasklog import BIN_S, TaskOutcome, timeline_row

COLUMNS = (
    ("policy", "policy", "{}"),
    ("generated", "tasks", "{}"),
    ("dropped", "dropped", "{}"),
    ("within_budget", "in budget", "{:.0%}"),
    ("latency_p50_s", "p50 s", "{:.3f}"),
    ("latency_p95_s", "p95 s", "{:.3f}"),
    ("accuracy_f1", "accuracy", "{:.3f}"),
    ("uplink_mb_total", "uplink MB", "{:.1f}"),
    ("uplink_mb_max", "max uplink", "{:.1f}"),
    ("decisions_per_s", "decide/s", "{:.2f}"),
    ("decision_time_p50_ms", "decide ms", "{:.3f}"),
    ("decision_time_p99_ms", "p99 ms", "{:.3f}"),
    ("speed", "sim speed", "{:.1f}"),
)
CSV_COLUMNS = (
    *(key for key, _, _ in COLUMNS),
    "delivered",
    "in_budget_of_made",
    "megabytes_sent",
    "decisions",
    "policy_decide_p50_ms",
    "fallbacks",
    "unfinished",
    "model_loads",
    "model_unloads",
    "simulated_s",
    "wall_s",
)
TIMELINE_STREAMS = 8  # the per-task timeline plot, only for this many streams or fewer
REASONS_SHOWN = 20  # drop reasons in results.json, the most frequent
CDF_POINTS = 20_000  # the latency CDF plot: at most this many points (evenly spaced in rank)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(results: RunResults) -> dict[str, Any]:
    log = results.log
    latency = log.latency_percentiles()
    uplinks = [results.channel_bytes.get(name, 0) / 1e6 for name in results.uplinks]
    calls_ms = [1000 * s for s in results.decision_call_s]
    decide_ms = [1000 * s for s in results.policy_decide_s]
    return {
        "policy": results.policy,
        "generated": log.generated,
        "delivered": log.delivered,
        "dropped": log.dropped,
        "within_budget": log.in_budget / log.delivered if log.delivered else None,  # of delivered, as `dayu experiment`
        "in_budget_of_made": log.in_budget / log.generated if log.generated else None,
        "latency_p50_s": latency["p50"],
        "latency_p95_s": latency["p95"],
        "accuracy_f1": log.mean_accuracy(),
        "uplink_mb_total": sum(uplinks),
        "uplink_mb_max": max(uplinks, default=0.0),
        "megabytes_sent": sum(results.channel_bytes.values()) / 1e6,
        "decisions": results.decisions,
        "decisions_per_s": results.decisions / results.simulated_s if results.simulated_s else 0.0,
        "decision_time_p50_ms": _quantile(calls_ms, 0.5),
        "decision_time_p99_ms": _quantile(calls_ms, 0.99),
        "policy_decide_p50_ms": _quantile(decide_ms, 0.5),
        "fallbacks": results.fallbacks,
        "unfinished": results.unfinished,
        "model_loads": results.model_loads,
        "model_unloads": results.model_unloads,
        "simulated_s": round(results.simulated_s, 3),
        "wall_s": round(results.wall_s, 3),
        "speed": results.simulated_s / results.wall_s if results.wall_s else math.inf,
    }


def timeline_rows(tasks: list[TaskOutcome]) -> list[dict[str, Any]]:
    """The run's tasks in the order they were made, with `dayu experiment`'s columns."""
    return [timeline_row(t) for t in sorted(tasks, key=lambda t: (t.made_s, t.stream_id))]


def in_budget_over_time(results: RunResults) -> list[tuple[float, float]]:
    """(bin start, share of the tasks made in it delivered within budget), every BIN_S."""
    return results.log.in_budget_over_time()


def details(results: RunResults) -> dict[str, Any]:
    """What results.json keeps of a run besides its row."""
    reasons = results.log.drop_reasons
    shown = dict(reasons.most_common(REASONS_SHOWN))
    if len(reasons) > REASONS_SHOWN:  # one per node and budget in a large scenario: the rest summed
        shown["(other reasons)"] = sum(reasons.values()) - sum(shown.values())
    return {
        "drop_reasons": shown,
        "megabytes_per_link": {name: round(b / 1e6, 3) for name, b in sorted(results.channel_bytes.items())},
        "probe_megabytes": round(results.probe_bytes / 1e6, 3),
        "spans_exported": results.spans_exported,
        "spans_dropped": results.spans_dropped,
        "in_budget_over_time": [
            {"from_s": start, "share": round(share, 4)} for start, share in in_budget_over_time(results)
        ],
    }


def plot_latency_cdf(runs: list[RunResults], path: Path, title: str) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 5))
    for results in runs:
        latencies = results.log.sorted_latencies()  # all, or a uniform sample of a very long run's
        if len(latencies):
            ranks = np.unique(np.linspace(0, len(latencies) - 1, min(len(latencies), CDF_POINTS)).round().astype(int))
            shares = (ranks + 1) / len(latencies)
            label = f"{results.policy} ({results.log.delivered} delivered)"
            axis.step(latencies[ranks], shares, where="post", label=label)
    budgets = sorted({budget for results in runs for budget in results.log.budgets})
    for budget in budgets[:4]:
        axis.axvline(budget, color="grey", linestyle="--", linewidth=1)
    axis.set_xlabel("end-to-end latency of delivered tasks (s); dashed: budgets")
    axis.set_ylabel("share of delivered tasks")
    axis.set_ylim(0, 1.01)
    axis.legend(loc="lower right")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_in_budget_over_time(runs: list[RunResults], path: Path, title: str) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(9, 4.5))
    for results in runs:
        points = in_budget_over_time(results)
        axis.step([p[0] for p in points], [p[1] for p in points], where="post", label=results.policy)
    axis.set_xlabel(f"simulated seconds (tasks made in {BIN_S:g} s bins)")
    axis.set_ylabel("delivered within budget, share of made")
    axis.set_ylim(-0.02, 1.02)
    axis.legend(loc="lower left")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_results(runs: list[RunResults], out: Path, title: str, about: dict[str, Any]) -> list[dict[str, Any]]:
    """Writes everything to `out`; returns the rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [row(results) for results in runs]
    write_csv(out / "results.csv", CSV_COLUMNS, [{key: r[key] for key in CSV_COLUMNS} for r in rows])
    timelines = {}
    for results in runs:
        folder = out / f"run-{results.policy}"
        folder.mkdir(exist_ok=True)
        timelines[results.policy] = timeline_rows(results.tasks)
        if results.log.csv_path != folder / "tasks.csv" and results.log.keep_tasks:  # not written as it went
            write_csv(folder / "tasks.csv", TIMELINE_COLUMNS, timelines[results.policy])
    document = {**about, "rows": rows, "runs": {results.policy: details(results) for results in runs}}
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    plot(rows, out / "results.png", title)
    plot_latency_cdf(runs, out / "latency_cdf.png", title)
    plot_in_budget_over_time(runs, out / "within_budget.png", title)
    if runs and runs[0].log.keep_tasks and len(runs[0].log.streams) <= TIMELINE_STREAMS:
        plot_timelines(timelines, out / "timeline.png", title)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    return table(rows, COLUMNS)
