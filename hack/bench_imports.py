"""What each component costs before it serves: import time, memory and heavy libraries of its imports.

For every component, two imports, each measured in fresh interpreters (the venv's python): what
`dayu serve COMPONENT` imports (dayu.cli, then the component's service module) and the service module
alone; and for the processor, its service plus the lookup of a kind (which imports that kind's code).
Prints the median import time of the runs (wall clock, and CPU time, which other load on the machine
disturbs less), the median RSS after import (ru_maxrss), and which heavy libraries got loaded.
Checkouts given with --pythonpath are measured beside the installed (editable) tree, runs interleaved
so that load on the machine falls on both alike:

    git clone -q /work/main /tmp/before-imports
    .venv/bin/python hack/bench_imports.py --pythonpath /tmp/before-imports/gen:/tmp/before-imports/services
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field

COMPONENTS = ("backend", "controller", "datasource", "distributor", "generator", "monitor", "processor", "scheduler")
PROCESSOR_KINDS = ("merge", "color_classifier", "text_detector")
HEAVY_MODULES = ("cv2", "onnxruntime", "tritonclient", "rapidocr_onnxruntime", "matplotlib", "av", "numpy")
INSTALLED = "installed"

# Runs in the fresh interpreter: imports each argument, a module, or "module:REGISTRY:name" to also look
# name up in that module's registry; then reports on itself.
PROBE = f"""
import importlib, json, resource, sys, time
start, start_cpu = time.perf_counter(), time.process_time()
for argument in sys.argv[1:]:
    name, _, lookup = argument.partition(":")
    module = importlib.import_module(name)
    if lookup:
        registry, _, entry = lookup.partition(":")
        getattr(module, registry).entry(entry)
print(json.dumps({{
    "seconds": time.perf_counter() - start,
    "cpu_seconds": time.process_time() - start_cpu,
    "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "heavy": [name for name in {HEAVY_MODULES!r} if name in sys.modules],
    "source": sys.modules[sys.argv[-1].partition(":")[0]].__file__ if sys.argv[1:] else "",
}}))
"""


@dataclass(frozen=True)
class Variant:
    label: str
    pythonpath: str  # "" for the installed tree


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)
    heavy: list[str] = field(default_factory=list)
    source: str = ""  # the file the last module came from: which checkout was measured
    failed: str = ""  # the import's error, when it failed


def probe(variant: Variant, imports: list[str]) -> dict[str, object]:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if variant.pythonpath:
        environment["PYTHONPATH"] = variant.pythonpath
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *imports], env=environment, capture_output=True, text=True, check=False
    )
    if done.returncode:  # a row of its own, so one broken import leaves the rest of the table
        return {"failed": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout)


def cases() -> list[tuple[str, list[str]]]:
    """(row name, imports), a bare interpreter first as the floor of every row."""
    rows: list[tuple[str, list[str]]] = [("(python alone)", [])]
    for component in COMPONENTS:
        service = f"dayu.{component}.service"
        rows += [(f"serve {component}", ["dayu.cli", service]), (f"{component}.service", [service])]
    rows += [
        (f"processor.service {kind}", ["dayu.processor.service", f"dayu.processor.kinds:PROCESSORS:{kind}"])
        for kind in PROCESSOR_KINDS
    ]
    return rows


def measure(variants: list[Variant], repeats: int) -> dict[tuple[str, str], Samples]:
    results: dict[tuple[str, str], Samples] = {}
    for row, imports in cases():
        for _ in range(repeats):
            for variant in variants:
                report = probe(variant, imports)
                samples = results.setdefault((row, variant.label), Samples())
                if "failed" in report:
                    samples.failed = str(report["failed"])
                    continue
                samples.seconds.append(float(report["seconds"]))  # type: ignore[arg-type]
                samples.cpu_seconds.append(float(report["cpu_seconds"]))  # type: ignore[arg-type]
                samples.rss_kb.append(int(report["rss_kb"]))  # type: ignore[call-overload]
                samples.heavy = list(report["heavy"])  # type: ignore[call-overload]
                samples.source = str(report["source"])
    return results


def label_of(pythonpath: str) -> str:
    """The checkout's directory name: what the --pythonpath entries have in common."""
    return os.path.basename(os.path.commonpath(pythonpath.split(os.pathsep))) or pythonpath


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--pythonpath",
        action="append",
        default=[],
        metavar="DIR1:DIR2",
        help="also measure the checkout on this PYTHONPATH (repeatable); it takes precedence over the installed tree",
    )
    parser.add_argument("--repeats", type=int, default=5, help="fresh interpreters per import and checkout")
    args = parser.parse_args()
    variants = [Variant(label_of(path), path) for path in args.pythonpath] + [Variant(INSTALLED, "")]
    results = measure(variants, args.repeats)

    for variant in variants:
        print(f"{variant.label}: {results[(f'{COMPONENTS[0]}.service', variant.label)].source}")
    print(f"median of {args.repeats} fresh interpreters; RSS is ru_maxrss after the imports; {sys.executable}")
    width = max(len(variant.label) for variant in variants)
    print(f"{'import':<34} {'checkout':<{width}} {'ms':>6} {'CPU ms':>6} {'RSS MB':>6}  heavy modules loaded")
    for row, _ in cases():
        for variant in variants:
            samples = results[(row, variant.label)]
            if samples.failed:
                print(f"{row:<34} {variant.label:<{width}} {'failed:':>20}  {samples.failed}")
                continue
            wall_ms, cpu_ms = (statistics.median(times) * 1e3 for times in (samples.seconds, samples.cpu_seconds))
            megabytes = statistics.median(samples.rss_kb) / 1024
            heavy = ", ".join(samples.heavy) or "-"
            print(f"{row:<34} {variant.label:<{width}} {wall_ms:>6.0f} {cpu_ms:>6.0f} {megabytes:>6.1f}  {heavy}")


if __name__ == "__main__":
    main()
