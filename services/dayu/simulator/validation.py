"""The simulator against the cluster of real nodes: the same mesh file, policies, bandwidth trace and
duration run by `dayu experiment --mode cluster` (dayu.experiment.run_experiment on dayu.cluster's
Cluster) and by `dayu simulate` (dayu.simulator.run.simulate on the mesh file's scenario as the cluster
runs it), and, per policy, how far apart they are: the share of tasks within budget (in points) and the
latency p50 and p95 (relative to the cluster's). hack/validate_simulator.py runs it on every shipped
trace; tests/cluster/test_simulator_validation.py on one, for a short while."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from dayu.simulator.compute import NodeThreads
from dayu.simulator.costs import Profile

POINTS = 10.0  # the largest difference in the share within budget, in percentage points
RELATIVE = 0.20  # the largest difference in latency p50 and p95, relative to the cluster's


def cluster_name() -> str:
    """A name of its own for each run's cluster (its namespaces, links and cgroups carry it)."""
    return f"v{uuid.uuid4().hex[:5]}"


PRIORITY_SHARES = 65536  # the cluster's cpu.shares: 64 times a nice-0 thread's weight (see run_cluster)


def _state(tid: str) -> str:
    try:
        stat = Path(f"/proc/{tid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2]


def _cpu_ns(tid: str) -> int | None:
    """The thread's time on a core so far (ns, /proc/TID/schedstat); None once it is gone."""
    try:
        return int(Path(f"/proc/{tid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


Threads = dict[str, dict[str, tuple[int, bool]]]  # node -> thread -> (ns on a core, of a processor's process)


def _runnable(directories: Mapping[str, Path], processors: list[int]) -> tuple[dict[str, int], dict[str, int], Threads]:
    """Runnable threads of these cgroups now (running, or waiting for a core), by node: of the
    processors' processes, and of the rest; and every thread's time on a core so far."""
    processing: set[str] = set()
    for pid in processors:
        try:
            processing.update(entry.name for entry in Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
    in_processors, rest, threads = {}, {}, {}
    for node, directory in directories.items():
        try:
            tids = (directory / "tasks").read_text().split()
        except OSError:
            tids = []
        runnable = {tid for tid in tids if _state(tid) == "R"}
        in_processors[node] = len(runnable & processing)
        rest[node] = len(runnable - processing)
        threads[node] = {tid: (ns, tid in processing) for tid in tids if (ns := _cpu_ns(tid)) is not None}
    return in_processors, rest, threads


# Seconds since start; by node, runnable threads of the processors' processes and of the rest, then the
# cores the processors' processes and the rest used since the sample before.
Sample = tuple[float, dict[str, int], dict[str, int], dict[str, float], dict[str, float]]


class LoadSampler:
    """Every `every_s`, in a thread, from start() to stop(): the runnable threads of the cluster's
    nodes (their cgroups' directories, by node) and the cores they used since the sample before (their
    time on a core), those of its processors' processes apart from the rest's (the components the
    simulator does not run: generators, controllers, the datasource, the scheduler, ...)."""

    def __init__(
        self, directories: Mapping[str, Path], processors: Callable[[], list[int]], every_s: float = 0.25
    ) -> None:
        self.directories, self.processors, self.every_s = directories, processors, every_s
        self.samples: list[Sample] = []
        self.started = self.stopped = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        found = _runnable(self.directories, self.processors())[2]
        before = {tid: ns for threads in found.values() for tid, (ns, _) in threads.items()}
        last = 0.0
        while not self._stop.wait(self.every_s):
            at = time.monotonic() - self.started
            in_processors, rest, threads = _runnable(self.directories, self.processors())
            used: tuple[dict[str, float], dict[str, float]] = ({}, {})  # the processors', the rest's
            for node, on_node in threads.items():
                spent = [0, 0]
                for tid, (ns, of_processor) in on_node.items():
                    spent[of_processor] += ns - before.get(tid, 0)  # a thread new since: all its time
                used[0][node], used[1][node] = (n / 1e9 / max(at - last, 1e-6) for n in (spent[1], spent[0]))
            before = {tid: ns for on_node in threads.values() for tid, (ns, _) in on_node.items()}
            last = at
            self.samples.append((round(at, 3), in_processors, rest, used[0], used[1]))

    def stop(self) -> None:
        if self._thread is not None and not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.stopped = time.monotonic()

    @property
    def seconds(self) -> float:
        return self.stopped - self.started

    def mean(self, column: int) -> dict[str, float]:
        """On average, by node: the processors' runnable threads (column 1) or the rest's (2), the cores
        the processors used (3) or the rest (4)."""
        if not self.samples:
            return {}
        return {node: statistics.fmean(sample[column][node] for sample in self.samples) for node in self.directories}

    def node_threads(self, extra: Mapping[str, float], column: int = 2) -> NodeThreads:
        """The rest's runnable threads (column 2) or the cores it used (4) over time by node, each node's
        `extra` added."""
        return tuple(
            (sample[0], tuple((node, n + extra.get(node, 0.0)) for node, n in sample[column].items()))
            for sample in self.samples
        )


def _machine_runnable() -> int:
    """Threads runnable on the whole machine now, from /proc/stat (the reader included)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("procs_running"):
            return int(line.split()[1])
    return 0


def processing_threads(records: Path, seconds: float) -> dict[str, float]:
    """Segments being processed on average over a run of `seconds`, by node: the stages' processing
    times of the run's tasks (each one runnable inference thread while it runs), over the run's length."""
    from dayu.distributor.store import RecordStore
    from dayu.v1 import distributor_pb2

    store = RecordStore(records)
    busy: dict[str, float] = {}
    try:
        for record in store.scan(distributor_pb2.RecordFilter()):
            for stage in record.task.dag.stages:
                busy[stage.executed_on] = busy.get(stage.executed_on, 0.0) + stage.timings.process_s
    finally:
        store.close()
    return {node: s / seconds for node, s in busy.items() if node} if seconds > 0 else {}


def run_cluster(
    config: Path,
    policies: list[str],
    trace: Path,
    duration_s: float,
    out: Path,
    name: str,
    progress: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, NodeThreads]]:
    """`dayu experiment --mode cluster` (its function), under the cluster name `name`; with each run's
    rows, per policy, how busy the machine was while the generators ran: the processors' processes'
    runnable threads and the cores they used on average (`processor_runnable`, `processor_cores`;
    `processing`: the segments processed, from the records), and the other components' (`background`,
    `background_cores`: the generators' encoding, the datasource, the controllers' and every other gRPC
    call, the scheduler), each also `by_node`; and, by node over time (every 0.25 s, also in
    run-POLICY/background.csv), the cores the other components used plus those the processors used
    besides their segments on average (past the segments processed), which the simulator replays node
    by node beside the segments it runs. Cores used, not runnable threads: a runnable thread may be
    waiting for a core, and on a busy machine the other components' runnable threads were about twice
    the cores they used, which the simulator's fair shares then counted as demand a second time
    (run-POLICY/background-runnable.csv keeps that measure).

    The cluster's cgroup gets PRIORITY_SHARES: on a machine shared with other work (CI, other jobs) the
    cluster's nodes get the cores they ask for first, as on machines of their own, which is what the
    simulator models (the nodes' own limits, `resources.cpus`, still hold); on an idle machine it
    changes nothing."""
    from dayu.cluster.cluster import Cluster
    from dayu.experiment import run_experiment

    loads: dict[str, dict[str, Any]] = {}
    traces: dict[str, NodeThreads] = {}
    runnable: dict[str, NodeThreads] = {}  # the same as runnable threads, for reference

    class Measured(Cluster):
        """The experiment's cluster, first in line for the machine's cores, its load sampled while its
        generators run."""

        sampler: LoadSampler

        async def start(self) -> None:
            await super().start()
            directories = {node: cgroup.directory("cpu") for node, cgroup in self.cgroups.items()}
            next(iter(directories.values())).parent.joinpath("cpu.shares").write_text(f"{PRIORITY_SHARES}\n")

            def processors() -> list[int]:
                return [
                    r.process.pid
                    for r in self.pods.values()
                    if r.pod.component == "processor" and r.process is not None
                ]

            self.sampler = LoadSampler(directories, processors)
            self.machine_before = _machine_runnable()
            self.sampler.start()

        async def stop_generators(self) -> None:
            self.sampler.stop()
            self.machine_after = _machine_runnable()
            await super().stop_generators()

        async def stop(self) -> None:
            await super().stop()
            policy = self.workdir.parent.name.removeprefix("run-")
            processing = processing_threads(self.records, self.sampler.seconds)
            in_processors, rest = self.sampler.mean(1), self.sampler.mean(2)
            processors_cpu, rest_cpu = self.sampler.mean(3), self.sampler.mean(4)

            # The processors' threads besides their segments' inference (decoding, their gRPC calls): what
            # they used past the segments processed (the simulator runs those itself), in cores, and in
            # runnable threads for the reference replay.
            def past_processing(of_processors: dict[str, float]) -> dict[str, float]:
                return {node: max(0.0, n - processing.get(node, 0.0)) for node, n in of_processors.items()}

            extra, extra_runnable = past_processing(processors_cpu), past_processing(in_processors)
            loads[policy] = {
                "processing": round(sum(processing.values()), 3),
                "processor_runnable": round(sum(in_processors.values()), 3),
                "background": round(sum(rest.values()), 3),
                "processor_cores": round(sum(processors_cpu.values()), 3),
                "background_cores": round(sum(rest_cpu.values()), 3),
                "by_node": {
                    node: {
                        "processing": round(processing.get(node, 0.0), 3),
                        "processor_runnable": round(in_processors[node], 3),
                        "background": round(rest[node], 3),
                        "processor_cores": round(processors_cpu[node], 3),
                        "background_cores": round(rest_cpu[node], 3),
                    }
                    for node in rest
                },
                "seconds": round(self.sampler.seconds, 1),
                "machine_runnable_at_start_and_end": [self.machine_before - 1, self.machine_after - 1],
            }
            traces[policy] = self.sampler.node_threads(extra, column=4)
            runnable[policy] = self.sampler.node_threads(extra_runnable, column=2)

    def make(mesh_config: Any, workdir: Path) -> Cluster:
        return Measured(mesh_config, workdir / "cluster", name=name, progress=lambda _line: None)

    rows = run_experiment(config, policies, [trace], duration_s, out, make, progress=progress)
    for policy, samples in traces.items():
        write_node_threads(out / f"run-{policy}" / BACKGROUND_CSV, samples)
        write_node_threads(out / f"run-{policy}" / BACKGROUND_RUNNABLE_CSV, runnable[policy])
    return rows, loads, traces


BACKGROUND_CSV = "background.csv"  # a cluster run's load as the simulator replays it (run_cluster)
# The same load as runnable threads (running, or waiting for a core), what was replayed until 2026-12-07:
# on a busy machine it counts the waiting too, about twice the cores those threads used.
BACKGROUND_RUNNABLE_CSV = "background-runnable.csv"


def write_node_threads(path: Path, samples: NodeThreads) -> None:
    """A load the simulator replays, by node over time (the cores the nodes' other threads used, or their
    runnable threads), as CSV: seconds, then a column per node."""
    nodes = [node for node, _ in samples[0][1]] if samples else []
    path.write_text(
        ",".join(["seconds", *nodes]) + "\n"
        + "".join(",".join([str(at), *(f"{n:g}" for _, n in sample)]) + "\n" for at, sample in samples)
    )  # fmt: skip


def read_node_threads(path: Path) -> NodeThreads:
    """What write_node_threads wrote."""
    header, *lines = path.read_text().splitlines()
    nodes = header.split(",")[1:]
    samples = []
    for line in lines:
        at, *threads = line.split(",")
        samples.append((float(at), tuple(zip(nodes, map(float, threads), strict=True))))
    return tuple(samples)


def stored_rows(out: Path) -> list[dict[str, Any]]:
    """The rows an earlier `validate` wrote to out/comparison.json."""
    path = out / "comparison.json"
    try:
        return json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path}: a comparison written by an earlier validation ({error})") from None


def stored_cluster(
    out: Path, stored: list[dict[str, Any]], policies: list[str]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, NodeThreads]]:
    """What an earlier `validate` found of the cluster in `out` (its `stored` rows and each policy's
    background.csv), as run_cluster returns it: to simulate those runs again without running them."""
    by_policy = {row["policy"]: row for row in stored}
    missing = [policy for policy in policies if policy not in by_policy]
    if missing:
        raise ValueError(f"{out / 'comparison.json'}: no cluster run of {', '.join(missing)}")
    rows = [_sides(by_policy[policy])[0] for policy in policies]
    loads = {policy: by_policy[policy].get("machine", {}) for policy in policies}
    try:
        threads = {p: read_node_threads(out / "cluster" / f"run-{p}" / BACKGROUND_CSV) for p in policies}
    except (OSError, ValueError) as error:
        raise ValueError(f"{out / 'cluster'}: the load of a cluster run ({error})") from None
    return rows, loads, threads


def retimed_profile(config: Path, base: Path, out: Path, repeats: int = 3) -> Path:
    """`base` with its processing timed again now, on this machine, written to out/profile.yaml: a
    machine lent by a cloud is not the same from day to day (the shipped profile's detector took 0.42 s
    for a 720p segment of 2 frames on an Intel Xeon on 2026-12-06; the same code took 0.58 to 0.70 s on
    the AMD EPYC behind the same 2-core machine on 2026-12-07), and the simulator has to model the
    machine the cluster runs on. Bytes and accuracy do not depend on the machine and are kept."""
    from dayu.simulator.profile import TIMED_FRAMES, measure, write

    command = f"validation: processing of {config.name} timed again, bytes and accuracy of {base.name}"
    kept = Profile.load(base).data
    path = out / "profile.yaml"
    write(asyncio.run(measure(config, max(TIMED_FRAMES), repeats, command, lambda _line: None, keep=kept)), path)
    return path


def run_simulator(
    config: Path,
    policies: list[str],
    trace: Path,
    duration_s: float,
    out: Path,
    seed: int,
    profile: Path,
    node_threads: dict[str, NodeThreads] | None = None,
) -> list[dict[str, Any]]:
    """`dayu simulate` (its function) on the mesh file's scenario as the cluster runs it, with each
    policy's nodes' other runnable threads over time replayed (none when not given)."""
    from dayu.simulator import scenario
    from dayu.simulator.run import simulate

    def make(policy: str) -> scenario.Scenario:
        load = (node_threads or {}).get(policy, ())
        return scenario.from_mesh(config, policy, trace=trace, target="cluster", node_threads=load)

    title = f"{config.name} as the cluster runs it, {trace.name}, {duration_s:g} simulated s"
    return simulate(make, policies, Profile.load(profile), duration_s, out, seed, title, progress=False)


def _of_made(r: dict[str, Any]) -> float | None:
    """The share of every task made delivered within budget (`dayu experiment` counts it of delivered)."""
    if "in_budget_of_made" in r:
        return r["in_budget_of_made"]
    delivered = r["generated"] - r["dropped"]
    if r["within_budget"] is None or not r["generated"]:
        return None
    return r["within_budget"] * delivered / r["generated"]


def _relative(sim: float | None, real: float | None) -> float | None:
    if sim is None or real is None or real <= 0:
        return None
    return (sim - real) / real


def compare(
    trace: str,
    cluster_rows: list[dict[str, Any]],
    sim_rows: list[dict[str, Any]],
    points: float = POINTS,
    relative: float = RELATIVE,
) -> list[dict[str, Any]]:
    """Per policy: the cluster's and the simulator's share within budget (of the tasks delivered, as both
    commands report it) and latency p50/p95, their differences, and whether they are within `points`
    and `relative`. A figure missing on either side (no task delivered) fails."""
    simulated = {r["policy"]: r for r in sim_rows}
    rows = []
    for real in cluster_rows:
        sim = simulated[real["policy"]]
        budget_real, budget_sim = real["within_budget"], sim["within_budget"]
        points_off = None if budget_real is None or budget_sim is None else 100 * (budget_sim - budget_real)
        p50_off = _relative(sim["latency_p50_s"], real["latency_p50_s"])
        p95_off = _relative(sim["latency_p95_s"], real["latency_p95_s"])
        checks = {
            "in_budget": points_off is not None and abs(points_off) <= points,
            "p50": p50_off is not None and abs(p50_off) <= relative,
            "p95": p95_off is not None and abs(p95_off) <= relative,
        }
        rows.append(
            {
                "trace": trace,
                "policy": real["policy"],
                "tasks_cluster": real["generated"],
                "tasks_sim": sim["generated"],
                "dropped_cluster": real["dropped"],
                "dropped_sim": sim["dropped"],
                "in_budget_cluster": budget_real,
                "in_budget_sim": budget_sim,
                "in_budget_points": points_off,
                "in_budget_of_made_cluster": _of_made(real),
                "in_budget_of_made_sim": _of_made(sim),
                "p50_cluster_s": real["latency_p50_s"],
                "p50_sim_s": sim["latency_p50_s"],
                "p50_relative": p50_off,
                "p95_cluster_s": real["latency_p95_s"],
                "p95_sim_s": sim["latency_p95_s"],
                "p95_relative": p95_off,
                "checks": checks,
                "passed": all(checks.values()),
            }
        )
    return rows


def _sides(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A compared row's cluster and simulator figures, as the commands' own rows name them."""
    return tuple(  # type: ignore[return-value]
        {
            "policy": row["policy"],
            "generated": row[f"tasks_{side}"],
            "dropped": row[f"dropped_{side}"],
            "within_budget": row[f"in_budget_{side}"],
            "in_budget_of_made": row[f"in_budget_of_made_{side}"],
            "latency_p50_s": row[f"p50_{side}_s"],
            "latency_p95_s": row[f"p95_{side}_s"],
        }
        for side in ("cluster", "sim")
    )


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _range(values: list[Any]) -> list[Any] | None:
    present = [v for v in values if v is not None]
    return [min(present), max(present)] if present else None


SPREAD = ("in_budget_cluster", "in_budget_sim", "p50_cluster_s", "p50_sim_s")  # combine's spread of the runs


def combine(
    runs: list[list[dict[str, Any]]], points: float = POINTS, relative: float = RELATIVE
) -> list[dict[str, Any]]:
    """Repeated runs of the same rows (each run's `compare` rows, one trace) as one row per policy: each
    side's figures the median of its runs (a figure missing in a run is left out of its median), compared
    again; with `runs` (how many), `passed_runs` (how many passed on their own) and `spread` (each side's
    lowest and highest share within budget and p50 over the runs). A single run at saturation moves by more
    than the bounds; the median of three does much less."""
    by_policy: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for row in run:
            by_policy.setdefault(row["policy"], []).append(row)
    combined = []
    for policy, rows in by_policy.items():
        sides = [_sides(row) for row in rows]
        medians = [
            {"policy": policy, **{key: _median([s[i][key] for s in sides]) for key in sides[0][i] if key != "policy"}}
            for i in (0, 1)
        ]
        (row,) = compare(rows[0]["trace"], [medians[0]], [medians[1]], points, relative)
        row["runs"] = len(rows)
        row["passed_runs"] = sum(r["passed"] for r in rows)
        row["spread"] = {key: _range([r[key] for r in rows]) for key in SPREAD}
        combined.append(row)
    return combined


def lighter(config: Path, streams: int, out: Path) -> Path:
    """The mesh file with only its first `streams` streams (a workload the machine carries, where the
    whole one saturates it), written to out/ as NAME-Nstreams.yaml: the mesh as the loader reads it (its
    paths made absolute, a processors_file's processors written in), less the other streams and the
    sources only they read."""
    from dayu.mesh.model import load_mesh_config

    mesh = load_mesh_config(config)
    if not 1 <= streams <= len(mesh.streams):
        raise ValueError(f"streams: {config.name} has {len(mesh.streams)} streams, not {streams}")
    data = mesh.model_dump(mode="json", exclude_unset=True)
    data["streams"] = data["streams"][:streams]
    used = {stream["source_id"] for stream in data["streams"]}
    data["sources"] = [source for source in data.get("sources", []) if source.get("source_id") in used]
    data.pop("processors_file", None)  # its processors are in `processors` now
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{config.stem}-{streams}streams.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cell(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def markdown(rows: list[dict[str, Any]], points: float = POINTS, relative: float = RELATIVE) -> str:
    """The comparison as a markdown table: cluster / simulator, the difference, PASS or FAIL (and, for
    combined rows, how many of their runs passed on their own)."""
    repeated = any("runs" in r for r in rows)
    lines = [
        f"| trace | policy | tasks | dropped | in budget | diff (≤ {points:g} pts) | p50 s | diff (≤ {relative:.0%}) "
        f"| p95 s | diff (≤ {relative:.0%}) | result |" + (" runs passing |" if repeated else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if repeated else ""),
    ]
    for r in rows:
        failed = [k for k, ok in r["checks"].items() if not ok]
        lines.append(
            " | ".join(
                [
                    f"| {r['trace']}",
                    r["policy"],
                    f"{r['tasks_cluster']:g} / {r['tasks_sim']:g}",  # medians of an even count: halves
                    f"{r['dropped_cluster']:g} / {r['dropped_sim']:g}",
                    f"{_cell(r['in_budget_cluster'], '{:.0%}')} / {_cell(r['in_budget_sim'], '{:.0%}')}",
                    _cell(r["in_budget_points"], "{:+.1f}"),
                    f"{_cell(r['p50_cluster_s'], '{:.2f}')} / {_cell(r['p50_sim_s'], '{:.2f}')}",
                    _cell(r["p50_relative"], "{:+.0%}"),
                    f"{_cell(r['p95_cluster_s'], '{:.2f}')} / {_cell(r['p95_sim_s'], '{:.2f}')}",
                    _cell(r["p95_relative"], "{:+.0%}"),
                    "PASS" if r["passed"] else f"FAIL ({', '.join(failed)})",
                    *([f"{r.get('passed_runs', int(r['passed']))} of {r.get('runs', 1)}"] if repeated else []),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def validate(
    config: Path,
    trace: Path,
    policies: list[str],
    duration_s: float,
    out: Path,
    seed: int,
    profile: Path,
    name: str | None = None,
    points: float = POINTS,
    relative: float = RELATIVE,
    progress: Callable[[str], None] = print,
    resimulate: bool = False,
) -> list[dict[str, Any]]:
    """One trace: the cluster, then the simulator, then the comparison (also in out/comparison.json).
    With `resimulate`, the cluster's runs are those an earlier validation left in `out` (stored_cluster):
    the simulator alone runs again, replaying their load."""
    from dayu.cluster.cluster import cleanup

    previous: list[dict[str, Any]] = []
    if resimulate:
        previous = stored_rows(out)
        cluster_rows, loads, node_threads = stored_cluster(out, previous, policies)
    else:
        name = name or cluster_name()
        try:
            cluster_rows, loads, node_threads = run_cluster(
                config, policies, trace, duration_s, out / "cluster", name, progress
            )
        finally:  # interrupted, or failed: nothing of the cluster is left behind (by its name only)
            cleanup(name)
    sim_rows = run_simulator(config, policies, trace, duration_s, out / "sim", seed, profile, node_threads)
    rows = compare(trace.name, cluster_rows, sim_rows, points, relative)
    for row in rows:
        row["machine"] = loads.get(row["policy"], {})
    kept = rows
    if resimulate:  # the stored rows of the policies not simulated again stay, in their order
        fresh = {row["policy"]: row for row in rows}
        kept = [fresh.pop(row["policy"], row) for row in previous] + list(fresh.values())
    document = {"config": str(config), "trace": str(trace), "duration_s": duration_s, "seed": seed, "rows": kept}
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(document, indent=2) + "\n")
    return rows
