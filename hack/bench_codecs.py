"""Cost and size of the segment codecs, side by side, on one machine in one run (no network).

Prints medians of encoding and decoding one segment of 10 frames (a textured scene panning, as a
camera would see it), in ms per frame and bytes per frame, for JPEG and H.264 at quality 80.

    .venv/bin/python hack/bench_codecs.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np

from dayu.media.codecs import decode_segment, encode_segment
from dayu.v1 import task_pb2, types_pb2

FRAMES_PER_SEGMENT = 10
FPS = 10.0
QUALITY = 80
RESOLUTIONS = ((640, 360), (1280, 720))
CODECS = (("JPEG q80", types_pb2.CODEC_JPEG), ("H.264 q80", types_pb2.CODEC_H264))


def panning_scene(width: int, height: int, frames: int) -> list[np.ndarray]:
    """Smooth texture with sharp shapes, panned a few pixels per frame: neither noise nor flat colour."""
    rng = np.random.default_rng(7)
    wide = cv2.resize(
        rng.integers(0, 256, (height // 24, (width + 8 * frames) // 24, 3), dtype=np.uint8),
        (width + 8 * frames, height),
        interpolation=cv2.INTER_CUBIC,
    )
    for _ in range(40):
        x, y = int(rng.integers(0, wide.shape[1] - 60)), int(rng.integers(0, height - 60))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(wide, (x, y), (x + int(rng.integers(10, 60)), y + int(rng.integers(10, 60))), color, -1)
    return [np.ascontiguousarray(wide[:, 8 * i : 8 * i + width]) for i in range(frames)]


def measure(codec: int, frames: list[np.ndarray], repeats: int) -> tuple[float, float, float]:
    """Median encode ms/frame, median decode ms/frame, bytes/frame."""
    encode_s, decode_s = [], []
    segment = task_pb2.Segment()
    for _ in range(repeats):
        segment = task_pb2.Segment(codec=codec, fps=FPS, frame_indices=range(len(frames)))
        start = time.perf_counter()
        encode_segment(segment, frames, QUALITY)
        encoded = time.perf_counter()
        decode_segment(segment)
        encode_s.append(encoded - start)
        decode_s.append(time.perf_counter() - encoded)
    size = len(segment.stream) + sum(len(data) for data in segment.frames)
    per_frame_ms = 1e3 / len(frames)
    return statistics.median(encode_s) * per_frame_ms, statistics.median(decode_s) * per_frame_ms, size / len(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="segments encoded and decoded per case")
    args = parser.parse_args()
    print(f"segment of {FRAMES_PER_SEGMENT} frames, quality {QUALITY}, median of {args.repeats} runs")
    print(f"{'resolution':<11} {'codec':<10} {'encode ms/frame':>16} {'decode ms/frame':>16} {'bytes/frame':>12}")
    for width, height in RESOLUTIONS:
        frames = panning_scene(width, height, FRAMES_PER_SEGMENT)
        resolution = f"{width}x{height}"
        for name, codec in CODECS:
            measure(codec, frames, 1)  # warm-up: codec initialisation and first allocations
            encode_ms, decode_ms, size = measure(codec, frames, args.repeats)
            print(f"{resolution:<11} {name:<10} {encode_ms:>16.2f} {decode_ms:>16.2f} {size:>12,.0f}")


if __name__ == "__main__":
    main()
