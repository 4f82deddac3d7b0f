#!/usr/bin/env python
"""Time U-Net's border weights of one mask (``input.border.border_weights``, what an
augmentation worker adds per image with ``train.loss.border_bce``) beside the default policy's
augmentation of the same image, at each side asked for.

Masks: no lesion, one, two and five (ellipses in one lung field, as SIIM's come); each repeat
times every kind on the same masks and the medians of the repeats are printed as a Markdown
table for BENCHMARKS.md. Times are CPU time (``time.process_time``), so other load on the
machine stretches them less. One process, one core (OpenCV's thread pool off, as in the
workers):

    .venv/bin/python bench/bench_border.py --sides 256 512 --repeats 7
"""
from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np

from keras_ptx.config import AugmentConfig
from keras_ptx.input.border import REFERENCE_SIDE, Border, border_weights
from keras_ptx.input.policy import build_policy, reseed


def masks(side: int) -> dict[str, np.ndarray]:
    """{kind: uint8 mask} with 0, 1, 2 and 5 lesions in the right half."""
    rng = np.random.default_rng(0)
    out = {}
    for count in (0, 1, 2, 5):
        mask = np.zeros((side, side), np.uint8)
        for _ in range(count):
            centre = (int(rng.integers(side // 2 + side // 8, side - side // 8)),
                      int(rng.integers(side // 8, side - side // 8)))
            axes = (int(rng.integers(side // 40, side // 12)), int(rng.integers(side // 20, side // 6)))
            cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
        out[f"{count} lesion{'' if count == 1 else 's'}"] = mask
    return out


def per_image_ms(work, repeats: int, n: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(n):
            work()
        times.append((time.process_time() - start) / n * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--per-repeat", type=int, default=20, help="images per timed repeat")
    parser.add_argument("--w0", type=float, default=10.0)
    parser.add_argument("--sigma", type=float, default=5.0, help="pixels at 1024")
    args = parser.parse_args()
    cv2.setNumThreads(0)
    rows = []
    for side in args.sides:
        border = Border(args.w0, args.sigma * side / REFERENCE_SIDE)
        policy = build_policy(AugmentConfig(), side)
        image = np.random.default_rng(1).integers(0, 256, (side, side), dtype=np.uint8)
        for kind, mask in masks(side).items():
            weights_ms = per_image_ms(lambda: border_weights(mask, border), args.repeats,
                                      args.per_repeat)
            seeds = iter(range(10**9))

            def augment():
                reseed(policy, next(seeds))
                policy(image=image, mask=mask)

            augment_ms = per_image_ms(augment, args.repeats, args.per_repeat)
            rows.append((side, kind, weights_ms, augment_ms))
    print("| side | mask | border weights, CPU ms/image | default augmentation, CPU ms/image |")
    print("|---|---|---|---|")
    for side, kind, weights_ms, augment_ms in rows:
        print(f"| {side} | {kind} | {weights_ms:.2f} | {augment_ms:.2f} |")


if __name__ == "__main__":
    main()
