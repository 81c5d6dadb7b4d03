"""The tasks a controller holds, journaled on SQLite (WAL, synchronous FULL) so that a controller
killed at any moment loses none of them.

A task is written before the controller acknowledges it and deleted, in the same transaction that
remembers its id, once the next node holds it (a peer controller or the distributor acknowledged
it) or its drop is recorded. A fork replaces the task by its copies, a join the copies by the merged
task, a finished stage the task by its new state: each in one transaction, so the journal always
holds exactly what is still to be done. A restarted controller routes again what it finds.

A task is journaled under its key: its id and its number of hops. A sender's retries repeat both;
a task that comes back to this node later (a join here after a stage elsewhere) has more hops, so
it is a new visit, never confused with the one this node is still releasing. The keys of tasks that
left are remembered (the last SEEN_LIMIT of them), so a retry of a task this node already passed on
is acknowledged again and not routed twice. Writes run on one thread of
their own: the event loop never waits on the disk, and the connection is used by one thread."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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
"""


@dataclass
class Held:
    """A journaled task: what a restarted controller resumes."""

    key: str  # its id in the journal
    task: task_pb2.Task
    drop_reason: str  # non-empty: the task was given up, its drop not recorded yet


def task_key(task: task_pb2.Task) -> str:
    """A task's key in the journal: what tells a sender's retry from a new visit."""
    return f"{task.task_id}#{len(task.hops)}"


class TaskJournal:
    def __init__(self, path: Path | str | None = None) -> None:
        """`path` None: in memory (de-duplication without durability, for tests and throwaway meshes)."""
        self._sqlite = ThreadedSqlite(path, _SCHEMA, synchronous="FULL", name="journal")
        self._db, self._run, self._transaction = self._sqlite.db, self._sqlite.run, self._sqlite.transaction
        self.path, self.durable = self._sqlite.path, self._sqlite.durable

    def close(self) -> None:
        self._sqlite.close()

    # -- writes ---------------------------------------------------------------------------------

    async def hold(self, task: task_pb2.Task) -> bool:
        """Journals a task just received (its hop here added); False (nothing written) when this node
        holds it already or passed it on already: a retry, to acknowledge without routing it again."""
        return await self._run(self._hold, task_key(task), task.SerializeToString())

    def _hold(self, key: str, blob: bytes) -> bool:
        if self._db.execute("SELECT 1 FROM seen WHERE key = ?", (key,)).fetchone():
            return False
        inserted = self._db.execute(
            "INSERT INTO held (key, held_at, task) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING",
            (key, time.time(), blob),
        )
        return inserted.rowcount == 1

    async def replace(self, done: Iterable[str], tasks: Iterable[task_pb2.Task]) -> None:
        """In one transaction: forgets the tasks `done` (their work goes on in `tasks`; a retry of one is
        a duplicate) and journals (or updates) `tasks`."""
        rows = [(task_key(t), time.time(), t.SerializeToString()) for t in tasks]
        await self._run(self._replace, list(done), rows)

    def _replace(self, done: list[str], rows: list[tuple[str, float, bytes]]) -> None:
        with self._transaction():
            self._forget(done)
            upsert = "INSERT INTO held (key, held_at, task) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET task = "
            self._db.executemany(upsert + "excluded.task", rows)

    async def give_up(self, held: Iterable[str], dropped: task_pb2.Task, reason: str) -> str:
        """In one transaction: forgets the `held` tasks and journals the drop of `dropped` (the
        original task) with `reason`, until it is recorded elsewhere and released. Returns its key."""
        drop_key = f"drop:{dropped.root_id}"
        await self._run(self._give_up, list(held), drop_key, dropped.SerializeToString(), reason)
        return drop_key

    def _give_up(self, held: list[str], drop_key: str, blob: bytes, reason: str) -> None:
        with self._transaction():
            self._forget(held)
            self._db.execute(
                "INSERT INTO held (key, held_at, reason, task) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET reason = excluded.reason, task = excluded.task",
                (drop_key, time.time(), reason, blob),
            )

    async def release(self, *keys: str) -> None:
        """The next node holds these tasks (or their drop is recorded): forgets them, remembering their keys."""
        await self._run(self._release, list(keys))

    def _release(self, keys: list[str]) -> None:
        with self._transaction():
            self._forget(keys)

    def _forget(self, keys: list[str]) -> None:
        """Deletes held tasks, remembering their keys (a retry of one is then a duplicate): the last
        SEEN_LIMIT of them."""
        self._db.executemany("DELETE FROM held WHERE key = ?", [(k,) for k in keys])
        self._db.executemany("INSERT OR IGNORE INTO seen (key) VALUES (?)", [(k,) for k in keys])
        (newest,) = self._db.execute("SELECT COALESCE(MAX(n), 0) FROM seen").fetchone()
        self._db.execute("DELETE FROM seen WHERE n <= ?", (newest - SEEN_LIMIT,))

    # -- reads ----------------------------------------------------------------------------------

    async def held(self) -> list[Held]:
        """Every journaled task, oldest first: what a restarted controller resumes."""
        query = "SELECT key, task, reason FROM held ORDER BY held_at"
        rows = await self._run(lambda: self._db.execute(query).fetchall())
        return [Held(key, task_pb2.Task.FromString(blob), reason or "") for key, blob, reason in rows]

    async def count(self) -> int:
        return await self._run(lambda: self._db.execute("SELECT COUNT(*) FROM held").fetchone()[0])
