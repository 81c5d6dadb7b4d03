"""Dayu's application processors (configs/processors.yaml) on real photos, in process against Triton, side by
side in one run.

Starts one tritonserver of the nvidia-pytriton wheel (CPU path: Python backend running onnxruntime, one
instance, one thread) on the assembled repository, then prints medians (markdown tables) of:
  1. each processor's whole stage run (JPEG decoding, pre-processing, model, decoding of its outputs), with
     backend onnxruntime in process (intra_op_threads 1) and backend triton: vehicle_detector and
     person_detector on bus.jpg stretched to 960x540; face_detector, age_estimator and gender_classifier
     on grace_hopper.jpg and astronaut.png (one face each); plate_finder on the vehicle detector's boxes
     on the bus, text_recognizer on the plates it finds;
  2. the models alone (one call, no pre- or post-processing) on the same real inputs repeated to a
     batch, ms per frame (or crop) at each batch size: the outputs the processors read (CenterNet: only
     `detections`), and once the CenterNet with all three outputs;
  3. where the time of a CenterNet stage goes (JPEG decoding, pre-processing, model, decoding);
  4. where a Triton round trip's time goes, from Triton's own statistics (queue, input, the Python
     backend's execute with onnxruntime, output) against the client's round trip and the same call in
     process.

Cases take turns in every round (one warm-up round first), so a busy spell of the machine slows them
alike. The photos come from installed packages: ultralytics (bus.jpg), scikit-image (astronaut.png),
matplotlib (grace_hopper.jpg); pip install --no-deps -r tests/samples-requirements.txt.

    .venv/bin/python hack/bench_apps.py [--repeats 15] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime
import yaml
from bench_models import QUALITY

from dayu.media.codecs import decode_segment, encode_segment
from dayu.processor.inference import InferenceBackend, ModelRef, OnnxRuntimeBackend, TritonBackend, TritonParams
from dayu.processor.kinds import PROCESSORS
from dayu.processor.model_stage import ModelStageRunner
from dayu.processor.models import DETECTION_MODEL, RECOGNITION_MODEL, TextDetectorRunner, TextRecognizerRunner
from dayu.processor.refiners import crop_box
from dayu.processor.repository import assemble
from dayu.processor.results import pixels_per_frame, record
from dayu.processor.triton_server import TritonServer
from dayu.v1 import task_pb2, types_pb2

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = yaml.safe_load((ROOT / "configs" / "processors.yaml").read_text())
PHOTOS = {
    "bus": ("ultralytics", "ultralytics/assets/bus.jpg"),
    "grace_hopper": ("matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
    "astronaut": ("scikit-image", "skimage/data/astronaut.png"),
}
WIDTH, HEIGHT = 960, 540  # the embedded mesh's cameras: the bus photo is stretched to it
BACKENDS = ("in process", "Triton")
BATCHES = (1, 2, 4, 8, 16, 32)
LARGE_BATCH = 8  # the largest batch of the large models (CenterNet, PP-OCR), as their Triton configs allow
SMALL_FRAMES = 32  # a small model's measurement covers this many frames (a call is well under a millisecond)


def photo(name: str) -> np.ndarray:
    distribution, path = PHOTOS[name]
    try:
        file = importlib.metadata.distribution(distribution).locate_file(path)
    except importlib.metadata.PackageNotFoundError:
        needed = "pip install --no-deps -r tests/samples-requirements.txt"
        raise SystemExit(f"{distribution} is not installed: {needed}") from None
    image = cv2.imread(str(file), cv2.IMREAD_COLOR)
    assert image is not None, file
    if name == "bus":
        image = cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    return image


def one_frame_task(image: np.ndarray, stages: list[tuple[str, str, list[str]]]) -> task_pb2.Task:
    """The photo as a one-frame JPEG segment, with the stages (name, processor, parents)."""
    task = task_pb2.Task(task_id="bench", stream_id="bench", root_id="bench")
    task.segment.codec = types_pb2.CODEC_JPEG
    task.segment.frame_indices.append(0)
    encode_segment(task.segment, [image], QUALITY)
    for name, processor, parents in stages:
        task.dag.stages.add(spec=types_pb2.StageSpec(name=name, processor=processor, parents=parents))
    return task


async def processor(name: str, backend: dict[str, Any]) -> Any:
    """The catalogue's processor `name` on that backend, checked as a processor checks it at start."""
    section = CATALOGUE.get(name, {"kind": name, "params": {}})  # a kind of its own name (text_recognizer)
    runner = PROCESSORS.create(section["kind"], {**section["params"], **backend})
    await runner.check()
    return runner


def found(stage: task_pb2.TaskStage) -> list[types_pb2.Detection]:
    return [d for result in stage.results for d in result.detections]


async def medians(cases: list[Callable[[], Awaitable[object]]], repeats: int) -> list[float]:
    """Median seconds of each case's call; the cases take turns, after one warm-up round."""
    times: list[list[float]] = [[] for _ in cases]
    for round_ in range(repeats + 1):
        for call, case_times in zip(cases, times, strict=True):
            start = time.perf_counter()
            await call()
            if round_:
                case_times.append(time.perf_counter() - start)
    return [statistics.median(case_times) for case_times in times]


def ratio(triton: float, local: float) -> str:
    return f"{triton / local:.2f}x" if local > 0 else "-"


# --------------------------------------------------------------------------- 1. the processors
@dataclass
class StageCase:
    processor: str
    photo: str
    task: task_pb2.Task
    stage: int
    unit: str = "frame"
    runners: list[Any] = field(default_factory=list)  # one per backend, in BACKENDS order

    @property
    def units(self) -> int:
        """Frames, or the parent's boxes (a stage on boxes)."""
        spec = self.task.dag.stages[self.stage].spec
        if not spec.parents:
            return len(self.task.segment.frame_indices)
        parent = next(s for s in self.task.dag.stages if s.spec.name == spec.parents[0])
        return len(found(parent))


async def stage_cases(backends: list[dict[str, Any]]) -> list[StageCase]:
    """The application's stages on the photos, each stage's parents run once in process first (so each
    child stage sees the boxes it sees in a pipeline)."""
    bus = one_frame_task(
        photo("bus"),
        [
            ("vehicles", "vehicle_detector", []),
            ("people", "person_detector", []),
            ("plates", "plate_finder", ["vehicles"]),
            ("read", "text_recognizer", ["plates"]),
        ],
    )
    faces = {
        name: one_frame_task(
            photo(name),
            [
                ("faces", "face_detector", []),
                ("age", "age_estimator", ["faces"]),
                ("gender", "gender_classifier", ["faces"]),
            ],
        )
        for name in ("grace_hopper", "astronaut")
    }
    cases = [StageCase("vehicle_detector", "bus", bus, 0), StageCase("person_detector", "bus", bus, 1)]
    for name, task in faces.items():
        cases.append(StageCase("face_detector", name, task, 0))
    for stage, unit in ((1, "face"), (2, "face")):
        for name, task in faces.items():
            cases.append(StageCase(task.dag.stages[stage].spec.processor, name, task, stage, unit))
    cases += [StageCase("plate_finder", "bus", bus, 2, "box"), StageCase("text_recognizer", "bus", bus, 3, "plate")]
    for case in cases:
        case.runners = [await processor(case.processor, backend) for backend in backends]
    # Parents first: the cases are in pipeline order.
    for case in cases:
        stage = case.task.dag.stages[case.stage]
        await case.runners[0].run(case.task, stage)
        stage.state = task_pb2.STAGE_STATE_DONE
    return cases


def what_found(case: StageCase) -> str:
    detections = found(case.task.dag.stages[case.stage])
    if case.processor in ("age_estimator", "gender_classifier"):
        return ", ".join(f"{d.label} ({d.text})" if case.processor == "age_estimator" else d.label for d in detections)
    if case.processor == "text_recognizer":
        return ", ".join(repr(d.text) for d in detections)
    labels: dict[str, int] = {}
    for d in detections:
        labels[d.label] = labels.get(d.label, 0) + 1
    return ", ".join(f"{n} {label}" for label, n in labels.items()) or "none"


async def stage_table(cases: list[StageCase], repeats: int) -> None:
    calls: list[Callable[[], Awaitable[object]]] = []
    for case in cases:
        for runner in case.runners:
            calls.append(lambda runner=runner, case=case: runner.run(case.task, case.task.dag.stages[case.stage]))
    seconds = await medians(calls, repeats)
    print(f"\n### 1. Processors: a whole stage run (JPEG decoding, pre-processing, model, decoding), {repeats} runs")
    print("\n| processor | photo | input | found | in process ms | Triton ms | Triton / in process | ms per unit |")
    print("|---|---|---|---|---:|---:|---:|---|")
    for i, case in enumerate(cases):
        local, triton = seconds[2 * i] * 1e3, seconds[2 * i + 1] * 1e3
        frames = case.task.segment.resolution
        units = case.units
        plural = {"box": "boxes"}.get(case.unit, f"{case.unit}s") if units != 1 else case.unit
        what = f"{frames.width}x{frames.height} frame" if case.unit == "frame" else f"{units} {plural}"
        per = f"{local / units:.1f} / {triton / units:.1f} per {case.unit}" if units else "-"
        print(
            f"| {case.processor} | {case.photo} | {what} | {what_found(case)} | {local:.1f} | {triton:.1f} "
            f"| {ratio(triton, local)} | {per} |"
        )


# --------------------------------------------------------------------------- 2. the models alone
@dataclass
class ModelCase:
    model: str
    what: str  # the input, in words
    sample: np.ndarray  # one sample, batch axis of 1
    outputs: list[str]
    batches: list[int]
    small: bool  # a call of well under a millisecond: each measurement repeats it


async def model_cases(cases: list[StageCase], max_batch: dict[str, int], quick: bool) -> list[ModelCase]:
    """Each model's real input (the stages' own pre-processing of the photos), one sample."""
    by_processor = {(c.processor, c.photo): c for c in cases}
    out = []
    for processor_name, photo_name, large in (
        ("vehicle_detector", "bus", True),
        ("face_detector", "grace_hopper", False),
        ("age_estimator", "grace_hopper", False),
        ("gender_classifier", "grace_hopper", False),
    ):
        case = by_processor[(processor_name, photo_name)]
        runner: ModelStageRunner = case.runners[0]
        model = runner._model()
        names, _ = await runner._check(model)
        spec = case.task.dag.stages[case.stage].spec
        frames = decode_segment(case.task.segment)
        parents = None
        if spec.parents:
            parent = next(s for s in case.task.dag.stages if s.spec.name == spec.parents[0])
            parents = [found(parent)]
        _, _, inputs = runner._inputs(frames, parents)
        sample = inputs[0]
        what = f"{photo_name} {'face' if parents else 'frame'} {'x'.join(map(str, sample.shape[1:]))}"
        largest = min(max_batch[model.name], LARGE_BATCH if large else max(BATCHES))
        batches = [b for b in BATCHES if b <= largest]
        out.append(ModelCase(model.name, what, sample, names, batches, not large))
        if processor_name == "vehicle_detector":
            every = ["heatmap", "ltrb", "detections"]
            out.append(ModelCase(model.name, f"{what}, all 3 outputs", sample, every, [1, 4], False))

    bus = by_processor[("plate_finder", "bus")]
    frame = decode_segment(bus.task.segment)[0]
    vehicles = found(bus.task.dag.stages[0])
    crop = crop_box(frame, max(vehicles, key=lambda d: (d.box.x2 - d.box.x1) * (d.box.y2 - d.box.y1)).box)
    detector: TextDetectorRunner = bus.runners[0]
    sample = detector.model_input(crop)
    assert sample is not None
    batches = [b for b in BATCHES if b <= min(LARGE_BATCH, max_batch[DETECTION_MODEL])]
    what = f"bus's largest box {'x'.join(map(str, sample.shape[1:]))}"
    out.append(ModelCase(DETECTION_MODEL, what, sample, [], batches, False))
    plates = found(bus.task.dag.stages[2])
    recognizer: TextRecognizerRunner = by_processor[("text_recognizer", "bus")].runners[0]
    sample = recognizer.model_input([crop_box(frame, plates[0].box)]) if plates else None
    if sample is not None:
        batches = [b for b in BATCHES if b <= min(LARGE_BATCH, max_batch[RECOGNITION_MODEL])]
        what = f"bus plate {'x'.join(map(str, sample.shape[1:]))}"
        out.append(ModelCase(RECOGNITION_MODEL, what, sample, [], batches, False))
    if quick:
        for case in out:
            case.batches = sorted({case.batches[0], case.batches[-1]})
    return out


async def model_table(cases: list[ModelCase], backends: list[InferenceBackend], repeats: int) -> None:
    calls: list[Callable[[], Awaitable[object]]] = []
    frames_per_call: list[int] = []
    for case in cases:
        for batch_size in case.batches:
            batch = np.ascontiguousarray(np.repeat(case.sample, batch_size, axis=0))
            calls_each = max(1, SMALL_FRAMES // batch_size) if case.small else 1
            for backend in backends:

                async def call(
                    backend: InferenceBackend = backend,
                    case: ModelCase = case,
                    batch: np.ndarray = batch,
                    calls_each: int = calls_each,
                ) -> None:
                    for _ in range(calls_each):
                        await backend.infer_outputs(ModelRef(case.model), batch, case.outputs)

                calls.append(call)
                frames_per_call.append(batch_size * calls_each)
    seconds = await medians(calls, repeats)
    per_frame = iter(s * 1e3 / n for s, n in zip(seconds, frames_per_call, strict=True))
    print(f"\n### 2. Models alone (one call, no pre/post-processing), ms per frame or crop, {repeats} runs")
    print("(small models: each run is ceil(32 / batch) calls; the outputs are those the processors read)")
    print("\n| model | input | outputs | batch | in process ms/frame | Triton ms/frame | Triton / in process |")
    print("|---|---|---|---:|---:|---:|---:|")
    for case in cases:
        outputs = ", ".join(case.outputs) or "its one"
        for batch_size in case.batches:
            local, triton = next(per_frame), next(per_frame)
            print(
                f"| {case.model} | {case.what} | {outputs} | {batch_size} | {local:.2f} | {triton:.2f} "
                f"| {ratio(triton, local)} |"
            )


# --------------------------------------------------------------------------- 3. the CenterNet stage's parts
async def breakdown_table(case: StageCase, repeats: int) -> None:
    """The vehicle detector's stage run in its parts, as ModelStageRunner.run does them, on the caller's
    thread (the stage itself hands each part to a worker thread)."""
    task, stage = case.task, case.task.dag.stages[case.stage]
    parts = ("JPEG decoding", "pre-processing (resize, RGB, float)", "model call", "decoding (boxes, NMS, record)")
    columns: list[list[Callable[[], Awaitable[object]]]] = []
    for runner in case.runners:
        model = runner._model()
        outputs, _ = await runner._check(model)
        state: dict[str, Any] = {}

        async def decode(state: dict[str, Any] = state) -> None:
            state["frames"] = decode_segment(task.segment)

        async def prepare(state: dict[str, Any] = state, runner: ModelStageRunner = runner) -> None:
            state["images"], state["placements"], inputs = runner._inputs(state["frames"], None)
            state["batch"] = np.concatenate(inputs)

        async def infer(
            state: dict[str, Any] = state,
            runner: ModelStageRunner = runner,
            model: ModelRef = model,
            outputs: list[str] = outputs,
        ) -> None:
            found = await runner.backend.infer_outputs(model, state["batch"], outputs)
            count = len(state["batch"])
            state["results"] = [{name: array[i : i + 1] for name, array in found.items()} for i in range(count)]

        async def detections(state: dict[str, Any] = state, runner: ModelStageRunner = runner) -> None:
            frames = state["frames"]
            per_frame = runner._detections(frames, None, state["images"], state["placements"], state["results"])
            record(stage, task.segment, per_frame, pixels_per_frame(task.segment, frames))

        async def whole(runner: ModelStageRunner = runner) -> None:
            await runner.run(task, stage)

        columns.append([decode, prepare, infer, detections, whole])
    # Each round runs the parts in order (each needs the one before) for each backend, then the whole stage.
    calls = [call for column in columns for call in column]
    seconds = await medians(calls, repeats)
    local, triton = seconds[:5], seconds[5:]
    print(f"\n### 3. Where a vehicle_detector stage's time goes (bus, {WIDTH}x{HEIGHT} JPEG), {repeats} runs")
    print("(the parts run on the caller's thread; the stage itself hands each to a worker thread)")
    print("\n| part | in process ms | share | Triton ms | share |")
    print("|---|---:|---:|---:|---:|")
    for i, part in enumerate(parts):
        print(
            f"| {part} | {local[i] * 1e3:.2f} | {local[i] / sum(local[:4]):.0%} | {triton[i] * 1e3:.2f} "
            f"| {triton[i] / sum(triton[:4]):.0%} |"
        )
    print(f"| sum of the parts | {sum(local[:4]) * 1e3:.2f} | | {sum(triton[:4]) * 1e3:.2f} | |")
    print(f"| whole stage run (runner.run) | {local[4] * 1e3:.2f} | | {triton[4] * 1e3:.2f} | |")


# --------------------------------------------------------------------------- 4. a Triton round trip's parts
async def triton_stats(triton: TritonBackend, model: str) -> Any:
    reply = await triton.client.get_inference_statistics(model, client_timeout=30)
    return reply.model_stats[0].inference_stats


async def round_trip_table(
    cases: list[ModelCase], in_process: OnnxRuntimeBackend, triton: TritonBackend, repeats: int
) -> None:
    """Triton's own counters over the calls of each case (the deltas), against the client's round trip."""
    print(f"\n### 4. A Triton round trip in parts (Triton's own statistics), ms per call, {repeats} calls")
    print("(outside Triton = round trip - Triton's request time: the client's tensor copies, gRPC on loopback)")
    print(
        "\n| model | outputs | batch | in MB | out MB | in process | Triton round trip | outside Triton "
        "| queue | compute input | compute infer | compute output |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in cases:
        for batch_size in sorted({case.batches[0], case.batches[-1]}):
            batch = np.ascontiguousarray(np.repeat(case.sample, batch_size, axis=0))
            model = ModelRef(case.model)
            found = await in_process.infer_outputs(model, batch, case.outputs)
            await triton.infer_outputs(model, batch, case.outputs)  # warm-up
            local, remote = [], []
            before = await triton_stats(triton, case.model)
            for _ in range(repeats):
                start = time.perf_counter()
                await in_process.infer_outputs(model, batch, case.outputs)
                local.append(time.perf_counter() - start)
                start = time.perf_counter()
                await triton.infer_outputs(model, batch, case.outputs)
                remote.append(time.perf_counter() - start)
            after = await triton_stats(triton, case.model)

            def mean_ms(name: str, before: Any = before, after: Any = after) -> float:
                old, new = getattr(before, name), getattr(after, name)
                return (new.ns - old.ns) / max(new.count - old.count, 1) / 1e6

            trip = statistics.fmean(remote) * 1e3
            outputs = ", ".join(case.outputs) or "its one"
            out_mb = sum(a.nbytes for a in found.values()) / 1e6
            print(
                f"| {case.model} | {outputs} | {batch_size} | {batch.nbytes / 1e6:.2f} | {out_mb:.2f} "
                f"| {statistics.fmean(local) * 1e3:.2f} | {trip:.2f} | {trip - mean_ms('success'):.2f} "
                f"| {mean_ms('queue'):.2f} | {mean_ms('compute_input'):.2f} | {mean_ms('compute_infer'):.2f} "
                f"| {mean_ms('compute_output'):.2f} |"
            )


# --------------------------------------------------------------------------- the run
async def max_batch_sizes(triton: TritonBackend, names: list[str]) -> dict[str, int]:
    out = {}
    for name in names:
        config = await triton.client.get_model_config(name, as_json=True)
        out[name] = int(config["config"].get("max_batch_size", 1)) or 1
    return out


async def bench(repeats: int, quick: bool) -> None:
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        server = TritonServer(assemble(Path(workdir) / "models"), Path(workdir))
        started = time.perf_counter()
        address = await server.start()
        ready_s = time.perf_counter() - started
        triton_params = {"address": address, "timeout_s": 120}
        triton = TritonBackend(TritonParams(**triton_params))
        in_process = OnnxRuntimeBackend(1)
        cases: list[StageCase] = []
        try:
            print(
                f"## Dayu application processors, in process against Triton\n\n"
                f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; onnxruntime "
                f"{onnxruntime.__version__}; tritonserver of nvidia-pytriton "
                f"{importlib.metadata.version('nvidia-pytriton')} (CPU path: Python backend, onnxruntime, 1 instance, "
                f"1 thread) ready in {ready_s:.1f} s; in process: intra_op_threads 1. JPEG quality {QUALITY}. "
                f"Medians of {repeats} runs per case after one warm-up run, cases interleaved."
            )
            backends = [
                {"backend": "onnxruntime", "intra_op_threads": 1},
                {"backend": "triton", "triton": triton_params},
            ]
            cases = await stage_cases(backends)
            await stage_table(cases, repeats)
            names = ["object_detection", "face_detection", "age", "gender", DETECTION_MODEL, RECOGNITION_MODEL]
            models = await model_cases(cases, await max_batch_sizes(triton, names), quick)
            await model_table(models, [in_process, triton], repeats)
            await breakdown_table(cases[0], repeats)
            await round_trip_table(models, in_process, triton, repeats)
        finally:
            for case in cases:
                for runner in case.runners:
                    await runner.aclose()
            await triton.aclose()
            await in_process.aclose()
            await server.stop()
    print(f"\n(whole run {time.perf_counter() - began:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of each case (after a warm-up run)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 runs, smallest and largest batches")
    args = parser.parse_args()
    asyncio.run(bench(2 if args.quick else args.repeats, args.quick))


if __name__ == "__main__":
    main()
