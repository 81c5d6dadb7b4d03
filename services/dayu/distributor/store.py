"""Durable record store on SQLite in WAL mode, keyed by task id so a task stored twice is kept once."""

from __future__ import annotations

import gzip
import io
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import json_format

from dayu.v1 import distributor_pb2, task_pb2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    cursor     INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    TEXT NOT NULL UNIQUE,
    stream_id  TEXT NOT NULL,
    outcome    INTEGER NOT NULL,
    stored_at  REAL NOT NULL,
    record     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_stream ON records (stream_id, cursor);
CREATE INDEX IF NOT EXISTS records_by_time ON records (stored_at);
"""


class RecordStore:
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def put(self, record: task_pb2.TaskRecord) -> tuple[int, bool]:
        """Stores the record unless its task is stored already. Returns (cursor, duplicate)."""
        task = record.task
        row = self._db.execute(
            "INSERT INTO records (task_id, stream_id, outcome, stored_at, record) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (task_id) DO NOTHING RETURNING cursor",
            (task.task_id, task.stream_id, record.outcome, record.stored_at.ToNanoseconds() / 1e9, b""),
        ).fetchone()
        if row is None:
            (cursor,) = self._db.execute("SELECT cursor FROM records WHERE task_id = ?", (task.task_id,)).fetchone()
            return cursor, True
        record.cursor = row[0]
        self._db.execute("UPDATE records SET record = ? WHERE cursor = ?", (record.SerializeToString(), row[0]))
        return row[0], False

    def query(self, where: distributor_pb2.RecordFilter, limit: int) -> list[task_pb2.TaskRecord]:
        clauses, args = ["cursor > ?"], [where.after_cursor]
        if where.stream_id:
            clauses.append("stream_id = ?")
            args.append(where.stream_id)
        if where.HasField("since"):
            clauses.append("stored_at >= ?")
            args.append(where.since.ToNanoseconds() / 1e9)
        if where.HasField("until"):
            clauses.append("stored_at < ?")
            args.append(where.until.ToNanoseconds() / 1e9)
        rows = self._db.execute(
            f"SELECT record FROM records WHERE {' AND '.join(clauses)} ORDER BY cursor LIMIT ?", (*args, limit)
        )
        return [task_pb2.TaskRecord.FromString(blob) for (blob,) in rows]

    def scan(self, where: distributor_pb2.RecordFilter, page_size: int = 500) -> Iterator[task_pb2.TaskRecord]:
        """Every matching record, in cursor order, read a page at a time."""
        page = distributor_pb2.RecordFilter()
        page.CopyFrom(where)
        while records := self.query(page, page_size):
            yield from records
            page.after_cursor = records[-1].cursor

    def export(self, where: distributor_pb2.RecordFilter, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The matching records as gzipped JSON lines, in chunks of about chunk_bytes."""
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=int(time.time())) as zipped:
            for record in self.scan(where):
                line = json_format.MessageToJson(record, indent=None, preserving_proto_field_name=True)
                zipped.write(line.encode() + b"\n")
                if buffer.tell() >= chunk_bytes:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
        yield buffer.getvalue()
