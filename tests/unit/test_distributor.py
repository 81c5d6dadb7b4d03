from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import pytest

from dayu.distributor.core import DistributorCore
from dayu.distributor.store import RecordStore
from dayu.runtime.errors import InvalidArgument
from dayu.v1 import distributor_pb2, task_pb2

from conftest import make_task


def finished_task(stream: str = "stream-1") -> task_pb2.Task:
    task = make_task()
    task.stream_id = stream
    for stage in task.dag.stages:
        stage.state = task_pb2.STAGE_STATE_DONE
    return task


@pytest.fixture
def core(tmp_path: Path) -> DistributorCore:
    return DistributorCore(RecordStore(tmp_path / "records.sqlite"))


async def test_delivered_twice_is_stored_once_and_survives_reopen(core: DistributorCore, tmp_path: Path) -> None:
    task = finished_task()
    first = await core.deliver(task)
    again = await core.deliver(task)
    assert again == (first[0], True)
    core.store.close()
    reopened = RecordStore(tmp_path / "records.sqlite")
    (record,) = reopened.query(distributor_pb2.RecordFilter(), 10)
    assert record.task.task_id == task.task_id and record.cursor == first[0]
    assert record.outcome == task_pb2.TASK_OUTCOME_DELIVERED


async def test_pending_stage_is_not_deliverable_but_droppable(core: DistributorCore) -> None:
    task = make_task()
    with pytest.raises(InvalidArgument, match=r"^task.dag.stages\[0\].state"):
        await core.deliver(task)
    with pytest.raises(InvalidArgument, match=r"^reason"):
        await core.record_drop(task, " ")
    await core.record_drop(task, "join timed out after 5 s")
    (record,), _ = core.query(distributor_pb2.RecordFilter(), 0)
    assert (record.outcome, record.reason) == (task_pb2.TASK_OUTCOME_DROPPED, "join timed out after 5 s")


async def test_query_pages_by_cursor_and_stream_and_exports_jsonl(core: DistributorCore) -> None:
    for i in range(5):
        await core.deliver(finished_task("a" if i % 2 == 0 else "b"))
    page, next_cursor = core.query(distributor_pb2.RecordFilter(stream_id="a"), 2)
    assert len(page) == 2 and next_cursor == page[-1].cursor
    rest, last = core.query(distributor_pb2.RecordFilter(stream_id="a", after_cursor=next_cursor), 2)
    assert len(rest) == 1 and last == 0
    lines = gzip.decompress(b"".join(core.export(distributor_pb2.RecordFilter()))).splitlines()
    assert [json.loads(line)["task"]["stream_id"] for line in lines] == ["a", "b", "a", "b", "a"]
    with pytest.raises(InvalidArgument, match=r"^limit"):
        core.query(distributor_pb2.RecordFilter(), 5000)


async def test_watch_yields_new_records(core: DistributorCore) -> None:
    await core.deliver(finished_task())
    watched = core.watch(distributor_pb2.RecordFilter())
    assert (await anext(watched)).cursor == 1
    later = asyncio.create_task(anext(watched))
    await asyncio.sleep(0.05)
    assert not later.done()
    await core.deliver(finished_task())
    assert (await asyncio.wait_for(later, 5)).cursor == 2
