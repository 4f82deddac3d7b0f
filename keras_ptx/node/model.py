"""Where the node's predictions come from: a model in the process, or TF Serving.

Every backend turns DICOM files into :class:`~keras_ptx.inference.prediction.Prediction` (the
decoded image with its header, the mask ``bin/predict`` writes for it, the probability) or
:class:`~keras_ptx.inference.prediction.Rejection` (the reason: unreadable, not a frontal chest
radiograph), one per file in order, names itself with a
:class:`~keras_ptx.inference.prediction.ModelIdentity` (which the result objects' UIDs derive
from) and gives its ``batch_size`` (images per model call: the node's rounds hold about one):

* :class:`RunModel`: RUN_DIRs or fold folders, or an OpenVINO export (``bin/export --format
  openvino``: a version, or the base: its highest version), through ``bin/predict``'s own
  :class:`~keras_ptx.inference.predict.DicomPredictor`, its network run by the ``--engine``
  (:mod:`keras_ptx.inference.engine`);
* :class:`ExportModel`: a SavedModel of ``bin/export`` (a version folder, or a base whose
  highest version is taken), called through its ``serving_compact`` signature;
* :class:`ServerModel`: TF Serving's REST API (``http://host:8501/v1/models/NAME``), the same
  signature through :mod:`keras_ptx.serving.client`.

``results(files, read)`` takes each file's decoded image from ``read`` (``read_dicom`` by
default; the node passes :class:`~keras_ptx.node.predecode.Predecoded`'s, same contract).

The two last receive each image as a PNG of its decoded pixels (lossless: the graph sees what
``read_dicom`` gave).
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Iterator

import cv2
import numpy as np

from keras_ptx.data.dicom import read_dicom
from keras_ptx.inference.versions import model_version
from keras_ptx.node.config import NodeError

log = logging.getLogger("keras_ptx.node")
BATCH = 16                                  # images per call of an export or a server


def open_model(model: tuple[str, ...], server: str | None, tta: str | None = None,
               engine: str = "tf"):
    """The backend for ``--model`` paths or ``--model-server`` (exactly one is given), a
    RUN_DIR's or an OpenVINO export's network run by ``engine``."""
    if bool(model) == bool(server):
        raise NodeError("give --model (a RUN_DIR, fold folder or export) or --model-server URL")
    saved_model = None if server else model_version(model[0], "saved_model.pb")
    if (server or saved_model) and engine != "tf":
        raise NodeError(f"--engine {engine}: {server or model[0]} serves a SavedModel, which "
                        f"TensorFlow runs; give a RUN_DIR or an OpenVINO export")
    if server:
        return ServerModel(server)
    if len(model) == 1 and saved_model:
        return ExportModel(saved_model)
    return RunModel(model, tta, engine)


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


class RunModel:
    def __init__(self, paths: tuple[str, ...], tta: str | None = None, engine: str = "tf"):
        from keras_ptx.inference.predict import DicomPredictor

        self._model = DicomPredictor(list(paths), tta=tta, log=log.info, engine=engine)
        self.identity = self._model.identity
        self.batch_size = self._model.batch_size

    def results(self, files: list[str], read=read_dicom) -> Iterator:
        return self._model.results(files, progress=False, read=read)

    def warm_up(self) -> None:
        """Trace the model's function on one blank image (before the node listens)."""
        size = self._model.predictor.size
        self._model.predictor.from_gray(np.zeros((1, size, size), np.uint8))


def _admit(path: str, read=read_dicom):
    """The decoded image, or a Rejection: unreadable, or not a frontal chest radiograph."""
    from keras_ptx.data.dicom import DicomError
    from keras_ptx.data.eligibility import rejection
    from keras_ptx.inference.prediction import Rejection

    try:
        image = read(path)
    except DicomError as exc:
        return Rejection(exc.path, exc.reason)
    reason = rejection(image.source.dataset)
    return Rejection(image.path, reason) if reason else image


class _SignatureModel:
    """Reading and checking as ``bin/predict`` does, then ``serving_compact`` per batch."""
    batch_size = BATCH

    def results(self, files: list[str], read=read_dicom) -> Iterator:
        from keras_ptx.inference.predict import batched

        for item in batched((_admit(path, read) for path in files), BATCH):
            if isinstance(item, list):
                yield from self._predictions(item)
            else:
                yield item

    def warm_up(self) -> None:
        self.compact([_png(np.zeros((64, 64), np.uint8))])

    def _predictions(self, images) -> Iterator:
        from keras_ptx.data import rle
        from keras_ptx.inference.prediction import Prediction

        for image, answer in zip(images, self.compact([_png(i.pixels) for i in images])):
            mask = rle.decode(answer["rle"], int(answer["height"]), int(answer["width"]))
            yield Prediction(image=image, mask=mask.astype(bool),
                             probability=float(answer["pneumothorax_probability"]))


class ExportModel(_SignatureModel):
    def __init__(self, version_dir: str):
        from keras_ptx.inference.prediction import ModelIdentity
        from keras_ptx.serving import SERVING_COMPACT
        from keras_ptx.tf_setup import tf

        self._tf = tf
        loaded = tf.saved_model.load(version_dir)
        if SERVING_COMPACT not in loaded.signatures:
            raise NodeError(f"--model {version_dir}: the export has no {SERVING_COMPACT} "
                            "signature (export it again with this version)")
        self._loaded = loaded                 # the signature needs its object kept alive
        self._signature = loaded.signatures[SERVING_COMPACT]
        self.identity = ModelIdentity(model=_export_identity(version_dir))

    def compact(self, pngs: list[bytes]) -> list[dict]:
        answer = self._signature(image_bytes=self._tf.constant(pngs))
        answer = {name: value.numpy() for name, value in answer.items()}
        return [{name: value[i].decode() if isinstance(value[i], bytes) else value[i]
                 for name, value in answer.items()} for i in range(len(pngs))]


def _export_identity(version_dir: str) -> str:
    """The identity ``bin/export`` recorded (its run's, as ``bin/predict`` computes it, so
    both give the same result UIDs), or a digest of the graph for older exports."""
    from keras_ptx.serving.export import read_metadata

    recorded = read_metadata(version_dir).get("model_identity")
    if recorded:
        return recorded
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        return "export " + hashlib.sha256(f.read()).hexdigest()[:12]


class ServerModel(_SignatureModel):
    def __init__(self, url: str):
        from keras_ptx.inference.prediction import ModelIdentity

        self.url = url.rstrip("/").removesuffix(":predict")
        self.identity = ModelIdentity(model="served " + self.url.rsplit("/models/", 1)[-1])

    def compact(self, pngs: list[bytes]) -> list[dict]:
        from keras_ptx.serving import SERVING_COMPACT
        from keras_ptx.serving.client import predict

        return predict(self.url + ":predict", pngs, signature_name=SERVING_COMPACT)
