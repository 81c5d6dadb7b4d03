"""The plots of `dayu experiment` (and `dayu simulate`): the bars of one trace's runs, each task's
latency over time, each policy's configuration over time against the bandwidth trace, and the bars of
every trace's runs side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dayu.controller.links import BandwidthTrace


def pyplot() -> Any:
    import matplotlib  # here, not at the top: only this command draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = pyplot()

    panels = (
        ("latency_p95_s", "end-to-end p95 latency (s)"),
        ("in_budget_of_made", "tasks made delivered within budget"),
        ("accuracy_f1", "accuracy (F1 at IoU 0.5)"),
        ("megabytes_sent", "MB sent over links"),
    )
    figure, axes = plt.subplots(2, 2, figsize=(10, 7))
    names = [r["policy"] for r in rows]
    for axis, (key, label) in zip(axes.flat, panels, strict=True):
        axis.bar(names, [r[key] or 0 for r in rows], color="#3b7dd8")
        axis.set_title(label)
        axis.tick_params(axis="x", rotation=30)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_timelines(timelines: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    """Per policy: each task's latency when it was made (x: dropped), against the budget, and the
    resolution it was made at."""
    plt = pyplot()
    figure, axes = plt.subplots(len(timelines), 1, figsize=(10, 2.4 * len(timelines)), sharex=True, squeeze=False)
    for axis, (policy, tasks) in zip(axes[:, 0], timelines.items(), strict=True):
        heights = axis.twinx()
        heights.set_ylabel("height (px)")
        for i, stream in enumerate(sorted({t["stream_id"] for t in tasks})):
            mine, color = [t for t in tasks if t["stream_id"] == stream], f"C{i}"
            for outcome, marker in (("delivered", "o"), ("dropped", "x")):
                shown = [t for t in mine if t["outcome"] == outcome]
                x, y = [t["made_s"] for t in shown], [t["latency_s"] for t in shown]
                axis.scatter(x, y, s=10, marker=marker, color=color, label=f"{stream} {outcome}" if shown else None)
            x, y = [t["made_s"] for t in mine], [t["height"] for t in mine]
            heights.step(x, y, where="post", color=color, alpha=0.4)
        axis.legend(loc="upper left", fontsize=7)
        budgets = {t["latency_budget_s"] for t in tasks if t["latency_budget_s"]}
        for budget in budgets:
            axis.axhline(budget, color="grey", linestyle="--", linewidth=1)
        axis.set_ylabel("latency (s)")
        axis.set_title(policy, fontsize=10)
    axes[-1, 0].set_xlabel("seconds (when the task was made)")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_configurations(
    timelines: dict[str, list[dict[str, Any]]],
    trace: BandwidthTrace | None,
    windows: Sequence[tuple[float, float, str]],
    path: Path,
    title: str,
) -> None:
    """Per policy (a row): the resolution (left) and frame rate (right) each stream's tasks were made
    at, over the seconds since the trace started, against the trace's bandwidth (grey) and the
    compute changes' `windows` (start, end, what; shaded)."""
    plt = pyplot()
    figure, axes = plt.subplots(len(timelines), 2, figsize=(12, 2.3 * len(timelines)), sharex=True, squeeze=False)
    end = max((t["made_s"] for tasks in timelines.values() for t in tasks), default=1.0)
    for row, (policy, tasks) in zip(axes, timelines.items(), strict=True):
        for axis, (knob, label) in zip(row, (("height", "height (px)"), ("fps", "frames a second")), strict=True):
            if trace is not None:
                bandwidth = axis.twinx()
                times = [0.0, *trace.steps(end), end]
                bandwidth.fill_between(
                    times,
                    [trace.segment(t + 1e-6)[0] for t in times],
                    step="post",
                    color="grey",
                    alpha=0.2,
                    linewidth=0,
                )
                bandwidth.set_ylabel("Mbit/s", color="grey", fontsize=8)
            for start, stop, what in windows:
                axis.axvspan(start, stop, color="#d62728", alpha=0.12, label=what)
            for i, stream in enumerate(sorted({t["stream_id"] for t in tasks})):
                mine = [t for t in tasks if t["stream_id"] == stream]
                axis.step(
                    [t["made_s"] for t in mine], [t[knob] for t in mine], where="post", color=f"C{i}", label=stream
                )
            axis.set_ylabel(label, fontsize=8)
            axis.set_title(f"{policy}: {label}", fontsize=9)
        row[0].legend(loc="lower left", fontsize=7)
    for axis in axes[-1]:
        axis.set_xlabel("seconds since the trace started (when the task was made)")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_overview(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Bars for every trace (a group) and policy (a bar in it): the share of tasks made that were
    delivered within budget, and the accuracy against the best configuration's (fixed's) where known."""
    plt = pyplot()
    traces = list(dict.fromkeys(r["trace"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    figure, axes = plt.subplots(2, 1, figsize=(max(8, 1.4 * len(traces) * max(len(policies), 2) / 2), 7), sharex=True)
    width = 0.8 / len(policies)
    panels = (
        ("in_budget_of_made", "tasks made delivered within budget"),
        ("accuracy_vs_best", "accuracy / the best configuration's"),
    )
    for axis, (key, label) in zip(axes, panels, strict=True):
        for i, policy in enumerate(policies):
            values = [next((r[key] for r in rows if r["trace"] == t and r["policy"] == policy), None) for t in traces]
            axis.bar(
                [k + (i - (len(policies) - 1) / 2) * width for k in range(len(traces))],
                [v or 0 for v in values],
                width,
                label=policy,
                color=f"C{i}",
            )
        axis.axhline(0.95 if key == "in_budget_of_made" else 0.9, color="grey", linestyle="--", linewidth=1)
        axis.set_ylabel(label, fontsize=9)
    axes[0].legend(fontsize=8, ncol=min(len(policies), 5), loc="lower left")
    axes[-1].set_xticks(range(len(traces)), traces, rotation=20, fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
