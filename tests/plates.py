"""A scene with licence plates drawn at known places, and the plates pipeline on the real kinds: what
the tests of the inference stages (in process and on Triton) share."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dayu.media.codecs import encode_segment
from dayu.processor.kinds import StageRunner
from dayu.v1 import task_pb2, types_pb2

from conftest import BOXES, LABELS, make_task, stage

RED, BLUE = (0, 0, 200), (200, 60, 0)


@dataclass(frozen=True)
class Vehicle:
    """A vehicle body of `colour` (BGR) around a plate at (x, y, width, height) as fractions of the frame."""

    text: str
    colour: tuple[int, int, int]
    plate: tuple[float, float, float, float]

    def plate_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        x, y, w, h = self.plate
        return round(x * width), round(y * height), round((x + w) * width), round((y + h) * height)


VEHICLES = (
    Vehicle("AB12 CDE", RED, (0.15, 0.55, 0.21, 0.085)),
    Vehicle("KX52 TRB", BLUE, (0.6, 0.62, 0.21, 0.085)),
)


def draw_scene(width: int, height: int, vehicles: tuple[Vehicle, ...] = VEHICLES) -> np.ndarray:
    """A grey frame with each vehicle's body, and its white plate with the text centred in black."""
    frame = np.full((height, width, 3), 110, np.uint8)
    for vehicle in vehicles:
        x1, y1, x2, y2 = vehicle.plate_box(width, height)
        plate_height = y2 - y1
        cv2.rectangle(
            frame, (x1 - plate_height * 2, y1 - plate_height * 4), (x2 + plate_height * 2, y2 + 10), vehicle.colour, -1
        )
        cv2.rectangle(frame, (x1, y1), (x2, y2), (255, 255, 255), -1)
        scale, thickness = plate_height / 40, max(1, plate_height // 15)
        (text_width, text_height), _ = cv2.getTextSize(vehicle.text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        origin = (x1 + (x2 - x1 - text_width) // 2, y1 + (plate_height + text_height) // 2)
        cv2.putText(frame, vehicle.text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return frame


def plates_pipeline() -> types_pb2.Pipeline:
    """detect -> (read, colour) -> merge, on the real kinds."""
    return types_pb2.Pipeline(
        name="plates-and-colours",
        stages=[
            stage("detect", processor="text_detector"),
            stage("read", ("detect",), BOXES, LABELS, processor="text_recognizer"),
            stage("colour", ("detect",), BOXES, LABELS, processor="color_classifier"),
            stage("merge", ("read", "colour"), LABELS, LABELS, processor="merge"),
        ],
    )


def scene_task(frames: list[np.ndarray]) -> task_pb2.Task:
    task = make_task(plates_pipeline(), frames=len(frames))
    encode_segment(task.segment, frames, quality=90)
    return task


def iou(box: types_pb2.Box, truth: tuple[int, int, int, int]) -> float:
    x1, y1, x2, y2 = max(box.x1, truth[0]), max(box.y1, truth[1]), min(box.x2, truth[2]), min(box.y2, truth[3])
    inter = max(x2 - x1, 0) * max(y2 - y1, 0)
    union = (box.x2 - box.x1) * (box.y2 - box.y1) + (truth[2] - truth[0]) * (truth[3] - truth[1]) - inter
    return inter / union


async def run_stage(runner: StageRunner, task: task_pb2.Task, name: str) -> task_pb2.TaskStage:
    """Runs one stage as the processor core would on success."""
    stage = next(s for s in task.dag.stages if s.spec.name == name)
    await runner.run(task, stage)
    stage.state = task_pb2.STAGE_STATE_DONE
    return stage
