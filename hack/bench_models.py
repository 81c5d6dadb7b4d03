"""Cost of the real inference stages, side by side, on one machine in one run (in process, no mesh).

Prints medians of:
  - text_detector, ms per frame, at 640x360 and 1280x720 and with the longer side fed to the model
    capped at 960 (the default) or not capped below the frame;
  - text_recognizer, ms per box, with a segment's crops in batches against one crop per model call,
    with one inference thread (as the processors are configured) and with two.

Each case runs the stage's runner on a JPEG segment of street-like frames carrying licence plates, as
a processor does (decoding included). The detector runs with one inference thread.

    .venv/bin/python hack/bench_models.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import cv2
import numpy as np

from dayu.media.codecs import encode_segment
from dayu.processor.kinds import PROCESSORS, StageRunner
from dayu.v1 import task_pb2, types_pb2

FRAMES_PER_SEGMENT = 2
PLATES_PER_FRAME = 6
QUALITY = 85
# (width, height, max_side): the default cap, then 720p fed at its own size.
DETECTOR_CASES = ((640, 360, 960), (1280, 720, 960), (1280, 720, 1280))
RECOGNIZER_BATCHES = (4, 8, 1)
RECOGNIZER_THREADS = (1, 2)
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"


def street(width: int, height: int, seed: int) -> np.ndarray:
    """A grey street with PLATES_PER_FRAME white plates of black text ("KX52 TRB"-like) on coloured bodies."""
    rng = np.random.default_rng(seed)
    frame = np.full((height, width, 3), 100, np.uint8)
    plate_width, plate_height = width // 7, height // 14
    columns = 3
    for i in range(PLATES_PER_FRAME):
        x = (i % columns) * width // columns + width // 12
        y = (1 + i // columns) * height // 3 + int(rng.integers(0, height // 10))
        body = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(frame, (x - plate_height, y - 3 * plate_height), (x + plate_width + plate_height, y), body, -1)
        cv2.rectangle(frame, (x, y - plate_height), (x + plate_width, y), (255, 255, 255), -1)
        text = f"{''.join(rng.choice(list(LETTERS), 2))}{rng.integers(10, 99)} {''.join(rng.choice(list(LETTERS), 3))}"
        scale = plate_height / 40
        thickness = max(1, plate_height // 15)
        (text_width, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        origin = (x + (plate_width - text_width) // 2, y - plate_height // 4)
        cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return frame


def plates_task(width: int, height: int) -> task_pb2.Task:
    """A task of the two-stage pipeline (detect -> read) on a JPEG segment of street frames."""
    task_id = str(uuid.uuid4())
    task = task_pb2.Task(stream_id="bench", task_id=task_id, root_id=task_id)
    boxes, labels, frames_type = types_pb2.DATA_TYPE_BOXES, types_pb2.DATA_TYPE_LABELS, types_pb2.DATA_TYPE_FRAMES
    task.dag.stages.add(spec=types_pb2.StageSpec(name="detect", input_type=frames_type, output_type=boxes))
    task.dag.stages.add(spec=types_pb2.StageSpec(name="read", parents=["detect"], input_type=boxes, output_type=labels))
    task.segment.codec = types_pb2.CODEC_JPEG
    task.segment.frame_indices.extend(range(FRAMES_PER_SEGMENT))
    encode_segment(task.segment, [street(width, height, seed) for seed in range(FRAMES_PER_SEGMENT)], QUALITY)
    return task


Case = tuple[StageRunner, task_pb2.Task, task_pb2.TaskStage]


async def median_run_s(cases: list[Case], repeats: int) -> list[float]:
    """Median seconds of one run of each case's stage. The cases take turns, so a busy spell of the
    machine slows them alike; one warm-up run each first (the models' first allocations)."""
    times: list[list[float]] = [[] for _ in cases]
    for round_ in range(repeats + 1):
        for (runner, task, stage), case_times in zip(cases, times, strict=True):
            start = time.perf_counter()
            await runner.run(task, stage)
            if round_:
                case_times.append(time.perf_counter() - start)
    return [statistics.median(case_times) for case_times in times]


async def bench(repeats: int) -> None:
    print(f"segments of {FRAMES_PER_SEGMENT} JPEG frames, {PLATES_PER_FRAME} plates each")
    print(f"median of {repeats} runs per case, cases interleaved, decoding included")

    detections: list[Case] = []
    for width, height, max_side in DETECTOR_CASES:
        task = plates_task(width, height)
        detections.append((PROCESSORS.create("text_detector", {"max_side": max_side}), task, task.dag.stages[0]))
    print(f"\n{'text_detector':<14} {'max_side':>8} {'model input':>12} {'ms/frame':>9} {'boxes/frame':>12}")
    medians = await median_run_s(detections, repeats)
    for (width, height, max_side), (_, _, detect), seconds in zip(DETECTOR_CASES, detections, medians, strict=True):
        scale = min(1.0, max_side / max(width, height))
        model_input = f"{round(width * scale / 32) * 32}x{round(height * scale / 32) * 32}"
        boxes = np.mean(detect.scenario.object_counts)
        ms_per_frame = seconds * 1e3 / FRAMES_PER_SEGMENT
        print(f"{f'{width}x{height}':<14} {max_side:>8} {model_input:>12} {ms_per_frame:>9.1f} {boxes:>12.1f}")

    task = plates_task(640, 360)
    await PROCESSORS.create("text_detector", {}).run(task, task.dag.stages[0])
    task.dag.stages[0].state = task_pb2.STAGE_STATE_DONE
    read = task.dag.stages[1]
    settings = [(threads, batch_size) for threads in RECOGNIZER_THREADS for batch_size in RECOGNIZER_BATCHES]
    readings: list[Case] = [
        (PROCESSORS.create("text_recognizer", {"batch_size": batch, "intra_op_threads": threads}), task, read)
        for threads, batch in settings
    ]
    boxes = sum(len(result.detections) for result in task.dag.stages[0].results)
    print(f"\n{'text_recognizer':<18} {'threads':>7} {'boxes':>6} {'ms/box':>7}   (on 640x360 frames)")
    for (threads, batch_size), seconds in zip(settings, await median_run_s(readings, repeats), strict=True):
        name = f"batches of {batch_size}" if batch_size > 1 else "one crop per call"
        print(f"{name:<18} {threads:>7} {boxes:>6} {seconds * 1e3 / boxes:>7.2f}")
    texts = [d.text for d in read.results[0].detections]
    print(f"read on the first frame: {texts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="runs of each case")
    asyncio.run(bench(parser.parse_args().repeats))


if __name__ == "__main__":
    main()
