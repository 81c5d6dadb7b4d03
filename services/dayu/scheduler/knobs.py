"""The knobs a policy turns, as ladders bounded by the stream's best configuration."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from dayu.v1 import task_pb2, types_pb2

HEIGHTS = (2160, 1440, 1080, 900, 720, 540, 480, 360, 270, 240, 180)
FPS = (60, 30, 25, 20, 15, 10, 5, 3, 2, 1)
QUALITIES = (95, 85, 75, 60, 45, 30)
SEGMENT_FRAMES = (1, 2, 3, 4, 6, 8, 10, 15, 20, 30)
LADDERS_KEPT = 256  # ladders of as many best configurations (a mesh's streams share a handful)


def resolutions(best: types_pb2.Resolution) -> list[types_pb2.Resolution]:
    """Resolutions from the best down, keeping its aspect ratio, with even sides (H.264)."""
    return [types_pb2.Resolution(width=w, height=h) for w, h in _sizes(best.width, best.height)]


@functools.lru_cache(maxsize=LADDERS_KEPT)
def _sizes(best_width: int, best_height: int) -> tuple[tuple[int, int], ...]:
    ladder = [(best_width, best_height)]
    for height in HEIGHTS:
        if height < best_height:
            width = round(best_width * height / best_height / 2) * 2
            ladder.append((width, height))
    return tuple(ladder)


def frame_rates(best: float) -> list[float]:
    return [best, *[float(f) for f in FPS if f < best]]


def qualities(best: int) -> list[int]:
    return [best, *[q for q in QUALITIES if q < best]]


@dataclass(frozen=True)
class Ladders:
    """Each knob's rungs under a stream's best configuration, as plain numbers: what a policy's search
    runs over without making a message for every candidate. Made once per best configuration."""

    sizes: tuple[tuple[int, int], ...]  # (width, height), the best first
    pixels: tuple[int, ...]  # width x height of each size
    frame_rates: tuple[float, ...]
    qualities: tuple[int, ...]


def ladders(best: types_pb2.Configuration) -> Ladders:
    size = best.resolution
    return _ladders(size.width, size.height, best.fps, best.quality)


@functools.lru_cache(maxsize=LADDERS_KEPT)
def _ladders(width: int, height: int, fps: float, quality: int) -> Ladders:
    sizes = _sizes(width, height)
    return Ladders(sizes, tuple(w * h for w, h in sizes), tuple(frame_rates(fps)), tuple(qualities(quality)))


def configuration(
    best: types_pb2.Configuration,
    resolution: types_pb2.Resolution | None = None,
    fps: float | None = None,
    quality: int | None = None,
    frames_per_segment: int | None = None,
) -> types_pb2.Configuration:
    config = types_pb2.Configuration()
    config.CopyFrom(best)
    if resolution is not None:
        config.resolution.CopyFrom(resolution)
    if fps is not None:
        config.fps = fps
    if quality is not None:
        config.quality = quality
    if frames_per_segment is not None:
        config.frames_per_segment = frames_per_segment
    return config


class Figures(NamedTuple):
    """What Feedback reads of a record, read once: a policy asks for feedback several times a decision
    over the same records, and reading a protobuf's fields costs more than the medians over them."""

    task_id: str
    version: int  # the decision it was made under
    delivered: bool
    latency_s: float
    accuracy: float | None
    bytes: float  # its largest hop's
    stages: tuple[tuple[str, str, float, float, float], ...]  # name, executed_on, process, transfer, queue (s)

    @classmethod
    def of(cls, record: task_pb2.TaskRecord) -> Figures:
        task = record.task
        return cls(
            task.task_id,
            task.decision_version,
            record.outcome == task_pb2.TASK_OUTCOME_DELIVERED,
            record.latency_s,
            record.accuracy if record.HasField("accuracy") else None,
            float(max((hop.bytes for hop in task.hops), default=0)),
            tuple(
                (stage.spec.name, stage.executed_on, t.process_s, t.transfer_s, t.queue_s)
                for stage in task.dag.stages
                for t in (stage.timings,)
            ),
        )


@dataclass(frozen=True)
class Feedback:
    """What the records made under one decision say: medians over the delivered tasks."""

    tasks: int
    dropped: int
    latency_s: float
    transfer_s: float
    process_s: float
    queue_s: float
    accuracy: float | None
    bytes_per_task: float
    stage_process_s: dict[str, float]

    @classmethod
    def of(
        cls,
        records: Sequence[Figures],
        cores_then: Sequence[Mapping[str, float]] = (),
        cores_now: Mapping[str, float] | None = None,
    ) -> Feedback | None:
        """Dropped tasks count in the latency (their age when given up): a stream whose tasks are all
        dropped late is the most over budget of all. With the CPU cores of each node when each record
        arrived (`cores_then`, in the same order) and now, processing on a node whose CPU was cut
        since (or restored) counts as it would take now."""
        if not records:
            return None
        then = dict(zip((r.task_id for r in records), cores_then, strict=False))
        now = cores_now or {}

        def median(values: list[float]) -> float:
            return statistics.median(values) if values else 0.0

        # One pass, no object a stage: this runs for every stream's needs every second. The sums add
        # in the stages' order from 0, as sum() does.
        latencies: list[float] = []
        transfers: list[float] = []
        processes: list[float] = []
        queues: list[float] = []
        sizes: list[float] = []
        accuracies: list[float] = []
        by_stage: dict[str, list[float]] = {}
        for record in records:
            cores = then.get(record.task_id, {})
            later = transfer = process = queue = 0  # later: what processing now adds past what it took
            for name, node, process_s, transfer_s, queue_s in record.stages:
                before, after = cores.get(node), now.get(node)
                process_now_s = process_s * (before / after) if before and after else process_s
                later += process_now_s - process_s
                transfer += transfer_s
                process += process_now_s
                queue += queue_s
                if record.delivered:
                    by_stage.setdefault(name, []).append(process_now_s)
            # A task found missing ("lost") has no age to tell: it counts as dropped, not as fast. The
            # processing its stages would take now, past what they took, adds to its age.
            if record.stages:
                latencies.append(record.latency_s + later)
            if record.delivered:
                transfers.append(transfer)
                processes.append(process)
                queues.append(queue)
                sizes.append(record.bytes)
                if record.accuracy is not None:
                    accuracies.append(record.accuracy)
        return cls(
            tasks=len(records),
            dropped=len(records) - len(transfers),
            latency_s=median(latencies),
            transfer_s=median(transfers),
            process_s=median(processes),
            queue_s=median(queues),
            accuracy=statistics.fmean(accuracies) if accuracies else None,
            bytes_per_task=median(sizes),
            stage_process_s={name: median(values) for name, values in by_stage.items()},
        )
