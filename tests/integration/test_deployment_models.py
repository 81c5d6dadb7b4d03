"""A deployable processor loads and unloads its models as the deployment plan says: on a real
tritonserver in explicit model control mode (the repository API), and in process (onnxruntime). While
unloaded it refuses stages with FAILED_PRECONDITION naming its kind and node; tasks queued when an
unload comes are finished first."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as triton_grpc

from dayu.mesh.embedded import LoopbackWiring, Mesh
from dayu.mesh.model import CONFIGS, load_mesh_config
from dayu.mesh.plan import Instance, settings, triton_arguments
from dayu.processor.core import ProcessorCore
from dayu.processor.deployment import ModelDeployer
from dayu.processor.inference import ModelRef
from dayu.processor.kinds import PROCESSORS
from dayu.processor.repository import assemble
from dayu.processor.triton_server import TritonServer
from dayu.runtime.errors import FailedPrecondition
from dayu.v1 import scheduler_pb2, task_pb2

from plates import VEHICLES, draw_scene, iou, scene_task


def plan(load: bool, node: str = "edge-2", kind: str = "text_detector") -> scheduler_pb2.GetDeploymentPlanResponse:
    reply = scheduler_pb2.GetDeploymentPlanResponse()
    reply.nodes.add(node=node).kinds.add(kind=kind, load=load)
    return reply


async def detect(core: ProcessorCore) -> task_pb2.TaskStage:
    return (await core.process(scene_task([draw_scene(640, 360)]), "detect")).dag.stages[0]


async def test_triton_in_explicit_mode_loads_and_unloads_a_deployable_processors_model(tmp_path: Path) -> None:
    server = TritonServer(assemble(tmp_path / "models"), tmp_path, startup_timeout_s=60, load_models=[])
    await server.start()
    params = {"backend": "triton", "triton": {"address": server.address}}
    core = ProcessorCore("edge-2", "text_detector", PROCESSORS.create("text_detector", params), 1, 8)
    deployer = ModelDeployer(core, core.runner)
    await core.start()
    try:
        async with triton_grpc.InferenceServerClient(server.address) as client:
            assert not await client.is_model_ready("text_detection")  # explicit mode: nothing at start
            with pytest.raises(FailedPrecondition, match="'text_detector' is not loaded on edge-2"):
                await detect(core)
            assert deployer.model_bytes > 1_000_000  # PP-OCRv4's detector: about 4.7 MB
            await deployer.apply(plan(load=True))
            assert deployer.loaded and await client.is_model_ready("text_detection")
            assert 0 < deployer.load_s < 60
            stage = await detect(core)
            assert stage.state == task_pb2.STAGE_STATE_DONE
            assert iou(stage.results[0].detections[0].box, VEHICLES[0].plate_box(640, 360)) > 0.5
            await deployer.apply(plan(load=True))  # as planned already: nothing happens
            assert deployer.loads == 1
            # An unload while a stage is queued: that stage still runs, then the model goes.
            queued = asyncio.create_task(detect(core))
            await asyncio.sleep(0)
            await deployer.apply(plan(load=False))
            assert (await queued).state == task_pb2.STAGE_STATE_DONE
            assert not deployer.loaded and not await client.is_model_ready("text_detection")
            with pytest.raises(FailedPrecondition, match="deployment plan holds it unloaded"):
                await detect(core)
            await deployer.apply(plan(load=True, node="edge-1"))  # another node's plan: not this one's
            assert not deployer.loaded
            print(f"text_detection on Triton: load {deployer.load_s:.2f} s, {deployer.model_bytes} bytes")
    finally:
        await core.stop()
        await server.stop()


async def test_in_process_a_deployable_processor_opens_and_drops_its_session() -> None:
    runner = PROCESSORS.create("text_recognizer", {})
    core = ProcessorCore("edge-2", "text_recognizer", runner, 1, 8)
    deployer = ModelDeployer(core, runner)
    assert not deployer.loaded and runner.backend._sessions == {}  # type: ignore[attr-defined]
    await deployer.apply(plan(load=True, kind="text_recognizer"))
    assert deployer.loaded and len(runner.backend._sessions) == 1  # type: ignore[attr-defined]
    await deployer.apply(plan(load=False, kind="text_recognizer"))
    assert not deployer.loaded and runner.backend._sessions == {}  # type: ignore[attr-defined]
    assert deployer.loads == deployer.unloads == 1


async def _states(client: triton_grpc.InferenceServerClient) -> dict[str, str]:
    """Each model of the repository index, as READY, UNAVAILABLE (unloaded) or "" (never loaded)."""
    return {model.name: model.state for model in (await client.get_model_repository_index()).models}


async def test_the_mesh_s_triton_holds_the_always_loaded_models_and_the_plan_loads_and_frees_the_others(
    tmp_path: Path,
) -> None:
    """The tritonserver as the embedded mesh starts it (the plan's arguments): explicit model control,
    with the cloud's always-loaded recogniser loaded at start and edge-2's deployable detector not; the
    plan loads the detector, a stage runs on it, the plan unloads it and Triton frees it."""
    data = {
        "nodes": {
            "cloud": {"processors": ["text_recognizer"]},
            "edge-2": {"processors": ["color_classifier"], "deployable": ["text_detector"]},
        },
        "pipelines_file": str(CONFIGS / "pipelines.yaml"),
        "processors": {name: {"params": {"backend": "triton"}} for name in ("text_detector", "text_recognizer")},
        "triton": {"startup_timeout_s": 60},
    }
    config = load_mesh_config(tmp_path / "mesh.yaml", data)
    assert triton_arguments(config, ["cloud", "edge-2"]) == [
        "--model-control-mode=explicit",
        "--load-model=text_recognition",
    ]
    mesh = Mesh(config, tmp_path, console_port=None, metrics_port=None)
    tritons = await mesh._start_triton()
    assert mesh.triton is not None and tritons == dict.fromkeys(["cloud", "edge-2"], mesh.triton.address)
    section = settings(
        config, Instance("processor", "edge-2", "text_detector"), LoopbackWiring(config, tmp_path, tritons, None)
    )
    processor = section["processor"]
    assert processor["deployable"]["release_models"]  # no other processor on this Triton runs text_detection
    runner = PROCESSORS.create(processor["kind"], processor["params"])
    core = ProcessorCore("edge-2", processor["name"], runner, 1, 8)
    deployer = ModelDeployer(core, runner, release_models=processor["deployable"]["release_models"])
    await core.start()
    try:
        async with triton_grpc.InferenceServerClient(mesh.triton.address) as client:
            states = await _states(client)
            assert states["text_recognition"] == "READY"
            assert {model: state for model, state in states.items() if model != "text_recognition"} == dict.fromkeys(
                ["age", "face_detection", "gender", "object_detection", "text_detection"], ""
            ), states  # nothing else loaded at start
            await deployer.apply(plan(load=True))
            assert (await _states(client))["text_detection"] == "READY"
            stage = await detect(core)
            assert stage.state == task_pb2.STAGE_STATE_DONE and stage.results[0].detections
            started = asyncio.get_running_loop().time()
            await deployer.apply(plan(load=False))
            unload_s = asyncio.get_running_loop().time() - started
            index = {model.name: model for model in (await client.get_model_repository_index()).models}
            assert index["text_detection"].state == "UNAVAILABLE" and index["text_detection"].reason == "unloaded"
            assert index["text_recognition"].state == "READY"  # the cloud's: untouched
            # A model Triton has not loaded (a pipeline installed at run time names it; a Triton restarted
            # since) is loaded on its first use, through the signature or the inference itself.
            backend, batch = runner.backend, np.zeros((1, 3, 64, 64), np.float32)  # type: ignore[attr-defined]
            assert (await backend.infer(ModelRef("text_detection"), batch)).shape[:2] == (1, 1)
            await client.unload_model("text_detection")  # its signature stays known to the backend
            for _ in range(200):  # Triton unloads in the background
                if (await _states(client))["text_detection"] == "UNAVAILABLE":
                    break
                await asyncio.sleep(0.05)
            assert (await _states(client))["text_detection"] == "UNAVAILABLE"
            assert (await backend.infer(ModelRef("text_detection"), batch)).shape[:2] == (1, 1)
            assert (await _states(client))["text_detection"] == "READY"
            print(
                f"mesh's Triton: text_detection load {deployer.load_s:.2f} s (with its check), unload {unload_s:.2f} s"
            )
    finally:
        await core.stop()
        await runner.aclose()
        await mesh._stop_triton()
