"""``bin/predict``: DICOM folder -> submission.csv, per-image predictions and optional overlays.

Files are streamed in sorted order, a batch at a time: read with the project's DICOM reader,
mapped onto the model's square grid (:func:`~keras_ptx.data.geometry.image_to_square`), run
through the model, mapped back to each image's own size and post-processed there with the
run's saved rule (RUN_DIR/postprocess.json; the run's ``eval.threshold`` pixel threshold, the
paper's 0.75 by default, when evaluate has not been run) and written out row by row, so memory
does not grow with the number of files. The mapping back is
:func:`~keras_ptx.inference.postprocess.image_map`, the TF op the SavedModel uses too, so an
export's ``serving_default`` answers the same masks and RLEs as this does.

OUT/
  submission.csv    one row per image: ImageId, relative column-major RLE or -1 (stage1/stage2)
  predictions.csv   image_id, path, height, width, probability, mask_area_px, has_pneumothorax
  errors.csv        path, reason: every file that could not become a prediction (one whose
                    header names its ImageId still gets a -1 submission row)
  overlays/         <image_id>.png with the predicted mask (with --overlays)
"""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from keras_ptx.data import rle
from keras_ptx.data.annotations import IMAGE_ID, write_annotations
from keras_ptx.data.dicom import (DICOM_SUFFIXES, DicomError, find_dicom_files, read_dicom,
                                  read_dicom_header)
from keras_ptx.data.geometry import image_to_square
from keras_ptx.errors import UserError
from keras_ptx.fileio import check_openable, join
from keras_ptx.inference import plots
from keras_ptx.inference.postprocess import PostProcess, image_map
from keras_ptx.inference.runner import Predictor
from keras_ptx.inference.ensemble import Ensemble
from keras_ptx.tf_setup import tf

SUBMISSION = "submission.csv"
PREDICTIONS = "predictions.csv"
ERRORS = "errors.csv"
OVERLAYS = "overlays"
PREDICTION_COLUMNS = ["image_id", "path", "height", "width", "probability", "mask_area_px",
                      "has_pneumothorax"]


class PredictError(UserError):
    """Prediction cannot start (no run, no input, unusable post-processing)."""


@dataclass
class Summary:
    images: int
    positives: int
    errors: int
    filled: int                      # of the errors, images submitted as -1 (header readable)
    seconds: float
    postprocess: PostProcess
    postprocess_source: str          # the file it came from, or why the default was used
    out: str


def dicom_files(dicom_dir) -> tuple[list[Path], int]:
    """Every DICOM file below ``dicom_dir``, as ``bin/build-tfrecords`` finds them, and how
    many other files it skipped."""
    root = Path(dicom_dir)
    if not root.is_dir():
        raise PredictError(f"{dicom_dir}: not a folder")
    found, skipped = find_dicom_files(root)
    return [root / rel for rel in found], skipped


def predict(run_dir, dicom_dir, out, layout: str = "stage1", overlays: bool = False,
            tta: str | None = None, batch_size: int | None = None, progress: bool = True,
            log: Callable[[str], None] = print, checkpoints: int = 1) -> Summary:
    """Predict every DICOM below ``dicom_dir`` with the run in ``run_dir`` (or the ensemble of
    several runs or fold folders, each with its ``checkpoints`` best epochs:
    :class:`~keras_ptx.inference.ensemble.Ensemble`); write ``out``."""
    out = str(out)
    check_openable(out, "--out")
    files, skipped = dicom_files(dicom_dir)
    if not files:
        raise PredictError(f"{dicom_dir}: no DICOM files ({', '.join(DICOM_SUFFIXES)}) found")
    if skipped:
        log(f"{skipped} file(s) without a {' or '.join(DICOM_SUFFIXES)} suffix skipped (rename "
            f"DICOMs stored without one)")
    run = Ensemble(run_dir, checkpoints)
    config, post = run.config, run.post             # the rule is read before the model is built
    if len(run.weights) > 1:
        log(f"ensemble: {run.describe()}, probabilities averaged")
    log(f"post-processing: {post.describe()} ({run.post_source})")
    predictor = run.predictor(run.tta(tta))
    log(f"test-time augmentation: {predictor.tta}" + (
        f" (the rule was tuned with {post.tta}: its thresholds may not fit)"
        if post.tta not in (None, predictor.tta) else ""))
    log("image-level probability: " + ("the label head" if predictor.has_label_head
                                       else "the maximum pixel probability (no label head)"))
    start = time.perf_counter()         # predicting, not loading the model
    tf.io.gfile.makedirs(join(out, OVERLAYS) if overlays else out)
    counts = {"images": 0, "positives": 0, "errors": 0, "filled": 0}
    with tf.io.gfile.GFile(join(out, PREDICTIONS), "w") as pred_file, \
            tf.io.gfile.GFile(join(out, ERRORS), "w") as error_file, \
            tqdm(total=len(files), desc="predict", unit="img", disable=not progress) as bar:
        predictions = csv.writer(pred_file, lineterminator="\n")
        predictions.writerow(PREDICTION_COLUMNS)
        errors = csv.writer(error_file, lineterminator="\n")
        errors.writerow(["path", "reason"])

        def rows() -> Iterator[tuple[str, str]]:
            for image, prob_map, probability in _predicted(files, predictor, batch_size
                                                           or config.eval.batch_size, errors, bar, counts):
                if prob_map is None:            # unreadable pixels, known ImageId
                    yield image.image_id, rle.EMPTY
                    continue
                mask = post.apply(prob_map, probability)
                area = int(mask.sum())
                predictions.writerow([image.image_id, image.path, *image.pixels.shape,
                                      f"{probability:.6f}", area, int(area > 0)])
                if overlays:
                    plots.save_png(join(out, OVERLAYS, f"{plots.safe_filename(image.image_id)}.png"),
                                   plots.overlay(image.pixels, mask, caption=
                                                 f"p={probability:.2f} area={area}px"))
                counts["images"] += 1
                counts["positives"] += area > 0
                yield image.image_id, rle.encode(mask)

        write_annotations(join(out, SUBMISSION), rows(), layout=layout)
    return Summary(seconds=time.perf_counter() - start, postprocess=post,
                   postprocess_source=run.post_source, out=out, **counts)


def _predicted(files, predictor: Predictor, batch_size: int, errors, bar, counts):
    """(DicomImage, probability map at the image's size, image probability) per readable file.

    Unreadable files, ImageIds a submission cannot hold and repeated ones go to ``errors``
    with their reason. An unreadable file whose header still names its ImageId comes as
    (header, None, None), for a -1 row: a competition submission must list every image.
    """
    first_path: dict[str, str] = {}
    batch = []
    for path in files:
        try:
            image = read_dicom(path)
        except DicomError as exc:
            header = _header_or_none(path)
            if header is None or not IMAGE_ID.fullmatch(header.image_id) or \
                    header.image_id in first_path:
                _reject(errors, counts, bar, exc.path, exc.reason)
                continue
            first_path[header.image_id] = header.path
            _reject(errors, counts, bar, exc.path, f"{exc.reason} (submitted as -1)")
            counts["filled"] += 1
            yield header, None, None
            continue
        if not IMAGE_ID.fullmatch(image.image_id):
            _reject(errors, counts, bar, image.path, f"ImageId (SOPInstanceUID) {image.image_id!r} "
                    f"has characters a submission cannot hold (only [0-9A-Za-z._-])")
            continue
        if image.image_id in first_path:
            _reject(errors, counts, bar, image.path,
                    f"duplicate ImageId {image.image_id} (first in {first_path[image.image_id]})")
            continue
        first_path[image.image_id] = image.path
        batch.append(image)
        if len(batch) == batch_size:
            yield from _run_batch(batch, predictor, bar)
            batch = []
    if batch:
        yield from _run_batch(batch, predictor, bar)


def _header_or_none(path):
    try:
        return read_dicom_header(path)
    except DicomError:
        return None


def _reject(errors, counts, bar, path, reason):
    errors.writerow([os.fspath(path), reason])
    counts["errors"] += 1
    bar.update(1)


def _run_batch(batch, predictor: Predictor, bar):
    squares = np.stack([image_to_square(image.pixels, predictor.size) for image in batch])
    maps, probability = predictor.from_gray(squares)
    for image, square_map, p in zip(batch, maps, probability):
        yield image, image_map(square_map, *image.pixels.shape), float(p)
        bar.update(1)
