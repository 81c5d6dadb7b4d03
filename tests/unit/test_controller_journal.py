"""The controller's journal on a real SQLite file: what is held survives a reopen, retries are told
from new visits, and a restarted controller core resumes what its journal held."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dayu.controller.core import ControllerCore
from dayu.controller.journal import SEEN_LIMIT, TaskJournal, task_key
from dayu.runtime.errors import RemoteError
from dayu.v1 import task_pb2

from conftest import fork_join_pipeline, make_task


def arrived(task: task_pb2.Task, node: str = "cloud") -> task_pb2.Task:
    task.hops.add(component="controller", node=node)
    return task


async def test_a_held_task_survives_a_reopen_and_a_retry_is_a_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    journal = TaskJournal(path)
    task = arrived(make_task())
    assert await journal.hold(task)
    assert not await journal.hold(task)  # the sender's retry while it is held
    journal.close()

    reopened = TaskJournal(path)
    (held,) = await reopened.held()
    assert held.task == task and held.key == task_key(task) and not held.drop_reason
    await reopened.release(held.key)
    assert await reopened.held() == []
    assert not await reopened.hold(task)  # a retry after it left: still a duplicate
    again = task_pb2.Task()
    again.CopyFrom(task)
    arrived(again, "edge-1")
    assert await reopened.hold(again)  # the same task back with more hops: a new visit
    reopened.close()


async def test_fork_and_drop_replace_what_is_held_in_one_step(tmp_path: Path) -> None:
    journal = TaskJournal(tmp_path / "journal.sqlite")
    task = arrived(make_task())
    await journal.hold(task)
    copies = []
    for branch in ("classify", "count"):
        copy = task_pb2.Task()
        copy.CopyFrom(task)
        copy.task_id = f"{task.task_id}-{branch}"
        copies.append(copy)
    await journal.replace([task_key(task)], copies)
    assert sorted(h.task.task_id for h in await journal.held()) == sorted(c.task_id for c in copies)

    key = await journal.give_up([task_key(c) for c in copies], task, "join timed out")
    (held,) = await journal.held()
    assert (held.key, held.drop_reason) == (key, "join timed out")
    journal.close()


async def test_seen_keys_are_bounded(tmp_path: Path) -> None:
    journal = TaskJournal()
    keys = [f"t{i}#1" for i in range(SEEN_LIMIT + 10)]
    await journal.release(*keys)
    count = await journal._run(lambda: journal._db.execute("SELECT COUNT(*) FROM seen").fetchone()[0])
    assert count == SEEN_LIMIT
    journal.close()


class Recorder:
    """A transport that delivers into a list; forwarding and processing are not needed here."""

    def __init__(self) -> None:
        self.delivered: list[task_pb2.Task] = []
        self.down = False

    async def process(self, kind: str, task: task_pb2.Task, stage: str) -> task_pb2.TaskStage:
        (done,) = (task_pb2.TaskStage(spec=s.spec, node=s.node) for s in task.dag.stages if s.spec.name == stage)
        done.state, done.executed_on = task_pb2.STAGE_STATE_DONE, "cloud"
        return done  # the stage alone, as a processor answers

    async def forward(self, node: str, task: task_pb2.Task, timeout_s: float) -> None:
        raise RemoteError("UNAVAILABLE", "no peers here")

    async def deliver(self, task: task_pb2.Task, timeout_s: float) -> None:
        if self.down:
            raise RemoteError("UNAVAILABLE", "distributor restarting")
        self.delivered.append(task)

    async def probe(self, node: str, nbytes: int) -> None: ...

    async def record_drop(self, task: task_pb2.Task, reason: str) -> None:
        raise AssertionError(f"nothing should be dropped: {reason}")


def core(journal: TaskJournal, transport: Recorder) -> ControllerCore:
    return ControllerCore("cloud", "cloud", set(), {"noop"}, {}, transport, journal=journal, patience_s=60)


async def test_a_restarted_controller_resumes_and_delivers_what_it_held(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    transport = Recorder()
    transport.down = True  # the distributor is away: the task waits, journaled
    first = core(TaskJournal(path), transport)
    task = make_task(fork_join_pipeline(), node="cloud")
    sent = task.SerializeToString()  # what the generator sends, and sends again on a retry
    assert await first.submit(task, "")
    await asyncio.sleep(0.3)
    for work in list(first._work):  # the process dies here (kill -9: nothing else runs)
        work.cancel()
    first.journal.close()

    transport.down = False
    second = core(TaskJournal(path), transport)
    assert await second.resume() == 1
    for _ in range(100):
        if transport.delivered and not await second.journal.held():
            break
        await asyncio.sleep(0.05)
    (delivered,) = transport.delivered
    assert delivered.task_id == task.task_id
    assert all(s.state == task_pb2.STAGE_STATE_DONE for s in delivered.dag.stages)
    assert await second.journal.held() == []
    retry = task_pb2.Task.FromString(sent)
    assert not await second.submit(retry, "")  # the generator's retry of it now: acknowledged, not routed again
    assert len(transport.delivered) == 1
    second.journal.close()
