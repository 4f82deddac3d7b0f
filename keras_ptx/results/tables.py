"""The CSV outputs of ``bin/predict``: submission.csv, predictions.csv and errors.csv.

Each is written to a temporary file beside its place and renamed there when predict ends
(:func:`~keras_ptx.fileio.atomic_path`), so an interrupted predict leaves the previous files.

  submission.csv    one row per image: ImageId, relative column-major RLE or -1, in the
                    competition's stage 1 or stage 2 layout; a file whose pixels could not be
                    read but whose header names its ImageId still gets a -1 row
  predictions.csv   PREDICTION_COLUMNS: one row per predicted image
  errors.csv        path, reason: every file that got no prediction ("(submitted as -1)" when
                    submission.csv still lists it)
"""
from __future__ import annotations

import contextlib
import csv

from keras_ptx.data import rle
from keras_ptx.data.annotations import AnnotationWriter
from keras_ptx.fileio import atomic_path, join
from keras_ptx.inference.prediction import ModelIdentity, Prediction, Rejection
from keras_ptx.results.writers import Writer
from keras_ptx.tf_setup import tf

SUBMISSION = "submission.csv"
PREDICTIONS = "predictions.csv"
ERRORS = "errors.csv"
PREDICTION_COLUMNS = ["image_id", "path", "height", "width", "probability", "mask_area_px",
                      "has_pneumothorax", "outside_intended_use"]


class _CsvFile(Writer):
    """A CSV file in OUT, published whole on a complete close."""
    name = ""

    def open(self, out: str, identity: ModelIdentity) -> None:
        tf.io.gfile.makedirs(out)
        self._files = contextlib.ExitStack()
        partial = self._files.enter_context(atomic_path(join(out, self.name)))
        self._handle = self._files.enter_context(open(partial, "w", newline="",
                                                      encoding="utf-8"))
        self.start(self._handle)

    def start(self, handle) -> None:
        """Write the header to ``handle``."""

    def close(self, complete: bool) -> None:
        if complete:
            self._files.close()
        else:
            aborted = RuntimeError("predict did not finish")
            self._files.__exit__(type(aborted), aborted, None)   # the partial file is removed


class SubmissionCsv(_CsvFile):
    name = SUBMISSION

    def __init__(self, layout: str = "stage1"):
        self.layout = layout

    def start(self, handle) -> None:
        self._rows = AnnotationWriter(handle, self.layout)

    def write(self, prediction: Prediction) -> None:
        self._rows.row(prediction.image.image_id, rle.encode(prediction.mask))

    def reject(self, rejection: Rejection) -> None:
        if rejection.image_id is not None:
            self._rows.row(rejection.image_id, rle.EMPTY)


class PredictionsCsv(_CsvFile):
    name = PREDICTIONS

    def start(self, handle) -> None:
        self._rows = csv.writer(handle, lineterminator="\n")
        self._rows.writerow(PREDICTION_COLUMNS)

    def write(self, prediction: Prediction) -> None:
        image, area = prediction.image, prediction.area
        self._rows.writerow([image.image_id, image.path, *prediction.mask.shape,
                             f"{prediction.probability:.6f}", area, int(area > 0),
                             prediction.outside_use or ""])


class ErrorsCsv(_CsvFile):
    name = ERRORS

    def start(self, handle) -> None:
        self._rows = csv.writer(handle, lineterminator="\n")
        self._rows.writerow(["path", "reason"])

    def reject(self, rejection: Rejection) -> None:
        filled = " (submitted as -1)" if rejection.image_id is not None else ""
        self._rows.writerow([rejection.path, rejection.reason + filled])
