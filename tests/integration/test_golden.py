"""Accuracy against the golden configuration: the distributor sends a delivered task without ground truth
to a golden processor (the detector's kind, frames at the source's resolution, not scaled down) and
scores the task's detections against what it finds there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dayu.media.frames import resize
from dayu.processor.kinds import PROCESSORS
from dayu.runtime.client import Channels
from dayu.v1 import distributor_pb2, distributor_pb2_grpc, task_pb2

from plates import draw_scene, run_stage, scene_task


async def test_a_task_without_ground_truth_is_scored_against_a_golden_processor(
    serve: Callable[..., Any], tmp_path: Path
) -> None:
    golden = await serve("processor", processor={"kind": "text_detector", "params": {"max_side": 4096}})
    distributor = await serve(
        "distributor",
        distributor={
            "database": str(tmp_path / "records.sqlite"),
            "golden": {"processors": {"text_detector": golden}, "every": 1},
        },
    )
    source = [draw_scene(640, 360), draw_scene(640, 360)[:, ::-1].copy()]
    task = scene_task([resize(frame, 320, 180) for frame in source])  # the configuration halved the resolution
    task.segment.source_resolution.width, task.segment.source_resolution.height = 640, 360
    await run_stage(PROCESSORS.create("text_detector", {}), task, "detect")
    for stage in task.dag.stages[1:]:
        stage.state = task_pb2.STAGE_STATE_FAILED  # only the detector matters here

    channels = Channels(64 * 1024 * 1024)
    try:
        stub = distributor_pb2_grpc.DistributorServiceStub(channels.get(distributor))
        await stub.Deliver(distributor_pb2.DeliverRequest(task=task), timeout=60)
        reply = await stub.QueryRecords(distributor_pb2.QueryRecordsRequest(filter=distributor_pb2.RecordFilter()))
    finally:
        await channels.close()
    (record,) = reply.records
    assert record.HasField("accuracy") and record.accuracy == 1.0  # both plates, on both frames
    assert not record.task.segment.frames
