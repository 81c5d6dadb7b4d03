"""The tasks a controller holds, journaled on SQLite (WAL, synchronous FULL) so that a controller
killed at any moment loses none of them.

A task is written before the controller acknowledges it and deleted, in the same transaction that
remembers its id, once the next node holds it (a peer controller or the distributor acknowledged
it) or its drop is recorded. A fork replaces the task by its copies, a join the copies by the merged
task, a finished stage the task by its new state: each in one transaction, so the journal always
holds exactly what is still to be done. A restarted controller routes again what it finds.

A task is journaled under its key: its id and its number of hops. A sender's retries repeat both;
a task that comes back to this node later (a join here after a stage elsewhere) has more hops, so
it is a new visit, never confused with the one this node is still releasing. A stage finished here
is journaled alone (progress), not the whole task again. The keys of tasks that
left are remembered (the last SEEN_LIMIT of them), so a retry of a task this node already passed on
is acknowledged again and not routed twice. Writes run on one thread of
their own: the event loop never waits on the disk, and the connection is used by one thread.

Group commit. What is asked while the thread writes waits, and goes in the next transaction, all
together: one commit (one fsync) for as many tasks as arrived meanwhile, each write in a savepoint of
its own (one that fails leaves the others). Only what an acknowledgement waits for needs the disk
before the commit returns: a task received (hold) and a drop (give_up), committed with synchronous
FULL. What the next node or the distributor acknowledged already (release), and the progress of a
task this node still holds (replace), commit with synchronous NORMAL: written to the WAL, on the disk
with the next FULL commit, a checkpoint, or the kernel's own writeback. A controller killed loses none
of them; a machine that loses power may lose the last of them, which repeats work that the receivers
de-duplicate (a retry of a task passed on, a stage run again), never loses a task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dayu.runtime.sqlite import ThreadedSqlite
from dayu.v1 import task_pb2

SEEN_LIMIT = 100_000  # ids of tasks that left; at ~10 tasks/s, hours of retries' worth

_SCHEMA = """
CREATE TABLE IF NOT EXISTS held (
    key      TEXT PRIMARY KEY,  -- see key()
    held_at  REAL NOT NULL,
    reason   TEXT,              -- set once the task is given up and its drop is still to be recorded
    task     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    n        INTEGER PRIMARY KEY AUTOINCREMENT,
    key      TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS progress (
    key      TEXT NOT NULL,     -- a held task's
    stage    BLOB NOT NULL      -- a stage it finished since its row in held was written (TaskStage)
);
CREATE INDEX IF NOT EXISTS progress_by_key ON progress (key);
"""


@dataclass
class Held:
    """A journaled task: what a restarted controller resumes."""

    key: str  # its id in the journal
    task: task_pb2.Task
    drop_reason: str  # non-empty: the task was given up, its drop not recorded yet


def _apply(task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
    """Puts a finished stage (progress) in the task, as the controller did: in place of the stage of
    its name, and in the branch of a copy."""
    for own in task.dag.stages:
        if own.spec.name == stage.spec.name:
            own.CopyFrom(stage)
    if task.branch and stage.spec.name not in task.branch:
        task.branch.append(stage.spec.name)


def task_key(task: task_pb2.Task) -> str:
    """A task's key in the journal: what tells a sender's retry from a new visit."""
    return f"{task.task_id}#{len(task.hops)}"


class _Write:
    """A write waiting for the next group commit."""

    def __init__(self, durable: bool, work: Callable[..., Any], args: tuple[Any, ...], early: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.durable, self.work, self.args = durable, work, args
        self.done: asyncio.Future[Any] = loop.create_future()  # its outcome, once committed
        # Its outcome as soon as it is written, before the commit (the disk) returns.
        self.written: asyncio.Future[Any] | None = loop.create_future() if early else None


def _settle(future: asyncio.Future[Any], ok: bool, outcome: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(outcome)
    else:
        future.set_exception(outcome)


class TaskJournal:
    def __init__(self, path: Path | str | None = None) -> None:
        """`path` None: in memory (de-duplication without durability, for tests and throwaway meshes)."""
        self._sqlite = ThreadedSqlite(path, _SCHEMA, synchronous="FULL", name="journal")
        self._db, self._run, self._transaction = self._sqlite.db, self._sqlite.run, self._sqlite.transaction
        self.path, self.durable = self._sqlite.path, self._sqlite.durable
        self._waiting: list[_Write] = []
        self._committing: asyncio.Task[None] | None = None
        self._synchronous = "FULL"  # the connection's setting now (changed on the journal's thread)
        self._forgotten = False  # whether the commit being made forgot tasks (on the journal's thread)

    def close(self) -> None:
        self._sqlite.close()

    def _write(self, durable: bool, work: Callable[..., Any], *args: Any, early: bool = False) -> _Write:
        """Queues `work(*args)` for the journal's thread, in the next group commit (see the module's
        docstring); `durable`: on the disk before its `done` is. Writes are made in the order asked."""
        write = _Write(durable, work, args, early)
        self._waiting.append(write)
        if self._committing is None:
            self._committing = asyncio.get_running_loop().create_task(self._commit_waiting())
        return write

    async def _commit_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    outcomes = await self._run(self._commit, batch, asyncio.get_running_loop())
                except BaseException as error:  # the commit itself failed: every write of it did
                    outcomes = [(False, error)] * len(batch)
                for write, (ok, outcome) in zip(batch, outcomes, strict=True):
                    _settle(write.done, ok, outcome)
                    if write.written is not None:
                        _settle(write.written, ok, outcome)
        finally:
            self._committing = None

    def _commit(self, batch: list[_Write], loop: asyncio.AbstractEventLoop) -> list[tuple[bool, Any]]:
        synchronous = "FULL" if any(w.durable for w in batch) else "NORMAL"
        if synchronous != self._synchronous:
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._synchronous = synchronous
        outcomes: list[tuple[bool, Any]] = []
        self._forgotten = False
        with self._transaction():
            for write in batch:
                self._db.execute("SAVEPOINT write")
                try:
                    outcomes.append((True, write.work(*write.args)))
                except Exception as error:
                    self._db.execute("ROLLBACK TO write")
                    outcomes.append((False, error))
                self._db.execute("RELEASE write")
                if write.written is not None:
                    loop.call_soon_threadsafe(_settle, write.written, *outcomes[-1])
            if self._forgotten:  # the keys of the last SEEN_LIMIT tasks that left, no more
                (newest,) = self._db.execute("SELECT COALESCE(MAX(n), 0) FROM seen").fetchone()
                self._db.execute("DELETE FROM seen WHERE n <= ?", (newest - SEEN_LIMIT,))
        return outcomes

    # -- writes ---------------------------------------------------------------------------------
    # replace and release return at once, their write queued: await the future they return for it
    # to be committed. Writes are committed in the order they were asked, so a later one never lands
    # without an earlier one.

    async def hold(self, task: task_pb2.Task) -> bool:
        """Journals a task just received (its hop here added); False (nothing written) when this node
        holds it already or passed it on already: a retry, to acknowledge without routing it again."""
        accepted: bool = await self.admit(task)[1]
        return accepted

    def admit(self, task: task_pb2.Task) -> tuple[asyncio.Future[bool], asyncio.Future[bool]]:
        """hold() in two steps: (whether the task is new, known as soon as it is written: work on it
        may start; the same once it is on the disk: what the acknowledgement waits for)."""
        write = self._write(True, self._hold, task_key(task), task.SerializeToString(), early=True)
        assert write.written is not None
        return write.written, write.done

    def _hold(self, key: str, blob: bytes) -> bool:
        if self._db.execute("SELECT 1 FROM seen WHERE key = ?", (key,)).fetchone():
            return False
        inserted = self._db.execute(
            "INSERT INTO held (key, held_at, task) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING",
            (key, time.time(), blob),
        )
        return inserted.rowcount == 1

    def replace(self, done: Iterable[str], tasks: Iterable[task_pb2.Task]) -> asyncio.Future[None]:
        """In one transaction: forgets the tasks `done` (their work goes on in `tasks`; a retry of one is
        a duplicate) and journals (or updates) `tasks`, as they are now."""
        rows = [(task_key(t), time.time(), t.SerializeToString()) for t in tasks]
        return self._write(False, self._replace, list(done), rows).done

    def _replace(self, done: list[str], rows: list[tuple[str, float, bytes]]) -> None:
        self._forget(done)
        upsert = "INSERT INTO held (key, held_at, task) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET task = "
        self._db.executemany(upsert + "excluded.task", rows)
        self._db.executemany("DELETE FROM progress WHERE key = ?", [(key,) for key, _, _ in rows])  # in the rows now

    def progress(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> asyncio.Future[None]:
        """Journals a stage the held `task` finished here: what replace(task) would, writing the stage
        alone, not the task and its frames again. held() gives the task with it (and, for a copy, with
        the stage in its branch)."""
        return self._write(False, self._progress, task_key(task), stage.SerializeToString()).done

    def _progress(self, key: str, stage: bytes) -> None:
        self._db.execute("INSERT INTO progress (key, stage) VALUES (?, ?)", (key, stage))

    async def give_up(self, held: Iterable[str], dropped: task_pb2.Task, reason: str) -> str:
        """In one transaction: forgets the `held` tasks and journals the drop of `dropped` (the
        original task) with `reason`, until it is recorded elsewhere and released. Returns its key."""
        drop_key = f"drop:{dropped.root_id}"
        await self._write(True, self._give_up, list(held), drop_key, dropped.SerializeToString(), reason).done
        return drop_key

    def _give_up(self, held: list[str], drop_key: str, blob: bytes, reason: str) -> None:
        self._forget(held)
        self._db.execute(
            "INSERT INTO held (key, held_at, reason, task) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET reason = excluded.reason, task = excluded.task",
            (drop_key, time.time(), reason, blob),
        )

    def release(self, *keys: str) -> asyncio.Future[None]:
        """The next node holds these tasks (or their drop is recorded): forgets them, remembering their keys."""
        return self._write(False, self._forget, list(keys)).done

    def _forget(self, keys: list[str]) -> None:
        """Deletes held tasks, remembering their keys (a retry of one is then a duplicate): the last
        SEEN_LIMIT of them (trimmed at the commit)."""
        self._db.executemany("DELETE FROM held WHERE key = ?", [(k,) for k in keys])
        self._db.executemany("DELETE FROM progress WHERE key = ?", [(k,) for k in keys])
        self._db.executemany("INSERT OR IGNORE INTO seen (key) VALUES (?)", [(k,) for k in keys])
        self._forgotten = True

    # -- reads ----------------------------------------------------------------------------------

    async def held(self) -> list[Held]:
        """Every journaled task, oldest first: what a restarted controller resumes."""
        query = "SELECT key, task, reason FROM held ORDER BY held_at"
        rows, progress = await self._write(
            False,
            lambda: (
                self._db.execute(query).fetchall(),
                self._db.execute("SELECT key, stage FROM progress ORDER BY rowid").fetchall(),
            ),
        ).done
        held = [Held(key, task_pb2.Task.FromString(blob), reason or "") for key, blob, reason in rows]
        tasks = {entry.key: entry.task for entry in held}
        for key, blob in progress:
            if key in tasks:
                _apply(tasks[key], task_pb2.TaskStage.FromString(blob))
        return held

    async def count(self) -> int:
        count: int = await self._write(False, lambda: self._db.execute("SELECT COUNT(*) FROM held").fetchone()[0]).done
        return count
