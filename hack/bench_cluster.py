#!/usr/bin/env python3
"""How long a cluster of real nodes takes to start and to tear down, over several rounds.

Each round builds the cluster of a mesh file (manifests rendered, namespaces, links, cgroups, every
pod listening), runs it idle for a few seconds, and tears it down; prints each phase's median, min
and max. Needs root.

    .venv/bin/python hack/bench_cluster.py [--config configs/cluster.yaml] [--rounds 3] [--idle 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from dayu.cluster.cluster import Cluster
from dayu.mesh.model import CONFIGS, load_mesh_config


async def one_round(config_path: Path, idle_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dayu-bench-cluster-") as workdir:
        cluster = Cluster(load_mesh_config(config_path), Path(workdir), name="dbench", progress=lambda _line: None)
        try:
            await cluster.start()
            await asyncio.sleep(idle_s)
        finally:
            await cluster.abort()
        return {**cluster.timings, "pods": float(len(cluster.pods))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIGS / "cluster.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds each cluster runs before teardown")
    args = parser.parse_args()
    rounds = [asyncio.run(one_round(args.config, args.idle)) for _ in range(args.rounds)]
    print(f"{args.config.name}: {rounds[0]['pods']:.0f} pods, {args.rounds} rounds")
    for phase, label in (
        ("network_s", "manifests, namespaces, links, cgroups"),
        ("start_s", "up (every pod listening)"),
        ("teardown_s", "teardown"),
    ):
        values = [r[phase] for r in rounds]
        median, low, high = statistics.median(values), min(values), max(values)
        print(f"  {label:40s} median {median:6.2f} s  min {low:6.2f}  max {high:6.2f}")


if __name__ == "__main__":
    main()
