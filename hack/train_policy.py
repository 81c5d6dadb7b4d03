#!/usr/bin/env python3
"""Trains the `learned` policy's network (dayu.scheduler.learned) in the simulator, as CASVA trains
its agent in simulation: evolution strategies (antithetic Gaussian perturbations, rank-shaped returns,
Adam), a derivative-free way to do policy-gradient RL that needs nothing past numpy and the simulator.

Each candidate runs `dayu simulate`'s scenario of configs/experiment.yaml (the real scheduler core and
policy code, against the shipped profile) for --duration simulated seconds on every training trace;
its return is CASVA's reward: frames analysed within budget, each weighted by its accuracy, less the
lateness over the budget and the dropped tasks, over the frames the sources offered (so frames
skipped by a lower frame rate earn nothing). The traces it learns on are drawn from --seed (step
changes between 0.5 and 25 Mbit/s) and written to hack/training/; the shipped traces are left for
testing it on what it never saw.

    .venv/bin/python hack/train_policy.py [--seed 0] [--minutes 10] [--out services/dayu/scheduler/learned_policy.json]

The result (weights, with the command, seed, traces and returns that made them) is small JSON."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "services"))

from dayu.runtime.logs import LogSettings, configure_logging  # noqa: E402
from dayu.scheduler.learned import AIMS, FEATURES, HIDDEN, WEIGHTS_FILE, weight_count  # noqa: E402
from dayu.simulator.costs import Profile  # noqa: E402
from dayu.simulator.engine import SimulatedMesh  # noqa: E402
from dayu.simulator.scenario import from_mesh  # noqa: E402
from dayu.simulator.tasklog import TaskOutcome  # noqa: E402

CONFIG = ROOT / "configs" / "experiment.yaml"
PROFILE = ROOT / "configs" / "profile.yaml"
TRAINING = ROOT / "hack" / "training"
LATE_WEIGHT = 2.0  # a task a whole budget late costs twice what an accurate one on time earns
DROP_COST = 1.0


def make_traces(seed: int, count: int) -> list[Path]:
    """Step traces drawn from the seed: 6 to 12 steps of 5 to 20 s between 0.5 and 25 Mbit/s."""
    rng = random.Random(seed)
    TRAINING.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        t, lines = 0.0, [f"# time_s mbps: training trace {i} of hack/train_policy.py --seed {seed}"]
        for _ in range(rng.randint(6, 12)):
            lines.append(f"{t:g} {rng.choice([0.5, 1, 2, 3, 5, 8, 12, 16, 20, 25]):g}")
            t += rng.choice([5, 10, 15, 20])
        path = TRAINING / f"trace-{i}.txt"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def reward(tasks: list[TaskOutcome], offered_frames: float) -> float:
    """CASVA's reward over a run, per frame the sources offered."""
    total = 0.0
    for task in tasks:
        frames = task.configuration.frames_per_segment
        if not task.delivered:
            total -= DROP_COST * frames
            continue
        late = max(0.0, task.latency_s - task.budget_s) / task.budget_s
        total += frames * ((task.accuracy or 0.0) * (late == 0) - LATE_WEIGHT * late)
    return total / offered_frames


def episode(weights: np.ndarray | None, trace: Path, profile: Profile, duration_s: float, seed: int) -> float:
    """The return of a run of the learned policy with these weights (None: of latency_budget)."""
    policy = "latency_budget" if weights is None else "learned"
    scenario = from_mesh(CONFIG, policy, trace)
    for stream in scenario.streams:
        if weights is not None:
            stream.spec.policy.params.update({"weights": [float(w) for w in weights]})
    run = SimulatedMesh(scenario, profile, policy, duration_s, seed, keep_tasks=True).run()
    offered = sum(s.spec.max_configuration.fps for s in scenario.streams) * duration_s
    return reward(run.tasks, offered)


def initial(rng: np.random.Generator) -> np.ndarray:
    """Small random weights, with the output's bias on latency_budget's own aim (0.8): training starts
    from the rule-based policy and learns where to deviate from it."""
    weights = rng.normal(0.0, 0.1, weight_count())
    output_bias = weight_count() - len(AIMS)
    weights[output_bias + AIMS.index(0.8)] += 0.02
    return weights


def ranks(values: np.ndarray) -> np.ndarray:
    """Centred ranks in [-0.5, 0.5]: returns shaped so that one lucky run does not dominate a step."""
    order = np.empty(len(values))
    order[np.argsort(values)] = np.arange(len(values))
    return order / (len(values) - 1) - 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=10.0, help="stop after this much wall time")
    parser.add_argument("--generations", type=int, default=100, help="at most this many")
    parser.add_argument("--pairs", type=int, default=8, help="antithetic pairs per generation")
    parser.add_argument("--sigma", type=float, default=0.15)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--traces", type=int, default=4, help="training traces drawn from the seed")
    parser.add_argument("--duration", type=float, default=60.0, help="simulated seconds per episode")
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    args = parser.parse_args()
    configure_logging(LogSettings(level="error", format="console"), component="train")

    rng = np.random.default_rng(args.seed)
    profile = Profile.load(PROFILE)
    traces = make_traces(args.seed, args.traces)
    theta = initial(rng)
    moment, velocity = np.zeros_like(theta), np.zeros_like(theta)
    deadline = time.monotonic() + 60 * args.minutes
    history = []

    def score(weights: np.ndarray | None, generation: int) -> float:
        """The mean return over the traces; the simulation's draws from seed + generation (the
        perturbations of one generation share them; generation 0 is the fixed yardstick)."""
        return float(np.mean([episode(weights, t, profile, args.duration, args.seed + generation) for t in traces]))

    baseline = score(None, 0)
    best = (score(theta, 0), theta.copy(), 0)
    print(f"latency_budget: return {baseline:.4f}; the initial network: {best[0]:.4f}", flush=True)
    for generation in range(1, args.generations + 1):
        if time.monotonic() > deadline:
            break
        noise = rng.normal(0.0, 1.0, (args.pairs, theta.size))
        returns = np.array(
            [score(theta + sign * args.sigma * n, generation) for n in noise for sign in (1, -1)]
        ).reshape(args.pairs, 2)
        shaped = ranks(returns.ravel()).reshape(args.pairs, 2)
        gradient = ((shaped[:, 0] - shaped[:, 1]) @ noise) / (2 * args.pairs * args.sigma)
        # Adam, ascending the return.
        moment = 0.9 * moment + 0.1 * gradient
        velocity = 0.999 * velocity + 0.001 * gradient**2
        step = moment / (1 - 0.9**generation) / (np.sqrt(velocity / (1 - 0.999**generation)) + 1e-8)
        theta = theta + args.learning_rate * step
        now = score(theta, 0)  # on the yardstick's draws: generations compare with each other
        history.append(
            {"generation": generation, "return": round(now, 4), "population_mean": round(float(returns.mean()), 4)}
        )
        print(f"generation {generation}: return {now:.4f}, population {returns.mean():.4f}", flush=True)
        if now > best[0]:
            best = (now, theta.copy(), generation)
    returned, weights, generation = best
    command = " ".join(["hack/train_policy.py", *sys.argv[1:]])
    args.out.write_text(
        json.dumps(
            {
                "features": list(FEATURES),
                "aims": list(AIMS),
                "hidden": HIDDEN,
                "weights": [round(float(w), 6) for w in weights],
                "trained": {
                    "command": command,
                    "date": date.today().isoformat(),
                    "seed": args.seed,
                    "traces": [str(t.relative_to(ROOT)) for t in traces],
                    "scenario": str(CONFIG.relative_to(ROOT)),
                    "episode_s": args.duration,
                    "best_generation": generation,
                    "best_return": round(returned, 4),
                    "latency_budget_return": round(baseline, 4),
                    "history": history,
                },
            },
            indent=1,
        )
        + "\n"
    )
    print(f"best: generation {generation}, return {returned:.4f}; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
