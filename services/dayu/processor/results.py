"""A stage's results in the task: what its parent stages found, what it records (detections per frame
and the scenario), and the join of parallel branches (the `merge` kind).

Protobuf only, no imaging library: the join kind loads none, and the kinds that look at frames share
this with it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pydantic

from dayu.runtime.config import StrictModel
from dayu.runtime.registry import NoParams
from dayu.v1 import task_pb2, types_pb2

if TYPE_CHECKING:
    import numpy as np


def _box_area(box: types_pb2.Box) -> float:
    return max(box.x2 - box.x1, 0.0) * max(box.y2 - box.y1, 0.0)


def pixels_per_frame(segment: task_pb2.Segment, frames: Sequence[np.ndarray]) -> float:
    """Pixels of one frame: of the decoded frames when there are some, else as the segment declares."""
    if frames:
        height, width = frames[0].shape[:2]
        return float(width * height)
    return float(segment.resolution.width * segment.resolution.height)


def record(
    stage: task_pb2.TaskStage,
    segment: task_pb2.Segment,
    per_frame: Sequence[Sequence[types_pb2.Detection]],
    frame_area: float,
) -> None:
    """Fills the stage's results and its scenario (object count and mean relative size per frame),
    what the scheduler adapts the configuration to."""
    del stage.results[:]
    stage.scenario.Clear()
    for frame_index, detections in zip(segment.frame_indices, per_frame, strict=True):
        stage.results.add(frame_index=frame_index, detections=detections)
        stage.scenario.object_counts.append(len(detections))
        if detections and frame_area <= 0:
            raise ValueError("segment.resolution is needed to relate object sizes to the frame")
        sizes = [_box_area(d.box) / frame_area for d in detections]
        stage.scenario.mean_object_sizes.append(statistics.fmean(sizes) if sizes else 0.0)


def parent_detections(task: task_pb2.Task, parent: str) -> list[Sequence[types_pb2.Detection]]:
    """What stage `parent` of the task's DAG found on each frame of the segment, in segment order."""
    stage = next(s for s in task.dag.stages if s.spec.name == parent)
    if stage.state != task_pb2.STAGE_STATE_DONE:
        raise ValueError(f"parent stage {parent!r} is {task_pb2.StageState.Name(stage.state)}, not DONE")
    by_frame = {result.frame_index: result.detections for result in stage.results}
    return [by_frame.get(frame_index, ()) for frame_index in task.segment.frame_indices]


def only_parent(stage: task_pb2.TaskStage) -> str:
    if len(stage.spec.parents) != 1:
        raise ValueError(
            f"stage {stage.spec.name!r} refines the boxes of exactly one parent stage, got {list(stage.spec.parents)}"
        )
    return stage.spec.parents[0]


class MergeRunner:
    """Joins parallel branches: on each frame, one detection per object, combining what every parent
    stage said about it.

    Detections of different parents are the same object when they refine the same box (same
    parent_index; a detection without one, from a detector, stands for its own position). The merged
    detection keeps the first parent's box, the first non-empty text, the labels of all parents in
    parent order joined by ":" (for example "plate:red"), the lowest score (it is only as sure as its
    least sure part) and that common index as parent_index."""

    def __init__(self, params: NoParams) -> None:
        """Takes no parameters."""

    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        if not stage.spec.parents:
            raise ValueError(f"merge stage {stage.spec.name!r} joins parent stages, but has none")
        per_parent = [parent_detections(task, parent) for parent in stage.spec.parents]
        per_frame = [merge_detections(found) for found in zip(*per_parent, strict=True)]
        record(stage, task.segment, per_frame, pixels_per_frame(task.segment, []))


def merge_detections(per_parent: Sequence[Sequence[types_pb2.Detection]]) -> list[types_pb2.Detection]:
    """One frame's detections of several parents, merged by object as MergeRunner says."""
    merged: dict[int, types_pb2.Detection] = {}
    for detections in per_parent:
        for position, detection in enumerate(detections):
            key = detection.parent_index if detection.HasField("parent_index") else position
            into = merged.get(key)
            if into is None:
                merged[key] = into = types_pb2.Detection()
                into.CopyFrom(detection)
                into.parent_index = key
                continue
            if detection.label and detection.label not in into.label.split(":"):
                into.label = f"{into.label}:{detection.label}" if into.label else detection.label
            into.text = into.text or detection.text
            into.score = min(into.score, detection.score)
    return [merged[key] for key in sorted(merged)]


class CountParams(StrictModel):
    label: str = pydantic.Field("", max_length=128, description="count only boxes of this label; empty: every box")


class CountRunner:
    """Counts what its parent stage found on each frame: one detection per frame, over the whole frame, its
    label "count" (or "count:LABEL" counting only that label), its text the number."""

    def __init__(self, params: CountParams) -> None:
        self.label = params.label

    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        found = parent_detections(task, only_parent(stage))
        resolution = task.segment.resolution
        whole = types_pb2.Box(x2=resolution.width, y2=resolution.height)
        label = f"count:{self.label}" if self.label else "count"
        per_frame = [
            [types_pb2.Detection(box=whole, label=label, score=1.0, text=str(_counted(detections, self.label)))]
            for detections in found
        ]
        record(stage, task.segment, per_frame, pixels_per_frame(task.segment, []))


def _counted(detections: Sequence[types_pb2.Detection], label: str) -> int:
    return sum(1 for d in detections if not label or d.label == label)
