#!/usr/bin/env python3
"""The long form of the fault-injection suite (docs/faults.md): several rounds, every fault at its
full length, each round on a fresh cluster of real nodes; prints the table per fault (tasks
generated, delivered, dropped by reason, unaccounted, duplicated; the time to recover), what each
fault hit and what the scheduler decided meanwhile, and whether issue 14's promise held.

Each round runs the fault mesh (dayu.cluster.faults.mesh_data: configs/cluster.yaml, steady links)
with every selected fault but Triton's, then, when a Triton fault is selected, the Triton mesh (the
processors on the cloud's tritonserver) with it. Needs root.

    .venv/bin/python hack/faults.py                        # 3 rounds, every fault
    .venv/bin/python hack/faults.py --rounds 1 --faults kill,partition
    .venv/bin/python hack/faults.py --faults 'kill triton' --json runs/faults.json

Exits 1 when a fault broke the promise (a task unaccounted or stored twice, a kill's streams not
delivering within 5 s of the restart, a link or CPU fault without a scheduler decision).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from dayu.cluster import faults as suite


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each on a fresh cluster (default 3)")
    parser.add_argument(
        "--faults",
        default="all",
        help="comma-separated words; faults whose name contains one run (kill, partition, bandwidth, cpu, "
        "'kill generator', triton, ...; default all)",
    )
    parser.add_argument("--short", action="store_true", help="the default suite's lengths (bandwidth, CPU: 10 s)")
    parser.add_argument(
        "--gap-timeout", type=float, default=None, help="the distributor's gap timeout, where the mesh file has it"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        help="after the generators stop, wait at most this long for every task to settle "
        "(default: join timeout + gap timeout + 10 s)",
    )
    parser.add_argument("--recovery-timeout", type=float, default=20.0, help="wait this long for a recovery")
    parser.add_argument("--no-triton", action="store_true", help="skip the Triton mesh (and its fault)")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and volumes (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="write every round's results here")
    args = parser.parse_args()

    timing = suite.Timing(recovery_timeout_s=args.recovery_timeout)
    main_config = suite.load_mesh(suite.mesh_data(gap_timeout_s=args.gap_timeout))
    triton_config = suite.load_mesh(suite.mesh_data(triton=True, gap_timeout_s=args.gap_timeout))
    chosen = suite.select(suite.faults(main_config, short=args.short), args.faults)
    on_main = [fault for fault in chosen if fault.component != "triton"]
    on_triton = [] if args.no_triton else suite.select(suite.faults(triton_config, short=args.short), args.faults)
    on_triton = [fault for fault in on_triton if fault.component == "triton"]
    if not on_main and not on_triton:
        parser.error(f"no fault matches {args.faults!r}: {[f.name for f in suite.faults(main_config)]}")

    rounds: list[suite.Round] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dayu-faults-") as scratch:
        workdir = args.workdir or Path(scratch)
        for number in range(1, args.rounds + 1):
            for name, config, selected in (("dfault", main_config, on_main), ("dftriton", triton_config, on_triton)):
                if not selected:
                    continue
                print(f"round {number}: {name}: {', '.join(fault.name for fault in selected)}", flush=True)
                round_ = asyncio.run(
                    suite.run_round(
                        config,
                        workdir / f"{name}-{number}",
                        selected,
                        name=name,
                        timing=timing,
                        settle_s=args.settle,
                        progress=lambda line: print(line, flush=True),
                    )
                )
                round_.name = f"{name} #{number}"
                rounds.append(round_)
    print()
    print(suite.table(rounds, timing))
    print()
    print(suite.details(rounds))
    broken = [(r.name, run.fault.name, p) for r in rounds for run in r.runs for p in suite.problems(run)]
    print()
    print(f"{len(rounds)} cluster rounds in {time.monotonic() - started:.0f} s")
    for round_name, fault_name, problem in broken:
        print(f"BROKEN {round_name} {fault_name}: {problem}")
    print("issue 14 holds" if not broken else f"issue 14 does not hold: {len(broken)} problems")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.as_dict() for r in rounds], indent=2))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
