#!/usr/bin/env python3
"""The long fuzz campaign (docs/testing.md, "Fuzzing"): every RPC of every service, on one fuzz mesh,
round after round with fresh random seeds until the time budget is spent; then the mesh's checks
(health, every read-only RPC, known answers, its log, its files). Prints, per RPC, the calls made,
the statuses they got and the findings, then each finding with its smallest input.

    .venv/bin/python hack/fuzz.py                            # 100 examples per RPC a round, 10 minutes
    .venv/bin/python hack/fuzz.py --examples 300 --budget 1800 --max-bytes 65536
    .venv/bin/python hack/fuzz.py --rpcs Distributor,SetPolicy --seed 7 --budget 120

Exits 1 when there are findings. The default suite (tests/integration/test_fuzz.py) runs the same
fuzz, bounded and deterministic.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

from dayu.testing import fuzz


class OutOfTime(Exception):
    """The budget is spent: ends the RPC being fuzzed."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100, help="examples per RPC in each round (default 100)")
    parser.add_argument("--budget", type=float, default=600, help="seconds of fuzzing, in rounds (default 600)")
    parser.add_argument("--seed", type=int, default=None, help="first round's seed (default: random)")
    parser.add_argument("--rpcs", default="", help="comma-separated words; RPCs whose name contains one (default all)")
    parser.add_argument("--max-bytes", type=int, default=16384, help="longest generated string or bytes field")
    parser.add_argument("--max-depth", type=int, default=5, help="deepest nesting of generated messages")
    parser.add_argument("--max-items", type=int, default=4, help="most items of a generated repeated field or map")
    parser.add_argument("--workdir", type=Path, default=None, help="the mesh's files and log (default: temporary)")
    args = parser.parse_args()

    words = [w.strip() for w in args.rpcs.split(",") if w.strip()]
    rpcs = fuzz.rpcs()
    chosen = [rpc for rpc in rpcs if not words or any(w in rpc.name for w in words)]
    strategies = fuzz.Strategies(fuzz.Limits(args.max_depth, args.max_items, args.max_bytes))
    first_seed = args.seed if args.seed is not None else random.randrange(2**32)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dayu-fuzz-"))
    mesh = fuzz.FuzzMesh(workdir)
    mesh.start()
    print(f"fuzz mesh up in {workdir} ({len(mesh.addresses)} servers); {len(chosen)} RPCs, seed {first_seed}")
    tally = fuzz.Tally()
    started = time.monotonic()
    deadline = started + args.budget
    rounds = 0
    try:
        missing = fuzz.unserved(mesh, rpcs)
        if missing:
            tally.findings[("mesh", "unserved")] = fuzz.Finding("mesh", f"services not fuzzed or not served: {missing}")
        while time.monotonic() < deadline and mesh.alive():
            for index, rpc in enumerate(chosen):
                if time.monotonic() >= deadline or not mesh.alive():
                    break
                fuzz_one(mesh, rpc, strategies, tally, args.examples, first_seed + rounds * 1000 + index, deadline)
            rounds += 1
            print(f"round {rounds}: {sum(tally.calls.values())} calls, {len(tally.findings)} findings, "
                  f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
        for finding in fuzz.check_mesh(mesh, rpcs):
            tally.findings[(finding.rpc, finding.what[:60])] = finding
    finally:
        code = mesh.stop()
    if code not in (0, None):
        tally.findings[("mesh", "exit")] = fuzz.Finding("mesh", f"the mesh exited with {code}")
    print()
    print(f"{rounds} rounds, {time.monotonic() - started:.0f} s, first seed {first_seed}; log: {mesh.log}")
    print(tally.table())
    if tally.findings:
        print(f"\n{len(tally.findings)} findings (each with the smallest input that showed it):")
        for finding in tally.findings.values():
            print(f"- {finding}")
    return 1 if tally.findings else 0


def fuzz_one(
    mesh: fuzz.FuzzMesh,
    rpc: fuzz.Rpc,
    strategies: fuzz.Strategies,
    tally: fuzz.Tally,
    examples: int,
    round_seed: int,
    deadline: float,
) -> None:
    """Fuzzes one RPC for `examples` calls (fewer if the budget ends), recording every outcome."""

    @seed(round_seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],  # findings are recorded, not shrunk: the table keeps the smallest input
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzz.requests(rpc, strategies))
    def call(request: fuzz.Request) -> None:
        if time.monotonic() >= deadline:
            raise OutOfTime
        outcome = mesh.call(rpc, request)
        tally.add(outcome, fuzz.judge(outcome))
        if not outcome.mesh_alive:
            raise OutOfTime

    try:
        call()
    except OutOfTime:
        pass


if __name__ == "__main__":
    sys.exit(main())
