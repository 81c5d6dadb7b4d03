"""Durable record store on SQLite in WAL mode: each task stored once, by task id and by its stream's
sequence number, in one INSERT (a crash leaves a whole record or none).

The record blob is stored without its cursor; reads fill `record.cursor` from the column. The schema
is versioned with PRAGMA user_version: a database of the first schema (no sequence column) is
migrated in place when opened. Not thread-safe: the distributor's core calls it from one worker
thread at a time.
"""

from __future__ import annotations

import gzip
import io
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from google.protobuf import json_format

from dayu.runtime.errors import FailedPrecondition
from dayu.v1 import distributor_pb2, task_pb2

SCHEMA_VERSION = 1
# A page of query results stops at this many bytes of records: with records of at most
# core.RECORD_BYTES, a page stays well inside the 64 MiB a reply may have.
PAGE_BYTES = 16 * 1024 * 1024
# `sequence` is NULL only in records torn by a crash under the first schema (an empty blob).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    cursor     INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    TEXT NOT NULL UNIQUE,
    stream_id  TEXT NOT NULL,
    outcome    INTEGER NOT NULL,
    stored_at  REAL NOT NULL,
    record     BLOB NOT NULL,
    sequence   INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS records_by_sequence ON records (stream_id, sequence);
CREATE INDEX IF NOT EXISTS records_by_stream ON records (stream_id, cursor);
CREATE INDEX IF NOT EXISTS records_by_time ON records (stored_at);
"""


class RecordStore:
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Opened here, used from the core's worker thread afterwards.
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._upgrade()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _upgrade(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise FailedPrecondition(
                f"{self.path}: records of schema version {version}, newer than this distributor's "
                f"{SCHEMA_VERSION}: open it with a newer Dayu"
            )
        if version == SCHEMA_VERSION:
            return
        with self._transaction():
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(records)")}
            if columns and "sequence" not in columns:
                self._migrate_from_first_schema()
            # Not executescript: it would commit first, outside this transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate_from_first_schema(self) -> None:
        """Adds the sequence column to records of the first schema, filled from their blobs, and
        refuses a database in which one stream's sequence was stored twice."""
        self._db.execute("ALTER TABLE records ADD COLUMN sequence INTEGER")
        after = 0
        while rows := self._db.execute(
            "SELECT cursor, record FROM records WHERE cursor > ? AND record != x'' ORDER BY cursor LIMIT 1000", (after,)
        ).fetchall():
            self._db.executemany(
                "UPDATE records SET sequence = ? WHERE cursor = ?",
                [(task_pb2.TaskRecord.FromString(blob).task.sequence, cursor) for cursor, blob in rows],
            )
            after = rows[-1][0]
        twice = self._db.execute(
            "SELECT stream_id, sequence, COUNT(*) FROM records WHERE sequence IS NOT NULL "
            "GROUP BY stream_id, sequence HAVING COUNT(*) > 1 LIMIT 1"
        ).fetchone()
        if twice:
            stream, sequence, count = twice
            raise FailedPrecondition(
                f"{self.path}: stream {stream} has sequence {sequence} stored {count} times (runs that numbered "
                "their tasks from 0 again); this distributor keeps each sequence once: move the file away"
            )

    def put_all(self, records: Iterable[task_pb2.TaskRecord]) -> list[tuple[int, bool]]:
        """Stores each record unless its task id or its stream's sequence is stored already, in one
        transaction. Sets the cursor of each record stored; returns (cursor, duplicate) for each, the
        cursor being the stored one's for a duplicate."""
        results = []
        with self._transaction():
            for record in records:
                task = record.task
                record.cursor = 0
                row = self._db.execute(
                    "INSERT INTO records (task_id, stream_id, sequence, outcome, stored_at, record) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING cursor",
                    (
                        task.task_id,
                        task.stream_id,
                        task.sequence,
                        record.outcome,
                        record.stored_at.ToNanoseconds() / 1e9,
                        record.SerializeToString(),
                    ),
                ).fetchone()
                if row is None:
                    (cursor,) = self._db.execute(
                        "SELECT cursor FROM records WHERE task_id = ? OR (stream_id = ? AND sequence = ?) "
                        "ORDER BY task_id = ? DESC LIMIT 1",
                        (task.task_id, task.stream_id, task.sequence, task.task_id),
                    ).fetchone()
                    results.append((cursor, True))
                else:
                    record.cursor = row[0]
                    results.append((row[0], False))
        return results

    def put(self, record: task_pb2.TaskRecord) -> tuple[int, bool]:
        """Stores the record unless its task is stored already. Returns (cursor, duplicate)."""
        (result,) = self.put_all([record])
        return result

    def sequences(self) -> tuple[dict[str, int], list[tuple[str, int, int]]]:
        """The highest sequence stored per stream, and the runs of sequences missing below it, as
        (stream, first missing, next stored), lowest first."""
        highest = dict(
            self._db.execute(
                "SELECT stream_id, MAX(sequence) FROM records WHERE sequence IS NOT NULL GROUP BY stream_id"
            )
        )
        missing = self._db.execute(
            "SELECT stream_id, previous + 1, sequence FROM ("
            "  SELECT stream_id, sequence, LAG(sequence, 1, -1) OVER (PARTITION BY stream_id ORDER BY sequence)"
            "  AS previous FROM records WHERE sequence IS NOT NULL"
            ") WHERE sequence > previous + 1 ORDER BY stream_id, sequence"
        ).fetchall()
        return highest, missing

    def query(
        self, where: distributor_pb2.RecordFilter, limit: int, page_bytes: int = PAGE_BYTES, newest_first: bool = False
    ) -> tuple[list[task_pb2.TaskRecord], bool]:
        """At most `limit` records in cursor order (or the newest first), and whether more match. A page
        also ends once it holds page_bytes (it always holds one record): a page of large records fits
        in a reply."""
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
            f"SELECT cursor, record FROM records WHERE {' AND '.join(clauses)} "
            f"ORDER BY cursor {'DESC' if newest_first else 'ASC'} LIMIT ?",
            (*args, limit + 1),
        )
        records: list[task_pb2.TaskRecord] = []
        size = 0
        for cursor, blob in rows:
            if len(records) == limit or (records and size + len(blob) > page_bytes):
                return records, True
            record = task_pb2.TaskRecord.FromString(blob)
            record.cursor = cursor
            records.append(record)
            size += len(blob)
        return records, False

    def scan(self, where: distributor_pb2.RecordFilter, page_size: int = 500) -> Iterator[task_pb2.TaskRecord]:
        """Every matching record, in cursor order, read a page at a time."""
        page = distributor_pb2.RecordFilter()
        page.CopyFrom(where)
        while records := self.query(page, page_size)[0]:
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
