#!/usr/bin/env python
"""The OpenVINO engine against the TF path on this CPU: speed, or with --parity how far apart
their answers are (#32).

Networks: UNet++ on each --encoders at each --sizes, weights none with random batch-norm
statistics (``trained_like.py``, so folding matters), one network per (encoder, size), built
and converted once.

Speed (default), per precision (float32, mixed_bfloat16) and batch (--batches), ms per image,
median over --rounds that alternate between all cases so machine noise spreads evenly:

- ``tf predict_image``: the exported SavedModel's ``predict_image`` (network and the
  post-processing on the grid, float32 gray in), as TF Serving runs it;
- ``ours``: :class:`keras_ptx.inference.openvino_engine.OpenVinoPredictor`'s ``from_gray``
  (uint8 squares in, maps and image probabilities out), the path predict would take;
- ``ov own``: OpenVINO alone on the same IR file: one infer request of a model compiled with
  the same hint, float32 input prepared beforehand and shared, outputs not copied.

    .venv/bin/python bench/bench_openvino.py --encoders efficientnetb0 efficientnetb4 \
        --sizes 256 1024 --batches 1 8 --rounds 15

Parity (--parity): the TF predictor against the OpenVINO engine on synthetic radiographs
(``keras_ptx.synthetic``, half positive, on the grid by ``geometry.image_to_square``), for
each TTA: f32 OpenVINO against TF float32, bf16 OpenVINO against TF mixed_bfloat16 (and
against TF float32), and for scale TF mixed_bfloat16 against TF float32. Prints the largest
and mean probability difference, the largest image probability difference, and at each
--thresholds the pixels and images whose mask differs, with how many pixels TF put within that
largest difference of the threshold.

    .venv/bin/python bench/bench_openvino.py --parity --encoders efficientnetb0 --sizes 64 256
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import tempfile
import time

import numpy as np

from keras_ptx.config import load_config
from keras_ptx.data.geometry import image_to_square
from keras_ptx.inference import openvino_engine
from keras_ptx.inference.openvino_engine import OpenVinoPredictor
from keras_ptx.inference.postprocess import PostProcess
from keras_ptx.inference.runner import Predictor
from keras_ptx.model import build_model
from keras_ptx.serving.export import export_model
from keras_ptx.synthetic.radiograph import generate_image
from keras_ptx.tf_setup import tf
from trained_like import randomise_batch_norms

PRECISIONS = ("float32", "mixed_bfloat16")
POST = PostProcess(kind="threshold", threshold=0.75)


def networks(encoder: str, size: int, weights: str) -> dict:
    """One network's weights in each precision (precision -> Keras model)."""
    models = {}
    for precision in PRECISIONS:
        config = load_config(None, [f"data.image_size={size}", f"model.encoder={encoder}",
                                    "model.weights=none", f"train.mixed_precision={precision}"])
        models[precision] = build_model(config)
        if precision == PRECISIONS[0]:
            tf.keras.utils.set_random_seed(1)
            randomise_batch_norms(models[precision])
            models[precision].save_weights(weights)
        else:
            models[precision].load_weights(weights)
    return models


def radiographs(count: int, size: int) -> np.ndarray:
    """uint8 [count, size, size]: synthetic radiographs on the grid, every other one positive."""
    return np.stack([image_to_square(generate_image(7, i, max(size, 256), i % 2 == 1).pixels,
                                     size) for i in range(count)])


def parity(args) -> None:
    print(f"OpenVINO {openvino_engine.import_openvino().get_version()} against TF "
          f"{tf.__version__}, {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}, {args.images} synthetic radiographs\n")
    columns = " | ".join(f"masks differ at {t:g}: px / images (px near)" for t in args.thresholds)
    print(f"| network | TTA | OpenVINO | against TF | max abs dp | mean abs dp | max abs d image "
          f"p | {columns} |")
    print("|---|---|---|---|---:|---:|---:|" + "---:|" * len(args.thresholds))
    with tempfile.TemporaryDirectory() as tmp:
        for encoder, size in itertools.product(args.encoders, args.sizes):
            models = networks(encoder, size, f"{tmp}/{encoder}-{size}.weights.h5")
            gray = radiographs(args.images, size)
            for tta in args.tta:
                tf_predictors = {p: Predictor(models[p], tta) for p in PRECISIONS}
                answers = {p: _batched(tf_predictors[p].from_gray, gray) for p in PRECISIONS}
                print(f"| {encoder} {size} px | {tta} | (TF mixed_bfloat16) | float32 | " +
                      " | ".join(_differences(answers["float32"], answers["mixed_bfloat16"],
                                              args.thresholds)) + " |")
                for precision, against in (("float32", "float32"),
                                           ("mixed_bfloat16", "mixed_bfloat16"),
                                           ("mixed_bfloat16", "float32")):
                    engine = OpenVinoPredictor.from_predictor(tf_predictors["float32"], precision)
                    print(f"| {encoder} {size} px | {tta} | "
                          f"{openvino_engine.inference_precision(precision)} | {against} | " +
                          " | ".join(_differences(answers[against],
                                                  _batched(engine.from_gray, gray),
                                                  args.thresholds)) + " |")


def _batched(run, gray, batch: int = 4):
    parts = [run(gray[i:i + batch]) for i in range(0, len(gray), batch)]
    return tuple(np.concatenate(p) for p in zip(*parts))


def _differences(reference, other, thresholds) -> list[str]:
    (maps, probs), (ov_maps, ov_probs) = reference, other
    gap = np.abs(ov_maps - maps)
    cells = [f"{gap.max():.2e}", f"{gap.mean():.2e}", f"{np.abs(ov_probs - probs).max():.2e}"]
    for t in thresholds:
        differ = (maps > t) != (ov_maps > t)
        near = np.abs(maps - t) <= gap.max()
        cells.append(f"{differ.sum()} / {differ.any(axis=(1, 2)).sum()} ({near.sum()})")
    return cells


def speed(args) -> None:
    ov = openvino_engine.import_openvino()
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        for encoder, size in itertools.product(args.encoders, args.sizes):
            models = networks(encoder, size, f"{tmp}/{encoder}-{size}.weights.h5")
            folder = f"{tmp}/{encoder}-{size}-ov"
            openvino_engine.save(Predictor(models["float32"]), folder, "float32")
            gray = radiographs(max(args.batches), size)
            for precision in PRECISIONS:
                saved = tf.saved_model.load(export_model(Predictor(models[precision]), POST,
                                                         f"{tmp}/{encoder}-{size}-{precision}"))
                ours = OpenVinoPredictor.load(folder, precision)
                request = ov.Core().compile_model(
                    os.path.join(folder, openvino_engine.NETWORK), "CPU",
                    {ov.properties.hint.inference_precision:
                     openvino_engine.inference_precision(precision)}).create_infer_request()
                for batch in args.batches:
                    squares = gray[:batch]
                    floats = squares[..., None].astype(np.float32)
                    key = (encoder, size, precision, batch)
                    cases[(*key, "tf predict_image")] = (
                        lambda s=saved.signatures["predict_image"], x=tf.constant(floats):
                        s(images=x))
                    cases[(*key, "ours")] = lambda o=ours, x=squares: o.from_gray(x)
                    cases[(*key, "ov own")] = (
                        lambda r=request, x=floats: r.infer({openvino_engine.INPUT: x},
                                                            share_inputs=True, share_outputs=True))
        for run in cases.values():          # warm-up: first calls allocate and pick kernels
            run()
        times = {key: [] for key in cases}
        for _ in range(args.rounds):
            for key, run in cases.items():
                start = time.perf_counter()
                run()
                times[key].append(1000 * (time.perf_counter() - start) / key[3])
    print(f"ms per image, {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}, OpenVINO {ov.get_version()}, median of {args.rounds}\n")
    print("| encoder | size | precision | batch | tf predict_image | ours | ov own | "
          "ours / ov own |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for key in dict.fromkeys(k[:4] for k in times):
        median = {path: statistics.median(times[(*key, path)])
                  for path in ("tf predict_image", "ours", "ov own")}
        print(f"| {' | '.join(map(str, key))} | " +
              " | ".join(f"{v:.1f}" for v in median.values()) +
              f" | {median['ours'] / median['ov own']:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parity", action="store_true", help="measure answers, not speed")
    parser.add_argument("--encoders", nargs="+", default=["efficientnetb0"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--images", type=int, default=16, help="--parity: radiographs")
    parser.add_argument("--tta", nargs="+", default=["none"], choices=["none", "hflip"],
                        help="--parity: TTAs")
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.5, 0.75],
                        help="--parity: pixel thresholds")
    args = parser.parse_args()
    (parity if args.parity else speed)(args)


if __name__ == "__main__":
    main()
