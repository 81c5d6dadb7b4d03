"""The interface a processor kind of another package implements: version 1.

A package adds a processor kind to Dayu without touching it (docs/plugins.md; `dayu processor new NAME`
makes one): it declares an entry point in the group `dayu.processors`, whose name is the kind's name
and whose value is its runner class,

    [project.entry-points."dayu.processors"]
    brightness = "dayu_brightness.runner:Runner"

and the class implements this interface:

    class Runner:
        api_version = 1                       # the version of this interface it implements

        class Params(api.Params):             # its parameters (processors.KIND.params in a mesh file);
            dark_below: float = 60            # leave the class out for a kind that takes none

        def __init__(self, params: Params) -> None: ...

        async def run(self, task: api.Task, stage: api.TaskStage) -> None:
            '''Fills stage.results (per frame, in segment order) and stage.scenario; raises on failure.'''

        async def aclose(self) -> None:       # optional: releases what it holds, when the processor stops
            ...

A processor runs one kind: it imports the class on first use, checks its `api_version`, validates the
parameters with its `Params`, builds one runner and calls `run` for every stage of that kind, several
at once when it has several workers. `run` must not block the event loop: decode frames with
`decode_frames` and do CPU work in a thread (`asyncio.to_thread`). An exception fails the stage, and
the task is delivered with the stage FAILED and the exception's message; `Unavailable` (its backend is
away, not the stage wrong) fails the call instead, and the controller tries again or elsewhere.

What is stable in version 1 is every name in `__all__`, with the signatures and meanings given here:
a Dayu that supports version 1 (SUPPORTED_API_VERSIONS) runs a runner written against it unchanged.
Anything else of Dayu (every other module, and the internals these names come from) may change in
any release. A later version of this interface gets a new number; Dayu says which it supports, and
refuses a runner whose `api_version` is not one of them, naming it.

A kind that says something about each box of the stage before it (its one parent), as the colour
classifier does, subclasses `BoxRefiner` instead of writing `run`, and implements

    async def describe(self, objects, spec) -> list[dict]:
        '''For each (frame, parent detection) in `objects`, the fields of its own detection: a dict
        of label, text and score (any of them). Each keeps its parent's box and index.'''

BoxRefiner's `run` decodes the frames (only when there is a box), pairs them with the parent's
detections, and writes the results.

Importing this module is cheap (protobuf and pydantic); the names that need OpenCV or the codecs
(BoxRefiner, crop_box) import them when first used, and so do the functions that decode or encode.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import pydantic

from dayu.processor import results as _results
from dayu.runtime.errors import Unavailable
from dayu.v1 import task_pb2, types_pb2

if TYPE_CHECKING:
    import numpy as np

    from dayu.processor.refiners import BoxRefiner, crop_box

__all__ = [
    "API_VERSION",
    "ENTRY_POINT_GROUP",
    "SUPPORTED_API_VERSIONS",
    "Box",
    "BoxRefiner",
    "Detection",
    "Params",
    "Runner",
    "StageSpec",
    "Task",
    "TaskStage",
    "Unavailable",
    "crop_box",
    "decode_frames",
    "frame_box",
    "parent_results",
    "sample_task",
    "write_results",
]

API_VERSION = 1
"""The version of this interface; a runner says the one it implements as its class's `api_version`."""
SUPPORTED_API_VERSIONS = (1,)
"""The versions of this interface this Dayu runs."""
ENTRY_POINT_GROUP = "dayu.processors"
"""The entry-point group of processor kinds: name, the kind; value, "package.module:Class"."""

# The messages a runner reads and writes (dayu.v1, proto/dayu/v1/*.proto; compatible changes only).
Task = task_pb2.Task  # task.segment: the frames (frame_indices, resolution); task.dag.stages: every stage
TaskStage = task_pb2.TaskStage  # stage.spec (name, processor, parents), stage.results, stage.scenario
StageSpec = types_pb2.StageSpec
Detection = types_pb2.Detection  # box, label, score, text, parent_index
Box = types_pb2.Box  # x1, y1, x2, y2: pixels of the segment's frames


class Params(pydantic.BaseModel):
    """Base of a runner's parameters (a pydantic v2 model): an unknown key is refused, so a typo in the
    mesh file is an error that names the field, not a default silently kept."""

    model_config = pydantic.ConfigDict(extra="forbid")


class Runner(Protocol):
    """What a processor kind's class implements (see the module's docstring); `aclose` is optional."""

    api_version: ClassVar[int]

    async def run(self, task: Task, stage: TaskStage) -> None:
        """Fills stage.results and stage.scenario for the task's segment; raises on failure."""


async def decode_frames(task: Task) -> list[np.ndarray]:
    """The task's frames, one per `task.segment.frame_indices`, in that order: BGR uint8 arrays of
    shape (height, width, 3), as OpenCV gives them. Decoded in a worker thread; bad data raises an
    error naming the field, which fails the stage."""
    from dayu.media.codecs import decode_segment

    return await asyncio.to_thread(decode_segment, task.segment)


def frame_box(frame: np.ndarray) -> Box:
    """The box of a whole frame: where a label about the frame itself (not an object in it) goes."""
    height, width = frame.shape[:2]
    return Box(x1=0, y1=0, x2=float(width), y2=float(height))


def write_results(
    task: Task,
    stage: TaskStage,
    per_frame: Sequence[Sequence[Detection]],
    frames: Sequence[np.ndarray] = (),
) -> None:
    """Writes the stage's results: the detections of each frame of the segment (one list per frame
    index, in order; an empty list for a frame with none), replacing any there, and its scenario
    (objects per frame and their mean size relative to the frame, which the decoded `frames` give, or
    else the segment's resolution)."""
    _results.record(stage, task.segment, per_frame, _results.pixels_per_frame(task.segment, frames))


def parent_results(task: Task, stage: TaskStage) -> list[Sequence[Detection]]:
    """What the one parent stage of `stage` found on each frame, in segment order: the boxes a second
    stage looks at. Raises when the stage has no parent or several, or its parent did not succeed."""
    return _results.parent_detections(task, _results.only_parent(stage))


def sample_task(
    kind: str, frames: Sequence[np.ndarray], found_by_parent: Sequence[Sequence[Detection]] | None = None
) -> tuple[Task, TaskStage]:
    """A task on `frames` (BGR, all of one size) with a stage named "stage" of processor `kind`, and that
    stage: what a runner's tests give its `run`. With `found_by_parent` (the detections of each frame),
    "stage" has a parent stage "detect" that found them, for a runner that refines boxes."""
    from dayu.media.codecs import encode_segment

    task = Task(stream_id="sample", task_id="sample-0", root_id="sample-0")
    task.created_at.GetCurrentTime()
    task.dag.pipeline = "sample"
    task.segment.codec = types_pb2.CODEC_RAW_BGR
    task.segment.frame_indices.extend(range(len(frames)))
    encode_segment(task.segment, frames, quality=100)
    frames_in, boxes, labels = types_pb2.DATA_TYPE_FRAMES, types_pb2.DATA_TYPE_BOXES, types_pb2.DATA_TYPE_LABELS
    if found_by_parent is None:
        spec = StageSpec(name="stage", processor=kind, input_type=frames_in, output_type=labels)
    else:
        detect = StageSpec(name="detect", processor="detector", input_type=frames_in, output_type=boxes)
        done = task.dag.stages.add(spec=detect, node="edge", state=task_pb2.STAGE_STATE_DONE)
        for index, found in zip(task.segment.frame_indices, found_by_parent, strict=True):
            done.results.add(frame_index=index, detections=found)
        spec = StageSpec(name="stage", processor=kind, parents=["detect"], input_type=boxes, output_type=labels)
    return task, task.dag.stages.add(spec=spec, node="edge")


# Imported when first used: they load OpenCV and the codecs.
_LAZY = {"BoxRefiner": "dayu.processor.refiners", "crop_box": "dayu.processor.refiners"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
