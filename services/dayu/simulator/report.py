"""The results of `dayu simulate`, per policy: the table, results.csv and results.json, each run's tasks
(run-POLICY/tasks.csv, the columns of `dayu experiment`'s), and the plots: the bars of `dayu
experiment`, the latency CDF and the share within budget over time per policy, and, for a handful of
streams, `dayu experiment`'s timeline of each task."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from dayu.experiment import TIMELINE_COLUMNS, plot, plot_timelines, pyplot, table, write_csv
from dayu.mesh.summary import percentiles, reason_kind
from dayu.simulator.engine import RunResults, TaskOutcome

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
    "simulated_s",
    "wall_s",
)
BIN_S = 5.0  # the within-budget share over time: tasks made in bins this long
TIMELINE_STREAMS = 8  # the per-task timeline plot, only for this many streams or fewer
REASONS_SHOWN = 20  # drop reasons in results.json, the most frequent


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(results: RunResults) -> dict[str, Any]:
    tasks = results.tasks
    delivered = [t for t in tasks if t.delivered]
    latency = percentiles([t.latency_s for t in delivered])
    accuracies = [t.accuracy for t in delivered if t.accuracy is not None]
    uplinks = [results.channel_bytes.get(name, 0) / 1e6 for name in results.uplinks]
    calls_ms = [1000 * s for s in results.decision_call_s]
    decide_ms = [1000 * s for s in results.policy_decide_s]
    in_budget = sum(t.in_budget for t in delivered)
    return {
        "policy": results.policy,
        "generated": len(tasks),
        "delivered": len(delivered),
        "dropped": len(tasks) - len(delivered),
        "within_budget": in_budget / len(delivered) if delivered else None,  # of delivered, as `dayu experiment`
        "in_budget_of_made": in_budget / len(tasks) if tasks else None,
        "latency_p50_s": latency["p50"],
        "latency_p95_s": latency["p95"],
        "accuracy_f1": statistics.fmean(accuracies) if accuracies else None,
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
        "simulated_s": round(results.simulated_s, 3),
        "wall_s": round(results.wall_s, 3),
        "speed": results.simulated_s / results.wall_s if results.wall_s else math.inf,
    }


def timeline_rows(tasks: list[TaskOutcome]) -> list[dict[str, Any]]:
    """The run's tasks in the order they were made, with `dayu experiment`'s columns."""
    rows = []
    for t in sorted(tasks, key=lambda t: (t.made_s, t.stream_id)):
        config = t.configuration
        rows.append(
            {
                "made_s": round(t.made_s, 3),
                "stream_id": t.stream_id,
                "decision_version": t.decision_version,
                "width": config.resolution.width,
                "height": config.resolution.height,
                "fps": config.fps,
                "frames_per_segment": config.frames_per_segment,
                "quality": config.quality,
                "placement": t.placement,
                "outcome": "delivered" if t.delivered else "dropped",
                "latency_s": round(t.latency_s, 3),
                "latency_budget_s": t.budget_s,
                "accuracy": None if t.accuracy is None else round(t.accuracy, 3),
                "drop_reason": t.reason,
            }
        )
    return rows


def in_budget_over_time(results: RunResults) -> list[tuple[float, float]]:
    """(bin start, share of the tasks made in it delivered within budget), every BIN_S."""
    made: Counter[int] = Counter()
    good: Counter[int] = Counter()
    for t in results.tasks:
        made[int(t.made_s // BIN_S)] += 1
        good[int(t.made_s // BIN_S)] += t.in_budget
    return [(b * BIN_S, good[b] / made[b]) for b in sorted(made)]


def details(results: RunResults) -> dict[str, Any]:
    """What results.json keeps of a run besides its row."""
    reasons = Counter(reason_kind(t.reason) for t in results.tasks if not t.delivered)
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
        latencies = sorted(t.latency_s for t in results.tasks if t.delivered)
        if latencies:
            shares = [(i + 1) / len(latencies) for i in range(len(latencies))]
            axis.step(latencies, shares, where="post", label=f"{results.policy} ({len(latencies)} delivered)")
    budgets = sorted({t.budget_s for results in runs for t in results.tasks})
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
        write_csv(folder / "tasks.csv", TIMELINE_COLUMNS, timelines[results.policy])
    document = {**about, "rows": rows, "runs": {results.policy: details(results) for results in runs}}
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    plot(rows, out / "results.png", title)
    plot_latency_cdf(runs, out / "latency_cdf.png", title)
    plot_in_budget_over_time(runs, out / "within_budget.png", title)
    if runs and len({t.stream_id for t in runs[0].tasks}) <= TIMELINE_STREAMS:
        plot_timelines(timelines, out / "timeline.png", title)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    return table(rows, COLUMNS)
