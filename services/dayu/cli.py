"""The `dayu` command."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dayu.components import COMPONENTS
from dayu.mesh.model import CLUSTER_CONFIG, CONFIGS, DEFAULT_CONFIG, EXPERIMENT_CONFIG, MeshConfig, load_mesh_config
from dayu.runtime.config import LogSettings, load_settings
from dayu.runtime.errors import DayuError, InvalidArgument
from dayu.runtime.logs import configure_logging
from dayu.runtime.memory import keep_malloc_from_hoarding
from dayu.runtime.metrics import DEFAULT_PORT as DEFAULT_METRICS_PORT

if TYPE_CHECKING:
    from dayu.compute_changes import ComputeChange
    from dayu.mesh.run import RunningMesh

PROFILE = CONFIGS / "profile.yaml"  # what `dayu profile` writes and `dayu simulate` reads by default

# Each command imports what it runs when it runs: `dayu serve scheduler` loads no model or codec.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dayu",
        description=(
            "Dayu: automated scheduling of stream data processing (video analytics) across cloud and edge nodes."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run one component as a gRPC server (what a container runs)",
        description=(
            "Run one component as a gRPC server with health checking and reflection, until SIGTERM or "
            "Ctrl-C, then drain in-flight calls and exit. Settings come from --config, overridden by "
            "DAYU_* environment variables (nested keys joined by '__', e.g. DAYU_SERVER__SHUTDOWN_GRACE_S), "
            "overridden by flags."
        ),
    )
    serve.add_argument(
        "component", choices=COMPONENTS.names(), metavar="COMPONENT", help=f"one of {', '.join(COMPONENTS.names())}"
    )
    serve.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (port 0 picks a free one)")
    serve.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file")
    serve.add_argument("--node", help="logical node the component runs on")
    serve.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics over HTTP at http://HOST:PORT/metrics (setting metrics.listen; default: none)",
    )

    up = commands.add_parser(
        "up",
        help="run the whole mesh on this machine (embedded mode)",
        description=(
            "Start every component of a cloud node and edge nodes on loopback (the default config: a cloud "
            "node, two edge nodes, two streams), print progress while it runs, stop cleanly on Ctrl-C or "
            "after --duration, then print a summary: tasks generated, delivered and dropped (with reasons), "
            "end-to-end and per-stage latency, bytes per link, accuracy against ground truth."
        ),
    )
    up.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE", help="mesh YAML file")
    up.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long (default: Ctrl-C)")
    up.add_argument("--summary-json", type=Path, metavar="PATH", help="also write the summary as JSON here")
    up.add_argument("--workdir", type=Path, default=Path(".dayu"), metavar="DIR", help="where the records go")
    up.add_argument(
        "--console-port",
        type=int,
        default=8080,
        metavar="PORT",
        help="the console's port on 127.0.0.1 (0: a free one); its URL, with an admin token, is printed",
    )
    up.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        metavar="PORT",
        help=f"where every component's Prometheus metrics are served on 127.0.0.1, at /metrics (default "
        f"{DEFAULT_METRICS_PORT}; 0, or a port taken: a free one); the URL is printed",
    )

    cluster = commands.add_parser(
        "cluster",
        help="run the mesh as a cluster of real nodes on this machine (namespaces, kernel links, cgroups)",
        description=(
            "up: make each node of the mesh file a network namespace (veth links on a bridge, bandwidth set "
            "with tc, traces replayed), its processes a cgroup with the node's CPU and memory limits, and run "
            "each pod of the mesh's Kubernetes manifests as a process (restarted when it exits); print "
            "progress, then the same summary as `dayu up`, and tear it all down. down: remove what a "
            "crashed run left. status: what runs. Needs root."
        ),
    )
    cluster.add_argument("action", choices=("up", "down", "status"))
    cluster.add_argument("--name", default="dayu", help="cluster name, the prefix of what it creates (default dayu)")
    cluster.add_argument("--config", type=Path, default=CLUSTER_CONFIG, metavar="FILE", help="mesh YAML file")
    cluster.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long (default: Ctrl-C)")
    cluster.add_argument("--summary-json", type=Path, metavar="PATH", help="also write the summary as JSON here")
    cluster.add_argument("--workdir", type=Path, default=Path(".dayu/cluster"), metavar="DIR", help="logs, volumes")

    experiment = commands.add_parser(
        "experiment",
        help="compare policies on the embedded mesh or the cluster",
        description=(
            "Run the embedded mesh (or, with --mode cluster, the cluster of namespaces) once per policy on "
            "the same workload and bandwidth trace (replayed on every link to the cloud), then write "
            "DIR/results.csv and DIR/results.png and print a table: end-to-end p50 and p95 latency, share of "
            "tasks within the latency budget, accuracy, bytes sent, decision time."
        ),
    )
    experiment.add_argument("--policies", required=True, help="comma-separated policy names, e.g. fixed,latency_budget")
    experiment.add_argument(
        "--trace",
        type=Path,
        action="append",
        metavar="FILE",
        help="bandwidth trace (time_s mbps per line); again for another: each trace's runs go to DIR/TRACE, "
        "with every trace's bars side by side in DIR/overview.png",
    )
    experiment.add_argument(
        "--cpu-hog",
        metavar="START-END",
        help="a process spinning on one core beside the mesh from START to END seconds after the traces start",
    )
    experiment.add_argument(
        "--cpu-cut",
        action="append",
        metavar="NODE:CORES@START-END",
        help="--mode cluster: cut NODE's CPU quota to CORES from START to END seconds (e.g. cloud:0.5@20-40)",
    )
    experiment.add_argument("--duration", type=float, default=60, metavar="SECONDS", help="per policy (default 60)")
    experiment.add_argument("--out", type=Path, required=True, metavar="DIR")
    experiment.add_argument("--config", type=Path, default=EXPERIMENT_CONFIG, metavar="FILE", help="mesh YAML file")
    experiment.add_argument("--mode", choices=("embedded", "cluster"), default="embedded", help="where to run it")

    simulate = commands.add_parser(
        "simulate",
        help="compare policies in simulated time: the scheduler's real core against modelled nodes and links",
        description=(
            "Run the scheduler's real core and policies against simulated nodes, links and processors (their "
            "costs from a profile made by `dayu profile`) once per policy, on a mesh file's workload (with "
            "--trace replayed on every link to the cloud, as `dayu experiment` does) or on a generated one, "
            "then write DIR/results.csv, results.json and plots and print a table: tasks, drops, share within "
            "budget, latency p50/p95, accuracy, MB over the uplinks, decisions, decision time, the "
            "simulator's speed. See docs/simulator.md."
        ),
    )
    simulate.add_argument("--policies", required=True, help="comma-separated policy names, e.g. fixed,latency_budget")
    simulate.add_argument("--config", type=Path, default=EXPERIMENT_CONFIG, metavar="FILE", help="mesh YAML file")
    simulate.add_argument(
        "--generate",
        metavar="KEY=VALUE,...",
        help="a generated scenario instead of --config's, e.g. cloud_workers=4,edges=40,uplinks=10,streams=500",
    )
    simulate.add_argument("--trace", type=Path, metavar="FILE", help="bandwidth trace of the links to the cloud")
    simulate.add_argument("--duration", type=float, default=60, metavar="SECONDS", help="simulated, per policy")
    simulate.add_argument("--out", type=Path, required=True, metavar="DIR")
    simulate.add_argument("--profile", type=Path, default=PROFILE, metavar="FILE", help="made by `dayu profile`")
    simulate.add_argument("--seed", type=int, default=0, help="the same seed gives the same results (default 0)")
    simulate.add_argument(
        "--target",
        choices=("embedded", "cluster"),
        default="embedded",
        help="with --config: the `dayu experiment` mode to model (cluster: the nodes share this machine's cores, "
        "within their CPU limits; kernel links without delay, with TCP/IP headers, no transfer called off once going)",
    )
    simulate.add_argument(
        "--background",
        type=float,
        default=0.0,
        metavar="THREADS",
        help="with --target cluster: runnable threads outside the nodes (other work on the machine), on average "
        "(default 0)",
    )
    simulate.add_argument("--quiet", action="store_true", help="no progress bar")

    profile = commands.add_parser(
        "profile",
        help="measure what `dayu simulate` needs: processing time, frame bytes and accuracy per configuration",
        description=(
            "Run the real processors of a mesh file's pipelines in process on its synthetic sources' frames "
            "(made into segments by the generator's own code) at rungs of the knob ladders, and write a YAML "
            "profile: seconds per segment by resolution and frames (measured table and a fitted model), "
            "JPEG bytes per frame by resolution and quality, and F1 against the ground truth by resolution, "
            "quality and segment length."
        ),
    )
    profile.add_argument("--config", type=Path, default=EXPERIMENT_CONFIG, metavar="FILE", help="mesh YAML file")
    profile.add_argument("--out", type=Path, default=PROFILE, metavar="FILE", help=f"default {PROFILE}")
    profile.add_argument("--frames", type=int, default=15, metavar="N", help="frames sampled per source (default 15)")
    profile.add_argument("--repeats", type=int, default=3, metavar="N", help="timed segments per point (default 3)")

    processor = commands.add_parser(
        "processor",
        help="make a processor kind of your own, as a package of its own (docs/plugins.md)",
        description="Processor kinds of other packages: `new` makes one from Dayu's template.",
    )
    processor_commands = processor.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = processor_commands.add_parser(
        "new",
        help="make a package with a new processor kind",
        description=(
            "Write a Python package that adds the processor kind NAME to Dayu through an entry point of the "
            "group dayu.processors: a runner (which labels each frame dark or bright, to change into what "
            "your kind does), its tests, pyproject.toml and a README. Install it into Dayu's environment "
            "(pip install -e DIR) and NAME is a kind for mesh files' nodes and pipelines. See docs/plugins.md."
        ),
    )
    new.add_argument("name", metavar="NAME", help="the kind's name: lowercase letters, digits and '_' (a-z first)")
    new.add_argument(
        "--directory", type=Path, metavar="DIR", help="the folder to make, which must not exist (default: ./NAME)"
    )
    return parser


def _experiment(args: argparse.Namespace) -> int:
    from dayu.experiment import run_experiment

    configure_logging(LogSettings(level="error", format="console"), component="mesh")
    policies = _policies(args.policies)
    compute = _compute_changes(args)
    traces = args.trace or [None]
    run_experiment(args.config, policies, traces, args.duration, args.out, _mesh_maker(args.mode), compute=compute)
    return 0


def _compute_changes(args: argparse.Namespace) -> list[ComputeChange]:
    """The experiment's --cpu-hog and --cpu-cut, checked against the mode and the mesh file."""
    from dayu.compute_changes import CpuHog, QuotaCut, Window

    compute: list[ComputeChange] = []
    if args.cpu_hog:
        compute.append(CpuHog(Window.parse(args.cpu_hog, "--cpu-hog")))
    if args.cpu_cut and args.mode != "cluster":
        raise InvalidArgument("--cpu-cut", "--mode cluster (the embedded mesh's nodes have no CPU quota)")
    for text in args.cpu_cut or []:
        cut = QuotaCut.parse(text, "--cpu-cut")
        cut.check(load_mesh_config(args.config), "--cpu-cut")
        compute.append(cut)
    return compute


def _policies(text: str) -> list[str]:
    from dayu.scheduler.policies import POLICIES

    policies = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(policies) - set(POLICIES.names()))
    if unknown or not policies:
        raise InvalidArgument("--policies", f"names from {POLICIES.names()}, got {unknown or text!r}")
    return policies


def _simulate(args: argparse.Namespace) -> int:
    from dayu.simulator import scenario
    from dayu.simulator.costs import Profile
    from dayu.simulator.run import simulate

    configure_logging(LogSettings(level="error", format="console"), component="simulator")
    policies = _policies(args.policies)
    if not (args.duration > 0):
        raise InvalidArgument("--duration", f"simulated seconds > 0, got {args.duration}")
    profile = Profile.load(args.profile)
    trace = args.trace
    if args.generate is not None:
        params = scenario.GeneratedParams.parse(args.generate)
        title = f"generated: {args.generate}"
        make = functools.partial(scenario.generate, params, seed=args.seed, trace=trace)
    else:
        title = args.config.name
        make = functools.partial(
            scenario.from_mesh, args.config, trace=trace, target=args.target, background=args.background
        )
    title += f", {trace.name if trace else 'configured links'}, {args.duration:g} simulated s"
    simulate(make, policies, profile, args.duration, args.out, args.seed, title, progress=not args.quiet)
    return 0


def _profile(args: argparse.Namespace) -> int:
    from dayu.simulator.profile import run_profile

    configure_logging(LogSettings(level="error", format="console"), component="profile")
    shown = os.path.relpath(args.config)  # the header says how to measure again, from the repository
    command = f"dayu profile --config {shown if not shown.startswith('..') else args.config}"
    command += f" --frames {args.frames} --repeats {args.repeats}"
    run_profile(args.config, args.out, args.frames, args.repeats, command)
    return 0


def _mesh_maker(mode: str) -> Callable[[MeshConfig, Path], RunningMesh]:
    """How a mode makes its mesh from a mesh file and a working folder."""
    if mode == "cluster":
        from dayu.cluster.cluster import Cluster

        return lambda config, workdir: Cluster(config, workdir / "cluster", progress=lambda _line: None)
    from dayu.mesh.embedded import Mesh

    return Mesh


TEMPLATE_SUFFIX = ".tmpl"  # the template's files that are rendered; the suffix is dropped


def _new_processor(args: argparse.Namespace) -> int:
    """Renders the processor template (dayu/processor/template, shipped in the package) into a new folder."""
    from importlib.resources import files
    from importlib.resources.abc import Traversable

    from dayu.processor.kinds import PROCESSORS
    from dayu.runtime.registry import PLUGIN_NAME

    name: str = args.name
    if not PLUGIN_NAME.fullmatch(name):
        raise InvalidArgument(
            "NAME", f"lowercase letters, digits and '_', starting with a letter, at most 32 characters, got {name!r}"
        )
    if name in PROCESSORS.names():
        raise InvalidArgument("NAME", f"a name no processor kind has yet {PROCESSORS.names()}, got {name!r}")
    directory: Path = args.directory or Path(name)
    if directory.exists():
        field = "--directory" if args.directory else "NAME"
        raise InvalidArgument(
            field, f"a folder that does not exist yet (nothing is overwritten), got {str(directory)!r}"
        )
    values = {"name": name, "package": f"dayu_{name}", "distribution": "dayu-" + name.replace("_", "-")}

    def render(text: str) -> str:
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        return text

    def copy(source: Traversable, target: Path) -> None:
        for item in sorted(source.iterdir(), key=lambda item: item.name):
            if item.is_dir():
                copy(item, target / render(item.name))
            elif item.name.endswith(TEMPLATE_SUFFIX):
                path = target / render(item.name.removesuffix(TEMPLATE_SUFFIX))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(render(item.read_text(encoding="utf-8")), encoding="utf-8")

    directory.mkdir(parents=True)
    copy(files("dayu.processor").joinpath("template"), directory)
    print(
        f"dayu: made the processor kind {name!r} in {directory}/: package {values['package']}, its runner in "
        f"{values['package']}/runner.py. Next, in the environment Dayu is installed in:\n"
        f"  pip install -e {directory}      # Dayu finds the kind {name!r} from now on\n"
        f"  python -m pytest {directory}    # its tests\n"
        f"then put it on a node and in a pipeline of a mesh file: {directory}/README.md, and Dayu's docs/plugins.md."
    )
    return 0


def _processor(args: argparse.Namespace) -> int:
    return {"new": _new_processor}[args.action](args)


def _run(mesh: RunningMesh, args: argparse.Namespace) -> int:
    """Runs a mesh until --duration or a signal, prints and writes its summary."""
    from dayu.mesh.run import run_mesh

    configure_logging(LogSettings(level="warning", format="console"), component="mesh")
    mesh.reset()

    async def main() -> dict[str, object]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_mesh(mesh, args.duration, stop_event=stop)

    summary = asyncio.run(main())
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["unaccounted"] == 0 else 1


def _up(args: argparse.Namespace) -> int:
    from dayu.mesh.embedded import Mesh

    args.workdir.mkdir(parents=True, exist_ok=True)
    mesh = Mesh(
        load_mesh_config(args.config), args.workdir, console_port=args.console_port, metrics_port=args.metrics_port
    )
    return _run(mesh, args)


def _cluster(args: argparse.Namespace) -> int:
    from dayu.cluster import cluster

    if args.action == "down":
        removed = cluster.cleanup(args.name)
        print(f"dayu cluster {args.name}: removed {', '.join(removed) if removed else 'nothing (none left)'}")
        return 0
    if args.action == "status":
        state = cluster.status(args.name)
        if state is None:
            print(f"dayu cluster {args.name}: not running")
            return 1
        print(f"dayu cluster {args.name}: nodes {state['nodes']}, workdir {state['workdir']}")
        for name, pod in sorted(state["pods"].items()):
            alive = "running" if pod["alive"] else "not running"
            print(f"  {name}: pid {pod['pid']} {alive}, {pod['restarts']} restarts")
        return 0
    return _run(cluster.Cluster(load_mesh_config(args.config), args.workdir, name=args.name), args)


def _serve(args: argparse.Namespace) -> int:
    from dayu.runtime.server import ComponentServer

    component_class = COMPONENTS.entry(args.component).factory
    flags: dict[str, object] = {}
    if args.listen:
        flags["server"] = {"listen": args.listen}
    if args.node:
        flags["node"] = args.node
    if args.metrics_listen:
        flags["metrics"] = {"listen": args.metrics_listen}
    settings = load_settings(component_class.settings_class, args.config, **flags)  # type: ignore[attr-defined]
    configure_logging(settings.log, component=args.component, node=settings.node)

    async def serve() -> None:
        # Built in the loop that serves it: a grpc.aio channel made outside it (the distributor's
        # feedback stub) would wait forever on a loop that never runs.
        server = ComponentServer(component_class(settings), settings)  # type: ignore[call-arg]
        await server.run_until_signal()

    asyncio.run(serve())
    return 0


def main(argv: list[str] | None = None) -> int:
    keep_malloc_from_hoarding()  # before frames and tensors come and go (runtime/memory.py)
    args = _parser().parse_args(argv)
    try:
        commands = {
            "up": _up,
            "cluster": _cluster,
            "experiment": _experiment,
            "simulate": _simulate,
            "profile": _profile,
            "serve": _serve,
            "processor": _processor,
        }
        return commands[args.command](args)
    except DayuError as error:
        print(f"dayu: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"dayu: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
