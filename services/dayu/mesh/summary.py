"""What a run of a mesh produced: the tally of the distributor's live records, and the summary that
`dayu up` prints (tasks, latency, stages, links, accuracy, scheduling, Triton)."""

from __future__ import annotations

import asyncio
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from dayu.distributor.core import LOST
from dayu.runtime.logs import get_logger
from dayu.v1 import task_pb2

log = get_logger(__name__)


RESULT_KEYS = 64  # labels and texts counted per stream; others are left out (texts are the models' free output)
SHOWN_TEXTS = 8


def reason_kind(reason: str) -> str:
    """A drop reason without its measurements ("late: 8.1 s old at ..." -> "late: ... s old at ..."),
    so the same reason counts once; every task the distributor found missing is "lost"."""
    if reason.startswith(LOST):
        return "lost: never reached the distributor"
    return re.sub(r"\b\d+\.\d+\b", "...", reason)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]}


class ResultTally:
    """What the run produced, from the distributor's live records."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self.drop_reasons: Counter[str] = Counter()
        self.accuracies: list[float] = []
        self.per_stream: dict[str, Counter[str]] = defaultdict(Counter)  # delivered, dropped, in_budget
        self.stream_latencies: dict[str, list[float]] = defaultdict(list)
        self.stage_times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.made: dict[str, int] = {}  # per stream, the highest task sequence recorded, plus one
        # Per stream, what its pipeline's last stages found: labels counted over frames, and texts (plates
        # read, ages, counts) counted, a bounded few of each.
        self.labels: dict[str, Counter[str]] = defaultdict(Counter)
        self.texts: dict[str, Counter[str]] = defaultdict(Counter)
        self.frames: Counter[str] = Counter()

    def _total(self, what: str) -> int:
        return sum(counts[what] for counts in self.per_stream.values())

    @property
    def delivered(self) -> int:
        return self._total("delivered")

    @property
    def dropped(self) -> int:
        return self._total("dropped")

    @property
    def in_budget(self) -> int:
        return self._total("in_budget")

    @property
    def latencies(self) -> list[float]:
        return [latency for latencies in self.stream_latencies.values() for latency in latencies]

    def generated(self, counted: Mapping[str, int]) -> dict[str, int]:
        """Tasks made per stream: what the generators counted, or more where the records show later
        sequence numbers (tasks made between the count and the generators' stop)."""
        streams = sorted({*counted, *self.made})
        return {stream: max(counted.get(stream, 0), self.made.get(stream, 0)) for stream in streams}

    async def wait_for_total(self, counted: Mapping[str, int], idle_timeout_s: float, max_s: float = 600.0) -> None:
        """Waits until every task made (per stream, as `generated` says) is delivered or dropped, for
        as long as tasks keep settling: it gives up once none has for idle_timeout_s (a stage that
        holds a task for good), or after max_s in all. A backlog drains at the pace of the slowest
        stage, which on a loaded machine is longer than any fixed wait."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_s

        def missing() -> int:
            return sum(self.generated(counted).values()) - self.delivered - self.dropped

        async with self._changed:
            while missing() > 0:
                settled = self.delivered + self.dropped
                wait = min(idle_timeout_s, deadline - loop.time())
                try:
                    if wait <= 0:
                        raise TimeoutError
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda n=settled: self.delivered + self.dropped > n or missing() <= 0),
                        wait,
                    )
                except TimeoutError:
                    log.warning("tasks unaccounted at stop", missing=missing())
                    return

    async def add(self, record: task_pb2.TaskRecord) -> None:
        async with self._changed:
            self._count(record)
            self._changed.notify_all()

    def _count(self, record: task_pb2.TaskRecord) -> None:
        task = record.task
        self.made[task.stream_id] = max(self.made.get(task.stream_id, 0), task.sequence + 1)
        stream = self.per_stream[task.stream_id]
        if record.outcome == task_pb2.TASK_OUTCOME_DROPPED:
            stream["dropped"] += 1
            self.drop_reasons[reason_kind(record.reason)] += 1
            return
        stream["delivered"] += 1
        self.stream_latencies[task.stream_id].append(record.latency_s)
        if task.latency_budget_s and record.latency_s <= task.latency_budget_s:
            stream["in_budget"] += 1
        if record.HasField("accuracy"):
            self.accuracies.append(record.accuracy)
        self._count_results(task)
        for stage in record.task.dag.stages:
            times = self.stage_times[stage.spec.name]
            times["queue_s"].append(stage.timings.queue_s)
            times["process_s"].append(stage.timings.process_s)
            times["transfer_s"].append(stage.timings.transfer_s)

    def _count_results(self, task: task_pb2.Task) -> None:
        consumed = {parent for stage in task.dag.stages for parent in stage.spec.parents}
        last = [stage for stage in task.dag.stages if stage.spec.name not in consumed]
        self.frames[task.stream_id] += len(task.segment.frame_indices)
        labels, texts = self.labels[task.stream_id], self.texts[task.stream_id]
        for stage in last:
            for frame in stage.results:
                for detection in frame.detections:
                    if len(labels) < RESULT_KEYS or detection.label in labels:
                        labels[detection.label] += 1
                    text = f"{detection.label} {detection.text}" if detection.text else ""
                    if text and (len(texts) < RESULT_KEYS or text in texts):
                        texts[text] += 1

    def summary(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "dropped": self.dropped,
            "drop_reasons": dict(self.drop_reasons.most_common()),
            "latency_s": percentiles(self.latencies),
            "within_budget": self.in_budget / self.delivered if self.delivered else None,  # of delivered
            "in_budget": self.in_budget,
            "streams": {
                stream_id: {
                    "delivered": counts["delivered"],
                    "dropped": counts["dropped"],
                    "in_budget": counts["in_budget"],
                    "within_budget": counts["in_budget"] / counts["delivered"] if counts["delivered"] else None,
                    "latency_s": percentiles(self.stream_latencies[stream_id]),
                    "frames": self.frames[stream_id],
                    "labels": dict(self.labels[stream_id].most_common()),
                    "texts": dict(self.texts[stream_id].most_common(SHOWN_TEXTS)),
                }
                for stream_id, counts in sorted(self.per_stream.items())
            },
            "accuracy_f1": statistics.fmean(self.accuracies) if self.accuracies else None,
            "stages": {
                name: {kind: percentiles(values) for kind, values in times.items()}
                for name, times in sorted(self.stage_times.items())
            },
        }


def _resolution(config: dict[str, Any]) -> str:
    return f"{config['width']}x{config['height']}"


def _decision_change(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """What a decision changed from the one before it, in words; the whole of it for the first."""
    config = after["configuration"]
    if before is None:
        knobs = (
            f"{_resolution(config)}, fps {config['fps']:g}, {config['frames_per_segment']} frames per segment,"
            f" q{config['quality']}"
        )
        where = ", ".join(f"{stage} {node}" for stage, node in after["placement"].items())
        return f"{knobs}; {where}" + ("; paused" if after["paused"] else "")
    old = before["configuration"]
    changes = []
    if _resolution(old) != _resolution(config):
        changes.append(f"{_resolution(old)} -> {_resolution(config)}")
    if old["fps"] != config["fps"]:
        changes.append(f"fps {old['fps']:g} -> {config['fps']:g}")
    if old["frames_per_segment"] != config["frames_per_segment"]:
        changes.append(f"frames per segment {old['frames_per_segment']} -> {config['frames_per_segment']}")
    if old["quality"] != config["quality"]:
        changes.append(f"quality {old['quality']} -> {config['quality']}")
    for stage, node in after["placement"].items():
        if before["placement"].get(stage) != node:
            changes.append(f"{stage} {before['placement'].get(stage, '-')} -> {node}")
    if before["paused"] != after["paused"]:
        changes.append("paused" if after["paused"] else "resumed")
    return ", ".join(changes) or "no change"


def format_decisions(stats: dict[str, Any]) -> list[str]:
    """One line per decision of a stream's history: when (seconds since the streams registered),
    its version, what it changed, and why."""
    history = stats.get("history", [])
    lines = []
    if history and history[0]["version"] > 1:  # one version per decision: the ones before were not kept
        lines.append(f"    ({history[0]['version'] - 1} earlier decisions not kept)")
    before = None
    for decision in history:
        at = "" if decision["at_s"] is None else f"+{decision['at_s']:.1f} s "
        change = _decision_change(before, decision)
        lines.append(f"    {at}v{decision['version']}: {change}; because {decision['reason']}")
        before = decision
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    def share(part: int, whole: int) -> str:
        return f"{part} of {whole} ({part / whole:.0%})" if whole else f"{part} of 0"

    lines = [
        "dayu: summary",
        f"  tasks: generated {summary['generated']}, delivered {summary['delivered']}, dropped {summary['dropped']}"
        f", unaccounted {summary['unaccounted']}",
    ]
    for reason, count in summary["drop_reasons"].items():
        lines.append(f"    dropped {count}: {reason}")
    lat = summary["latency_s"]
    lines.append(f"  end-to-end latency: p50 {seconds(lat['p50'])} s, p95 {seconds(lat['p95'])} s")
    if summary["within_budget"] is not None:
        in_budget = summary["in_budget"]
        lines.append(
            f"  within latency budget: {share(in_budget, summary['delivered'])} delivered; "
            f"{share(in_budget, summary['generated'])} generated"
        )
    for stream, s in summary["streams"].items():
        generated = summary["generated_per_stream"].get(stream)
        made = "" if generated is None else f"generated {generated}, "
        budget = "" if s["within_budget"] is None else f"; within budget {share(s['in_budget'], s['delivered'])}"
        lines.append(
            f"  stream {stream}: {made}delivered {s['delivered']}, dropped {s['dropped']}{budget}"
            f"; latency p50 {seconds(s['latency_s']['p50'])} s, p95 {seconds(s['latency_s']['p95'])} s"
        )
        if s.get("labels"):
            found = ", ".join(f"{label} {count}" for label, count in s["labels"].items())
            lines.append(f"    found on its {s['frames']} frames: {found}")
        if s.get("texts"):
            lines.append("    most often: " + ", ".join(f"{text!r} x{count}" for text, count in s["texts"].items()))
    accuracy = summary["accuracy_f1"]
    lines.append(
        "  accuracy (F1 at IoU 0.5 against ground truth, else the golden configuration): "
        f"{'-' if accuracy is None else f'{accuracy:.3f}'}"
    )
    for stage, times in summary["stages"].items():
        parts = ", ".join(f"{kind[:-2]} p50 {seconds(t['p50'])} p95 {seconds(t['p95'])}" for kind, t in times.items())
        lines.append(f"  stage {stage}: {parts}")
    kernel = summary["kernel_bytes_per_link"]
    for link, count in sorted(summary["bytes_per_link"].items()):
        counted = f" (the kernel counted {kernel[link]} on the link)" if link in kernel else ""
        lines.append(f"  link {link}: {count} bytes of tasks{counted}")
    for stream, stats in sorted(summary["scheduling"].items()):
        decisions = format_decisions(stats)
        last = "" if decisions else f"; last: {stats['last_reason']}"
        lines.append(
            f"  stream {stream}: policy {stats['policy']}, {stats['decisions']} decisions, "
            f"p50 {stats['decision_time_p50_s'] * 1000:.3f} ms each{last}"
        )
        lines.extend(decisions)
        for h in stats["hops"]:
            where = f"{h['stage']} on {h['node']}" if h["stage"] else h["node"]
            lines.append(
                f"    traced {h['hop']} ({where}): {h['spans']} spans, p50 {seconds(h['p50_s'])} s,"
                f" p95 {seconds(h['p95_s'])} s"
            )
    for address, models in sorted(summary.get("triton", {}).items()):
        for model, c in sorted(models.items()):
            lines.append(
                f"  triton {address} {model}: {c['inferences']} inferences in {c['executions']} model calls, "
                f"{c['requests']} requests ({c['failures']} failed); per request {c['request_ms']:.1f} ms "
                f"(queue {c['queue_ms']:.1f}, model {c['compute_ms']:.1f})"
            )
    return "\n".join(lines)
