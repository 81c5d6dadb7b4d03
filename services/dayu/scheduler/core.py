"""Per-stream policies, decisions and their watchers, without gRPC."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import yaml

from dayu.runtime.clock import timestamp
from dayu.runtime.errors import InvalidArgument, NotFound
from dayu.runtime.registry import Registry
from dayu.runtime.validation import require_id, validate_stream_spec
from dayu.scheduler.policies import POLICIES, Policy, StreamView
from dayu.v1 import decision_pb2, resources_pb2, scheduler_pb2, task_pb2

RECENT_RECORDS = 64
DECISION_TIMES = 1000


def build_policy(spec: decision_pb2.PolicySpec, field: str, registry: Registry[type[Policy]] = POLICIES) -> Policy:
    """A policy from its name and its parameters, given as a YAML (or JSON) mapping."""
    try:
        params = yaml.safe_load(spec.params_yaml) if spec.params_yaml.strip() else {}
    except yaml.YAMLError as error:
        raise InvalidArgument(f"{field}.params_yaml", f"a YAML mapping ({error})") from None
    if not isinstance(params, dict):
        raise InvalidArgument(f"{field}.params_yaml", f"a YAML mapping, got {type(params).__name__}")
    return registry.create(spec.name, params, name_field=f"{field}.name", params_field=f"{field}.params_yaml")  # type: ignore[no-any-return]


@dataclass
class _Stream:
    view: StreamView
    policy_name: str
    policy: Policy
    decisions: int = 0
    feedback: int = 0
    last_version: int = 0
    decided_at: float = 0.0
    decision_times: deque[float] = field(default_factory=lambda: deque(maxlen=DECISION_TIMES))
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class SchedulerCore:
    def __init__(
        self, default_policy: decision_pb2.PolicySpec, cloud_node: str = "cloud", decision_interval_s: float = 0.5
    ) -> None:
        self.default_policy = default_policy
        self.cloud_node = cloud_node
        self.decision_interval_s = decision_interval_s
        self._streams: dict[str, _Stream] = {}
        self.resources: dict[str, resources_pb2.NodeResources] = {}

    def _stream(self, stream_id: str, field: str = "stream_id") -> _Stream:
        require_id(stream_id, field)
        try:
            return self._streams[stream_id]
        except KeyError:
            raise NotFound(f"stream {stream_id!r} is not registered") from None

    async def register(self, spec: decision_pb2.StreamSpec) -> decision_pb2.Decision:
        """Registers (or re-registers) a stream and returns its startup decision."""
        validate_stream_spec(spec)
        policy_spec = spec.policy if spec.policy.name else self.default_policy
        policy = build_policy(policy_spec, "stream.policy")
        previous = self._streams.get(spec.stream_id)
        view = StreamView(spec, None, self.cloud_node)
        stream = _Stream(view, policy_spec.name, policy)
        if previous:  # versions go on from the previous registration
            stream.last_version = previous.last_version
            stream.changed = previous.changed
        self._streams[spec.stream_id] = stream
        return await self._decide(stream, "startup plan")

    def decision(self, stream_id: str) -> decision_pb2.Decision:
        current = self._stream(stream_id).view.current
        assert current is not None  # a registered stream always has its startup decision
        return current

    async def watch(self, stream_id: str, after_version: int) -> AsyncIterator[decision_pb2.Decision]:
        """Yields the stream's decisions newer than after_version, as they are made."""
        stream = self._stream(stream_id)
        last_sent = after_version

        def newer() -> bool:
            current = self._streams[stream_id].view.current
            return current is not None and current.version > last_sent

        while True:
            async with stream.changed:
                await stream.changed.wait_for(newer)
                current = self._streams[stream_id].view.current
            assert current is not None
            last_sent = current.version
            yield current

    async def set_policy(self, stream_id: str, spec: decision_pb2.PolicySpec) -> decision_pb2.Decision:
        stream = self._stream(stream_id)
        stream.policy = build_policy(spec, "policy")
        stream.policy_name = spec.name
        stream.view.current = None  # the new policy starts from its own startup plan
        return await self._decide(stream, f"policy switched to {spec.name}")

    async def feedback(self, record: task_pb2.TaskRecord) -> None:
        """Takes a record, and lets the policy decide again (at most every decision_interval_s)."""
        stream = self._stream(record.task.stream_id, "record.task.stream_id")
        stream.feedback += 1
        stream.view.recent.append(record)
        del stream.view.recent[:-RECENT_RECORDS]
        if time.monotonic() - stream.decided_at >= self.decision_interval_s:
            await self._decide(stream, "feedback")

    def report_resources(self, report: resources_pb2.NodeResources) -> None:
        require_id(report.node, "node")
        self.resources[report.node] = report

    async def _decide(self, stream: _Stream, why: str) -> decision_pb2.Decision:
        """Asks the policy; publishes a new version when it proposes something. Returns the current."""
        stream.view.resources = self.resources
        started = time.perf_counter()
        proposal = stream.policy.decide(stream.view)
        elapsed = time.perf_counter() - started
        stream.decision_times.append(elapsed)
        stream.decided_at = time.monotonic()
        if proposal is None:
            assert stream.view.current is not None, "a policy must propose a startup plan"
            return stream.view.current
        stream.last_version += 1
        decision = decision_pb2.Decision(
            stream_id=stream.view.spec.stream_id,
            version=stream.last_version,
            configuration=proposal.configuration,
            placement=proposal.placement,
            reason=f"{why}: {proposal.reason}",
            policy=stream.policy_name,
            made_at=timestamp(),
            decision_time_s=elapsed,
        )
        stream.decisions += 1
        async with stream.changed:
            stream.view.current = decision
            stream.changed.notify_all()
        return decision

    def stats(self) -> list[scheduler_pb2.StreamSchedulingStats]:
        out = []
        for stream_id, stream in sorted(self._streams.items()):
            times = sorted(stream.decision_times)
            out.append(
                scheduler_pb2.StreamSchedulingStats(
                    stream_id=stream_id,
                    policy=stream.policy_name,
                    decisions=stream.decisions,
                    decision_time_p50_s=statistics.median(times) if times else 0.0,
                    decision_time_p95_s=times[min(len(times) - 1, int(0.95 * len(times)))] if times else 0.0,
                    feedback_received=stream.feedback,
                    current=stream.view.current,
                )
            )
        return out
