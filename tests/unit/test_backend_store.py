"""The backend's SQLite store: what is written is there after reopening; the seed only fills a new file."""

from __future__ import annotations

from pathlib import Path

import pytest

from dayu.backend.store import INSTALLED, REMOVING, BackendStore
from dayu.v1 import decision_pb2, types_pb2


def pipeline(name: str) -> types_pb2.Pipeline:
    return types_pb2.Pipeline(name=name, stages=[types_pb2.StageSpec(name="s", processor="noop")])


def test_pipelines_and_streams_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "backend.sqlite"
    store = BackendStore(path, seed=[pipeline("seeded")])
    store.put_pipeline(pipeline("mine"))
    store.delete_pipeline("seeded")
    spec = decision_pb2.StreamSpec(stream_id="cam", node="edge-1", pipeline=pipeline("mine"))
    spec.policy.name = "fixed"
    spec.policy.params.update({"fps": 2})
    store.put_stream(spec)
    store.put_stream(decision_pb2.StreamSpec(stream_id="old"), REMOVING)
    store.close()

    reopened = BackendStore(path, seed=[pipeline("seeded")])  # not a new file: no seed again
    assert list(reopened.pipelines()) == ["mine"]
    assert reopened.streams() == {"cam": (spec, INSTALLED), "old": (decision_pb2.StreamSpec(stream_id="old"), REMOVING)}
    reopened.delete_stream("old")
    assert list(reopened.streams()) == ["cam"]


def test_a_store_of_another_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "backend.sqlite"
    BackendStore(path).close()
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(RuntimeError, match="schema 99"):
        BackendStore(path)
