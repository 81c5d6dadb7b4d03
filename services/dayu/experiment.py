"""`dayu experiment`: the embedded mesh once per policy, on the same workload and bandwidth trace,
then a table, a CSV and a PNG plot side by side, and each run's tasks over time (what the policy
decided and what it cost, task by task)."""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dayu.distributor.store import RecordStore
from dayu.mesh.model import MeshConfig, load_mesh_config, read_mesh_file
from dayu.mesh.run import RunningMesh, Tick, run_mesh
from dayu.v1 import distributor_pb2, task_pb2

COLUMNS = (
    ("policy", "policy", "{}"),
    ("generated", "tasks", "{}"),
    ("dropped", "dropped", "{}"),
    ("latency_p50_s", "p50 s", "{:.3f}"),
    ("latency_p95_s", "p95 s", "{:.3f}"),
    ("within_budget", "in budget", "{:.0%}"),
    ("accuracy_f1", "accuracy", "{:.3f}"),
    ("megabytes_sent", "MB sent", "{:.1f}"),
    ("decision_time_p50_ms", "decide ms", "{:.3f}"),
    ("decisions", "decisions", "{}"),
)


def policy_run_data(data: dict[str, Any], policy: str, trace: Path | None, cloud_node: str) -> dict[str, Any]:
    """The mesh file's data with every stream under `policy` (default parameters) and every link to
    the cloud replaying `trace`."""
    data = {**data, "streams": [{**s, "policy": {"name": policy}} for s in data.get("streams", [])]}
    if trace is not None:
        data["links"] = [
            {**link, "trace": str(trace.resolve())} if cloud_node in link.get("between", []) else link
            for link in data.get("links", [])
        ]
    return data


def row(policy: str, summary: dict[str, Any]) -> dict[str, Any]:
    scheduling = summary["scheduling"].values()
    times = [s["decision_time_p50_s"] for s in scheduling]
    return {
        "policy": policy,
        "generated": summary["generated"],
        "dropped": summary["dropped"],
        "latency_p50_s": summary["latency_s"]["p50"],
        "latency_p95_s": summary["latency_s"]["p95"],
        "within_budget": summary["within_budget"],
        "accuracy_f1": summary["accuracy_f1"],
        "megabytes_sent": sum(summary["bytes_per_link"].values()) / 1e6,
        "decision_time_p50_ms": 1000 * sum(times) / len(times) if times else None,
        "decisions": sum(s["decisions"] for s in scheduling),
    }


TIMELINE_COLUMNS = (
    "made_s",
    "stream_id",
    "decision_version",
    "width",
    "height",
    "fps",
    "frames_per_segment",
    "quality",
    "placement",
    "outcome",
    "latency_s",
    "latency_budget_s",
    "accuracy",
    "drop_reason",
)


def timeline(database: Path) -> list[dict[str, Any]]:
    """A run's tasks in the order they were made: when (seconds after the first), under which
    decision and configuration, where the stages were placed, and what became of them."""
    store = RecordStore(database)
    try:
        records = [r for r in store.scan(distributor_pb2.RecordFilter()) if r.task.HasField("created_at")]
    finally:
        store.close()
    records.sort(key=lambda r: r.task.created_at.ToNanoseconds())
    first = records[0].task.created_at.ToNanoseconds() if records else 0
    rows = []
    for record in records:
        task, config = record.task, record.task.configuration
        rows.append(
            {
                "made_s": round((task.created_at.ToNanoseconds() - first) / 1e9, 3),
                "stream_id": task.stream_id,
                "decision_version": task.decision_version,
                "width": config.resolution.width,
                "height": config.resolution.height,
                "fps": config.fps,
                "frames_per_segment": config.frames_per_segment,
                "quality": config.quality,
                "placement": " ".join(f"{s.spec.name}@{s.executed_on or s.node}" for s in task.dag.stages),
                "outcome": "delivered" if record.outcome == task_pb2.TASK_OUTCOME_DELIVERED else "dropped",
                "latency_s": round(record.latency_s, 3),
                "latency_budget_s": task.latency_budget_s,
                "accuracy": round(record.accuracy, 3) if record.HasField("accuracy") else None,
                "drop_reason": record.reason,
            }
        )
    return rows


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str, str], ...] = COLUMNS) -> str:
    """The rows as a text table of `columns` (key, title, format)."""

    def cell(value: Any, form: str) -> str:
        return "-" if value is None else form.format(value)

    lines = ["  ".join(f"{title:>10}" for _, title, _ in columns)]
    for r in rows:
        lines.append("  ".join(f"{cell(r[key], form):>10}" for key, _, form in columns))
    return "\n".join(lines)


def pyplot() -> Any:
    import matplotlib  # here, not at the top: only this command draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = pyplot()

    panels = (
        ("latency_p95_s", "end-to-end p95 latency (s)"),
        ("within_budget", "tasks within the latency budget"),
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


def progress_bar(what: str, total_s: float, unit: str, shown: bool = True) -> Any:
    """A progress bar on stderr over `total_s` seconds (elapsed, or simulated: `unit`), for `what`."""
    from tqdm import tqdm  # here, not at the top: only the long-running commands show one

    return tqdm(total=round(total_s), desc=what, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=not shown)


def run_experiment(
    config_path: Path,
    policies: list[str],
    trace: Path | None,
    duration_s: float,
    out: Path,
    make_mesh: Callable[[MeshConfig, Path], RunningMesh],
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Runs the mesh that `make_mesh(config, workdir)` makes (embedded, or the cluster) once per policy."""
    base = read_mesh_file(config_path)
    cloud_node = load_mesh_config(config_path, base).cloud_node
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    timelines: dict[str, list[dict[str, Any]]] = {}
    for policy in policies:
        config = load_mesh_config(config_path, policy_run_data(base, policy, trace, cloud_node))
        workdir = out / f"run-{policy}"
        workdir.mkdir(exist_ok=True)
        mesh = make_mesh(config, workdir)
        mesh.reset()
        progress(f"dayu experiment: policy {policy} for {duration_s:g} s")
        with progress_bar(policy, duration_s, "s") as bar:

            def tick(tick: Tick, bar: Any = bar) -> None:
                bar.update(min(round(tick.running_s), round(duration_s)) - bar.n)
                bar.set_postfix(tasks=tick.generated, delivered=tick.delivered, dropped=tick.dropped)

            summary = asyncio.run(run_mesh(mesh, duration_s, progress=lambda _line: None, on_tick=tick, tick_s=1.0))
        rows.append(row(policy, summary))
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        timelines[policy] = timeline(mesh.records)
        write_csv(workdir / "tasks.csv", TIMELINE_COLUMNS, timelines[policy])
        progress(table(rows[-1:]).splitlines()[-1])
    write_csv(out / "results.csv", tuple(key for key, _, _ in COLUMNS), rows)
    title = f"{trace.name if trace else 'configured links'}, {duration_s:g} s per policy"
    plot(rows, out / "results.png", title)
    plot_timelines(timelines, out / "timeline.png", title)
    progress(table(rows))
    return rows
