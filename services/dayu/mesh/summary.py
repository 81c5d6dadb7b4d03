"""What a run of a mesh produced: the tally of the distributor's live records, and the summary that
`dayu up` prints (tasks, latency, stages, links, accuracy, scheduling, Triton)."""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter, defaultdict
from typing import Any

from dayu.runtime.logs import get_logger
from dayu.v1 import task_pb2

log = get_logger(__name__)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]}


class ResultTally:
    """What the run produced, from the distributor's live records."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self.delivered = 0
        self.dropped = 0
        self.drop_reasons: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.accuracies: list[float] = []
        self.in_budget = 0
        self.stage_times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    async def wait_for_total(self, total: int, timeout_s: float) -> None:
        """Waits until `total` tasks are delivered or dropped, or the timeout passes."""
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.delivered + self.dropped >= total), timeout_s
                )
            except TimeoutError:
                log.warning("tasks unaccounted at stop", missing=total - self.delivered - self.dropped)

    async def add(self, record: task_pb2.TaskRecord) -> None:
        async with self._changed:
            self._count(record)
            self._changed.notify_all()

    def _count(self, record: task_pb2.TaskRecord) -> None:
        if record.outcome == task_pb2.TASK_OUTCOME_DROPPED:
            self.dropped += 1
            self.drop_reasons[record.reason] += 1
            return
        self.delivered += 1
        self.latencies.append(record.latency_s)
        if record.task.latency_budget_s and record.latency_s <= record.task.latency_budget_s:
            self.in_budget += 1
        if record.HasField("accuracy"):
            self.accuracies.append(record.accuracy)
        for stage in record.task.dag.stages:
            times = self.stage_times[stage.spec.name]
            times["queue_s"].append(stage.timings.queue_s)
            times["process_s"].append(stage.timings.process_s)
            times["transfer_s"].append(stage.timings.transfer_s)

    def summary(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "dropped": self.dropped,
            "drop_reasons": dict(self.drop_reasons.most_common()),
            "latency_s": percentiles(self.latencies),
            "within_budget": self.in_budget / self.delivered if self.delivered else None,
            "accuracy_f1": statistics.fmean(self.accuracies) if self.accuracies else None,
            "stages": {
                name: {kind: percentiles(values) for kind, values in times.items()}
                for name, times in sorted(self.stage_times.items())
            },
        }



def format_summary(summary: dict[str, Any]) -> str:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

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
        lines.append(f"  within latency budget: {summary['within_budget']:.0%}")
    accuracy = summary["accuracy_f1"]
    lines.append(f"  accuracy (F1 at IoU 0.5 against ground truth): {'-' if accuracy is None else f'{accuracy:.3f}'}")
    for stage, times in summary["stages"].items():
        parts = ", ".join(f"{kind[:-2]} p50 {seconds(t['p50'])} p95 {seconds(t['p95'])}" for kind, t in times.items())
        lines.append(f"  stage {stage}: {parts}")
    for link, count in sorted(summary["bytes_per_link"].items()):
        lines.append(f"  link {link}: {count} bytes")
    for stream, stats in sorted(summary["scheduling"].items()):
        lines.append(
            f"  stream {stream}: policy {stats['policy']}, {stats['decisions']} decisions, "
            f"p50 {stats['decision_time_p50_s'] * 1000:.3f} ms each; last: {stats['last_reason']}"
        )
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
