"""``bin/predict``: a DICOM folder through a :class:`~keras_ptx.inference.predict.DicomPredictor`
into every output asked for, each a :class:`~keras_ptx.results.writers.Writer`.

OUT/submission.csv, predictions.csv and errors.csv (:mod:`keras_ptx.results.tables`),
overlays/ (:mod:`keras_ptx.results.overlays`), and with ``dicom_out`` a DICOM Segmentation,
Structured Report and optionally a Secondary Capture per image
(:mod:`keras_ptx.results.dicom_files`), fed from one background thread
(:class:`~keras_ptx.results.writers.Outputs`). OUT's files are written to a staging folder in
OUT and replace the earlier ones as one set when predict ends
(:func:`~keras_ptx.fileio.replaced_together`): a killed or failed predict leaves the earlier set
as it was, and the next one clears what it left.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from keras_ptx.config import Engine
from keras_ptx.data.dicom import DICOM_SUFFIXES
from keras_ptx.fileio import check_output, is_url, replaced_together, reported_writes
from keras_ptx.inference.engine import open_model
from keras_ptx.inference.postprocess import PostProcess
from keras_ptx.inference.predict import DicomPredictor, PredictError, dicom_files
from keras_ptx.inference.prediction import Rejection
from keras_ptx.results import DEFAULT_KINDS, DESCRIPTION
from keras_ptx.results.dicom_files import DicomObjectFiles
from keras_ptx.results.overlays import OVERLAYS, OverlayPngs
from keras_ptx.results.tables import (ERRORS, PREDICTIONS, SUBMISSION, ErrorsCsv, PredictionsCsv,
                                      SubmissionCsv)
from keras_ptx.results.writers import Outputs, Writer


# What one predict writes to OUT, replaced as one set (fileio.replaced_together).
OUTPUT_SET = (SUBMISSION, PREDICTIONS, ERRORS, OVERLAYS)


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


def predict(run_dir, dicom_dir, out, layout: str = "stage1", overlays: bool = False,
            tta: str | None = None, batch_size: int | None = None, progress: bool = True,
            log: Callable[[str], None] = print, checkpoints: int = 1,
            dicom_out: str | None = None, dicom_objects: Sequence[str] = DEFAULT_KINDS,
            dicom_description: str = DESCRIPTION, any_image: bool = False,
            engine: Engine = "tf") -> Summary:
    """Predict every DICOM below ``dicom_dir`` with the run in ``run_dir`` (or the ensemble of
    several runs or fold folders, each with its ``checkpoints`` best epochs:
    :class:`~keras_ptx.inference.ensemble.Ensemble`; or an OpenVINO export), its network run by
    ``engine`` (:mod:`keras_ptx.inference.engine`); write ``out`` (and the DICOM objects of
    ``dicom_objects`` to ``dicom_out``)."""
    out = str(out)
    if is_url(dicom_dir):
        raise PredictError(f"--dicom-dir {dicom_dir}: a local folder is needed, not a URL")
    run = open_model(run_dir, checkpoints, engine)
    inputs = {"--model": run.folders(), "--dicom-dir": str(dicom_dir)}
    check_output(out, "--out", inputs)
    if dicom_out is not None:
        check_output(dicom_out, "--dicom-out", inputs)
    files, skipped = dicom_files(dicom_dir)
    if not files:
        raise PredictError(f"{dicom_dir}: no DICOM files ({', '.join(DICOM_SUFFIXES)}) found")
    model = DicomPredictor(run, checkpoints, tta, batch_size, any_image, log)
    if skipped:
        log(f"{skipped} file(s) without a {' or '.join(DICOM_SUFFIXES)} suffix skipped (rename "
            f"DICOMs stored without one)")
    writers: list[Writer] = [SubmissionCsv(layout), PredictionsCsv(), ErrorsCsv()]
    if overlays:
        writers.append(OverlayPngs())
    if dicom_out is not None:
        writers.append(DicomObjectFiles(dicom_out, dicom_objects, dicom_description))
    start = time.perf_counter()         # predicting, not loading the model
    counts = {"images": 0, "positives": 0, "errors": 0, "filled": 0}
    with reported_writes("--out", out), replaced_together(out, OUTPUT_SET) as staged, \
            Outputs(writers, staged, model.identity) as outputs:
        for item in model.results(files, progress):
            if isinstance(item, Rejection):
                outputs.reject(item)
                counts["errors"] += 1
                counts["filled"] += item.image_id is not None
            else:
                outputs.write(item)
                counts["images"] += 1
                counts["positives"] += item.area > 0
    return Summary(seconds=time.perf_counter() - start, postprocess=model.post,
                   postprocess_source=model.post_source, out=out, **counts)
