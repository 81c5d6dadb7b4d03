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
        [--duration 60] [--seed 0] [--profile configs/profile.yaml] [--as-profiled] \
        [--repeats 1] [--streams N] [--resimulate]

--repeats 3 runs every row three times (the cluster and the simulator, each run replaying its own
cluster run's load) and compares the medians of each side: at saturation one run of the cluster moves
by more than the bounds. --streams 1 validates the mesh file's first stream alone (a load the machine
carries; the whole of configs/experiment.yaml saturates 2 cores). --resimulate runs the simulator again
on the cluster runs an earlier validation left in --out (give it the same --traces, --policies,
--repeats and --streams; it uses the profiles timed for those runs and rewrites the simulator's side
and the tables there; no root needed): the cluster runs are the slow part, and a change to the
simulator can be checked against them in seconds. --resume keeps the runs an earlier validation
finished in --out and runs only the rest.

The profile's processing is timed again before each run of a trace (about 30 s; OUT/TRACE/profile.yaml,
or OUT/TRACE/run-K/profile.yaml), since the speed of a shared machine's cores moves from hour to hour;
--as-profiled uses the profile's timings as they are.

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
from typing import Any

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
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each row; the medians of each side are compared (default 1)"
    )
    parser.add_argument(
        "--streams", type=int, default=0, help="only the mesh file's first N streams (a lighter load; default all)"
    )
    parser.add_argument(
        "--resimulate",
        action="store_true",
        help="simulate again the cluster runs an earlier validation left in --out (same options), without running them",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs an earlier validation finished in --out (same options) and run only the rest",
    )
    parser.add_argument("--points", type=float, default=validation.POINTS)
    parser.add_argument("--relative", type=float, default=validation.RELATIVE)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if os.geteuid() != 0 and not args.resimulate:
        parser.error("the cluster makes namespaces, links and cgroups: run as root")
    configure_logging(LogSettings(level="error", format="console"), component="validate")
    # Stopped with SIGTERM: unwind, so that the cluster under way is removed (validation.validate).
    signal.signal(signal.SIGTERM, lambda _signal, _frame: sys.exit(143))
    if args.repeats < 1:
        parser.error("--repeats: at least 1")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    config = args.config
    if args.streams:
        try:
            config = validation.lighter(args.config, args.streams, args.out)
        except ValueError as error:
            parser.error(str(error))

    def profile_for(out: Path) -> Path:
        """The profile a run's simulator uses: its processing timed again just before the run's cluster
        (the speed of a shared machine's cores moves from hour to hour), or, resimulating, the one timed
        for it then (OUT/profile.yaml where an earlier validation timed one for all its runs)."""
        if args.as_profiled:
            return args.profile
        if args.resimulate:
            timed = [path for path in (out / "profile.yaml", args.out / "profile.yaml") if path.exists()]
            return timed[0] if timed else args.profile
        profile = validation.retimed_profile(config, args.profile, out)
        print(f"validate: processing timed again on this machine: {profile}", flush=True)
        return profile

    traces = [
        Path(name) if name.endswith(".txt") else CONFIGS / "traces" / f"{name}.txt"
        for name in (t.strip() for t in args.traces.split(",") if t.strip())
    ]
    command = " ".join(["python", *sys.argv])
    repeats = f"; each side the median of {args.repeats} runs" if args.repeats > 1 else ""
    header = (
        f"`{command}`: {config.name}, {args.duration:g} s per policy, seed {args.seed}{repeats}; each cell is "
        "cluster / simulator; the share within budget is of the tasks delivered (as both commands report it), "
        "the differences are the simulator's minus the cluster's.\n\n"
    )
    document: dict[str, Any] = {
        "command": command,
        "config": str(config),
        "duration_s": args.duration,
        "repeats": args.repeats,
        "resimulated": args.resimulate,
        "seed": args.seed,
        "points": args.points,
        "relative": args.relative,
        "runs": [],
        "rows": [],
    }
    by_trace: dict[str, list[list[dict[str, Any]]]] = {trace.name: [] for trace in traces}
    # Every trace once, then again: each trace's runs spread over the whole validation, not back to back.
    for repeat in range(1, args.repeats + 1):
        for trace in traces:
            started, load = time.monotonic(), _load()
            out = args.out / trace.stem / (f"run-{repeat}" if args.repeats > 1 else "")
            run: dict[str, Any] = {"trace": trace.name, "repeat": repeat}
            if args.resume and (out / "comparison.json").exists():  # finished before: its rows as they were
                print(f"validate: {trace.name} ({repeat} of {args.repeats}): done before, in {out}", flush=True)
                found = validation.stored_rows(out)
                run["resumed"] = True
            else:
                print(
                    f"validate: {trace.name} ({repeat} of {args.repeats}): {', '.join(policies)} "
                    f"for {args.duration:g} s ({load})",
                    flush=True,
                )
                profile = profile_for(out)
                try:
                    found = validation.validate(
                        config, trace, policies, args.duration, out, args.seed, profile, points=args.points,
                        relative=args.relative, resimulate=args.resimulate,
                    )  # fmt: skip
                except ValueError as error:
                    if not args.resimulate:
                        raise
                    parser.error(str(error))  # no cluster run of these there
                print(validation.markdown(found, args.points, args.relative), flush=True)
                run.update(profile=str(profile), wall_s=round(time.monotonic() - started, 1))
                run.update(load_before=load, load_after=_load())
            by_trace[trace.name].append(found)
            document["runs"].append({**run, "rows": found})
            # What is done so far, written after every run (a full validation takes an hour or more).
            document["rows"] = [
                row
                for runs in by_trace.values()
                if runs
                for row in (validation.combine(runs, args.points, args.relative) if len(runs) > 1 else runs[0])
            ]
            table = validation.markdown(document["rows"], args.points, args.relative)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "validation.md").write_text(header + table + "\n")
            (args.out / "validation.json").write_text(json.dumps(document, indent=2) + "\n")
    rows = document["rows"]
    print(table)
    failed = [f"{r['trace']} {r['policy']}" for r in rows if not r["passed"]]
    print(
        f"validate: {len(rows) - len(failed)} of {len(rows)} rows pass"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
