#!/usr/bin/env python
"""Time bin/make-synthetic: N images at 1024x1024 with 1 and 2 workers, plus one image's parts.

Writes each dataset into a temporary directory (the full pipeline: drawing, JPEG encoding,
DICOM and CSV writing, preview) and prints a Markdown table for BENCHMARKS.md: wall time,
images per second, milliseconds per image per worker. The issue's target: 1,000 images in
about a minute on 2 cores. Run on a quiet machine:

    .venv/bin/python bench/bench_synthetic.py --n-images 1000 --workers 1 2
    .venv/bin/python bench/bench_synthetic.py --areas 300      # lesion sizes, not a timing
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

from keras_ptx.synthetic.dataset import Options, make_dataset, plan_image
from keras_ptx.synthetic.dicom_writer import write_dicom
from keras_ptx.synthetic.radiograph import generate_image


def time_parts(size: int, runs: int) -> dict:
    """Median milliseconds of drawing one image and of writing it as a JPEG DICOM."""
    options = Options(n_images=runs, size=size)
    draw, write = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(runs):
            plan = plan_image(options, index)
            start = time.perf_counter()
            image = generate_image(0, index, size, plan.positive, plan.patient)
            middle = time.perf_counter()
            write_dicom(os.path.join(tmp, f"{index}.dcm"), image.pixels, image_id=plan.image_id,
                        study_uid=plan.study_uid, series_uid=plan.series_uid,
                        patient_id=plan.patient_id, patient_name=plan.patient_name)
            write.append(time.perf_counter() - middle)
            draw.append(middle - start)
    return {"draw": 1000 * statistics.median(draw), "write": 1000 * statistics.median(write)}


def area_statistics(positives: int, size: int = 128) -> str:
    """Union mask area (share of the image) over ``positives`` positive images of seed 11."""
    import numpy as np

    areas = np.array([generate_image(11, index, size, positive=True).union.mean()
                      for index in range(positives)])
    return (f"union area over {positives} positives ({size} px): median {np.median(areas):.2%}, "
            f"10th percentile {np.percentile(areas, 10):.2%}, under 0.2% {np.mean(areas < 0.002):.0%}, "
            f"99th percentile {np.percentile(areas, 99):.1%}, max {areas.max():.1%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--part-runs", type=int, default=50)
    parser.add_argument("--areas", type=int, default=0, metavar="N",
                        help="only print the lesion area statistics of N positive images")
    args = parser.parse_args()
    if args.areas:
        print(area_statistics(args.areas))
        return

    parts = time_parts(args.size, args.part_runs)
    print(f"make-synthetic, {args.size}x{args.size}, {platform.processor() or platform.machine()},"
          f" {os.cpu_count()} cores")
    print(f"one image (median of {args.part_runs}): draw {parts['draw']:.0f} ms, "
          f"JPEG + DICOM write {parts['write']:.0f} ms\n")
    print("| images | workers | wall s | images/s | ms per image per worker |")
    print("|---:|---:|---:|---:|---:|")
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            make_dataset(tmp, Options(n_images=args.n_images, size=args.size), workers=workers,
                         progress=False)
            wall = time.perf_counter() - start
        print(f"| {args.n_images} | {workers} | {wall:.1f} | {args.n_images / wall:.1f} | "
              f"{1000 * wall * workers / args.n_images:.0f} |")


if __name__ == "__main__":
    main()
