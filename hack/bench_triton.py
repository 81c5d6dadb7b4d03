"""Inference on Triton against inference in process, side by side, on the same frames in one run.

Starts the tritonserver of the nvidia-pytriton wheel (CPU path: Python backend running onnxruntime) on
the repository assembled from triton_models/, then prints medians of:
  - the models alone, on the same preprocessed tensors: the detector per frame and per batch (a
    segment's frames in one call), the recognizer per crop and per batch, in process (onnxruntime,
    one inference thread, as Triton's instances are configured) against a Triton round trip (gRPC on
    loopback);
  - the processor's throughput (text_detector, frames decoded and boxes extracted included) on Triton
    with a segment's frames batched into one request against one request per frame, with two workers
    and a full queue, and in process for reference.

    .venv/bin/python hack/bench_triton.py [--repeats 9] [--tasks 12]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from bench_models import QUALITY, street

from dayu.media.codecs import encode_segment
from dayu.processor.core import ProcessorCore
from dayu.processor.inference import InferenceBackend, ModelRef, OnnxRuntimeBackend, TritonBackend, TritonParams
from dayu.processor.kinds import PROCESSORS
from dayu.processor.models import (
    DETECTION_MODEL,
    RECOGNITION_MODEL,
    TextDetectorParams,
    TextDetectorRunner,
    TextRecognizerParams,
    TextRecognizerRunner,
    crop_box,
)
from dayu.processor.repository import assemble
from dayu.processor.triton_server import TritonServer, model_statistics
from dayu.v1 import task_pb2, types_pb2

WIDTH, HEIGHT = 960, 540  # the embedded mesh's cameras; the detector's input is 960x544
SEGMENT = 4  # frames per segment, as the embedded mesh's streams cut them
RECOGNIZER_BATCH = 8


async def median_ms(call: Callable[[], Awaitable[object]], repeats: int) -> float:
    """Median milliseconds of `call`, after one warm-up call."""
    await call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def segment_frames() -> list[np.ndarray]:
    return [street(WIDTH, HEIGHT, seed) for seed in range(SEGMENT)]


def segment_task() -> task_pb2.Task:
    """A task whose first stage is the detector, on a JPEG segment of street frames with plates."""
    task_id = str(uuid.uuid4())
    task = task_pb2.Task(stream_id="bench", task_id=task_id, root_id=task_id)
    task.dag.stages.add(
        node="bench",
        spec=types_pb2.StageSpec(
            name="detect",
            processor="text_detector",
            input_type=types_pb2.DATA_TYPE_FRAMES,
            output_type=types_pb2.DATA_TYPE_BOXES,
        ),
    )
    task.segment.codec = types_pb2.CODEC_JPEG
    task.segment.frame_indices.extend(range(SEGMENT))
    encode_segment(task.segment, segment_frames(), QUALITY)
    return task


async def model_inputs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The detector's input for each frame of a segment, and the recognizer's for the plates it finds on
    them (each (1, 3, 48, W), padded to the widest crop, as one call of the recognizer gets them)."""
    detector = TextDetectorRunner(TextDetectorParams())
    recognizer = TextRecognizerRunner(TextRecognizerParams())
    frames, inputs = segment_frames(), []
    crops = []
    for frame in frames:
        sample = detector.model_input(frame)
        assert sample is not None
        inputs.append(sample)
        probabilities = await detector.backend.infer(ModelRef(DETECTION_MODEL), sample)
        crops += [crop_box(frame, d.box) for d in detector.boxes(probabilities, frame.shape[:2])]
    batch = recognizer.model_input(crops[: RECOGNIZER_BATCH * (len(crops) // RECOGNIZER_BATCH)])
    return inputs, [batch[i : i + 1] for i in range(len(batch))]


async def model_rows(backends: dict[str, InferenceBackend], repeats: int) -> None:
    frames, crops = await model_inputs()
    cases = [
        ("text_detection", f"{SEGMENT} frames", ModelRef(DETECTION_MODEL), frames, SEGMENT),
        ("text_recognition", f"{len(crops)} crops", ModelRef(RECOGNITION_MODEL), crops, RECOGNIZER_BATCH),
    ]
    names = list(backends)
    print(f"\n{'model':<17} {'input':<10} {'per call':<9} " + " ".join(f"{n:>22}" for n in names))
    for model_name, what, model, samples, batch in cases:
        for per_call in (1, batch):
            cells = []
            for backend in backends.values():

                async def calls(
                    backend: InferenceBackend = backend,
                    model: ModelRef = model,
                    samples: list[np.ndarray] = samples,
                    per_call: int = per_call,
                ) -> None:
                    for start in range(0, len(samples), per_call):
                        await backend.infer(model, np.concatenate(samples[start : start + per_call]))

                cells.append(await median_ms(calls, repeats) / len(samples))
            unit = "frame" if model_name == "text_detection" else "crop"
            row = " ".join(f"{f'{ms:.1f} ms/{unit}':>22}" for ms in cells)
            print(f"{model_name:<17} {what:<10} {per_call:<9} {row}")
    print(f"input tensors: detector {frames[0].shape[1:]}, recognizer {crops[0].shape[1:]}")


async def throughput(params: dict[str, object], tasks: int) -> tuple[float, float]:
    """(segments per second, mean seconds per segment) of a text_detector processor with two workers
    and every task queued at once."""
    runner = PROCESSORS.create("text_detector", params)
    core = ProcessorCore("bench", "text_detector", runner, workers=2, queue_capacity=tasks)
    await core.start()
    try:
        task = segment_task()
        await core.process(task, "detect")  # warm-up
        copies = []
        for _ in range(tasks):
            copy = task_pb2.Task()
            copy.CopyFrom(task)
            copies.append(copy)
        start = time.perf_counter()
        done = await asyncio.gather(*(core.process(copy, "detect") for copy in copies))
        elapsed = time.perf_counter() - start
    finally:
        await core.stop()
    assert all(t.dag.stages[0].state == task_pb2.STAGE_STATE_DONE for t in done)
    return tasks / elapsed, statistics.fmean(t.dag.stages[0].timings.process_s for t in done)


async def bench(repeats: int, tasks: int) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        server = TritonServer(assemble(Path(workdir) / "models"), Path(workdir))
        started = time.perf_counter()
        address = await server.start()
        print(f"tritonserver ready in {time.perf_counter() - started:.1f} s at {address} (CPU path, 1 instance)")
        triton = TritonBackend(TritonParams(address=address, timeout_s=120))
        try:
            print(f"median of {repeats} runs per case; frames {WIDTH}x{HEIGHT}")
            await model_rows({"onnxruntime in process": OnnxRuntimeBackend(1), "Triton round trip": triton}, repeats)

            frames = SEGMENT
            print(f"\ntext_detector processor, 2 workers, {tasks} segments of {frames} JPEG frames queued at once")
            print(f"{'backend':<12} {'frames per request':<19} {'segments/s':>10} {'frames/s':>9} {'s/segment':>10}")
            on_triton = {"backend": "triton", "triton": {"address": address, "timeout_s": 120}}
            for name, params, per_request in (
                ("triton", {**on_triton, "batch_size": frames}, frames),
                ("triton", {**on_triton, "batch_size": 1}, 1),
                ("onnxruntime", {"batch_size": frames}, frames),
                ("onnxruntime", {"batch_size": 1}, 1),
            ):
                rate, seconds = await throughput(params, tasks)
                print(f"{name:<12} {per_request:<19} {rate:>10.2f} {rate * frames:>9.2f} {seconds:>10.3f}")
            print("\nTriton's own statistics over the run:")
            for model, counters in (await model_statistics(address)).items():
                print(f"  {model}: {counters}")
        finally:
            await triton.aclose()
            await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="runs of each model case")
    parser.add_argument("--tasks", type=int, default=12, help="segments of each throughput case")
    args = parser.parse_args()
    asyncio.run(bench(args.repeats, args.tasks))


if __name__ == "__main__":
    main()
