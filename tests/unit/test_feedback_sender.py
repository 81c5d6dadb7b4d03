"""The distributor's feedback to the scheduler: records go in order, in batches of what was stored
while the previous call was under way, each batch within the count and byte limits."""

from __future__ import annotations

import asyncio

from dayu.distributor import service
from dayu.distributor.service import FeedbackSender
from dayu.runtime.client import Channels
from dayu.v1 import scheduler_pb2, task_pb2


class Scheduler:
    """Takes ReportFeedback calls, one at a time, as the real one answers them (one unknown stream)."""

    def __init__(self, expected: int) -> None:
        self.calls: list[list[str]] = []
        self.expected, self.all_taken = expected, asyncio.Event()

    async def ReportFeedback(
        self, request: scheduler_pb2.ReportFeedbackRequest, **options: float
    ) -> scheduler_pb2.ReportFeedbackResponse:
        self.calls.append([r.task.task_id for r in request.records])
        if sum(len(c) for c in self.calls) >= self.expected:
            self.all_taken.set()
        await asyncio.sleep(0)
        unknown = sum(r.task.stream_id == "gone" for r in request.records)
        return scheduler_pb2.ReportFeedbackResponse(accepted=len(request.records) - unknown, unknown_stream=unknown)


def record(task_id: str, stream_id: str = "cam", detail_bytes: int = 0) -> task_pb2.TaskRecord:
    task = task_pb2.Task(task_id=task_id, stream_id=stream_id, root_id="r" * detail_bytes)
    return task_pb2.TaskRecord(task=task)


async def sent(sender: FeedbackSender, scheduler: Scheduler) -> None:
    sending = asyncio.create_task(sender.send())
    try:
        await asyncio.wait_for(scheduler.all_taken.wait(), 10)
    finally:
        sending.cancel()


async def test_records_stored_meanwhile_go_together_in_order_within_the_limits(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(service, "FEEDBACK_BATCH", 4)
    monkeypatch.setattr(service, "FEEDBACK_BATCH_BYTES", 3000)
    channels = Channels(1 << 20)
    sender = FeedbackSender("127.0.0.1:1", channels, capacity=100)  # its stub replaced: never dialled
    scheduler = Scheduler(expected=9)
    sender.stub = scheduler  # type: ignore[assignment]
    for i in range(6):
        sender.offer(record(f"t{i}"))
    sender.offer(record("big-1", detail_bytes=2000))  # with the next, over the bytes a call may carry
    sender.offer(record("big-2", detail_bytes=2000))
    sender.offer(record("lost", stream_id="gone"))
    await sent(sender, scheduler)

    assert scheduler.calls == [["t0", "t1", "t2", "t3"], ["t4", "t5", "big-1"], ["big-2", "lost"]]
    assert sender.lost == 1  # the scheduler did not know its stream
    await channels.close()
