#!/usr/bin/env python
"""Time keras_ptx.data.rle decode + encode on realistic 1024x1024 SIIM masks.

Two masks, sized like SIIM's positive training labels (union area: median ~0.8% of the image,
largest ~15%, as ``AREA_MEDIAN`` and ``AREA_RANGE`` in keras_ptx/synthetic/pneumothorax.py
record them): a typical positive (three irregular blobs, ~8,600 px union, the median) and the
largest (~160,000 px). Prints the median of N runs in milliseconds as a Markdown table for
BENCHMARKS.md. Run on a quiet machine:

    .venv/bin/python bench/bench_rle.py --runs 200
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from keras_ptx.data import rle

SIZE = 1024


def blob(rng, centre, area, size=SIZE):
    """An irregular filled blob (a radius wobbling with a few harmonics) of about ``area`` px."""
    harmonics = rng.uniform(0.05, 0.2, 4) * rng.choice([-1, 1], 4)
    phases = rng.uniform(0, 2 * np.pi, 4)
    aspect = rng.uniform(0.4, 1.0)
    yy, xx = np.mgrid[:size, :size]
    dy, dx = (yy - centre[0]) / aspect, xx - centre[1]
    angle = np.arctan2(dy, dx)
    wobble = 1 + sum(h * np.cos((k + 2) * angle + p)
                     for k, (h, p) in enumerate(zip(harmonics, phases)))
    radius = np.hypot(dy, dx) / wobble
    scale = np.sqrt(area / (np.pi * aspect))
    for _ in range(4):                      # settle the scale on the target area
        mask = radius < scale
        scale *= np.sqrt(area / max(int(mask.sum()), 1))
    return (radius < scale).astype(np.uint8)


def masks(seed=0):
    rng = np.random.default_rng(seed)
    typical = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for centre, area in (((260, 240), 5200), ((420, 300), 2300), ((300, 780), 1100)):
        typical |= blob(rng, centre, area)
    large = blob(rng, (430, 300), 160_000)
    return {"typical (3 blobs)": typical, "largest": large}


def median_ms(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="timed runs per measurement")
    args = parser.parse_args()
    print(f"rle decode + encode, 1024x1024, median of {args.runs} runs "
          f"({platform.processor() or platform.machine()}, numpy {np.__version__})\n")
    print("| mask | pixels | runs | decode ms | encode ms | decode+encode ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, mask in masks().items():
        text = rle.encode(mask)
        assert np.array_equal(rle.decode(text, SIZE, SIZE), mask), "round trip failed"
        for _ in range(3):                  # warm-up
            rle.decode(rle.encode(mask), SIZE, SIZE)
        decode = median_ms(lambda: rle.decode(text, SIZE, SIZE), args.runs)
        encode = median_ms(lambda: rle.encode(mask), args.runs)
        both = median_ms(lambda: rle.decode(rle.encode(mask), SIZE, SIZE), args.runs)
        print(f"| {name} | {int(mask.sum()):,} | {len(text.split()) // 2} | {decode:.2f} | "
              f"{encode:.2f} | {both:.2f} |")


if __name__ == "__main__":
    main()
