"""The backend's SQLite file: the catalogue of pipelines, and the sources and streams added through it.

What should run lives here, so that a restarted backend knows it and reconciles the generators with
it. Rows hold the serialized protobuf messages (the contracts' own encoding: no second model of the
messages). One connection, used from worker threads one call at a time; WAL, so a crash mid-write
leaves the last committed state."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from dayu.v1 import datasource_pb2, decision_pb2, types_pb2

SCHEMA_VERSION = 2
INSTALLED, REMOVING = "installed", "removing"  # a stream's state: runs, or its generator must stop it

SCHEMA = """
CREATE TABLE pipelines (name TEXT PRIMARY KEY, pipeline BLOB NOT NULL);
CREATE TABLE streams (
    stream_id TEXT PRIMARY KEY,
    spec BLOB NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('installed', 'removing'))
);
"""
SOURCES = "CREATE TABLE sources (source_id TEXT PRIMARY KEY, spec BLOB NOT NULL);"  # schema 2


class BackendStore:
    def __init__(self, path: Path | None, seed: Iterable[types_pb2.Pipeline] = ()) -> None:
        """Opens (or creates) the file; a new file starts with the `seed` pipelines. None: in memory."""
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._db.executescript(f"BEGIN;{SCHEMA}{SOURCES}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
            elif version == 1:  # a file of the first schema: sources came with the second
                self._db.executescript(f"BEGIN;{SOURCES}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
            elif version != SCHEMA_VERSION:
                raise RuntimeError(f"{path}: backend store of schema {version}; this backend reads {SCHEMA_VERSION}")
        if version == 0:
            for pipeline in seed:
                self.put_pipeline(pipeline)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- pipelines

    def pipelines(self) -> dict[str, types_pb2.Pipeline]:
        with self._lock:
            rows = self._db.execute("SELECT pipeline FROM pipelines ORDER BY name").fetchall()
        found = (types_pb2.Pipeline.FromString(row[0]) for row in rows)
        return {p.name: p for p in found}

    def put_pipeline(self, pipeline: types_pb2.Pipeline) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO pipelines (name, pipeline) VALUES (?, ?)",
                (pipeline.name, pipeline.SerializeToString(deterministic=True)),
            )

    def delete_pipeline(self, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pipelines WHERE name = ?", (name,))

    # -- streams

    def streams(self) -> dict[str, tuple[decision_pb2.StreamSpec, str]]:
        """stream id -> (spec, state), in id order."""
        with self._lock:
            rows = self._db.execute("SELECT stream_id, spec, state FROM streams ORDER BY stream_id").fetchall()
        return {row[0]: (decision_pb2.StreamSpec.FromString(row[1]), row[2]) for row in rows}

    def put_stream(self, spec: decision_pb2.StreamSpec, state: str = INSTALLED) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO streams (stream_id, spec, state) VALUES (?, ?, ?)",
                (spec.stream_id, spec.SerializeToString(deterministic=True), state),
            )

    def delete_stream(self, stream_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM streams WHERE stream_id = ?", (stream_id,))

    # -- sources

    def sources(self) -> dict[str, datasource_pb2.SourceSpec]:
        """source id -> spec, in id order."""
        with self._lock:
            rows = self._db.execute("SELECT spec FROM sources ORDER BY source_id").fetchall()
        found = (datasource_pb2.SourceSpec.FromString(row[0]) for row in rows)
        return {s.source_id: s for s in found}

    def put_source(self, spec: datasource_pb2.SourceSpec) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO sources (source_id, spec) VALUES (?, ?)",
                (spec.source_id, spec.SerializeToString(deterministic=True)),
            )

    def delete_source(self, source_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sources WHERE source_id = ?", (source_id,))
