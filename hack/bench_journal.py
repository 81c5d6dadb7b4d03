"""What the controller's journal costs a task at each hop: the time from receiving a task to holding
it durably (TaskJournal.hold, what SubmitTask waits for before it acknowledges) and from the next
node's acknowledgement to forgetting it (release), for tasks of a given size, with the journal's
settings (WAL, synchronous=FULL: on disk before the acknowledgement) beside synchronous=NORMAL (lost
only with the machine, not the process) and in memory. The three are run interleaved, round after
round, so load on the machine falls on all alike; medians and the 95th percentile per task.

    .venv/bin/python hack/bench_journal.py [--tasks 300] [--rounds 5] [--kib 40] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from dayu.controller import journal as journal_module
from dayu.controller.journal import TaskJournal, task_key
from dayu.v1 import task_pb2


def tasks(count: int, kib: int) -> list[task_pb2.Task]:
    made = []
    for sequence in range(count):
        task_id = str(uuid.uuid4())
        task = task_pb2.Task(stream_id="bench", sequence=sequence, task_id=task_id, root_id=task_id)
        task.segment.frames.append(bytes(kib * 1024))
        task.hops.add(component="controller", node="bench")
        made.append(task)
    return made


async def measure(journal: TaskJournal, batch: list[task_pb2.Task]) -> tuple[list[float], list[float]]:
    holds, releases = [], []
    for task in batch:
        started = time.perf_counter()
        await journal.hold(task)
        holds.append(time.perf_counter() - started)
        started = time.perf_counter()
        await journal.release(task_key(task))
        releases.append(time.perf_counter() - started)
    return holds, releases


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered) * 1000:7.3f} ms  p95 {ordered[int(0.95 * (len(ordered) - 1))] * 1000:7.3f} ms"


async def main(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-journal-", dir=args.dir))
    modes = {"FULL (the journal)": "FULL", "NORMAL": "NORMAL", "in memory": None}
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in modes}
    for round_ in range(args.rounds):
        for name, synchronous in modes.items():
            path = None if synchronous is None else folder / f"{round_}-{synchronous}.sqlite"
            journal = TaskJournal(path)
            if synchronous == "NORMAL":  # the same journal, one pragma apart
                await journal._run(lambda db=journal._db: db.execute("PRAGMA synchronous=NORMAL"))
            holds, releases = await measure(journal, tasks(args.tasks, args.kib))
            journal.close()
            results[name][0].extend(holds)
            results[name][1].extend(releases)
    print(f"{args.tasks} tasks of {args.kib} KiB x {args.rounds} rounds, journal files in {folder}")
    print(f"(seen keys kept: {journal_module.SEEN_LIMIT})")
    for name, (holds, releases) in results.items():
        print(f"  {name:20s} hold {ms(holds)}   release {ms(releases)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kib", type=int, default=40, help="size of each task's segment")
    parser.add_argument("--dir", default=None, help="where the journal files go (default: the temp folder)")
    asyncio.run(main(parser.parse_args()))
