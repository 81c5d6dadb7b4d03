"""Accuracy of the plate detector against the synthetic scene's ground truth, per resolution: what a
policy trades when it lowers the resolution (the profile Chameleon and AWStream learn online).

    .venv/bin/python hack/accuracy_profile.py [--config configs/experiment.yaml] [--seconds 90]

Frames are rendered at 1280x720 (seeds 1 and 2, one every 3 s), scaled down by the generator's own
resize, and run through text_detector twice: with the configuration's parameters (plate
shape) and with max_side only (any text line). Prints true/false positives, misses and F1@IoU0.5
for each resolution."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import numpy as np
import yaml

from dayu.datasource.scene import TrafficScene
from dayu.media.accuracy import f1, match_counts
from dayu.media.frames import resize, scale_box
from dayu.processor.inference import ModelRef
from dayu.processor.kinds import PROCESSORS
from dayu.processor.models import DETECTION_MODEL
from dayu.v1.types_pb2 import Resolution

HEIGHTS = (720, 540, 480, 360, 270)
SOURCE = Resolution(width=1280, height=720)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/experiment.yaml"))
    parser.add_argument("--seconds", type=float, default=90.0)
    args = parser.parse_args()
    configured = yaml.safe_load(args.config.read_text())["processors"]["text_detector"].get("params", {})
    configured = {**configured, "backend": "onnxruntime"}
    detectors = {
        "plate shape": PROCESSORS.create("text_detector", configured),
        "any text": PROCESSORS.create("text_detector", {"max_side": configured.get("max_side", 960)}),
    }
    model = ModelRef(DETECTION_MODEL)
    counts = {(name, height): np.zeros(3, np.int64) for name in detectors for height in HEIGHTS}
    for seed in (1, 2):
        scene = TrafficScene(1280, 720, seed=seed)
        for t in np.arange(0.0, args.seconds, 3.0):
            frame, truth = scene.render(float(t))
            truth_boxes = [d.box for d in truth]
            for height in HEIGHTS:
                width = round(1280 * height / 720 / 2) * 2
                image = resize(frame, width, height)
                for name, detector in detectors.items():
                    batch = detector.model_input(image)
                    found = (
                        detector.boxes(await detector.backend.infer(model, batch), image.shape[:2])
                        if batch is not None
                        else []
                    )
                    boxes = [scale_box(d.box, Resolution(width=width, height=height), SOURCE) for d in found]
                    counts[(name, height)] += match_counts(boxes, truth_boxes)
    print(f"{'detector':<12} {'height':>6} {'found':>6} {'false':>6} {'missed':>6} {'F1':>6}")
    for (name, height), (tp, fp, fn) in counts.items():
        print(f"{name:<12} {height:>6} {tp:>6} {fp:>6} {fn:>6} {f1(int(tp), int(fp), int(fn)):>6.3f}")


if __name__ == "__main__":
    asyncio.run(main())
