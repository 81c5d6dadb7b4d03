"""`dayu experiment`: the embedded mesh once per policy, on the same workload and bandwidth trace,
then a table, a CSV and a PNG plot side by side."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dayu.embedded import load_mesh_config, read_mesh_file, run_mesh

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


def table(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any, form: str) -> str:
        return "-" if value is None else form.format(value)

    lines = ["  ".join(f"{title:>10}" for _, title, _ in COLUMNS)]
    for r in rows:
        lines.append("  ".join(f"{cell(r[key], form):>10}" for key, _, form in COLUMNS))
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib  # here, not at the top: only this command draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def run_experiment(
    config_path: Path,
    policies: list[str],
    trace: Path | None,
    duration_s: float,
    out: Path,
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    base = read_mesh_file(config_path)
    cloud_node = load_mesh_config(config_path, base).cloud_node
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for policy in policies:
        config = load_mesh_config(config_path, policy_run_data(base, policy, trace, cloud_node))
        workdir = out / f"run-{policy}"
        workdir.mkdir(exist_ok=True)
        (workdir / "dayu-records.sqlite").unlink(missing_ok=True)
        progress(f"dayu experiment: policy {policy} for {duration_s:g} s")
        summary = asyncio.run(run_mesh(config, duration_s, workdir, progress=lambda _line: None))
        rows.append(row(policy, summary))
        progress(table(rows[-1:]).splitlines()[-1])
    with (out / "results.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=[key for key, _, _ in COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "results.png", f"{trace.name if trace else 'configured links'}, {duration_s:g} s per policy")
    progress(table(rows))
    return rows
