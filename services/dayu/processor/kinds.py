"""Processor kinds, selected by name (the `processor` of a pipeline stage) with typed parameters.

A kind fills in one stage of a task: its per-frame results and scenario. Every kind's parameters are
here, but only the noop kind's code: the others register by the module they live in, imported when a
processor runs that kind, so a processor loads the libraries of its own kind alone (OpenCV for the
colour classifier, and onnxruntime, rapidocr and tritonclient too for the kinds on models) and a mesh
file's kinds validate without any of them."""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

import pydantic

from dayu.processor.api import ENTRY_POINT_GROUP, SUPPORTED_API_VERSIONS
from dayu.processor.backend_params import InferenceParams
from dayu.processor.model_params import ModelStageParams
from dayu.processor.results import CountParams
from dayu.runtime.config import StrictModel
from dayu.runtime.errors import FailedPrecondition
from dayu.runtime.registry import Registry
from dayu.v1 import task_pb2


class StageRunner(Protocol):
    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        """Fills stage.results and stage.scenario for the task's segment; raises on failure."""


@runtime_checkable
class ClosableRunner(Protocol):
    async def aclose(self) -> None:
        """Releases what the runner holds open (a connection to Triton); called when the processor stops."""


class ModelMismatch(FailedPrecondition):
    """A model is not what a stage needs: missing, or its tensors of another shape or type."""


@runtime_checkable
class CheckedRunner(Protocol):
    async def check(self) -> None:
        """Fails (ModelMismatch) when what the runner needs is not there or not as it expects (its model
        on Triton, its tensors' shapes); called when the processor starts, before any task."""


PROCESSORS: Registry[type[StageRunner]] = Registry("processor")


class NoopParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    delay_s: float = pydantic.Field(0.0, ge=0, le=60, description="time each stage takes, to emulate work")


@PROCESSORS.register("noop", params=NoopParams)
class NoopRunner:
    """Finds nothing, after an optional fixed delay: measures the mesh's own cost, and tests drains."""

    def __init__(self, params: NoopParams) -> None:
        self.delay_s = params.delay_s

    async def run(self, task: task_pb2.Task, stage: task_pb2.TaskStage) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        frames = len(task.segment.frame_indices)
        for index in task.segment.frame_indices:
            stage.results.add(frame_index=index)
        stage.scenario.object_counts.extend([0] * frames)
        stage.scenario.mean_object_sizes.extend([0.0] * frames)


class TextDetectorParams(InferenceParams):
    max_side: int = pydantic.Field(
        960, ge=32, le=4096, description="longer side fed to the model; larger frames are scaled down, never up"
    )
    pixel_threshold: float = pydantic.Field(0.3, gt=0, lt=1, description="text probability of a pixel that is text")
    score_threshold: float = pydantic.Field(0.5, ge=0, le=1, description="mean text probability to keep a box")
    unclip_ratio: float = pydantic.Field(1.6, ge=1, le=4, description="how far boxes grow around the text core")
    # A plate reader knows what a plate looks like from its camera: a text line several times wider
    # than high, and no taller than some share of the frame. Shapes the model takes for text (a row
    # of trees, a building's edge) are neither, and would be false plates.
    min_aspect: float = pydantic.Field(0.0, ge=0, description="keep boxes at least this many times wider than high")
    max_height_share: float = pydantic.Field(
        1.0, gt=0, le=1, description="keep boxes at most this share of the frame's height"
    )
    label: str = pydantic.Field("plate", min_length=1, description="label of every box")
    batch_size: int = pydantic.Field(
        8, ge=1, le=64, description="frames per model call; a segment's frames share calls"
    )


class TextRecognizerParams(InferenceParams):
    # Measured on 2 cores (hack/bench_models.py): with one thread, batches of 4 cost about what one crop per
    # call does and larger batches more; with two threads, batches of 4 are about a quarter cheaper per crop.
    batch_size: int = pydantic.Field(4, ge=1, le=256, description="crops per model call; a segment's crops share calls")


class ColorClassifierParams(StrictModel):
    region_height: float = pydantic.Field(2.0, gt=0, le=10, description="height of the body region, in box heights")
    region_width: float = pydantic.Field(1.0, gt=0, le=10, description="width of the body region, in box widths")


PROCESSORS.register_lazy("merge", "dayu.processor.results:MergeRunner")
PROCESSORS.register_lazy("count", "dayu.processor.results:CountRunner", params=CountParams)
PROCESSORS.register_lazy(
    "color_classifier", "dayu.processor.refiners:ColorClassifierRunner", params=ColorClassifierParams
)
PROCESSORS.register_lazy("text_detector", "dayu.processor.models:TextDetectorRunner", params=TextDetectorParams)
PROCESSORS.register_lazy("text_recognizer", "dayu.processor.models:TextRecognizerRunner", params=TextRecognizerParams)
PROCESSORS.register_lazy("model", "dayu.processor.model_stage:ModelStageRunner", params=ModelStageParams)

# Kinds of other installed packages (docs/plugins.md), by their entry points: their names now, from the
# packages' metadata; each is imported when a processor runs it. Last, after every kind of Dayu's own,
# so a plugin that takes one of their names is refused, naming it.
PROCESSORS.register_entry_points(ENTRY_POINT_GROUP, api_versions=SUPPORTED_API_VERSIONS)
