"""``bin/predict --dicom-out DIR``: each prediction's DICOM objects as files.

DIR/<ImageId>.<kind>.dcm for each kind asked for (seg, sr, sc; see
:mod:`keras_ptx.results.dicom_objects`), every file written whole or not at all and on the disk
before its rename (:func:`~keras_ptx.fileio.write_atomic`). Negative images get their objects
too: an empty segment and a report that says "absent".
"""
from __future__ import annotations

from keras_ptx.fileio import join, write_atomic
from keras_ptx.inference import plots
from keras_ptx.inference.predict import PredictError
from keras_ptx.results import DEFAULT_KINDS, DESCRIPTION
from keras_ptx.results.dicom_objects import build_objects, encode
from keras_ptx.inference.prediction import ModelIdentity, Prediction
from keras_ptx.results.writers import Writer
from keras_ptx.tf_setup import tf

RESEARCH_PREFIX = "RESEARCH, outside intended use: "


def object_path(folder: str, image_id: str, kind: str) -> str:
    return join(folder, f"{plots.safe_filename(image_id)}.{kind}.dcm")


class DicomObjectFiles(Writer):
    def __init__(self, folder: str, kinds=DEFAULT_KINDS, description: str = DESCRIPTION):
        self.folder, self.kinds, self.description = str(folder), tuple(kinds), description

    def open(self, out: str, identity: ModelIdentity) -> None:
        self.identity = identity
        tf.io.gfile.makedirs(self.folder)

    def write(self, prediction: Prediction) -> None:
        image = prediction.image
        description = self.description if prediction.outside_use is None else \
            RESEARCH_PREFIX + self.description
        try:
            objects = build_objects(image.source.dataset, prediction.mask,
                                    prediction.probability, self.identity, self.kinds,
                                    description, pixels=getattr(image, "pixels", None))
        except Exception as exc:            # noqa: BLE001 - a header highdicom cannot use
            raise PredictError(f"{image.image_id}: its DICOM objects cannot be built "
                               f"({type(exc).__name__}: {exc})") from exc
        for kind, ds in objects.items():
            write_atomic(object_path(self.folder, image.image_id, kind), encode(ds))
