"""Validates `dayu simulate` against `dayu experiment --mode cluster` (the cluster of real nodes: network
namespaces, kernel links shaped with tc, per-node cgroups): for each shipped bandwidth trace and each
policy, the same mesh file, trace, duration and seed in both, then a table per trace x policy of the
share of tasks within budget (cluster / simulator, difference in points) and latency p50 and p95
(cluster / simulator, difference relative to the cluster's), PASS or FAIL against 10 points and 20%.

Needs root (the cluster makes namespaces, links and cgroups). About 2 minutes per policy and trace on
the cluster (a minute of run, the start and the drain), seconds in the simulator.

    .venv/bin/python hack/validate_simulator.py --out out/validate-simulator \
        [--config configs/experiment.yaml] [--traces steady,drop,fluctuating] \
        [--policies fixed,latency_budget,feedback_control,bandwidth_profile,periodic_profiling] \
        [--duration 60] [--seed 0] [--profile configs/profile.yaml] [--as-profiled]

The profile's processing is timed again first (about 30 s; OUT/profile.yaml), since the speed of a
shared machine's cores moves from day to day; --as-profiled uses the profile's timings as they are.

Writes OUT/TRACE/{cluster,sim}/ (each command's own results), OUT/TRACE/comparison.json, and
OUT/validation.md and OUT/validation.json (every trace's rows); prints the table. Exits 1 when a row fails."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dayu.mesh.model import CONFIGS
from dayu.runtime.config import LogSettings
from dayu.runtime.logs import configure_logging
from dayu.simulator import validation

TRACES = ("steady", "drop", "fluctuating")  # the shipped bandwidth traces (cpu-drop.txt is a CPU trace)
POLICIES = "fixed,latency_budget,feedback_control,bandwidth_profile,periodic_profiling"


def _load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIGS / "experiment.yaml")
    parser.add_argument("--traces", default=",".join(TRACES), help="names in configs/traces, or paths")
    parser.add_argument("--policies", default=POLICIES)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per policy (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=Path, default=CONFIGS / "profile.yaml")
    parser.add_argument(
        "--as-profiled", action="store_true", help="use the profile's processing times, without timing them again"
    )
    parser.add_argument("--points", type=float, default=validation.POINTS)
    parser.add_argument("--relative", type=float, default=validation.RELATIVE)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("the cluster makes namespaces, links and cgroups: run as root")
    configure_logging(LogSettings(level="error", format="console"), component="validate")
    # Stopped with SIGTERM: unwind, so that the cluster under way is removed (validation.validate).
    signal.signal(signal.SIGTERM, lambda _signal, _frame: sys.exit(143))
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    profile = args.profile
    if not args.as_profiled:
        profile = validation.retimed_profile(args.config, args.profile, args.out)
        print(f"validate: processing timed again on this machine: {profile}", flush=True)
    rows, runs = [], []
    for name in (t.strip() for t in args.traces.split(",") if t.strip()):
        trace = Path(name) if name.endswith(".txt") else CONFIGS / "traces" / f"{name}.txt"
        started, load = time.monotonic(), _load()
        print(f"validate: {trace.name}: {', '.join(policies)} for {args.duration:g} s ({load})", flush=True)
        found = validation.validate(
            args.config,
            trace,
            policies,
            args.duration,
            args.out / trace.stem,
            args.seed,
            profile,
            points=args.points,
            relative=args.relative,
        )
        rows += found
        runs.append(
            {
                "trace": trace.name,
                "wall_s": round(time.monotonic() - started, 1),
                "load_before": load,
                "load_after": _load(),
            }
        )
        print(validation.markdown(found, args.points, args.relative), flush=True)
    table = validation.markdown(rows, args.points, args.relative)
    command = " ".join(["python", *sys.argv])
    header = (
        f"`{command}`: {args.config.name}, {args.duration:g} s per policy, seed {args.seed}; each cell is "
        "cluster / simulator; the share within budget is of the tasks delivered (as both commands report it), "
        "the differences are the simulator's minus the cluster's.\n\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "validation.md").write_text(header + table + "\n")
    document = {
        "command": command,
        "config": str(args.config),
        "duration_s": args.duration,
        "seed": args.seed,
        "profile": str(profile),
        "points": args.points,
        "relative": args.relative,
        "runs": runs,
        "rows": rows,
    }
    (args.out / "validation.json").write_text(json.dumps(document, indent=2) + "\n")
    print(table)
    failed = [f"{r['trace']} {r['policy']}" for r in rows if not r["passed"]]
    print(
        f"validate: {len(rows) - len(failed)} of {len(rows)} rows pass"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
