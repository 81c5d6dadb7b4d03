"""A SQLite database used from asyncio: one connection on one thread of its own, so the event loop
never waits on the disk and the connection is only ever used by the thread that runs it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
MEMORY = ":memory:"


class ThreadedSqlite:
    def __init__(
        self, path: Path | str | None, schema: str, *, synchronous: str = "FULL", name: str = "sqlite"
    ) -> None:
        """Opens `path` (None: in memory) in WAL mode with `schema`. synchronous FULL: a committed
        write survives a crash of the machine; NORMAL: of the process only."""
        self.path = MEMORY if path is None else str(path)
        self.durable = self.path != MEMORY
        if self.durable:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.db = self._thread.submit(self._open, schema, synchronous).result()

    def _open(self, schema: str, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.executescript(schema)
        return db

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """Runs `work(*args)` on the database's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    def call(self, work: Callable[..., T], *args: Any) -> T:
        """Runs `work(*args)` on the database's thread, waiting for it (outside the event loop)."""
        return self._thread.submit(work, *args).result()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction (on the database's thread): committed at the end, rolled back on an error."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self._thread.submit(self.db.close).result()
        self._thread.shutdown()
