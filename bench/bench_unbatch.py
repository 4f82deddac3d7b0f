#!/usr/bin/env python
"""CPU per batch of splitting a group of batches back into batches, two ways: ``unbatch``
(copies every element) and ``flat_map(from_tensor_slices)`` (shares the group's memory), as
the training pipeline does after each augmentation call. Groups of 4 float32 batches of
12 x 256 x 256 x 3 (9.4 MB each), 300 groups; prints Markdown:

    .venv/bin/python bench/bench_unbatch.py
"""
from __future__ import annotations

import statistics
import time

from keras_ptx.tf_setup import tf


def main():
    group = tf.random.uniform([4, 12, 256, 256, 3])
    groups = tf.data.Dataset.from_tensors(group).repeat(300)
    ways = {"unbatch": lambda ds: ds.unbatch(),
            "flat_map(from_tensor_slices)":
                lambda ds: ds.flat_map(tf.data.Dataset.from_tensor_slices)}
    cpu = {name: [] for name in ways}
    for order in (list(ways), list(reversed(ways))):      # alternated, medians
        for name in order:
            start, batches = time.process_time(), 0
            for _ in ways[name](groups):
                batches += 1
            cpu[name].append(1000 * (time.process_time() - start) / batches)
    print("| split | CPU ms per 9.4 MB batch |\n|---|---|")
    for name, values in cpu.items():
        print(f"| {name} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
