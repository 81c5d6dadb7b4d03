"""The inference kinds on a real tritonserver (the nvidia-pytriton wheel's, CPU path), one server for
the module on the repository assembled from triton_models/: the same detections as in process, model
and version taken from the stage, Triton's statistics, a processor that outlives a Triton restart,
input tensors through shared memory (and in the requests where Triton cannot map it), and a server
that cannot start saying why."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc.aio as triton_grpc

from dayu.processor import triton_shm
from dayu.processor.backend_params import TritonParams
from dayu.processor.core import ProcessorCore
from dayu.processor.inference import ModelRef, TritonBackend, TritonUnavailable
from dayu.processor.kinds import PROCESSORS
from dayu.processor.repository import assemble
from dayu.processor.triton_server import TritonServer, TritonStartError, model_statistics
from dayu.v1 import task_pb2

from plates import VEHICLES, draw_scene, iou, run_stage, scene_task

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def triton(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TritonServer]:
    workdir = tmp_path_factory.mktemp("triton")
    server = TritonServer(assemble(workdir / "models"), workdir, startup_timeout_s=60)
    await server.start()
    yield server
    await server.stop()


def on_triton(server: TritonServer, **triton: Any) -> dict[str, Any]:
    return {"backend": "triton", "triton": {"address": server.address, **triton}}


async def test_a_known_image_gives_the_same_detections_on_triton_as_in_process(triton: TritonServer) -> None:
    width, height = 640, 360
    frames = [draw_scene(width, height), draw_scene(width, height)[:, ::-1].copy()]
    found = {}
    for backend, params in (("triton", on_triton(triton)), ("onnxruntime", {})):
        detector = PROCESSORS.create("text_detector", params)
        recognizer = PROCESSORS.create("text_recognizer", params)
        task = scene_task(frames)
        detect = await run_stage(detector, task, "detect")
        read = await run_stage(recognizer, task, "read")
        found[backend] = (detect.results[0].detections, read.results[0].detections)
        if backend == "triton":
            await detector.aclose()
            await recognizer.aclose()

    boxes, texts = found["triton"]
    assert [d.label for d in boxes] == ["plate", "plate"]
    for detection, vehicle in zip(boxes, VEHICLES, strict=True):
        assert iou(detection.box, vehicle.plate_box(width, height)) > 0.5
    assert [d.text.replace(" ", "") for d in texts] == [v.text.replace(" ", "") for v in VEHICLES]
    local_boxes, local_texts = found["onnxruntime"]
    assert [d.box for d in boxes] == [d.box for d in local_boxes]
    assert [(d.text, round(d.score, 4)) for d in texts] == [(d.text, round(d.score, 4)) for d in local_texts]

    stats = await model_statistics(triton.address)
    assert stats["text_detection:1"].inferences >= 2 and stats["text_detection:1"].executions >= 1
    assert stats["text_recognition:1"].inferences >= 2
    assert stats["text_detection:1"].compute_ms > 0


async def test_the_stage_names_the_model_and_version(triton: TritonServer) -> None:
    core = ProcessorCore(
        "edge-1", "text_detector", PROCESSORS.create("text_detector", on_triton(triton)), workers=1, queue_capacity=4
    )
    await core.start()
    try:
        outcomes = []
        for model, version in (("text_detection", 1), ("text_detection", 7), ("licence_plates", 0)):
            task = scene_task([draw_scene(320, 180)])
            task.dag.stages[0].spec.model, task.dag.stages[0].spec.model_version = model, version
            outcomes.append((await core.process(task, "detect")).dag.stages[0])
    finally:
        await core.stop()
    assert [stage.state for stage in outcomes] == [
        task_pb2.STAGE_STATE_DONE,
        task_pb2.STAGE_STATE_FAILED,
        task_pb2.STAGE_STATE_FAILED,
    ]
    assert "text_detection v7" in outcomes[1].error and "licence_plates" in outcomes[2].error
    # Not retried (another try would not help), and the reason names what Triton does serve.
    assert outcomes[1].error.startswith("ModelMismatch: ") and "it serves ['age:1'" in outcomes[1].error


async def test_a_processor_survives_a_triton_restart_mid_stream(triton: TritonServer) -> None:
    """Tasks keep coming while Triton stops and starts again: each either runs or is refused with
    UNAVAILABLE and the reason (Triton away is not the stage failing: the controller waits for it or
    goes elsewhere), the processor keeps serving, and once Triton is back the stages succeed again."""
    # Retries span the channel's reconnect backoff (0.5 s); two workers keep up with the stream meanwhile.
    params = on_triton(triton, timeout_s=5, attempts=3, backoff_s=0.2)
    core = ProcessorCore(
        "edge-1", "text_detector", PROCESSORS.create("text_detector", params), workers=2, queue_capacity=64
    )
    await core.start()
    frames = [draw_scene(320, 180)] * 2
    back = asyncio.Event()

    async def attempt() -> task_pb2.TaskStage | TritonUnavailable:
        try:
            return (await core.process(scene_task(frames), "detect")).dag.stages[0]
        except TritonUnavailable as error:
            return error

    async def stream(after_return: int) -> list[task_pb2.TaskStage | TritonUnavailable]:
        """A task every 0.4 s until Triton is back, and `after_return` more."""
        submitted = []
        while not back.is_set() or after_return:
            after_return -= back.is_set()
            submitted.append(asyncio.create_task(attempt()))
            await asyncio.sleep(0.4)
        return await asyncio.gather(*submitted)

    try:
        streaming = asyncio.create_task(stream(after_return=3))
        await asyncio.sleep(1)
        await triton.stop()
        while_down = await attempt()
        await triton.start()
        back.set()
        streamed = await streaming
    finally:
        await core.stop()

    assert isinstance(while_down, TritonUnavailable)
    assert str(while_down).startswith(f"Triton at {triton.address}: inference of text_detection")
    assert "failed 3 times, last UNAVAILABLE" in str(while_down)
    ran = [outcome for outcome in streamed if isinstance(outcome, task_pb2.TaskStage)]
    assert all(stage.state == task_pb2.STAGE_STATE_DONE for stage in ran)  # none failed: refused instead
    assert isinstance(streamed[0], task_pb2.TaskStage)
    assert all(isinstance(o, task_pb2.TaskStage) and len(o.results) == 2 for o in streamed[-3:])
    assert core.failed == 0 and core.processed == len(ran)


def _a_pid_gone() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(done.stdout)


def _files(folder: Path, pattern: str = "*") -> list[Path]:
    return list(folder.glob(pattern))


async def _regions(server: TritonServer, unregister: str = "") -> dict[str, Any]:
    """The shared memory regions Triton knows (after it has unregistered `unregister`)."""
    client = triton_grpc.InferenceServerClient(server.address)
    try:
        if unregister:
            await client.unregister_system_shared_memory(unregister)
        return (await client.get_system_shared_memory_status(as_json=True)).get("regions", {})
    finally:
        await client.close()


async def test_input_tensors_go_through_shared_memory_and_give_the_same_outputs(triton: TritonServer) -> None:
    """Triton on this host maps the regions: the outputs are those of tensors sent in the requests, the
    regions are registered while the backend is open (their files already gone from /dev/shm) and
    unregistered when it closes; regions that a Triton forgot (as after a restart) are made again, and
    those of a process that is gone are swept away."""
    left = f"{triton_shm.PREFIX}{await asyncio.to_thread(_a_pid_gone)}-0"  # as a killed processor leaves it
    await asyncio.to_thread((Path(triton_shm.SHM_DIR) / left).write_bytes, bytes(1 << 20))
    client = triton_grpc.InferenceServerClient(triton.address)
    await client.register_system_shared_memory(left, f"/{left}", 1 << 20)
    os.unlink(Path(triton_shm.SHM_DIR) / left)
    await client.close()

    batch = np.stack([draw_scene(320, 160), draw_scene(320, 160)[:, ::-1]]).transpose(0, 3, 1, 2) / 255.0
    model = ModelRef("text_detection")
    shared = TritonBackend(TritonParams(address=triton.address))
    wired = TritonBackend(TritonParams(address=triton.address, shared_memory=False))
    try:
        through_memory = await shared.infer_outputs(model, batch)
        regions = await _regions(triton)
        ours = [name for name in regions if name.startswith(f"{triton_shm.PREFIX}{os.getpid()}-")]
        assert len(ours) == 1 and int(regions[ours[0]]["byte_size"]) >= batch.size * 4
        assert left not in regions  # swept
        assert not await asyncio.to_thread(_files, Path(triton_shm.SHM_DIR), f"{triton_shm.PREFIX}*")
        in_requests = await wired.infer_outputs(model, batch)
        assert through_memory.keys() == in_requests.keys()
        for name, output in through_memory.items():
            np.testing.assert_array_equal(output, in_requests[name])

        await _regions(triton, unregister=ours[0])
        again = await shared.infer_outputs(model, batch)  # Triton forgot it: made again
        for name, output in again.items():
            np.testing.assert_array_equal(output, in_requests[name])
        assert shared.shared_memory_refused == ""
    finally:
        await shared.aclose()
        await wired.aclose()
    assert not [name for name in await _regions(triton) if name.startswith(triton_shm.PREFIX)]


async def test_a_triton_that_cannot_map_the_memory_is_sent_the_tensors(
    triton: TritonServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a Triton on another host or in another pod: the region's file is not where it looks."""
    monkeypatch.setattr(triton_shm, "SHM_DIR", str(tmp_path))
    backend = TritonBackend(TritonParams(address=triton.address))
    batch = np.zeros((1, 3, 64, 64), np.float32)
    try:
        first = await backend.infer_outputs(ModelRef("text_detection"), batch)
        second = await backend.infer_outputs(ModelRef("text_detection"), batch)
    finally:
        await backend.aclose()
    assert first.keys() == second.keys()
    assert backend.shared_memory_refused.startswith(f"Triton at {triton.address} cannot map this host's shared memory")
    assert "Unable to open shared memory region" in backend.shared_memory_refused
    assert not await asyncio.to_thread(_files, tmp_path) and not await _regions(triton)


async def test_no_room_for_shared_memory_sends_the_tensors(
    triton: TritonServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host without the shared memory asked for (here no /dev/shm at all; a full one fails the same
    way, reserving the region) sends the tensors in the requests."""
    monkeypatch.setattr(triton_shm, "SHM_DIR", str(tmp_path / "absent"))
    backend = TritonBackend(TritonParams(address=triton.address))
    try:
        outputs = await backend.infer_outputs(ModelRef("text_detection"), np.zeros((1, 3, 64, 64), np.float32))
    finally:
        await backend.aclose()
    assert outputs and backend.shared_memory_refused.startswith("no shared memory for a 49152 byte tensor")


async def test_closing_unregisters_a_region_in_flight_once_it_is_given_back(triton: TritonServer) -> None:
    backend = TritonBackend(TritonParams(address=triton.address))
    await backend.infer_outputs(ModelRef("text_detection"), np.zeros((1, 3, 64, 64), np.float32))
    shared = backend._shared
    assert shared is not None
    region = await shared.take(1 << 10)  # as a request in flight holds it
    assert region is not None
    closing = asyncio.create_task(backend.aclose())
    await asyncio.sleep(0.2)
    assert not closing.done()  # unregistered under its request, the request would fail
    assert await shared.take(1 << 10) is None  # closing: the tensors go in the requests
    shared.give(region)
    await asyncio.wait_for(closing, 10)
    assert not [name for name in await _regions(triton) if name.startswith(triton_shm.PREFIX)]


async def test_a_server_that_cannot_load_its_models_reports_why(tmp_path: Path) -> None:
    repository = assemble(tmp_path / "models")
    (repository / "text_recognition" / "1" / "model.onnx").write_bytes(b"not an ONNX model")
    server = TritonServer(repository, tmp_path, startup_timeout_s=60)
    with pytest.raises(TritonStartError, match=r"(?s)tritonserver exited with -?\d+.*text_recognition"):
        await server.start()
    assert not server.running
