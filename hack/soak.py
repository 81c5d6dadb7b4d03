#!/usr/bin/env python3
"""A soak run on the cluster of real nodes (docs/cluster.md): the cluster mesh (configs/cluster.yaml,
both streams, mutual TLS as the cluster runs it) for a long while, sampling each pod's process for its
resident memory, open file descriptors and threads; then the usual stop (generators first, every task
settled) and every task accounted for.

It prints, per pod, the figures after the warm-up and at the end (each the median of three samples a
minute apart, so that one garbage collection does not decide), their growth, and the run's tasks.
It passes when no pod's memory, descriptors or threads grew by 5% or more after the warm-up (for the
counts, at least by one: 12 threads becoming 13 is one thread, not 8%), no pod restarted, and no task
is unaccounted. Needs root.

    .venv/bin/python hack/soak.py                         # 30 minutes after a 3-minute warm-up
    .venv/bin/python hack/soak.py --minutes 5 --warmup 2  # a quick look
    .venv/bin/python hack/soak.py --json runs/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dayu.cluster.cluster import Cluster
from dayu.mesh.model import load_mesh_config
from dayu.mesh.run import run_mesh

ROOT = Path(__file__).resolve().parents[1]
GROWTH_LIMIT = 0.05
SAMPLES = 3  # per figure: the median of this many samples


@dataclass
class PodSamples:
    """What one pod's process looked like, sample by sample: (seconds since the start, RSS in MiB,
    open descriptors, threads), and every pid it had (a new one is a restart)."""

    pids: list[int] = field(default_factory=list)
    samples: list[tuple[float, float, int, int]] = field(default_factory=list)


def read_process(pid: int) -> tuple[float, int, int] | None:
    """RSS (MiB), open file descriptors and threads of a process, from /proc; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kib = int(values["VmRSS"].split()[0])
    return rss_kib / 1024, fds, int(values["Threads"])


async def sample_pods(cluster: Cluster, every_s: float, pods: dict[str, PodSamples], started: float) -> None:
    while True:
        for name, running in cluster.pods.items():
            if running.process is None or running.process.poll() is not None:
                continue
            read = read_process(running.process.pid)
            if read is None:
                continue
            samples = pods.setdefault(name, PodSamples())
            if not samples.pids or samples.pids[-1] != running.process.pid:
                samples.pids.append(running.process.pid)
            samples.samples.append((time.monotonic() - started, *read))
        await asyncio.sleep(every_s)


def figures(samples: list[tuple[float, float, int, int]]) -> tuple[float, float, float]:
    return tuple(statistics.median(s[i] for s in samples) for i in (1, 2, 3))  # type: ignore[return-value]


def judge(pods: dict[str, PodSamples], warmup_s: float) -> tuple[list[dict[str, Any]], list[str]]:
    rows, problems = [], []
    for name, pod in sorted(pods.items()):
        after = [s for s in pod.samples if s[0] >= warmup_s]
        if len(after) < 2 * SAMPLES:
            problems.append(f"{name}: only {len(after)} samples after the warm-up")
            continue
        start, end = figures(after[:SAMPLES]), figures(after[-SAMPLES:])
        row: dict[str, Any] = {"pod": name, "restarts": len(pod.pids) - 1}
        for i, what in enumerate(("rss_mib", "fds", "threads")):
            growth = (end[i] - start[i]) / start[i] if start[i] else 0.0
            row[what] = (round(start[i], 1), round(end[i], 1), round(100 * growth, 1))
            allowed = start[i] * (1 + GROWTH_LIMIT)
            if what != "rss_mib":  # a count may grow by one
                allowed = max(start[i] + 1, allowed)
            if end[i] > allowed:
                problems.append(f"{name}: {what} grew from {start[i]:g} to {end[i]:g} ({100 * growth:.1f}%)")
        if row["restarts"]:
            problems.append(f"{name}: restarted {row['restarts']} times")
        rows.append(row)
    return rows, problems


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| Pod | RSS MiB (after warm-up → end, growth) | Open fds | Threads | Restarts |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [f"{a:g} → {b:g} ({g:+.1f}%)" for a, b, g in (row["rss_mib"], row["fds"], row["threads"])]
        lines.append(f"| {row['pod']} | {' | '.join(cells)} | {row['restarts']} |")
    return "\n".join(lines)


async def soak(workdir: Path, minutes: float, warmup_min: float, every_s: float) -> dict[str, Any]:
    config = load_mesh_config(ROOT / "configs" / "cluster.yaml")
    cluster = Cluster(config, workdir, name="dsoak", progress=lambda line: print(line, flush=True))
    cluster.reset()
    pods: dict[str, PodSamples] = {}
    started = time.monotonic()
    sampler = asyncio.create_task(sample_pods(cluster, every_s, pods, started))
    try:
        summary = await run_mesh(cluster, (warmup_min + minutes) * 60, progress=lambda line: print(line, flush=True))
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    # The warm-up counts from the first sample (the mesh up), not from the cluster's start.
    first = min((pod.samples[0][0] for pod in pods.values() if pod.samples), default=0.0)
    rows, problems = judge(pods, first + warmup_min * 60)
    if summary["unaccounted"]:
        problems.append(f"{summary['unaccounted']} tasks unaccounted")
    series = {name: {"pids": pod.pids, "samples": pod.samples} for name, pod in sorted(pods.items())}
    return {
        "minutes": minutes,
        "warmup_minutes": warmup_min,
        "pods": rows,
        "summary": summary,
        "problems": problems,
        "samples": series,  # per pod: (seconds, RSS MiB, fds, threads) every --every seconds
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long after the warm-up (default 30)")
    parser.add_argument("--warmup", type=float, default=3.0, help="minutes of warm-up, not judged (default 3)")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples (default 60)")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and volumes (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dayu-soak-") as scratch:
        result = asyncio.run(soak(args.workdir or Path(scratch), args.minutes, args.warmup, args.every))
    summary = result["summary"]
    print()
    print(table(result["pods"]))
    print()
    print(
        f"tasks: generated {summary['generated']}, delivered {summary['delivered']}, dropped {summary['dropped']}, "
        f"unaccounted {summary['unaccounted']}; drop reasons {summary['drop_reasons']}"
    )
    for problem in result["problems"]:
        print(f"PROBLEM {problem}")
    print("the soak holds" if not result["problems"] else f"the soak does not hold: {len(result['problems'])} problems")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
