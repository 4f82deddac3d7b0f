#!/usr/bin/env python
"""Training and inference speed of the UNet++ on this CPU, with its size (parameters, FLOPs).

For each encoder (default B0 and B4, weights none) at --size 256, with and without deep
supervision and with XLA off and on, builds the network as ``bin/train`` would (BCE + Dice mask
loss, the image-level head, Adam, the streaming metrics) and times:

- training: ``train_on_batch`` on a fixed random batch of --batch images -> images/s;
- inference: the network's forward pass at batch 1 through a ``tf.function`` (compiled with
  XLA in the XLA rows), as a server would call it, not ``Model.predict`` -> ms/image.

The first call of each (tracing, and XLA compilation in the XLA rows) is timed apart. Repeats
alternate between all cases so machine noise spreads evenly; the table gives medians. XLA on
this CPU is slow to compile (minutes for B4) and to run; --jit off skips it. The peer to beat
is segmentation_models_pytorch's UnetPlusPlus (efficientnet-b0, 256, batch 8) on the same
machine; this script does not time it. Run on a quiet machine:

    .venv/bin/python bench/bench_model.py --repeats 5
    .venv/bin/python bench/bench_model.py --encoders efficientnetb0 --jit off --repeats 9 \
        --decoder-filters 256,128,64,32,16 128,64,32,16,16
"""
from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time

import numpy as np

from keras_ptx.config import load_config
from keras_ptx.model import build_model, count_flops, make_losses, make_metrics
from keras_ptx.tf_setup import tf

SWITCH = {"off": [False], "on": [True], "both": [False, True]}


def make_case(encoder, filters, size, batch, deep_supervision, jit):
    """Build one compiled network; return (info, train_step, infer_step) closures."""
    config = load_config(None, [f"model.encoder={encoder}", "model.weights=none",
                                f"data.image_size={size}", f"model.decoder_filters=[{filters}]",
                                f"model.deep_supervision={str(deep_supervision).lower()}",
                                "train.mixed_precision=false"])
    model = build_model(config)
    losses, loss_weights = make_losses(config)
    model.compile(tf.keras.optimizers.Adam(1e-3), loss=losses, loss_weights=loss_weights,
                  metrics=make_metrics(config), jit_compile=jit)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    mask = (rng.random((batch, size, size, 1)) < 0.05).astype(np.float32)
    targets = {name: mask for name in model.output_names if name.startswith("mask")}
    targets["label"] = mask.max(axis=(1, 2))
    single = tf.constant(images[:1])
    deployed = [i for i, name in enumerate(model.output_names) if name in ("mask", "label")]
    # A deployed network keeps mask and label: the deep-supervision heads are left out.
    forward = tf.function(lambda x: [tf.nest.flatten(model(x, training=False))[i]
                                     for i in deployed], jit_compile=jit)
    info = {"params": model.count_params(), "gflops": count_flops(model) / 1e9}
    return (info,
            lambda: model.train_on_batch(images, targets),
            lambda: [t.numpy() for t in forward(single)])


def timed(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", nargs="+", default=["efficientnetb0", "efficientnetb4"])
    parser.add_argument("--decoder-filters", nargs="+", default=["256,128,64,32,16"],
                        help="decoder widths to compare, e.g. 256,128,64,32,16 128,64,32,16,16")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds over all cases")
    parser.add_argument("--jit", choices=sorted(SWITCH), default="both")
    parser.add_argument("--deep-supervision", choices=sorted(SWITCH), default="both")
    args = parser.parse_args()

    cases = {}
    for key in itertools.product(args.encoders, args.decoder_filters,
                                 SWITCH[args.deep_supervision], SWITCH[args.jit]):
        info, train, infer = make_case(*key[:2], args.size, args.batch, *key[2:])
        info["first train s"] = timed(train)
        info["first infer s"] = timed(infer)
        cases[key] = info, train, infer
        print(f"built {key}: first step "
              f"{info['first train s']:.0f} s, first forward {info['first infer s']:.0f} s",
              flush=True)

    train_s = {key: [] for key in cases}
    infer_s = {key: [] for key in cases}
    for _ in range(args.repeats):
        for key, (_, train, infer) in cases.items():
            train_s[key].append(timed(train))
            infer_s[key].append(timed(infer))

    print(f"\nUNet++ speed, {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}, {args.size}x{args.size}, training batch {args.batch}, "
          f"inference batch 1, median of {args.repeats}\n")
    print("| encoder | decoder filters | deep sup. | XLA | params (M) | GFLOPs/image | "
          "train images/s | infer ms/image | first train step s | first forward s |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for key, (info, _, _) in cases.items():
        encoder, filters, ds, jit = key
        rate = args.batch / statistics.median(train_s[key])
        ms = 1000 * statistics.median(infer_s[key])
        print(f"| {encoder} | {filters} | {'on' if ds else 'off'} | {'on' if jit else 'off'} | "
              f"{info['params'] / 1e6:.2f} | {info['gflops']:.1f} | {rate:.2f} | {ms:.0f} | "
              f"{info['first train s']:.0f} | {info['first infer s']:.1f} |")


if __name__ == "__main__":
    main()
