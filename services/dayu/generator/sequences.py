"""Each stream's next sequence number, kept on SQLite so that a restarted generator goes on where it
stopped: the distributor tells a missing task from a new one by (stream, sequence), and a number is
written before its task is made, so one that never arrives is found missing, never reused."""

from __future__ import annotations

from pathlib import Path

from dayu.runtime.sqlite import ThreadedSqlite

_SCHEMA = "CREATE TABLE IF NOT EXISTS streams (stream_id TEXT PRIMARY KEY, next INTEGER NOT NULL);"


class SequenceStore:
    def __init__(self, path: Path | str | None = None) -> None:
        """`path` None: in memory (a restart counts from 0 again)."""
        self._sqlite = ThreadedSqlite(path, _SCHEMA, synchronous="FULL", name="sequences")

    def next(self, stream_id: str) -> int:
        """The number the stream's next task will get (blocking: at start)."""
        return self._sqlite.call(self._read, stream_id)

    async def taken(self, stream_id: str) -> int:
        """The number the stream's next task will get, as next() without blocking the event loop."""
        return await self._sqlite.run(self._read, stream_id)

    async def take(self, stream_id: str) -> int:
        """Takes the stream's next number for good and returns it."""
        return await self._sqlite.run(self._take, stream_id)

    def _read(self, stream_id: str) -> int:
        row = self._sqlite.db.execute("SELECT next FROM streams WHERE stream_id = ?", (stream_id,)).fetchone()
        return row[0] if row else 0

    def _take(self, stream_id: str) -> int:
        (after,) = self._sqlite.db.execute(
            "INSERT INTO streams (stream_id, next) VALUES (?, 1) "
            "ON CONFLICT (stream_id) DO UPDATE SET next = next + 1 RETURNING next",
            (stream_id,),
        ).fetchone()
        return after - 1

    def close(self) -> None:
        self._sqlite.close()
