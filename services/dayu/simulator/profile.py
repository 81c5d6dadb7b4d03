"""`dayu profile`: measures on this machine what the simulator needs to know of a mesh file's
pipelines, with the mesh's own code: segments are made by the generator's build_task from the
datasource's frames of the mesh's synthetic sources (encoded as the datasource sends them), run
through the real processor kinds in process, and scored with the distributor's accuracy().

- processing: each processor's seconds per segment at every rung of the resolution ladder and a
  few segment lengths (median of `repeats` segments, after a warm-up), with a fit
  seconds = fixed + per_frame x frames + per_frame_pixel x frames x pixels. Every rung, because the
  cost is not linear in pixels: the text detector scales a frame wider than its max_side (960) down
  to it, so 960x540 costs it nearly what 1280x720 does, where a line between the rungs around it
  (854x480 and 1280x720) said two thirds;
- frame bytes: mean JPEG bytes of a frame at every rung of the resolution and quality ladders;
- accuracy: the mean F1 of a task (its first detector against the ground truth, as the distributor
  scores it) per resolution, at three qualities, for segments of 1, 2, 4 and 8 frames (a task's F1
  pools its frames' counts, so the segment length moves the mean; the frame rate does not: a task is
  scored on the frames it carries);
- task overhead: a task's bytes besides its frames (ids, DAG, ground truth, results)."""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dayu.datasource.core import DEFAULT_QUALITY
from dayu.datasource.service import DatasourceSection, played_sources
from dayu.distributor.core import accuracy
from dayu.generator.core import CapturedFrame, build_task
from dayu.media.codecs import encode_image
from dayu.mesh.model import MeshConfig, ProcessorSection, load_mesh_config
from dayu.processor.kinds import PROCESSORS, StageRunner
from dayu.runtime.clock import timestamp
from dayu.runtime.errors import InvalidArgument
from dayu.scheduler.knobs import configuration, qualities, resolutions
from dayu.simulator.costs import (
    AccuracySample,
    FrameBytes,
    ProcessingFit,
    ProcessingSample,
    ProcessorProfile,
    ProfileFile,
    TaskOverhead,
)
from dayu.simulator.scenario import mesh_streams
from dayu.v1 import datasource_pb2, decision_pb2, task_pb2, types_pb2

SPACING_S = 3.0  # scene seconds between two sampled frames, so samples see different traffic
TIMED_FRAMES = (1, 2, 4)  # segment lengths timed
SCORED_LENGTHS = (1, 2, 4, 8)  # segment lengths scored
SCORED_QUALITIES = 3  # qualities scored: the best, the middle and the lowest rung


@dataclass
class _Workload:
    """What is profiled: a best configuration, its pipeline, and the sampled frames of its sources."""

    spec: decision_pb2.StreamSpec
    frames: list[list[CapturedFrame]]  # per source, in scene order


def _sample_frames(config: MeshConfig, source_ids: Sequence[str], count: int) -> list[list[CapturedFrame]]:
    """`count` frames of each source, SPACING_S of scene apart, as the datasource sends them."""
    played = {p.source_id: p for p in played_sources(DatasourceSection.model_validate({"sources": config.sources}))}
    sampled = []
    for source_id in source_ids:
        source = played[source_id]
        if not source.source.has_ground_truth:
            raise InvalidArgument(
                "sources", f"sources with ground truth (synthetic) to score accuracy, but {source_id!r} has none"
            )
        reader = source.source.open()
        skip = max(0, round(SPACING_S * source.source.fps) - 1)
        frames = []
        for index in range(count):
            captured = reader.read(skip if index else 0)
            if captured is None:
                break
            height, width = captured.image.shape[:2]
            frame = datasource_pb2.Frame(
                source_id=source_id,
                index=index,
                captured_at=timestamp(),
                codec=source.codec,
                resolution=types_pb2.Resolution(width=width, height=height),
                data=encode_image(captured.image, source.codec, source.quality or DEFAULT_QUALITY),
                ground_truth=captured.ground_truth,
            )
            frames.append(CapturedFrame(frame, time.time()))
        sampled.append(frames)
    return sampled


def _task(
    spec: decision_pb2.StreamSpec, size: types_pb2.Resolution, quality: int, frames: list[CapturedFrame]
) -> task_pb2.Task:
    best = spec.max_configuration
    config = configuration(best, size, quality=quality, frames_per_segment=len(frames))
    decision = decision_pb2.Decision(configuration=config, placement={s.name: spec.node for s in spec.pipeline.stages})
    return build_task(spec, decision, 0, frames, ground_truth=True)  # _sample_frames: sources that have it


async def _run_stages(
    task: task_pb2.Task, runners: dict[str, StageRunner], until: int | None = None
) -> dict[str, float]:
    """Runs the task's stages in pipeline order (the first `until` of them); seconds each processor took."""
    took: dict[str, float] = {}
    for stage in task.dag.stages[:until]:
        started = time.perf_counter()
        await runners[stage.spec.processor].run(task, stage)
        took[stage.spec.processor] = took.get(stage.spec.processor, 0.0) + time.perf_counter() - started
        stage.state = task_pb2.STAGE_STATE_DONE
    return took


def _fit(samples: list[ProcessingSample]) -> ProcessingFit:
    """Least squares of seconds = fixed + per_frame x frames + per_frame_pixel x frames x pixels."""
    rows = np.array([[1.0, s.frames, s.frames * s.width * s.height] for s in samples])
    seconds = np.array([s.seconds for s in samples])
    (fixed, per_frame, per_pixel), *_ = np.linalg.lstsq(rows, seconds, rcond=None)
    return ProcessingFit(fixed_s=float(fixed), per_frame_s=float(per_frame), per_frame_pixel_s=float(per_pixel))


def _relative_spread(values: list[float]) -> float:
    """The values' median absolute deviation over their median, scaled to a normal's standard deviation:
    a machine's odd slow run (another process, a page fault) does not widen every segment's time."""
    median = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - median) for v in values) / median


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


async def measure(
    config_path: Path,
    frames_per_source: int = 15,
    repeats: int = 3,
    command: str = "dayu profile",
    progress: Callable[[str], None] = print,
    keep: ProfileFile | None = None,
) -> ProfileFile:
    """The profile of `config_path`'s pipelines; with `keep`, only the processing is timed again and
    the frame bytes, accuracy and task overhead (which do not depend on the machine) are kept from it."""
    needed = max(TIMED_FRAMES) if keep is not None else max(SCORED_LENGTHS)
    if frames_per_source < needed:
        raise InvalidArgument("--frames", f"at least {needed} frames per source, got {frames_per_source}")
    if repeats < 1:
        raise InvalidArgument("--repeats", f"at least 1, got {repeats}")
    config = load_mesh_config(config_path)
    specs = mesh_streams(config)
    if not specs:
        raise InvalidArgument("--config", f"a mesh file with streams to profile, {config_path} has none")
    # One workload per distinct pipeline and best resolution; its frames from every source of its streams.
    workloads: dict[tuple[str, int, int], tuple[decision_pb2.StreamSpec, list[str]]] = {}
    for spec in specs:
        size = spec.max_configuration.resolution
        key = (spec.pipeline.name, size.width, size.height)
        workloads.setdefault(key, (spec, []))[1].append(spec.source_id)
    names = sorted({stage.processor for spec in specs for stage in spec.pipeline.stages})
    sections = {name: config.processors.get(name, ProcessorSection()) for name in names}
    runners: dict[str, StageRunner] = {
        name: PROCESSORS.create(
            config.processor_kind(name),
            sections[name].params,
            name_field=f"processors.{name}.kind",
            params_field=f"processors.{name}.params",
        )
        for name in names
    }
    timings: dict[str, dict[tuple[int, int, int], list[float]]] = {name: {} for name in names}
    frame_bytes: dict[tuple[int, int, int], list[int]] = {}
    scored: dict[tuple[int, int, int, int], list[float]] = {}
    overhead: list[tuple[int, int]] = []  # (frames, bytes besides them)
    for (pipeline, width, height), (spec, source_ids) in workloads.items():
        progress(f"dayu profile: pipeline {pipeline} at best {width}x{height}, sources {sorted(set(source_ids))}")
        frames = _sample_frames(config, sorted(set(source_ids)), frames_per_source)
        pool = [frame for source in frames for frame in source]
        ladder = resolutions(spec.max_configuration.resolution)
        best_quality = spec.max_configuration.quality
        await _run_stages(_task(spec, ladder[0], best_quality, pool[:1]), runners)  # warm-up: models load
        for size in ladder:  # every rung: a processor's cost is not linear in pixels (module doc)
            for count in TIMED_FRAMES:
                for repeat in range(repeats):
                    start = (repeat * count) % max(1, len(pool) - count)
                    task = _task(spec, size, best_quality, pool[start : start + count])
                    for name, seconds in (await _run_stages(task, runners)).items():
                        timings[name].setdefault((size.width, size.height, count), []).append(seconds)
                    overhead.append((count, task.ByteSize() - sum(len(f) for f in task.segment.frames)))
            progress(f"  timed {size.width}x{size.height}")
        if keep is not None:
            continue
        detector = next(
            (
                i
                for i, s in enumerate(spec.pipeline.stages)
                if not s.parents and s.output_type == types_pb2.DATA_TYPE_BOXES
            ),
            None,
        )
        ladder_qualities = qualities(best_quality)
        scored_qualities = sorted(
            {
                ladder_qualities[round(i * (len(ladder_qualities) - 1) / (SCORED_QUALITIES - 1))]
                for i in range(SCORED_QUALITIES)
            }
        )
        for size in ladder:
            for quality in ladder_qualities:
                # Each frame on its own first (one detection per frame), then pooled into segments.
                per_frame: list[list[task_pb2.Task]] = []
                for source in frames:
                    tasks = [_task(spec, size, quality, [frame]) for frame in source]
                    for task in tasks:
                        frame_bytes.setdefault((size.width, size.height, quality), []).append(
                            len(task.segment.frames[0])
                        )
                    per_frame.append(tasks)
                if detector is None or quality not in scored_qualities:
                    continue
                for tasks in per_frame:
                    for task in tasks:
                        await _run_stages(task, runners, until=detector + 1)
                for length in SCORED_LENGTHS:
                    for source, tasks in zip(frames, per_frame, strict=True):
                        for start in range(0, len(tasks) - length + 1, length):
                            segment = _task(spec, size, quality, source[start : start + length])
                            stage = segment.dag.stages[detector]
                            for one in tasks[start : start + length]:
                                stage.results.extend(one.dag.stages[detector].results)
                            stage.state = task_pb2.STAGE_STATE_DONE
                            score = accuracy(segment)
                            if score is not None:
                                scored.setdefault((size.width, size.height, quality, length), []).append(score)
            progress(f"  bytes and accuracy at {size.width}x{size.height}")
    processors = {}
    for name in names:
        samples = [
            ProcessingSample(width=w, height=h, frames=n, seconds=statistics.median(values), repeats=len(values))
            for (w, h, n), values in sorted(timings[name].items(), key=lambda kv: (-kv[0][0] * kv[0][1], kv[0][2]))
        ]
        spreads = [_relative_spread(v) for v in timings[name].values() if len(v) > 2 and statistics.median(v) > 0]
        processors[name] = ProcessorProfile(
            kind=config.processor_kind(name),
            params=sections[name].params,
            fit=_fit(samples),
            spread=round(statistics.median(spreads), 4) if spreads else 0.0,
            measured=samples,
        )
    if keep is not None:
        return keep.model_copy(
            update={"made_by": command, "made_at": _now(), "machine": _machine(), "processors": processors}
        )
    counts = np.array([[1.0, n] for n, _ in overhead])
    extra = np.array([float(b) for _, b in overhead])
    (fixed, per_frame), *_ = np.linalg.lstsq(counts, extra, rcond=None)
    return ProfileFile(
        made_by=command,
        made_at=_now(),
        machine=_machine(),
        processors=processors,
        frame_bytes=[
            FrameBytes(width=w, height=h, quality=q, bytes=round(statistics.fmean(v), 1))
            for (w, h, q), v in sorted(frame_bytes.items(), key=lambda kv: (-kv[0][0], -kv[0][2]))
        ],
        accuracy=[
            AccuracySample(
                width=w, height=h, quality=q, frames_per_segment=n, f1=round(statistics.fmean(v), 4), segments=len(v)
            )
            for (w, h, q, n), v in sorted(scored.items(), key=lambda kv: (kv[0][3], -kv[0][0], -kv[0][2]))
        ],
        task_overhead=TaskOverhead(
            fixed_bytes=round(max(0.0, float(fixed)), 1), per_frame_bytes=round(max(0.0, float(per_frame)), 1)
        ),
    )


def write(profile: ProfileFile, path: Path) -> None:
    """The profile as YAML, with a header saying how, when and where it was measured."""
    data: dict[str, Any] = profile.model_dump(mode="json")
    header = (
        f"# Processing, bytes and accuracy measured by `{profile.made_by}`\n"
        f"# on {profile.made_at}, machine: {profile.machine}.\n"
        "# Read by `dayu simulate --profile` (docs/simulator.md); measure again on the machine you model.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, width=120))


def run_profile(config_path: Path, out: Path, frames_per_source: int, repeats: int, command: str) -> ProfileFile:
    started = time.perf_counter()
    profile = asyncio.run(measure(config_path, frames_per_source, repeats, command))
    write(profile, out)
    print(f"dayu profile: wrote {out} in {time.perf_counter() - started:.0f} s")
    return profile
