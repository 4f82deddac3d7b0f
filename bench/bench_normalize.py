#!/usr/bin/env python
"""CPU per image of turning a uint8 gray batch into the model's float32 RGB input: the XLA form
the training pipeline runs in its main process (``fused_to_model_input``) against numpy forms
an augmentation worker (no TensorFlow) could run instead. Medians of ``--rounds`` timings of
batches of 12, single-threaded numpy/OpenCV:

    .venv/bin/python bench/bench_normalize.py --sizes 256 512
"""
from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np

from keras_ptx.input.normalize import IMAGENET_MEAN, IMAGENET_STD, fused_to_model_input

BATCH = 12
SCALE = np.array([1 / (255 * s) for s in IMAGENET_STD], np.float32)
OFFSET = np.array([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], np.float32)
LUT = (np.arange(256, dtype=np.float32)[:, None] * SCALE + OFFSET).astype(np.float32)


def numpy_passes(gray, out):
    """One float conversion, then a multiply-add per channel."""
    value = gray[..., 0].astype(np.float32)
    for c in range(3):
        np.multiply(value, SCALE[c], out=out[..., c])
        out[..., c] += OFFSET[c]


def numpy_lut(gray, out):
    """One gather of three floats per pixel from a 256-entry table."""
    np.take(LUT, gray[..., 0], axis=0, out=out)


def opencv_transform(gray, out):
    """A float conversion, then cv2.transform's 3x2 matrix per pixel."""
    matrix = np.stack([SCALE, OFFSET], axis=1)
    for i in range(len(gray)):
        cv2.transform(gray[i].astype(np.float32), matrix, dst=out[i])


def ms_per_image(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.process_time()
        fn()
        times.append((time.process_time() - start) * 1000 / BATCH)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    cv2.setNumThreads(0)
    print("| size | XLA, main process ms/img | numpy passes ms/img | numpy LUT ms/img | "
          "cv2.transform ms/img |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        gray = np.random.default_rng(0).integers(0, 256, (BATCH, size, size, 1), np.uint8)
        out = np.empty((BATCH, size, size, 3), np.float32)
        expected = fused_to_model_input(gray).numpy()
        cells = [ms_per_image(lambda: fused_to_model_input(gray), args.rounds)]   # a tensor, as in tf.data
        for fn in (numpy_passes, numpy_lut, opencv_transform):
            fn(gray, out)
            np.testing.assert_allclose(out, expected, atol=1e-4)
            cells.append(ms_per_image(lambda fn=fn: fn(gray, out), args.rounds))
        print(f"| {size} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
