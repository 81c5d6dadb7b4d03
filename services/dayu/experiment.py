"""`dayu experiment`: the embedded mesh (or the cluster) once per policy, on the same workload, for each
bandwidth trace (and with the compute changes asked for), then a table, a CSV and plots side by side,
each run's tasks over time (what the policy decided and what it cost, task by task), and how soon each
policy was back within budget after each change of bandwidth or compute."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dayu.compute_changes import ComputeChange, changes_of, play
from dayu.controller.links import BandwidthTrace
from dayu.distributor.store import RecordStore
from dayu.experiment_plots import plot, plot_configurations, plot_overview, plot_timelines
from dayu.mesh.model import MeshConfig, load_mesh_config, read_mesh_file
from dayu.mesh.run import RunningMesh, Tick, run_mesh
from dayu.reactions import Change, Recovery, recoveries, reversals, trace_changes
from dayu.v1 import distributor_pb2, task_pb2

BACK_WITHIN_S = 3.0  # the goal: back within budget this soon after a change

COLUMNS = (
    ("policy", "policy", "{}"),
    ("generated", "tasks", "{}"),
    ("dropped", "dropped", "{}"),
    ("latency_p50_s", "p50 s", "{:.3f}"),
    ("latency_p95_s", "p95 s", "{:.3f}"),
    ("in_budget_of_made", "in budget", "{:.0%}"),
    ("accuracy_f1", "accuracy", "{:.3f}"),
    ("accuracy_vs_best", "vs best", "{:.0%}"),
    ("back_within_3s", "back <=3s", "{:.0%}"),
    ("recovery_s_max", "worst back", "{:.1f}"),
    ("reversals", "reversals", "{}"),
    ("megabytes_sent", "MB sent", "{:.1f}"),
    ("decision_time_p50_ms", "decide ms", "{:.3f}"),
    ("decisions", "decisions", "{}"),
)
CSV_COLUMNS = ("trace", *(key for key, _, _ in COLUMNS), "within_budget")  # the last: of delivered


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
    """The run's line of the table, less what needs the trace's other runs (judge fills it in)."""
    scheduling = summary["scheduling"].values()
    times = [s["decision_time_p50_s"] for s in scheduling]
    return {
        "policy": policy,
        "generated": summary["generated"],
        "dropped": summary["dropped"],
        "latency_p50_s": summary["latency_s"]["p50"],
        "latency_p95_s": summary["latency_s"]["p95"],
        "within_budget": summary["within_budget"],  # of delivered
        "in_budget_of_made": summary["in_budget"] / summary["generated"] if summary["generated"] else None,
        "accuracy_f1": summary["accuracy_f1"],
        **dict.fromkeys(("accuracy_vs_best", "back_within_3s", "recovery_s_max", "reversals")),
        "megabytes_sent": sum(summary["bytes_per_link"].values()) / 1e6,
        "decision_time_p50_ms": 1000 * sum(times) / len(times) if times else None,
        "decisions": sum(s["decisions"] for s in scheduling),
    }


def judge(
    rows: list[dict[str, Any]], timelines: dict[str, list[dict[str, Any]]], changes: list[Change], until_s: float
) -> dict[str, list[Recovery]]:
    """Fills in the rows (a policy's each, on one trace) what needs the trace's other runs: accuracy
    against fixed's (the best configuration), and, over the same changes for all, the share of changes
    after which the tasks were back within budget in BACK_WITHIN_S, the latest recovery (infinite when
    a change's tasks were never back before the next), and the reversals. Returns the recoveries."""
    best = next((r["accuracy_f1"] for r in rows if r["policy"] == "fixed"), None)
    recovered = {}
    for r in rows:
        tasks = timelines[r["policy"]]
        recovered[r["policy"]] = found = recoveries(tasks, changes, until_s)
        seconds = [c.seconds for c in found]
        back = sum(s is not None and s <= BACK_WITHIN_S for s in seconds)
        r["accuracy_vs_best"] = r["accuracy_f1"] / best if best and r["accuracy_f1"] is not None else None
        r["back_within_3s"] = back / len(seconds) if seconds else None
        r["recovery_s_max"] = math.inf if None in seconds else max(seconds, default=0.0)
        r["reversals"] = reversals(tasks)
    return recovered


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


def timeline(database: Path, origin: float | None = None) -> list[dict[str, Any]]:
    """A run's tasks in the order they were made: when (seconds after `origin`, a wall-clock time: when
    the bandwidth traces started; else after the first task), under which decision and configuration,
    where the stages were placed, and what became of them."""
    store = RecordStore(database)
    try:
        records = [r for r in store.scan(distributor_pb2.RecordFilter()) if r.task.HasField("created_at")]
    finally:
        store.close()
    records.sort(key=lambda r: r.task.created_at.ToNanoseconds())
    first = records[0].task.created_at.ToNanoseconds() if records else 0
    if origin is not None:
        first = round(origin * 1e9)
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


def progress_bar(what: str, total_s: float, unit: str, shown: bool = True) -> Any:
    """A progress bar on stderr over `total_s` seconds (elapsed, or simulated: `unit`), for `what`."""
    from tqdm import tqdm  # here, not at the top: only the long-running commands show one

    return tqdm(total=round(total_s), desc=what, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=not shown)


def run_experiment(
    config_path: Path,
    policies: list[str],
    traces: list[Path | None],
    duration_s: float,
    out: Path,
    make_mesh: Callable[[MeshConfig, Path], RunningMesh],
    progress: Callable[[str], None] = print,
    compute: list[ComputeChange] | None = None,
) -> list[dict[str, Any]]:
    """Runs the mesh that `make_mesh(config, workdir)` makes (embedded, or the cluster) once per policy
    and trace, with the `compute` changes in every run. One trace's results go to `out`; several
    traces' each to out/TRACE (the trace file's stem), with every row in out/results.csv and the bars of
    all side by side in out/overview.png."""
    compute = compute or []
    rows = []
    for trace in traces:
        where = out if len(traces) == 1 else out / (trace.stem if trace else "links")
        rows += run_trace(config_path, policies, trace, duration_s, where, make_mesh, progress, compute)
    if len(traces) > 1:
        write_csv(out / "results.csv", CSV_COLUMNS, rows)
        plot_overview(rows, out / "overview.png", f"{duration_s:g} s per policy{_compute_title(compute)}")
        progress(table(rows, (("trace", "trace", "{}"), *COLUMNS)))
    return rows


def _compute_title(compute: list[ComputeChange]) -> str:
    return "".join(f", {c.describe()} {c.window.start_s:g}-{c.window.end_s:g} s" for c in compute)


def run_trace(
    config_path: Path,
    policies: list[str],
    trace: Path | None,
    duration_s: float,
    out: Path,
    make_mesh: Callable[[MeshConfig, Path], RunningMesh],
    progress: Callable[[str], None],
    compute: list[ComputeChange],
) -> list[dict[str, Any]]:
    """One trace's runs, a policy at a time, into `out`; the rows, each with the trace's name."""
    base = read_mesh_file(config_path)
    cloud_node = load_mesh_config(config_path, base).cloud_node
    out.mkdir(parents=True, exist_ok=True)
    bandwidth = BandwidthTrace.load(trace) if trace is not None else None
    label = (trace.name if trace else "configured links") + _compute_title(compute)
    rows: list[dict[str, Any]] = []
    timelines: dict[str, list[dict[str, Any]]] = {}
    for policy in policies:
        config = load_mesh_config(config_path, policy_run_data(base, policy, trace, cloud_node))
        workdir = out / f"run-{policy}"
        workdir.mkdir(exist_ok=True)
        mesh = make_mesh(config, workdir)
        mesh.reset()
        progress(f"dayu experiment: policy {policy} for {duration_s:g} s on {label}")
        with progress_bar(policy, duration_s, "s") as bar:

            def tick(tick: Tick, bar: Any = bar) -> None:
                bar.update(min(round(tick.running_s), round(duration_s)) - bar.n)
                bar.set_postfix(tasks=tick.generated, delivered=tick.delivered, dropped=tick.dropped)

            summary = asyncio.run(_run(mesh, duration_s, tick, compute))
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        timelines[policy] = timeline(mesh.records, mesh.traces_started_at)
        write_csv(workdir / "tasks.csv", TIMELINE_COLUMNS, timelines[policy])
        rows.append({"trace": label, **row(policy, summary)})
        progress(table(rows[-1:]).splitlines()[-1])
    # The same changes for every policy: up to the last task any run made.
    until_s = max((t["made_s"] for tasks in timelines.values() for t in tasks), default=0.0) + 1e-3
    changes = (trace_changes(bandwidth, until_s) if bandwidth else []) + changes_of(compute)
    recovered = judge(rows, timelines, changes, until_s)
    write_csv(out / "results.csv", CSV_COLUMNS, rows)
    write_csv(out / "recovery.csv", ("at_s", "change", *policies), recovery_rows(recovered))
    title = f"{label}, {duration_s:g} s per policy"
    plot(rows, out / "results.png", title)
    plot_timelines(timelines, out / "timeline.png", title)
    windows = [(c.window.start_s, c.window.end_s, c.describe()) for c in compute]
    plot_configurations(timelines, bandwidth, windows, out / "configuration.png", title)
    progress(table(rows))
    progress(recovery_table(recovered))
    return rows


async def _run(
    mesh: RunningMesh, duration_s: float, tick: Callable[[Tick], None], compute: list[ComputeChange]
) -> dict[str, Any]:
    """run_mesh, with the compute changes played over it."""
    changes = asyncio.create_task(play(compute, mesh))
    try:
        return await run_mesh(mesh, duration_s, progress=lambda _line: None, on_tick=tick, tick_s=1.0)
    finally:
        changes.cancel()
        await asyncio.gather(changes, return_exceptions=True)


def recovery_rows(recovered: dict[str, list[Recovery]]) -> list[dict[str, Any]]:
    """A row per change (the same changes in every run: the trace's and the compute's), a column per
    policy: seconds until back within budget ("never": not before the next change)."""
    runs = list(recovered.values())
    return [
        {
            "at_s": changed[0].change.at_s,
            "change": changed[0].change.what,
            **{p: "never" if r.seconds is None else r.seconds for p, r in zip(recovered, changed, strict=True)},
        }
        for changed in zip(*runs, strict=True)
    ]


def recovery_table(recovered: dict[str, list[Recovery]]) -> str:
    """Seconds after each change until every stream's tasks were within budget for good."""
    columns = (("at_s", "at s", "{:g}"), ("change", "change", "{}"), *((p, p[:10], "{}") for p in recovered))
    return "back within budget, seconds after each change:\n" + table(recovery_rows(recovered), columns)
