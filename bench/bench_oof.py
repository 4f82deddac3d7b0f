#!/usr/bin/env python
"""Out-of-fold evaluation time per 1,000 images on this CPU (``evaluate --model FOLD_FOLDER``).

Writes ``--images`` labeled records at ``--size`` (every other one with a lesion-like disc) in
``--folds`` folds, trains each fold's run for one step (``train-folds``; the weights barely
matter for the time), then times ``evaluate`` on the fold folder: each fold's model over its
own images, the post-processing search over all of them, the plots and the case overlays.
Also times the same images as the val split of records without folds, evaluated by one run
trained the same way, so the table shows what going out of fold adds to one model's pass. Run on a quiet machine:

    .venv/bin/python bench/bench_oof.py --images 250 --folds 5 --tta none hflip
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time

import cv2
import numpy as np

from keras_ptx.config import load_config
from keras_ptx.data.records import write_shards
from keras_ptx.inference.evaluate import evaluate
from keras_ptx.training.folds import train_folds
from keras_ptx.training.run import train


def examples(n: int, size: int, seed: int = 0):
    """``n`` noisy gray images, every other one with a bright disc that is also its mask."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        image = rng.integers(40, 90, (size, size), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        if k % 2 == 0:
            x, y = (int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
            cv2.circle(mask, (x, y), int(rng.integers(size // 20, size // 6)), 1, -1)
            image[mask > 0] = 200
        yield image, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--encoder", default="efficientnetb0")
    parser.add_argument("--tta", nargs="+", default=["none", "hflip"], choices=["none", "hflip"])
    args = parser.parse_args()
    config = load_config(None, [
        f"data.image_size={args.size}", f"model.encoder={args.encoder}", "model.weights=none",
        "augment.enabled=false", "train.epochs=1", "train.steps_per_epoch=1",
        "train.batch_size=2", "train.validation_steps=1", "train.tensorboard_images=0"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folded, whole = f"{tmp}/folded", f"{tmp}/whole"
        write_shards(folded, "train", examples(args.images, args.size), shards=4,
                     original=1024, folds=[k % args.folds for k in range(args.images)])
        write_shards(whole, "val", examples(args.images, args.size), shards=4, original=1024)
        write_shards(whole, "train", examples(8, args.size, seed=1), original=1024)
        train_folds(config, folded, f"{tmp}/cv", echo=lambda line: None)
        train(config, whole, f"{tmp}/run", echo=lambda line: None)
        for tta in args.tta:
            for name, model, data, split in (
                    (f"out of fold ({args.folds} models)", f"{tmp}/cv", folded, "val"),
                    ("one run", f"{tmp}/run", whole, "val")):
                start = time.perf_counter()
                report = evaluate(model, data, split, tta=tta, progress=False,
                                  save_postprocess=False)
                seconds = time.perf_counter() - start
                assert report["images"] == args.images, report["images"]
                rows.append((name, tta, report["images"], seconds))
    print(f"{platform.processor() or platform.machine()}, {args.encoder} at "
          f"{args.size}x{args.size}, {args.folds} folds\n")
    print("| evaluation | TTA | images | seconds | s per 1,000 images |")
    print("|---|---|---:|---:|---:|")
    for name, tta, images, seconds in rows:
        print(f"| {name} | {tta} | {images} | {seconds:.1f} | {1000 * seconds / images:.0f} |")


if __name__ == "__main__":
    main()
