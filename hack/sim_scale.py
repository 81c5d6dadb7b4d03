"""The simulator at scale: 10,000 streams on 1,000 edges behind 250 uplinks, 2,500 cloud workers, for 10
simulated minutes (by default), one policy per process, reporting what docs/simulator.md's table shows:
the share of tasks within budget (of those delivered and of those made), latency p50/p95, accuracy, MB
over the uplinks (in all and on the busiest), decisions per simulated second, the wall time of the core
calls that published decisions (p50/p99), simulated seconds per wall second (and per CPU second: the
machine may be shared), the wall time and the peak RSS.

    nice -n 10 .venv/bin/python hack/sim_scale.py --policy latency_budget --out out/sim-scale
    nice -n 10 .venv/bin/python hack/sim_scale.py --policy fixed --out out/sim-scale
        [--generate cloud_workers=2500,edges=1000,uplinks=250,streams=10000] [--duration 600] [--seed 0]

Writes OUT/POLICY/ (`dayu simulate`'s results.csv, results.json, plots and run-POLICY/tasks.csv, its rows
streamed as the run goes) and OUT/POLICY/scale.json (the figures below, and the progress every
--every simulated seconds: wall and CPU seconds, tasks made, in flight, RSS; written at each step
with "finished": false, so a run stopped early leaves how far it got), and prints them. Run one
policy at a time: each takes a core, and the simulator's speed is what is measured."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dayu.mesh.model import CONFIGS
from dayu.simulator import scenario as scenarios
from dayu.simulator.costs import Profile
from dayu.simulator.engine import SimulatedMesh
from dayu.simulator.report import format_table, write_results

SCALE = "cloud_workers=2500,edges=1000,uplinks=250,streams=10000"


def rss_mb() -> float:
    """The process's current resident set (MB), from /proc (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="one policy, e.g. latency_budget or fixed")
    parser.add_argument("--generate", default=SCALE, help=f"`dayu simulate --generate`'s (default {SCALE})")
    parser.add_argument("--duration", type=float, default=600.0, help="simulated seconds (default 600)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=float, default=10.0, help="progress every this many simulated seconds")
    parser.add_argument("--profile", type=Path, default=CONFIGS / "profile.yaml")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    params = scenarios.GeneratedParams.parse(args.generate)
    scenario = scenarios.generate(params, args.policy, seed=args.seed)
    profile = Profile.load(args.profile)
    out = args.out / args.policy
    progress: list[dict[str, Any]] = []

    def tick(mesh: SimulatedMesh) -> None:
        now = mesh.env.now
        if now % args.every >= 1.0:
            return
        point = {
            "sim_s": now,
            "wall_s": round(time.perf_counter() - wall0, 1),
            "cpu_s": round(time.process_time() - cpu0, 1),
            "tasks": mesh.made_tasks,
            "dropped": mesh.results.dropped,
            "in_flight": len(mesh.in_flight),
            "rss_mb": round(rss_mb()),
        }
        progress.append(point)
        print(json.dumps(point), file=sys.stderr, flush=True)
        # So far, in case the run is stopped before its end (a 10-minute run of 10,000 streams takes hours).
        out.mkdir(parents=True, exist_ok=True)
        partial = {"policy": args.policy, "generate": args.generate, "finished": False, "progress": progress}
        (out / "scale.json").write_text(json.dumps(partial, indent=2) + "\n")

    tasks_csv = out / f"run-{args.policy}" / "tasks.csv"  # where write_results looks for it: streamed there
    mesh = SimulatedMesh(scenario, profile, args.policy, args.duration, args.seed, on_second=tick, tasks_csv=tasks_csv)
    setup_wall, setup_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    results = mesh.run()
    run_wall, run_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    rows = write_results([results], out, f"{args.policy}: {args.generate}, {args.duration:g} s", {
        "scenario": scenario.notes, "profile": profile.source, "seed": args.seed, "duration_s": args.duration,
        "streams": len(scenario.streams), "nodes": len(scenario.nodes),
    })  # fmt: skip
    row = rows[0]
    figures = {
        "policy": args.policy,
        "finished": True,
        "generate": args.generate,
        "duration_s": args.duration,
        "seed": args.seed,
        "started_at": started_at,
        "tasks": row["generated"],
        "delivered": row["delivered"],
        "dropped": row["dropped"],
        "unfinished": row["unfinished"],
        "within_budget_of_delivered": row["within_budget"],
        "within_budget_of_made": row["in_budget_of_made"],
        "latency_p50_s": row["latency_p50_s"],
        "latency_p95_s": row["latency_p95_s"],
        "accuracy_f1": row["accuracy_f1"],
        "uplink_mb_total": row["uplink_mb_total"],
        "uplink_mb_busiest": row["uplink_mb_max"],
        "decisions": row["decisions"],
        "decisions_per_s": row["decisions_per_s"],
        "decision_call_ms_p50": row["decision_time_p50_ms"],
        "decision_call_ms_p99": row["decision_time_p99_ms"],
        "policy_decide_ms_p50": row["policy_decide_p50_ms"],
        "simulated_s": results.simulated_s,  # the duration and the drain
        "run_wall_s": round(results.wall_s, 1),  # SimulatedMesh.run: registration, the run and the drain
        "setup_wall_s": round(setup_wall, 1),  # the scenario, the profile, the mesh
        "total_wall_s": round(run_wall, 1),
        "total_cpu_s": round(run_cpu - setup_cpu, 1),
        "sim_s_per_wall_s": results.simulated_s / results.wall_s,
        "sim_s_per_cpu_s": results.simulated_s / max(run_cpu - setup_cpu, 1e-9),
        "peak_rss_mb": round(peak_rss_mb()),
        "progress": progress,
    }
    (out / "scale.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(format_table(rows))
    print(json.dumps({k: v for k, v in figures.items() if k != "progress"}, indent=2))


if __name__ == "__main__":
    main()
