#!/usr/bin/env python
"""Time bin/build-tfrecords on 1024x1024 JPEG DICOMs at 1 and 2 workers, beside the raw rate.

The raw rate is one process doing only what every image needs: pydicom decode
(``read_dicom``) + pad/resize to the record size (``geometry.image_to_square``). A build adds
header reading, mask decoding, two PNG encodings, serialisation, sha256 and the write. The
issue's goals: 2 workers >= 1.7x one worker on 2 cores, and the whole job close to the raw
rate (times the workers). Builds alternate between worker counts (the machine is noisy);
medians are printed as a Markdown table for BENCHMARKS.md. Run on a quiet machine:

    .venv/bin/python bench/bench_build.py --n-images 400 --image-size 512 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from keras_ptx.data.build import Options, build
from keras_ptx.data.dicom import find_dicom_files, read_dicom
from keras_ptx.data.geometry import image_to_square
from keras_ptx.synthetic import dataset as synthetic

TRAIN = synthetic.SPLIT_DIRS["train"]
LABELS = synthetic.LABEL_FILES[1][0]


def raw_rate(dicom_dir: Path, size: int, limit: int) -> float:
    """Images per second of decode + resize alone, in this one process."""
    paths = [dicom_dir / p for p in find_dicom_files(str(dicom_dir))[0][:limit]]
    start = time.perf_counter()
    for path in paths:
        image_to_square(read_dicom(path).pixels, size)
    return len(paths) / (time.perf_counter() - start)


def build_rate(data: Path, size: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        options = Options(dicom_dir=str(data / TRAIN), labels=str(data / LABELS),
                          out=out, image_size=size, workers=workers)
        start = time.perf_counter()
        manifest = build(options, log=lambda *_: None)
        wall = time.perf_counter() - start
    written = sum(s["images"] for s in manifest["splits"].values())
    return written / wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=512, help="record size")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, help="an existing make-synthetic dataset "
                        "(stage 1 labels); default: generate one in a temporary folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "synthetic"
            synthetic.make_dataset(data, synthetic.Options(n_images=args.n_images, size=1024,
                                                           test_fraction=0.0),
                                   workers=os.cpu_count() or 1, progress=False)
        n = len(find_dicom_files(str(data / TRAIN))[0])
        raw = [raw_rate(data / TRAIN, args.image_size, 200) for _ in range(args.repeats)]
        rates = {w: [] for w in args.workers}
        for _ in range(args.repeats):
            for workers in args.workers:
                rates[workers].append(build_rate(data, args.image_size, workers))

    raw_median = statistics.median(raw)
    print(f"build-tfrecords: {n} JPEG DICOMs 1024x1024 -> {args.image_size}px records, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"median of {args.repeats}")
    print(f"raw decode + resize (one process): {raw_median:.1f} images/s\n")
    print("| workers | images/s | vs 1 worker | vs raw x workers |")
    print("|---:|---:|---:|---:|")
    base = statistics.median(rates[args.workers[0]])
    for workers in args.workers:
        rate = statistics.median(rates[workers])
        print(f"| {workers} | {rate:.1f} | {rate / base:.2f}x | {rate / (raw_median * workers):.2f} |")


if __name__ == "__main__":
    main()
