"""The knobs a policy turns, as ladders bounded by the stream's best configuration."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dayu.v1 import task_pb2, types_pb2

HEIGHTS = (2160, 1440, 1080, 900, 720, 540, 480, 360, 270, 240, 180)
FPS = (60, 30, 25, 20, 15, 10, 5, 3, 2, 1)
QUALITIES = (95, 85, 75, 60, 45, 30)
SEGMENT_FRAMES = (1, 2, 3, 4, 6, 8, 10, 15, 20, 30)


def resolutions(best: types_pb2.Resolution) -> list[types_pb2.Resolution]:
    """Resolutions from the best down, keeping its aspect ratio, with even sides (H.264)."""
    ladder = [types_pb2.Resolution(width=best.width, height=best.height)]
    for height in HEIGHTS:
        if height < best.height:
            width = round(best.width * height / best.height / 2) * 2
            ladder.append(types_pb2.Resolution(width=width, height=height))
    return ladder


def frame_rates(best: float) -> list[float]:
    return [best, *[float(f) for f in FPS if f < best]]


def qualities(best: int) -> list[int]:
    return [best, *[q for q in QUALITIES if q < best]]


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
        records: list[task_pb2.TaskRecord],
        cores_then: Sequence[Mapping[str, float]] = (),
        cores_now: Mapping[str, float] | None = None,
    ) -> Feedback | None:
        """Dropped tasks count in the latency (their age when given up): a stream whose tasks are all
        dropped late is the most over budget of all. With the CPU cores of each node when each record
        arrived (`cores_then`, in the same order) and now, processing on a node whose CPU was cut
        since (or restored) counts as it would take now."""
        if not records:
            return None
        delivered = [r for r in records if r.outcome == task_pb2.TASK_OUTCOME_DELIVERED]
        then = dict(zip((r.task.task_id for r in records), cores_then, strict=False))
        now = cores_now or {}

        def median(values: list[float]) -> float:
            return statistics.median(values) if values else 0.0

        def process_s(record: task_pb2.TaskRecord, stage: task_pb2.TaskStage) -> float:
            before, after = then.get(record.task.task_id, {}).get(stage.executed_on), now.get(stage.executed_on)
            return stage.timings.process_s * (before / after if before and after else 1.0)

        def extra_s(record: task_pb2.TaskRecord) -> float:  # what processing it now would add
            return sum(process_s(record, s) - s.timings.process_s for s in record.task.dag.stages)

        accuracies = [r.accuracy for r in delivered if r.HasField("accuracy")]
        return cls(
            tasks=len(records),
            dropped=len(records) - len(delivered),
            # A task found missing ("lost") has no age to tell: it counts as dropped, not as fast.
            latency_s=median([r.latency_s + extra_s(r) for r in records if r.task.dag.stages]),
            transfer_s=median([sum(s.timings.transfer_s for s in r.task.dag.stages) for r in delivered]),
            process_s=median([sum(process_s(r, s) for s in r.task.dag.stages) for r in delivered]),
            queue_s=median([sum(s.timings.queue_s for s in r.task.dag.stages) for r in delivered]),
            accuracy=statistics.fmean(accuracies) if accuracies else None,
            bytes_per_task=median([float(max((h.bytes for h in r.task.hops), default=0)) for r in delivered]),
            stage_process_s={
                name: median([process_s(r, s) for r in delivered for s in r.task.dag.stages if s.spec.name == name])
                for name in {s.spec.name for r in delivered for s in r.task.dag.stages}
            },
        )
