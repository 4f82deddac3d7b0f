#!/usr/bin/env python
"""What the DICOM result objects cost: building and writing them, and bin/predict with them.

1. **Objects**: one synthetic 1024 x 1024 CR (a positive mask, as the SR then also references
   the segment), ``build_objects`` + encoding + ``write_atomic`` (fsync, rename) for SEG + SR,
   and for SEG + SR + SC; median ms of --repeats after a warm-up.
2. **Predict** (with --images N): N synthetic 1024 x 1024 CRs, a B0 UNet++ at --size (random
   weights with random batch-norm statistics, ``trained_like.py``), ``predict()`` without and
   with ``dicom_out`` in alternating rounds after an untimed warm-up; the median images/s of
   each and their ratio.

``--figure PATH`` draws the SEG of the objects benchmark as read back from its file (pydicom)
over its source radiograph, for the README. Run on a quiet machine:

    .venv/bin/python bench/bench_dicom_out.py --repeats 30 --images 64 --rounds 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import cv2
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from keras_ptx import rundir
from keras_ptx.config import dump_config, load_config
from keras_ptx.data.dicom import read_dicom
from keras_ptx.fileio import write_atomic
from keras_ptx.inference import plots
from keras_ptx.results.dicom_files import object_path
from keras_ptx.results.dicom_objects import build_objects, encode
from keras_ptx.inference.prediction import ModelIdentity
from keras_ptx.synthetic.dataset import Options, make_dataset
from keras_ptx.synthetic.dicom_writer import write_dicom
from keras_ptx.synthetic.radiograph import generate_image

IDENTITY = ModelIdentity("bench")


def _positive_source(folder: str):
    drawn = generate_image(seed=0, index=1, size=1024, positive=True, patient=1)
    path = write_dicom(os.path.join(folder, "source.dcm"), drawn.pixels, image_id=generate_uid(),
                       study_uid=generate_uid(), series_uid=generate_uid(), patient_id="B",
                       patient_name="BENCH^IMAGE", view="PA")
    return read_dicom(path), drawn.union


def time_objects(folder: str, kinds, repeats: int) -> tuple[float, dict]:
    """Median ms to build and write ``kinds`` for one positive 1024 image; the paths."""
    image, mask = _positive_source(folder)
    paths = {}

    def once():
        objects = build_objects(image.source.dataset, mask, 0.9, IDENTITY, kinds,
                                pixels=image.pixels)
        for kind, ds in objects.items():
            paths[kind] = object_path(folder, image.image_id, kind)
            write_atomic(paths[kind], encode(ds))

    once()                                              # warm-up: highdicom's first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), {"image": image, **paths}


def draw_figure(image, seg_path: str, out: str, width: int = 512) -> None:
    """The SEG's frame as pydicom reads it from the file, outlined on the source (``width``
    pixels wide)."""
    mask = pydicom.dcmread(seg_path).pixel_array.astype(bool)
    picture = plots.overlay(image.pixels, mask,
                            caption="SEG read back from its file (synthetic truth mask)")
    height = round(picture.shape[0] * width / picture.shape[1])
    plots.save_png(out, cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA))


def time_predict(folder: str, images: int, size: int, rounds: int) -> dict:
    from keras_ptx.results.predict import predict
    from keras_ptx.model import build_model
    from trained_like import randomise_batch_norms

    make_dataset(os.path.join(folder, "data"), Options(n_images=images, seed=1, size=1024,
                                                       test_fraction=0.0), workers=2,
                 progress=False)
    run = os.path.join(folder, "run")
    os.makedirs(run)
    config = load_config(None, [f"data.image_size={size}", "model.encoder=efficientnetb0",
                                "model.weights=none"])
    model = build_model(config)
    randomise_batch_norms(model)
    dump_config(config, os.path.join(run, rundir.CONFIG))
    model.save_weights(os.path.join(run, rundir.BEST_WEIGHTS))
    data = os.path.join(folder, "data", "dicom-images-train")
    predict(run, data, os.path.join(folder, "warm-up"), progress=False, log=lambda *_: None)
    rates = {"without": [], "with": []}
    for r in range(rounds):
        for case in ("without", "with"):
            out = os.path.join(folder, f"out-{case}-{r}")
            summary = predict(run, data, out,
                              progress=False, log=lambda *_: None,
                              dicom_out=os.path.join(out, "dicom") if case == "with" else None)
            rates[case].append(summary.images / summary.seconds)
            print(f"round {r + 1} {case:>7} --dicom-out: {rates[case][-1]:.2f} images/s",
                  flush=True)
    return {case: statistics.median(values) for case, values in rates.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--images", type=int, default=0, help="also time predict on N images")
    parser.add_argument("--size", type=int, default=256, help="the model's grid")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--figure", default=None, help="write the SEG read-back picture here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        print("| objects | ms per 1024 x 1024 image (median) |\n|---|---|")
        for kinds in (("seg", "sr"), ("seg", "sr", "sc")):
            ms, paths = time_objects(folder, kinds, args.repeats)
            print(f"| {' + '.join(k.upper() for k in kinds)} | {ms:.1f} |")
        if args.figure:
            draw_figure(paths["image"], paths["seg"], args.figure)
        if args.images:
            rates = time_predict(folder, args.images, args.size, args.rounds)
            print(f"\n| predict, B0 at {args.size}, {args.images} images | images/s (median of "
                  f"{args.rounds}) |\n|---|---|")
            print(f"| without --dicom-out | {rates['without']:.2f} |")
            print(f"| with --dicom-out (SEG + SR) | {rates['with']:.2f} |")
            print(f"| ratio | {rates['with'] / rates['without']:.2f} |")


if __name__ == "__main__":
    main()
