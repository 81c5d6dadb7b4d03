"""`dayu simulate` end to end: the experiment's mesh file with a shipped bandwidth trace and the shipped
profile, two policies, the table, the CSV, the JSON, the plots and each run's tasks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def simulate(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "dayu.cli", "simulate", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_simulate_compares_policies_on_the_drop_trace(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = simulate(
        "--config", "configs/experiment.yaml", "--trace", "configs/traces/drop.txt",
        "--policies", "fixed,latency_budget", "--duration", "60", "--out", str(out), "--seed", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sim s" in done.stderr  # the progress bar
    header = done.stdout.splitlines()[-3]
    for title in ("tasks", "dropped", "in budget", "p95 s", "accuracy", "uplink MB", "decide ms", "sim speed"):
        assert title in header

    with (out / "results.csv").open() as file:
        rows = {r["policy"]: r for r in csv.DictReader(file)}
    assert list(rows) == ["fixed", "latency_budget"]
    fixed, adaptive = rows["fixed"], rows["latency_budget"]
    for r in rows.values():
        assert int(r["generated"]) >= 100  # two streams, a segment a second each, for 60 s
        assert int(r["generated"]) == int(r["delivered"]) + int(r["dropped"])
        assert 0 < float(r["latency_p50_s"]) <= float(r["latency_p95_s"])
        assert 0.5 < float(r["accuracy_f1"]) <= 1
        assert float(r["uplink_mb_total"]) > 0 and float(r["speed"]) > 1
        assert int(r["unfinished"]) == 0
    # As on the real mesh (docs/experiments.md): after the drop to 2 Mbit/s, `fixed` builds a backlog on
    # the uplink and gives up late tasks; latency_budget adapts and keeps more of its tasks within budget.
    assert int(fixed["dropped"]) > 0
    assert float(adaptive["in_budget_of_made"]) > float(fixed["in_budget_of_made"])
    assert float(adaptive["within_budget"]) >= float(fixed["within_budget"])
    assert float(adaptive["uplink_mb_total"]) < float(fixed["uplink_mb_total"])

    document = json.loads((out / "results.json").read_text())
    assert document["runs"]["fixed"]["drop_reasons"]
    # Given up late at the controller's limit, or called off on the link once late with the stream's
    # next tasks waiting behind (fixed never replaces its decision, so nothing is superseded).
    reasons = document["runs"]["fixed"]["drop_reasons"]
    assert all(reason.startswith(("late: ", "overtaken: ")) for reason in reasons), reasons
    for picture in ("results.png", "latency_cdf.png", "within_budget.png", "timeline.png"):
        assert (out / picture).read_bytes()[:8] == PNG
    with (out / "run-latency_budget" / "tasks.csv").open() as file:
        tasks = list(csv.DictReader(file))
    assert {t["stream_id"] for t in tasks} == {"cam-1", "cam-2"}
    assert all(t["outcome"] == "delivered" or t["drop_reason"] for t in tasks)


def test_simulate_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    unknown = simulate("--policies", "fixed,telepathy", "--duration", "1", "--out", out)
    assert unknown.returncode == 2 and "--policies" in unknown.stderr and "telepathy" in unknown.stderr
    missing = simulate("--policies", "fixed", "--profile", str(tmp_path / "none.yaml"), "--out", out)
    assert missing.returncode == 2 and "--profile" in missing.stderr
    generated = simulate("--policies", "fixed", "--generate", "edges=2,uplinks=5", "--out", out)
    assert generated.returncode == 2 and "--generate uplinks" in generated.stderr
