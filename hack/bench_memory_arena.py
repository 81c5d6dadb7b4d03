"""What onnxruntime's memory arena costs and saves in a processor, side by side, in one run.

Every Dayu component starts with glibc's malloc told to map each buffer of 1 MiB or more on its own
(dayu.runtime.memory). Without onnxruntime's arena, each inference then maps its tensors afresh and
their pages fault in zeroed, and the first run of an input shape, before onnxruntime has planned one
block for its tensors, maps every tensor on its own. The arena (the `memory_arena` parameter of the
model kinds, on by default) keeps the memory of the largest run instead.

Each case is a fresh process, as a processor is: a text_detector (960 px, one inference thread) runs
segments of 2 JPEG 720p street frames, two at a time as the processor's two workers do, first on a
new input shape and then again. Cases: the arena on or off, under the components' malloc settings or
glibc's own. Cases take turns, `--repeats` rounds; medians per case:

  first s     wall seconds of the first two segments (both workers' first run)
  later s     wall seconds of each later pair (median)
  CPU s/seg   the process's CPU seconds per segment over the run, the first pair included
  RSS MB      resident memory after the last pair, and at its peak

    .venv/bin/python hack/bench_memory_arena.py [--repeats 3] [--pairs 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = (("on", "components"), ("off", "components"), ("on", "glibc"), ("off", "glibc"))


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


async def _child(arena: str, malloc: str, pairs: int) -> dict[str, float]:
    if malloc == "components":
        from dayu.runtime.memory import keep_malloc_from_hoarding

        keep_malloc_from_hoarding()
    from bench_models import plates_task

    from dayu.processor.kinds import PROCESSORS
    from dayu.v1 import task_pb2

    runner = PROCESSORS.create("text_detector", {"max_side": 960, "memory_arena": arena == "on"})
    await runner.check()
    segment = plates_task(1280, 720).SerializeToString()

    async def one() -> None:
        task = task_pb2.Task.FromString(segment)
        await runner.run(task, task.dag.stages[0])

    walls, cpu = [], time.process_time()
    for _ in range(pairs):
        start = time.perf_counter()
        await asyncio.gather(one(), one())
        walls.append(time.perf_counter() - start)
    return {
        "first_s": walls[0],
        "later_s": statistics.median(walls[1:]),
        "cpu_per_segment_s": (time.process_time() - cpu) / (2 * pairs),
        "rss_mb": _rss_mb(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every case, each in a fresh process")
    parser.add_argument("--pairs", type=int, default=6, help="pairs of segments per process (at least 2)")
    parser.add_argument("--child", nargs=2, metavar=("ARENA", "MALLOC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    pairs = max(2, args.pairs)
    if args.child:
        print(json.dumps(asyncio.run(_child(*args.child, pairs))))
        return
    results: dict[tuple[str, str], list[dict[str, float]]] = {case: [] for case in CASES}
    for _ in range(args.repeats):
        for case in CASES:
            command = [sys.executable, __file__, "--pairs", str(pairs), "--child", *case]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            results[case].append(json.loads(done.stdout.splitlines()[-1]))
    print(f"text_detector, 960 px, 2 JPEG 720p frames a segment, 2 at a time; {pairs} pairs a process;")
    print(f"median of {args.repeats} fresh processes per case, cases in turn\n")
    keys = ("first_s", "later_s", "cpu_per_segment_s", "rss_mb", "peak_rss_mb")
    print(f"{'arena':<6} {'malloc':<11} {'first s':>8} {'later s':>8} {'CPU s/seg':>10} {'RSS MB':>7} {'peak MB':>8}")
    for (arena, malloc), runs in results.items():
        first, later, cpu, rss, peak = (statistics.median(run[key] for run in runs) for key in keys)
        print(f"{arena:<6} {malloc:<11} {first:>8.2f} {later:>8.2f} {cpu:>10.3f} {rss:>7.0f} {peak:>8.0f}")


if __name__ == "__main__":
    main()
