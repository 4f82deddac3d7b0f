"""Lay out a whole synthetic SIIM-ACR dataset: DICOM tree, label CSV, summary, contact sheet.

``OUT/dicom-images-{train,test}/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``,
``OUT/train-rle.csv`` (stage 1) or ``OUT/stage_2_train.csv`` (stage 2) for the train images,
``OUT/synthetic-test-labels.csv`` (the test images' truth, which SIIM never shipped with the
test set; for checking predictions), ``OUT/synthetic.json`` and ``OUT/preview.png``.

Everything about image ``index`` (identity, split, label, format, shape, pixels) derives from
``(seed, index)`` alone, so the output is byte-identical whatever the number of workers.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from pydicom.uid import generate_uid
from tqdm import tqdm

from keras_ptx.data import rle
from keras_ptx.data.annotations import write_annotations
from keras_ptx.data.dicom import read_dicom
from keras_ptx.data.geometry import image_to_square, pad_to_square
from keras_ptx.errors import UserError
from keras_ptx.synthetic.dicom_writer import SOP_CLASSES, write_dicom
from keras_ptx.synthetic.radiograph import MIN_SIZE, generate_image, rng_for

LABEL_FILES = {1: ("train-rle.csv", "stage1"), 2: ("stage_2_train.csv", "stage2")}
TEST_LABELS = "synthetic-test-labels.csv"
SPLIT_DIRS = {"train": "dicom-images-train", "test": "dicom-images-test"}
OUTPUTS = (*SPLIT_DIRS.values(), *(name for name, _ in LABEL_FILES.values()), TEST_LABELS,
           "synthetic.json", "preview.png")
FOLLOW_UP_RATE = 0.2                # odd indices that are the previous image's patient again
PIXEL_SPACINGS = (0.139, 0.143, 0.168, 0.171)    # mm at 1024 pixels, as in SIIM's files
# --mix-formats: index % 20 -> (transfer syntax, photometric, bits)
MIXED_FORMATS = {3: ("rle", "MONOCHROME2", 16), 7: ("jpeg_baseline", "MONOCHROME1", 8),
                 9: ("jpeg2000", "MONOCHROME1", 16), 13: ("explicit_le", "MONOCHROME2", 16),
                 17: ("explicit_le", "MONOCHROME2", 8), 19: ("explicit_le", "MONOCHROME1", 16)}
STANDARD_FORMAT = ("jpeg_baseline", "MONOCHROME2", 8)
# --mix-shapes: index % 20 -> a detector's (height, width), the long side --size pixels:
# 35x43 cm portrait and landscape, 24x30 cm landscape and pydicom-data's RG1 CR (1955x1841)
MIXED_SHAPES = {2: (43, 35), 7: (35, 43), 11: (1955, 1841), 16: (24, 30)}
IDENTITY_STREAM, PATIENT_SPLIT_STREAM = 2, 3
# Bounds on what one command may ask for: 8x SIIM's 12,047 images; a side up to a 43 cm
# detector's at ~0.1 mm (drawing one takes ~0.5 GB per worker).
MAX_IMAGES, MAX_SIZE = 100_000, 4096
PER_IMAGE_LIMIT = 5000              # synthetic.json lists images one by one up to this many
PREVIEW_TILES, PREVIEW_TILE = 12, 320


class SyntheticError(UserError):
    """Options that cannot make a dataset, or an OUT that already holds one."""


@dataclass(frozen=True)
class Options:
    n_images: int
    seed: int = 0
    size: int = 1024
    positive_fraction: float = 0.22
    stage: int = 1
    test_fraction: float = 0.1
    mix_formats: bool = False
    mix_shapes: bool = False
    classes: tuple[str, ...] = ("cr",)      # image i is of class classes[i % len(classes)]

    def __post_init__(self):
        if not self.classes or set(self.classes) - set(SOP_CLASSES):
            raise SyntheticError(f"classes must be some of {', '.join(SOP_CLASSES)}, got "
                                 f"{', '.join(self.classes) or 'none'}")
        if not 1 <= self.n_images <= MAX_IMAGES:
            raise SyntheticError(f"n_images must be within [1, {MAX_IMAGES}], got {self.n_images}")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise SyntheticError(f"size must be within [{MIN_SIZE}, {MAX_SIZE}], got {self.size}")
        for name in ("positive_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SyntheticError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if self.stage not in LABEL_FILES:
            raise SyntheticError(f"stage must be 1 or 2, got {self.stage}")
        if self.seed < 0:
            raise SyntheticError(f"seed must be non-negative, got {self.seed}")


@dataclass(frozen=True)
class Plan:
    """Everything about one image that is decided before drawing it."""
    index: int
    patient: int
    split: str                      # train | test
    positive: bool
    image_id: str                   # SOPInstanceUID
    study_uid: str
    series_uid: str
    patient_id: str
    patient_name: str
    transfer_syntax: str
    photometric: str
    bits: int
    pixel_spacing: float
    aspect: float                   # width / height
    sop_class: str                  # cr | dx | sc (dicom_writer.SOP_CLASSES)

    @property
    def relpath(self) -> str:
        return f"{SPLIT_DIRS[self.split]}/{self.study_uid}/{self.series_uid}/{self.image_id}.dcm"


def is_positive(index: int, fraction: float) -> bool:
    """Spread positives evenly: any first N images hold exactly round(N * fraction)."""
    return math.floor(0.5 + (index + 1) * fraction) > math.floor(0.5 + index * fraction)


def _uid(seed: int, index: int, kind: str) -> str:
    return str(generate_uid(entropy_srcs=[f"keras_ptx.synthetic:{seed}:{index}:{kind}"]))


def plan_image(options: Options, index: int) -> Plan:
    seed = options.seed
    rng = rng_for(seed, index, IDENTITY_STREAM)
    patient = index - 1 if index % 2 and rng.random() < FOLLOW_UP_RATE else index
    test = rng_for(seed, patient, PATIENT_SPLIT_STREAM).random() < options.test_fraction
    syntax, photometric, bits = (MIXED_FORMATS.get(index % 20, STANDARD_FORMAT)
                                 if options.mix_formats else STANDARD_FORMAT)
    spacing = float(rng.choice(PIXEL_SPACINGS)) * 1024 / options.size
    height, width = MIXED_SHAPES.get(index % 20, (1, 1)) if options.mix_shapes else (1, 1)
    return Plan(index=index, patient=patient, split="test" if test else "train",
                positive=is_positive(index, options.positive_fraction),
                image_id=_uid(seed, index, "image"), study_uid=_uid(seed, index, "study"),
                series_uid=_uid(seed, index, "series"),
                patient_id=f"SYNTHETIC-{seed}-{patient + 1:06d}",
                patient_name=f"SYNTHETIC^PATIENT{patient + 1:04d}",
                transfer_syntax=syntax, photometric=photometric, bits=bits,
                pixel_spacing=round(spacing, 6), aspect=width / height,
                sop_class=options.classes[index % len(options.classes)])


def make_image(options: Options, out: Path, index: int) -> dict:
    """Draw and write image ``index``; returns its record (labels and statistics)."""
    plan = plan_image(options, index)
    image = generate_image(options.seed, index, options.size, plan.positive, plan.patient,
                           plan.aspect)
    write_dicom(out / plan.relpath, image.pixels, image_id=plan.image_id,
                study_uid=plan.study_uid, series_uid=plan.series_uid,
                patient_id=plan.patient_id, patient_name=plan.patient_name, sex=image.sex,
                age=image.age, view=image.view, transfer_syntax=plan.transfer_syntax,
                photometric=plan.photometric, bits=plan.bits,
                pixel_spacing=(plan.pixel_spacing, plan.pixel_spacing), sop_class=plan.sop_class)
    areas = [float(mask.mean()) for mask in image.masks]
    return {"index": index, "image_id": plan.image_id, "patient": plan.patient,
            "split": plan.split, "path": plan.relpath, "rles": [rle.encode(m) for m in image.masks],
            "area": sum(areas), "annotation_areas": areas, "tags": list(image.tags),
            "sex": image.sex, "age": image.age, "view": image.view,
            "format": f"{plan.sop_class}/{plan.transfer_syntax}/{plan.photometric}/{plan.bits}bit",
            "shape": "x".join(map(str, image.pixels.shape))}


def _label_rows(records):
    for record in records:
        for value in record["rles"] or [rle.EMPTY]:
            yield record["image_id"], value


def _init_worker():
    cv2.setNumThreads(1)


def make_dataset(out, options: Options, workers: int = 1, overwrite: bool = False,
                 progress: bool = True) -> dict:
    """Write the dataset under ``out``; returns the summary also saved as synthetic.json."""
    out = Path(out)
    if workers < 1:
        raise SyntheticError(f"workers must be at least 1, got {workers}")
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise SyntheticError(f"{out} already holds a dataset ({', '.join(existing)}); "
                              "choose another directory or replace it with --overwrite")
    if existing and not _written_here(out):
        raise SyntheticError(f"--overwrite: {out} holds {', '.join(existing)} but no "
                             f"synthetic.json of make-synthetic; refusing to delete what it did "
                             f"not write (choose another directory)")
    for name in existing:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    out.mkdir(parents=True, exist_ok=True)

    work = partial(make_image, options, out)
    indices = range(options.n_images)
    bar = tqdm(total=options.n_images, desc="make-synthetic", unit="image", disable=not progress)
    records = []
    if workers == 1:
        for record in map(work, indices):
            records.append(record)
            bar.update()
    else:
        chunk = max(1, min(16, options.n_images // (workers * 8)))
        context = multiprocessing.get_context("spawn")      # safe even after TensorFlow loads
        with context.Pool(workers, initializer=_init_worker) as pool:
            for record in pool.imap(work, indices, chunksize=chunk):
                records.append(record)
                bar.update()
    bar.close()

    label_file, layout = LABEL_FILES[options.stage]
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    write_annotations(out / label_file, _label_rows(train), layout)
    if test:
        write_annotations(out / TEST_LABELS, _label_rows(test), layout)
    summary = _summary(options, records, label_file)
    (out / "synthetic.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_preview(out, train, out / "preview.png")
    return summary


def _written_here(out: Path) -> bool:
    """Whether ``out`` holds make-synthetic's synthetic.json (what --overwrite may replace)."""
    try:
        summary = json.loads((out / "synthetic.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and {"generator", "options", "counts"} <= summary.keys()


def _summary(options: Options, records, label_file: str) -> dict:
    positives = [r for r in records if r["rles"]]
    areas = np.array([r["area"] for r in positives]) if positives else np.zeros(0)
    counts = {"images": len(records),
              "train": sum(r["split"] == "train" for r in records),
              "test": sum(r["split"] == "test" for r in records),
              "patients": len({r["patient"] for r in records}),
              "positive": len(positives),
              "positive_train": sum(r["split"] == "train" for r in positives),
              "annotations": sum(len(r["rles"]) for r in records),
              **{f"{key}s": dict(sorted(Counter(r[key] for r in records).items()))
                 for key in ("format", "shape")}}
    stats = {}
    if areas.size:
        stats = {"union_area_median": float(np.median(areas)),
                 "union_area_p10": float(np.percentile(areas, 10)),
                 "union_area_max": float(areas.max()),
                 "annotations_per_positive": {
                     str(k): sum(len(r["rles"]) == k for r in positives)
                     for k in sorted({len(r["rles"]) for r in positives})}}
    summary = {"generator": "keras_ptx.synthetic", "options": asdict(options),
               "label_file": label_file, "test_label_file": TEST_LABELS if counts["test"] else None,
               "counts": counts, "positive_stats": stats}
    if len(records) <= PER_IMAGE_LIMIT:
        summary["images"] = [{k: v for k, v in r.items() if k != "rles"} for r in records]
    return summary


def write_preview(out: Path, records, path: Path) -> Path | None:
    """A contact sheet of up to 12 train images read back from their DICOMs, each on the square
    grid as the records hold it, each annotation outlined in its own colour (from the RLE
    labels), captioned with the union area."""
    positives = [r for r in records if r["rles"]]
    negatives = [r for r in records if not r["rles"]]
    chosen = positives[:8]
    chosen += negatives[:PREVIEW_TILES - len(chosen)]
    chosen += positives[8:8 + PREVIEW_TILES - len(chosen)]
    if not chosen:
        return None
    chosen.sort(key=lambda r: r["index"])
    colours = [(40, 40, 255), (40, 220, 40), (255, 120, 40), (0, 220, 255)]
    tiles = []
    for record in chosen:
        image = read_dicom(out / record["path"]).pixels
        h, w = image.shape
        tile = cv2.cvtColor(image_to_square(image, PREVIEW_TILE), cv2.COLOR_GRAY2BGR)
        for k, text in enumerate(record["rles"]):
            mask = cv2.resize(pad_to_square(rle.decode(text, h, w), label=True),
                              (PREVIEW_TILE, PREVIEW_TILE), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(tile, contours, -1, colours[k % len(colours)], 1, cv2.LINE_AA)
        caption = (f"#{record['index']} {record['view']} "
                   + (f"ptx {100 * record['area']:.2f}% x{len(record['rles'])}"
                      if record["rles"] else "negative"))
        cv2.putText(tile, caption, (4, PREVIEW_TILE - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                    (0, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    columns = 4
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    sheet = np.vstack([np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)])
    cv2.imwrite(str(path), sheet)
    return path
