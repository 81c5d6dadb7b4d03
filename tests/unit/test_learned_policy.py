"""The learned policy: latency_budget with a network choosing its aim from the StreamView."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_policies import apply, feed, view

from dayu.runtime.errors import InvalidArgument
from dayu.scheduler.core import build_policy
from dayu.scheduler.learned import AIMS, FEATURES, WEIGHTS_FILE, LearnedPolicy, Network, weight_count
from dayu.scheduler.policies import POLICIES
from dayu.v1 import decision_pb2, resources_pb2


def _weights_choosing(aim: float) -> list[float]:
    weights = np.zeros(weight_count())
    weights[weight_count() - len(AIMS) + AIMS.index(aim)] = 1.0  # the output's bias
    return [float(w) for w in weights]


def test_the_shipped_weights_fit_the_network_and_say_how_they_were_made() -> None:
    shipped = json.loads(WEIGHTS_FILE.read_text())
    assert shipped["features"] == list(FEATURES) and shipped["aims"] == list(AIMS)
    Network(shipped["weights"])
    trained = shipped["trained"]
    assert trained["command"].startswith("hack/train_policy.py") and isinstance(trained["seed"], int)
    assert trained["traces"] and trained["history"]


def test_the_aim_it_chooses_is_what_latency_budget_aims_at() -> None:
    """With weights that always choose 0.5, a delay of 0.6 s (of a 1 s budget) is over its aim: it lowers
    the configuration where latency_budget (aiming at 0.8) keeps it."""
    low = POLICIES.create("learned", {"weights": _weights_choosing(0.5)})
    default = POLICIES.create("latency_budget", {})
    decided = []
    for p in (low, default):
        v = view()
        apply(v, p.decide(v))
        feed(v, latency=0.6, transfer=0.1, process=0.4, tasks=3)
        decided.append(p.decide(v))
    assert decided[0] is not None and "over 0.50 s" in decided[0].reason
    assert decided[1] is None


def test_its_state_is_bounded_whatever_the_view_says() -> None:
    p = POLICIES.create("learned", {})
    assert isinstance(p, LearnedPolicy)
    v = view()
    assert len(p.features(v)) == len(FEATURES)  # no feedback yet
    apply(v, p.decide(v))
    report = resources_pb2.NodeResources(node="edge-1")
    report.links.add(from_node="edge-1", to_node="cloud", bandwidth_mbps=1e9)
    v.resources = {"edge-1": report}
    feed(v, latency=1e6, transfer=1e6, process=1e6, queue=1e6, size=1, tasks=5)
    for rate in (1e-9, 1e9, 5.0):
        report.links[0].bandwidth_mbps = rate
        features = p.features(v)
        assert np.all(np.isfinite(features)) and np.all(np.abs(features) <= 3.0), features
    p.decide(v)  # decides on it without failing


def test_weights_that_do_not_fit_the_network_are_refused_naming_the_field() -> None:
    spec = decision_pb2.PolicySpec(name="learned")
    spec.params.update({"weights": [0.0, 1.0]})
    with pytest.raises(InvalidArgument, match=f"weights.*{weight_count()} finite numbers, got 2"):
        build_policy(spec, "policy")
