"""A learned macro level over latency_budget's rule-based micro level, as Hier-EI splits them.

At each decision a small network (numpy, no training dependency) reads the stream's state from the same
StreamView every policy sees and chooses how much of the latency budget to aim at (AIMS): low where the
uplink swings or tasks come back late, high where the link is steady and there is headroom. The rest is
latency_budget's: where the delay goes, the model-based fit of resolution, frame rate, segment length
and placement to the aim, and the feedback steps. Its reward in training is CASVA's: accuracy, weighed
against lateness over the budget and against frames skipped (hack/train_policy.py trains it in the
simulator with a fixed seed and a bounded time; the weights it made, with how, are in
learned_policy.json next to this file)."""

from __future__ import annotations

import json
import math
import statistics
from collections import deque
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import pydantic

from dayu.scheduler.knobs import Feedback
from dayu.scheduler.policies import POLICIES, LatencyBudgetParams, LatencyBudgetPolicy, Needs, StreamView

if TYPE_CHECKING:  # numpy loads with the first learned policy, not with every scheduler
    import numpy as np

AIMS = (0.5, 0.6, 0.7, 0.8, 0.9)  # shares of the latency budget the network chooses from
FEATURES = (
    "bias",
    "latency",  # the latest tasks' delay over the budget
    "transfer",  # their share of the delay on links
    "processing",  # their share in processing and queues
    "dropped",  # the share of them dropped
    "bandwidth_swing",  # the uplink's coefficient of variation over the latest decisions
    "bandwidth_trend",  # the uplink now against its mean over them
    "headroom",  # log2 of the uplink (its safety share) over what the stream sends, over 3
    "resolution",  # the levels: 0 at the best, 1 at the lowest rung
    "frame_rate",
    "segment",
    "load",  # processing seconds a second over max_load
)
HIDDEN = 8
BANDWIDTHS_KEPT = 8
WEIGHTS_FILE = Path(__file__).with_name("learned_policy.json")


def weight_count(hidden: int = HIDDEN) -> int:
    return (len(FEATURES) + 1) * hidden + (hidden + 1) * len(AIMS)


class Network:
    """features -> tanh hidden layer -> one score per aim."""

    def __init__(self, weights: list[float] | np.ndarray, hidden: int = HIDDEN) -> None:
        import numpy as np

        flat = np.asarray(weights, dtype=np.float64)
        if flat.shape != (weight_count(hidden),) or not np.all(np.isfinite(flat)):
            raise ValueError(f"weights: {weight_count(hidden)} finite numbers, got {flat.shape[0]}")
        inputs, split = len(FEATURES), (len(FEATURES) + 1) * hidden
        self.w1 = flat[:split].reshape(inputs + 1, hidden)
        self.w2 = flat[split:].reshape(hidden + 1, len(AIMS))

    def scores(self, features: np.ndarray) -> np.ndarray:
        import numpy as np

        hidden = np.tanh(np.append(features, 1.0) @ self.w1)
        return np.append(hidden, 1.0) @ self.w2

    def aim(self, features: np.ndarray) -> float:
        return AIMS[int(self.scores(features).argmax())]


@cache
def shipped_weights() -> tuple[float, ...]:
    return tuple(json.loads(WEIGHTS_FILE.read_text())["weights"])


class LearnedParams(LatencyBudgetParams):
    weights: list[float] | None = pydantic.Field(
        None, description=f"the network's {weight_count()} weights (default: the shipped learned_policy.json)"
    )

    @pydantic.field_validator("weights")
    @classmethod
    def _fits_the_network(cls, weights: list[float] | None) -> list[float] | None:
        if weights is not None:
            Network(weights)  # ValueError names what was expected
        return weights


@POLICIES.register("learned", params=LearnedParams)
class LearnedPolicy(LatencyBudgetPolicy):
    """latency_budget with its aim chosen each decision by a network trained in the simulator."""

    def __init__(self, params: LearnedParams) -> None:
        super().__init__(params)
        self.network = Network(params.weights if params.weights is not None else list(shipped_weights()))
        self._bandwidths: deque[float] = deque(maxlen=BANDWIDTHS_KEPT)

    def _aim(self, view: StreamView) -> float:
        self._aimed = self.network.aim(self.features(view))
        return self._aimed

    def features(self, view: StreamView) -> np.ndarray:
        """The state, as FEATURES says, each bounded to a few units."""
        budget = view.spec.latency_budget_s
        bandwidth = view.uplink_mbps()
        if bandwidth is not None and math.isfinite(bandwidth) and bandwidth > 0:
            self._bandwidths.append(bandwidth)
        feedback = Feedback.of(view.figures(self.params.window))
        values = dict.fromkeys(FEATURES, 0.0)
        values["bias"] = 1.0
        if feedback is not None and feedback.tasks:
            delay = max(feedback.latency_s, 1e-6)
            values["latency"] = min(feedback.latency_s / budget, 3.0)
            values["transfer"] = min(feedback.transfer_s / delay, 1.0)
            values["processing"] = min((feedback.process_s + feedback.queue_s) / delay, 1.0)
            values["dropped"] = feedback.dropped / feedback.tasks
            config = view.current.configuration if view.current else None
            if config is not None and config.fps and config.frames_per_segment:
                load = feedback.process_s * config.fps / config.frames_per_segment
                values["load"] = min(load / self.params.max_load, 3.0)
                sent = Needs.of(feedback, config).uplink_mbps
                if bandwidth and sent:
                    values["headroom"] = max(-1.0, min(1.0, math.log2(bandwidth * self.params.safety / sent) / 3))
        if len(self._bandwidths) >= 2:
            mean = statistics.fmean(self._bandwidths)
            values["bandwidth_swing"] = min(statistics.pstdev(self._bandwidths) / mean, 2.0)
            values["bandwidth_trend"] = max(-1.0, min(1.0, self._bandwidths[-1] / mean - 1))
        limits = self._limits(view.spec.max_configuration)
        for name, level, limit in zip(("resolution", "frame_rate", "segment"), self.levels, limits, strict=True):
            values[name] = level / limit if limit else 0.0
        import numpy as np

        return np.array([values[name] for name in FEATURES])
