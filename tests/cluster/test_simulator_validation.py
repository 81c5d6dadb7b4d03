"""The simulator against the cluster of real nodes, short form (docs/simulator.md, Validation): the
same mesh file (configs/experiment.yaml), bandwidth trace (configs/traces/drop.txt), duration and
policies run by `dayu experiment --mode cluster` and by `dayu simulate` (as the cluster runs it: the
nodes sharing this machine's cores with the load measured during the run, kernel links without delay);
per policy, the share of tasks within budget agrees within 10 points and latency p50 and p95 within
20% of the cluster's. About 3 minutes on 2 cores. Needs root. The full form, every shipped trace and
policy for 60 s each: hack/validate_simulator.py.

Not in the default suite (DAYU_VALIDATE=1 runs it): the agreement is near its bounds on this 2-core
machine, where the cluster's own p50 moves by about 15% between identical runs; of its four runs on
2026-12-06, the two on a busy machine failed, each on one row, and the two on a quieter one passed
(the README has every table)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dayu.mesh.model import CONFIGS
from dayu.simulator import validation

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("DAYU_VALIDATE") != "1", reason="opt-in (DAYU_VALIDATE=1): near its bounds on 2 cores"
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="a cluster makes namespaces, links and cgroups: needs root"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux (unshare, nsenter)"),
    pytest.mark.timeout(480),
]
TRACE = CONFIGS / "traces" / "drop.txt"  # 20 Mbit/s, then 2 Mbit/s from 30 s
POLICIES = ["fixed", "latency_budget"]
# One period of the trace: 30 s at 20 Mbit/s, 30 s at 2 Mbit/s. Cut shorter, the tasks made during
# the drop (which fixed delivers around its 6 s lateness limit, or drops) and the end of the run (the
# cluster settles what is left within 25 s, the simulator drains) are most of what is compared: at
# 40 s, fixed's share within budget of the tasks delivered was 85% on the cluster against 74%.
DURATION_S = 60


def test_simulator_agrees_with_the_cluster_on_the_drop_trace(tmp_path: Path) -> None:
    name = validation.cluster_name()
    rows = validation.validate(
        CONFIGS / "experiment.yaml",
        TRACE,
        POLICIES,
        DURATION_S,
        tmp_path,
        seed=0,
        profile=validation.retimed_profile(CONFIGS / "experiment.yaml", CONFIGS / "profile.yaml", tmp_path),
        name=name,
        progress=lambda _line: None,
    )
    table = validation.markdown(rows)
    print(f"\n{table}")  # shown with -s, and in the failure's report
    assert [r["policy"] for r in rows] == POLICIES
    for r in rows:
        assert r["tasks_cluster"] > 0 and r["tasks_sim"] > 0, r
        assert r["tasks_cluster"] - r["dropped_cluster"] > 0, r  # some delivered, so there are figures to compare
    failed = [r for r in rows if not r["passed"]]
    assert not failed, f"the simulator disagrees with the cluster:\n{table}"
    # Nothing of the cluster is left.
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [entry for entry in listed.split() if entry.startswith(f"{name}-")]
