"""The distributor records what never arrived: sequences of a stream still missing after the gap
timeout, those a restarted distributor finds missing in its store, and what a run numbered but never
delivered once it ended (settle)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dayu.distributor.core import DistributorCore, GapTracker, _settled
from dayu.distributor.store import RecordStore
from dayu.runtime.errors import InvalidArgument
from dayu.v1 import distributor_pb2, task_pb2

from conftest import make_task

TIMEOUT_S = 0.2


def task_of(stream: str, sequence: int) -> task_pb2.Task:
    task = make_task()
    task.stream_id, task.sequence = stream, sequence
    for stage in task.dag.stages:
        stage.state = task_pb2.STAGE_STATE_DONE
    return task


async def deliver(core: DistributorCore, stream: str, *sequences: int) -> None:
    for sequence in sequences:
        _, duplicate = await core.deliver(task_of(stream, sequence))
        assert not duplicate


async def open_core(path: Path, on_stored: list[task_pb2.TaskRecord] | None = None) -> DistributorCore:
    core = DistributorCore(
        RecordStore(path), on_stored.append if on_stored is not None else None, gap_timeout_s=TIMEOUT_S
    )
    await core.start()
    return core


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[DistributorCore]:
    core = await open_core(tmp_path / "records.sqlite")
    yield core
    await core.close()


async def records(core: DistributorCore) -> dict[tuple[str, int], task_pb2.TaskRecord]:
    """Every record by (stream, sequence); fails if one is there twice."""
    found, _ = await core.query(distributor_pb2.RecordFilter(), 1000)
    keyed = {(r.task.stream_id, r.task.sequence): r for r in found}
    assert len(keyed) == len(found)
    return keyed


async def test_a_sequence_missing_past_the_timeout_is_recorded_lost_and_a_late_arrival_refused(
    tmp_path: Path,
) -> None:
    fed: list[task_pb2.TaskRecord] = []
    core = await open_core(tmp_path / "records.sqlite", fed)
    await deliver(core, "cam", 0, 3)
    await deliver(core, "cam", 2)  # out of order: only 1 is missing now
    assert core.gaps.missing("cam") == [1]
    assert await core.check_gaps() == 0  # not yet due
    await asyncio.sleep(TIMEOUT_S + 0.05)
    assert await core.check_gaps() == 1
    lost = (await records(core))[("cam", 1)]
    assert (lost.outcome, lost.task.task_id, lost.task.root_id) == (task_pb2.TASK_OUTCOME_DROPPED, "cam#1", "cam#1")
    assert re.fullmatch(
        r"lost: sequence 1 of stream cam never reached the distributor \(sequence 3 did, 0\.\d s earlier\)", lost.reason
    )
    assert lost.latency_s == 0 and not lost.task.HasField("created_at") and not lost.HasField("accuracy")
    assert fed[-1] == lost  # feedback and watchers see it like any record
    late = task_of("cam", 1)
    assert await core.deliver(late) == (lost.cursor, True)
    assert core.duplicates == 1 and not core.gaps.gaps
    assert len(await records(core)) == 4
    await core.close()


async def test_the_background_check_records_gaps_as_they_expire(core: DistributorCore) -> None:
    checking = asyncio.create_task(core.check_gaps_forever())
    watched = core.watch(distributor_pb2.RecordFilter(after_cursor=2))
    try:
        await deliver(core, "cam", 0, 2)
        lost = await asyncio.wait_for(anext(watched), 2)
    finally:
        checking.cancel()
        await watched.aclose()
    assert (lost.task.task_id, lost.outcome) == ("cam#1", task_pb2.TASK_OUTCOME_DROPPED)


async def test_a_restarted_distributor_rebuilds_its_gaps_from_the_store(tmp_path: Path) -> None:
    path = tmp_path / "records.sqlite"
    first = await open_core(path)
    await deliver(first, "cam", 0, 4)
    await deliver(first, "door", 2)
    await first.close()  # before the gaps were due

    restarted = await open_core(path)
    assert (restarted.gaps.missing("cam"), restarted.gaps.missing("door")) == ([1, 2, 3], [0, 1])
    await deliver(restarted, "cam", 5, 2)
    await asyncio.sleep(TIMEOUT_S + 0.05)
    assert await restarted.check_gaps() == 4
    found = await records(restarted)
    await restarted.close()
    assert sorted(found) == [("cam", s) for s in range(6)] + [("door", s) for s in range(3)]
    assert found[("cam", 3)].reason.startswith(
        "lost: sequence 3 of stream cam never reached the distributor (sequence 4 did before the distributor restarted"
    )
    assert found[("door", 0)].task.task_id == "door#0"


async def test_settle_records_at_once_what_the_run_numbered_and_never_delivered(core: DistributorCore) -> None:
    await deliver(core, "cam", 0, 2)
    assert await core.settle({"cam": 5, "door": 2}) == 5
    found = await records(core)
    lost = {key: r.reason for key, r in found.items() if r.outcome == task_pb2.TASK_OUTCOME_DROPPED}
    assert sorted(lost) == [("cam", 1), ("cam", 3), ("cam", 4), ("door", 0), ("door", 1)]
    assert lost[("door", 1)] == "lost: sequence 1 of stream door never reached the distributor before the run ended"
    assert await core.settle({"cam": 5, "door": 2}) == 0  # nothing is recorded twice
    assert not core.gaps.gaps
    with pytest.raises(InvalidArgument, match=r"^generated\[cam\]"):
        await core.settle({"cam": -1})
    with pytest.raises(InvalidArgument, match=r"^generated"):
        await core.settle({"no spaces": 1})


async def test_merged_gaps_record_each_missing_sequence_once(core: DistributorCore) -> None:
    core.gaps = GapTracker(TIMEOUT_S, max_gaps=2)
    await deliver(core, "cam", 0, 10, 2, 4, 6)  # four runs open: the oldest merge, twice
    assert len(core.gaps.gaps["cam"]) == 2
    assert core.gaps.missing("cam") == [1, 2, 3, 4, 5, 7, 8, 9]  # 2 and 4 are stored, inside a merged run
    await asyncio.sleep(TIMEOUT_S + 0.05)
    await core.check_gaps()
    found = await records(core)
    assert sorted(found) == [("cam", s) for s in range(11)]
    assert sorted(s for (_, s), r in found.items() if r.outcome == task_pb2.TASK_OUTCOME_DROPPED) == [1, 3, 5, 7, 8, 9]
    assert core.duplicates == 0 and not core.gaps.gaps


def test_a_huge_jump_is_one_run_and_is_recorded_a_batch_at_a_time() -> None:
    tracker = GapTracker(timeout_s=1.0, max_jump=10**12)  # the default tracks a million at most
    tracker.stored("cam", 0, now=0.0)
    tracker.stored("cam", 10**12, now=0.0)
    tracker.stored("door", 2, now=0.0)
    assert len(tracker.gaps["cam"]) == 1
    assert tracker.due(now=0.5, limit=1000) == []
    due = tracker.due(now=1.0, limit=1000)
    assert [(stream, s) for stream, s, _ in due] == [("cam", s) for s in range(1, 1001)]
    # Streams take turns: the next check starts with the one the huge gap held up.
    assert [(stream, s) for stream, s, _ in tracker.due(now=1.0, limit=3)] == [("door", 0), ("door", 1), ("cam", 1)]
    tracker.stored("cam", 500, now=1.0)  # arrived after all: the run splits
    assert [(g.start, g.end) for g in tracker.gaps["cam"]] == [(1, 500), (501, 10**12)]


# Found by the fuzz (tests/integration/test_fuzz.py): one Deliver with sequence 2**62 had the
# distributor write lost records without end (120 MB in two minutes), and one SettleStreams with a
# count of 170,000 outlived its caller's deadline.


def test_a_jump_past_max_jump_is_stored_but_not_tracked() -> None:
    tracker = GapTracker(timeout_s=1.0, max_jump=100)
    tracker.stored("cam", 0, now=0.0)
    tracker.stored("cam", 2**62, now=0.0)
    assert tracker.highest["cam"] == 2**62 and "cam" not in tracker.gaps
    tracker.stored("cam", 2**62 + 101, now=0.0)  # a jump of 100 after it is tracked again
    assert [(g.start, g.end) for g in tracker.gaps["cam"]] == [(2**62 + 1, 2**62 + 101)]
    restarted = GapTracker(timeout_s=1.0, max_jump=100)
    restarted.restore({"cam": 2**62 + 101}, [("cam", 1, 2**62), ("cam", 2**62 + 1, 2**62 + 101)], now=0.0)
    assert [(g.start, g.end) for g in restarted.gaps["cam"]] == [(2**62 + 1, 2**62 + 101)]


async def test_settle_answers_after_a_bounded_number_and_the_gap_check_records_the_rest(
    core: DistributorCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dayu.distributor.core.SETTLE_AT_ONCE", 1000)
    await deliver(core, "cam", 0, 1200)
    assert await core.settle({"cam": 2500}) == 1000  # the first thousand at once
    while await core.check_gaps():  # the rest at once, not after the gap timeout
        pass
    found: dict[tuple[str, int], task_pb2.TaskRecord] = {}
    where = distributor_pb2.RecordFilter()
    while page := (await core.query(where, 1000))[0]:
        found.update(((r.task.stream_id, r.task.sequence), r) for r in page)
        where.after_cursor = page[-1].cursor
    assert sorted(found) == [("cam", s) for s in range(2500)]  # each sequence once
    assert found[("cam", 2499)].reason == _settled("cam", 2499)
    assert found[("cam", 1100)].reason == _settled("cam", 1100)
    assert not core.gaps.gaps and core.gaps.highest["cam"] == 2499
    await deliver(core, "cam", 2500)  # the stream goes on where it was settled


async def test_settle_refuses_a_count_past_max_jump(core: DistributorCore) -> None:
    await deliver(core, "cam", 0)
    with pytest.raises(InvalidArgument, match=r"^generated\[cam\]: a number of tasks, 0 to 100001 "):
        await core.settle({"cam": 100_002})
    with pytest.raises(InvalidArgument, match=r"^generated\[door\]: a number of tasks, 0 to 100000 "):
        await core.settle({"door": 2**63 - 1})


def test_streams_past_the_bound_forget_the_least_recently_stored() -> None:
    tracker = GapTracker(timeout_s=1.0, max_streams=2)
    tracker.stored("a", 0, 0.0)
    tracker.stored("b", 2, 0.0)  # 0 and 1 missing
    tracker.stored("a", 1, 0.0)
    tracker.stored("c", 0, 0.0)  # "b" is the least recent: forgotten with its gap
    assert list(tracker.highest) == ["a", "c"] and tracker.missing("b") == []
