#!/usr/bin/env python
"""Peak memory (RSS of this process; worker processes not counted) while the cached training
pipeline streams ``--batches`` batches, for comparing designs of the pipeline. Writes the same
chest-like records as bench_pipeline.py. Point PYTHONPATH at a checkout to measure another
commit's pipeline:

    .venv/bin/python bench/bench_memory.py --size 512 --calls 2
    git worktree add /tmp/other <commit>
    PYTHONPATH=/tmp/other .venv/bin/python bench/bench_memory.py --size 512 --calls 2
"""
from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

from bench_pipeline import write_shards
from keras_ptx.config import load_config
from keras_ptx.data.records_dir import RecordsDir
from keras_ptx.input.pipeline import make_dataset


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--calls", type=int, default=2, help="data.num_parallel_calls")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_shards(Path(tmp), args.size, args.images)
        config = load_config(None, (f"data.image_size={args.size}", "train.batch_size=12",
                                    f"data.num_parallel_calls={args.calls}"))
        batches = iter(make_dataset(config, RecordsDir(tmp), "train", cached=True,
                                    steps_per_epoch=1))
        for _ in range(args.batches):
            next(batches)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| {args.size} | {args.calls} | {args.batches} | {peak:,.0f} |")


if __name__ == "__main__":
    main()
