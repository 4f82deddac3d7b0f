#!/usr/bin/env python
"""Latency per image of the exported SavedModel on this CPU, as TF Serving would run it.

For each encoder (default B0 and B4, weights none with random batch-norm statistics as in
``trained_like.py``, UNet++ at --size 256), exports the model with
``keras_ptx.serving.export.export_model`` to a temporary base path, reloads it with
``tf.saved_model.load`` and times its signatures at batch 1 and 16:

- ``serving_default``: 1024 x 1024 gray PNGs (a SIIM radiograph's size), so the time includes
  PNG decoding, the geometry rule, the network, the map back at 1024, post-processing there
  and the RLE;
- ``serving_compact``: the same without the mask and the probability map among the outputs;
- ``predict_image``: float32 images already on the 256 grid (network + post-processing).

It also prints the size of TF Serving's REST answer (row format, as its json_tensor.cc writes
it: rapidjson's PrettyWriter, arrays on one line, floats as the shortest of %g and %.9g that
reads back) to one 1024 PNG, for each image signature.

Post-processing is the winner's triplet with a component filter (the costliest rule; see
``--post threshold`` for the plain pixel threshold). With random weights the probabilities sit
near 0.5, so the mask covers most of the image: the component filter's worst case. Repeats
alternate between all cases, so machine noise spreads evenly; the table gives the median ms
per image. Run on a quiet machine:

    .venv/bin/python bench/bench_export.py --encoders efficientnetb0 efficientnetb4 --repeats 5
    .venv/bin/python bench/bench_export.py --encoders efficientnetb0 --members 1 3 5 --repeats 5
    .venv/bin/python bench/bench_export.py --precisions float32 mixed_bfloat16 --repeats 5

``--members N`` exports an ensemble of N networks in one graph (decoding, resizing and
post-processing once per image; the networks once per member) and reports its size.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import os
import json
import platform
import statistics
import tempfile
import time

import numpy as np

from keras_ptx.config import load_config
from keras_ptx.inference.postprocess import PostProcess
from keras_ptx.inference.runner import Predictor
from keras_ptx.model import build_model
from keras_ptx.serving.export import export_model
from keras_ptx.serving.warmup import synthetic_image
from keras_ptx.tf_setup import tf
from trained_like import randomise_batch_norms

POSTS = {"triplet": PostProcess(kind="triplet", top_threshold=0.75, min_pixels=600,
                                bottom_threshold=0.3, min_area=2000),
         "threshold": PostProcess(kind="threshold", threshold=0.75)}


def export_and_load(encoder: str, size: int, post: PostProcess, base: str, members: int = 1,
                    precision: str = "float32"):
    """Export an ensemble of ``members`` networks (one: a single model) computing in
    ``precision``; returns the loaded SavedModel, the export's seconds and its size in MB."""
    config = load_config(None, [f"data.image_size={size}", f"model.encoder={encoder}",
                                "model.weights=none", f"train.mixed_precision={precision}"])
    models = [build_model(config) for _ in range(members)]
    for seed, model in enumerate(models):
        randomise_batch_norms(model, seed)
    start = time.perf_counter()
    path = export_model(Predictor(models), post, base)
    seconds = time.perf_counter() - start
    megabytes = sum(os.path.getsize(os.path.join(folder, name))
                    for folder, _, names in os.walk(path) for name in names) / 1e6
    del models
    tf.keras.backend.clear_session()
    gc.collect()
    return tf.saved_model.load(path), seconds, megabytes


def _json_value(value) -> str:
    if isinstance(value, np.ndarray):
        return "[" + ", ".join(_json_value(v) for v in value) + "]"
    if isinstance(value, (bytes, np.bytes_)):
        return json.dumps(value.decode())
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (np.floating, float)):
        text = "%.6g" % value
        if np.float32(text) != np.float32(value):
            text = "%.9g" % value
        return text if "." in text or "e" in text else text + ".0"
    return str(int(value))


def rest_answer(outputs: dict) -> str:
    """TF Serving's REST row-format answer (``{"predictions": [...]}``) to these outputs."""
    items = []
    for i in range(len(next(iter(outputs.values())))):
        fields = [f'            "{name}": {_json_value(value.numpy()[i])}'
                  for name, value in outputs.items()]
        items.append("        {\n" + ",\n".join(fields) + "\n        }")
    return '{\n    "predictions": [\n' + ",\n".join(items) + "\n    ]\n}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", nargs="+", default=["efficientnetb0", "efficientnetb4"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--post", choices=sorted(POSTS), default="triplet")
    parser.add_argument("--members", nargs="+", type=int, default=[1],
                        help="ensemble sizes to export (networks averaged in one graph)")
    parser.add_argument("--precisions", nargs="+", default=["float32"],
                        choices=["float32", "mixed_bfloat16", "mixed_float16"])
    args = parser.parse_args()

    png = tf.io.encode_png(synthetic_image(1024, 1024)[..., None]).numpy()
    square = synthetic_image(args.size, args.size).astype(np.float32)[None, ..., None]
    cases, exports = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for encoder, members, precision in itertools.product(args.encoders, args.members,
                                                             args.precisions):
            model = (encoder, members, precision)
            loaded, seconds, megabytes = export_and_load(
                encoder, args.size, POSTS[args.post], f"{tmp}/{encoder}-{members}-{precision}",
                members, precision)
            exports[model] = seconds, megabytes
            for batch in args.batches:
                serve = loaded.signatures["serving_default"]
                compact = loaded.signatures["serving_compact"]
                image = loaded.signatures["predict_image"]
                cases[(*model, "serving_default (1024 PNG)", batch)] = (
                    lambda s=serve, b=batch: s(image_bytes=tf.constant([png] * b)))
                cases[(*model, "serving_compact (1024 PNG)", batch)] = (
                    lambda s=compact, b=batch: s(image_bytes=tf.constant([png] * b)))
                cases[(*model, f"predict_image ({args.size} float)", batch)] = (
                    lambda s=image, b=batch: s(images=tf.constant(np.repeat(square, b, 0))))
        for run in cases.values():      # warm-up: first calls allocate and pick kernels
            run()
            run()
        sizes = {key[:4]: len(rest_answer(run()).encode())
                 for key, run in cases.items() if key[4] == 1 and "PNG" in key[3]}
        times = {key: [] for key in cases}
        for _ in range(args.repeats):
            for key, run in cases.items():
                start = time.perf_counter()
                run()
                times[key].append((time.perf_counter() - start) / key[4])

    print(f"SavedModel latency, {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}, post-processing: {POSTS[args.post].describe()}, "
          f"median of {args.repeats}\n")
    print("| encoder | members | precision | signature | batch | ms / image | min | max |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for (encoder, members, precision, signature, batch), values in times.items():
        ms = [1000 * v for v in values]
        print(f"| {encoder} | {members} | {precision} | {signature} | {batch} | "
              f"{statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} |")
    print("\nexport time and size: " + ", ".join(
        f"{' '.join(map(str, m))}: {s:.0f} s, {mb:.0f} MB" for m, (s, mb) in exports.items()))
    print("\nREST answer to one 1024 x 1024 PNG: " + ", ".join(
        f"{' '.join(map(str, key[:3]))} {key[3].split()[0]} {size:,} bytes"
        for key, size in sizes.items()))


if __name__ == "__main__":
    main()
