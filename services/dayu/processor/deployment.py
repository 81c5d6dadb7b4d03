"""A deployable processor (the mesh file's `nodes.NODE.deployable`): it runs on its node from the start
but holds its models unloaded until the scheduler's deployment plan loads them, and unloads them when
the plan says so (dayu.scheduler.deployment).

It polls the plan for its node (GetDeploymentPlan) every poll_s. To load, it loads its kind's models
on its backend (Triton's repository API in explicit model control mode; a session in process for
onnxruntime), checks them as a processor does at start, and then takes tasks; the time that takes is
its load_s, reported with the bytes of its model files (GetProcessorStatus, then the monitor's
NodeResources.deployable). To unload, it first refuses new tasks, lets those queued and running finish
(up to drain_s), then unloads the models. While unloaded, Process fails with FAILED_PRECONDITION naming
the kind and the node, and the caller (the controller) sends the stage to another node that hosts it.

The models are the kind's own (the detector's, the recogniser's, a `model` kind's model); a model a
pipeline stage names instead is loaded on first use, as without deployment. With `release_models`
false (a Triton where another processor runs the same model: dayu.mesh.plan says which) unloading
only stops taking tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import grpc

from dayu.processor.core import ProcessorCore
from dayu.processor.kinds import CheckedRunner, StageRunner
from dayu.runtime.client import Channels
from dayu.runtime.logs import get_logger
from dayu.v1 import scheduler_pb2, scheduler_pb2_grpc

if TYPE_CHECKING:  # the inference backends (numpy, onnxruntime, tritonclient) load with a model kind only
    from dayu.processor.inference import ModelRef

log = get_logger(__name__)

# The models each of Dayu's kinds runs unless a stage names another (dayu.processor.models).
KIND_MODELS = {"text_detector": ("text_detection",), "text_recognizer": ("text_recognition",)}
PLAN_TIMEOUT_S = 5.0


def kind_models(kind: str, params: dict[str, Any]) -> list[str]:
    """The names of the models a processor of `kind` with `params` loads (none for kinds without)."""
    if kind == "model":
        return [str(params["model"])] if params.get("model") else []
    return list(KIND_MODELS.get(kind, ()))


def runner_models(runner: StageRunner) -> list[ModelRef]:
    """The models the runner uses by default (its kind's), as its backend names them."""
    from dayu.processor.inference import ModelRef

    params = getattr(runner, "params", None)
    if params is not None and hasattr(params, "model") and hasattr(params, "version"):  # the `model` kind
        return [ModelRef(params.model, params.version)]
    model = getattr(runner, "model", None)
    return [ModelRef(model)] if isinstance(model, str) else []


def models_bytes(models: list[ModelRef], params: object) -> int:
    """Bytes of the models' ONNX files (what they take in memory, at least); 0 for one not found here."""
    from dayu.processor.repository import model_file

    own = getattr(params, "model_repository", None)
    total = 0
    for model in models:
        try:
            with model_file(model.name, model.version, own) as path:
                total += path.stat().st_size
        except (ValueError, OSError):
            continue
    return total


class ModelDeployer:
    """Loads and unloads one processor's models as its node's deployment plan says."""

    def __init__(
        self, core: ProcessorCore, runner: StageRunner, *, release_models: bool = True, drain_s: float = 30.0
    ) -> None:
        self.core, self.runner = core, runner
        self.release_models = release_models
        self.drain_s = drain_s
        self.backend = getattr(runner, "backend", None)
        self.models = runner_models(runner) if self.backend is not None else []
        self.model_bytes = models_bytes(self.models, getattr(runner, "params", None))
        self.load_s = 0.0
        self.loads = self.unloads = 0
        self._failing = ""
        core.unloaded_because = self._unloaded_reason()

    def _unloaded_reason(self) -> str:
        return (
            f"processor {self.core.name!r} is not loaded on {self.core.node}: the scheduler's deployment plan "
            "holds it unloaded there"
        )

    @property
    def loaded(self) -> bool:
        return not self.core.unloaded_because

    async def load(self) -> float:
        """Loads the models, checks them, and takes tasks; returns the seconds it took."""
        started = time.perf_counter()
        for model in self.models:
            await self.backend.load_model(model)  # type: ignore[union-attr]
        if isinstance(self.runner, CheckedRunner):
            await self.runner.check()
        self.load_s = time.perf_counter() - started
        self.loads += 1
        self.core.unloaded_because = ""
        log.info("processor loaded", processor=self.core.name, node=self.core.node, load_s=round(self.load_s, 3))
        return self.load_s

    async def unload(self) -> None:
        """Refuses new tasks, lets the queued and running ones finish (up to drain_s), unloads the models."""
        self.core.unloaded_because = self._unloaded_reason()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.core.drained(), self.drain_s)
        if self.release_models:
            for model in self.models:
                await self.backend.unload_model(model)  # type: ignore[union-attr]
        self.unloads += 1
        log.info("processor unloaded", processor=self.core.name, node=self.core.node, released=self.release_models)

    async def apply(self, plan: scheduler_pb2.GetDeploymentPlanResponse) -> None:
        """Loads or unloads to match the plan's entry for this processor (none: as it is)."""
        for node in plan.nodes:
            for entry in node.kinds if node.node == self.core.node else ():
                if entry.kind != self.core.name:
                    continue
                if entry.load and not self.loaded:
                    await self.load()
                elif not entry.load and self.loaded:
                    await self.unload()

    async def follow(self, channels: Channels, scheduler: str, poll_s: float) -> None:
        """Polls the plan every poll_s and applies it; a failed poll or load is logged (once while it
        fails the same way) and tried again at the next poll."""
        stub = channels.stub(scheduler_pb2_grpc.SchedulerServiceStub, scheduler)
        request = scheduler_pb2.GetDeploymentPlanRequest(node=self.core.node)
        while True:
            try:
                await self.apply(await stub.GetDeploymentPlan(request, timeout=PLAN_TIMEOUT_S))
                self._failed("")
            except grpc.aio.AioRpcError as error:
                self._failed(f"plan unread: {error.code().name}: {error.details()}")
            except Exception as error:  # a load that failed: unloaded, tried again at the next poll
                self.core.unloaded_because = self._unloaded_reason()
                self._failed(f"{type(error).__name__}: {error}")
            await asyncio.sleep(poll_s)

    def _failed(self, why: str) -> None:
        if why and why != self._failing:
            log.warning("deployment not applied", processor=self.core.name, node=self.core.node, error=why)
        self._failing = why
