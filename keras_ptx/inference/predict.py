"""A model that turns DICOM files into predictions: :class:`DicomPredictor`.

Files are taken in order, a batch at a time: read with the project's DICOM reader, checked to
be what the model was made for (:func:`~keras_ptx.data.eligibility.rejection`: one frontal
chest radiograph), mapped onto the model's square grid
(:func:`~keras_ptx.data.geometry.image_to_square`), run through the model, mapped back to each
image's own size and post-processed there with the run's saved rule (RUN_DIR/postprocess.json;
the run's ``eval.threshold`` pixel threshold, the paper's 0.75 by default, when evaluate has
not been run). The mapping back is :func:`~keras_ptx.inference.postprocess.image_map`, the TF
op the SavedModel uses too, so an export's ``serving_default`` answers the same masks and RLEs
as this does. Each file becomes a :class:`~keras_ptx.inference.prediction.Prediction` or a
:class:`~keras_ptx.inference.prediction.Rejection`; ``bin/predict``
(:mod:`keras_ptx.results.predict`) and the DICOM node write them.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from keras_ptx import rundir
from keras_ptx.config import Engine
from keras_ptx.data.annotations import IMAGE_ID
from keras_ptx.data.dicom import (DicomError, DicomImage, find_dicom_files, read_dicom,
                                  read_dicom_header)
from keras_ptx.data.eligibility import rejection as eligibility_rejection
from keras_ptx.data.geometry import image_to_square
from keras_ptx.errors import UserError
from keras_ptx.inference.engine import OpenVinoExport, RunsOnEngine, open_model
from keras_ptx.inference.postprocess import image_map
from keras_ptx.inference.prediction import Prediction, Rejection


class PredictError(UserError):
    """Prediction cannot start (no run, no input, unusable post-processing)."""


def dicom_files(dicom_dir) -> tuple[list[Path], int]:
    """Every DICOM file below ``dicom_dir``, as ``bin/build-tfrecords`` finds them, and how
    many other files it skipped."""
    root = Path(dicom_dir)
    if not root.is_dir():
        raise PredictError(f"--dicom-dir {dicom_dir}: "
                           + ("not a folder" if root.exists() else "no such folder"))
    found, skipped = find_dicom_files(root)
    return [root / rel for rel in found], skipped


class DicomPredictor:
    """A model loaded once (a RUN_DIR, fold folder or several, an OpenVINO export, or what
    :func:`~keras_ptx.inference.engine.open_model` opened of them) that turns DICOM files into
    predictions, its network run by ``engine``. ``any_image`` lets images outside the intended
    use through (research), each prediction saying why it is outside."""

    def __init__(self, models, checkpoints: int = 1, tta: str | None = None,
                 batch_size: int | None = None, any_image: bool = False,
                 log: Callable[[str], None] = print, engine: Engine = "tf"):
        run = (models if isinstance(models, (RunsOnEngine, OpenVinoExport))
               else open_model(models, checkpoints, engine))
        self.post, self.post_source = run.post, run.post_source
        self.predictor = run.predictor(run.tta(tta))    # a refusal comes before any log line
        if run.ensemble:
            log(f"ensemble: {run.ensemble}, probabilities averaged")
        if engine != "tf":
            log(f"engine: {engine}, computing in {self.predictor.precision}")
        log(f"post-processing: {self.post.describe()} ({self.post_source})")
        log(f"test-time augmentation: {self.predictor.tta}" + (
            f" (the rule was tuned with {self.post.tta}: its thresholds may not fit)"
            if self.post.tta not in (None, self.predictor.tta) else ""))
        log("image-level probability: " + ("the label head" if self.predictor.has_label_head
                                           else "the maximum pixel probability (no label head)"))
        if any_image:
            log("--any-image: images outside the intended use (not one frontal chest "
                "radiograph) are predicted too, and each output says so")
        self.identity = run.identity(self.predictor.tta)
        self.batch_size = batch_size or run.batch_size
        self.any_image = any_image

    def results(self, files: Sequence, progress: bool = True,
                read: Callable[[str], DicomImage] = read_dicom) -> Iterator[Prediction | Rejection]:
        """A :class:`Prediction` or a :class:`Rejection` per file: a rejection as soon as its
        file is read (by ``read``, which raises DicomError; the DICOM node passes images it
        decoded ahead), a prediction when its batch has run (so not always in file order).

        Unreadable files, images outside the intended use, ImageIds a submission cannot hold
        and repeated ones are rejected with their reason. An unreadable file whose header
        still names its ImageId (and is a frontal chest radiograph) is rejected with that
        ImageId, for a -1 submission row: a competition submission must list every image.
        """
        first_path: dict[str, str] = {}
        admitted = read_ahead((self._admit(path, first_path, read) for path in files),
                              self.batch_size)
        with tqdm(total=len(files), desc="predict", unit="img", disable=not progress) as bar:
            for item in batched(admitted, max(1, min(self.batch_size, len(files)))):
                if isinstance(item, Rejection):
                    bar.update(1)
                    yield item
                else:
                    yield from self._run_batch(item, bar)

    def _admit(self, path, first_path: dict,
               read: Callable[[str], DicomImage]) -> tuple[DicomImage, str | None] | Rejection:
        """The decoded image and why it is outside the intended use (None: it is not), or
        its rejection."""
        try:
            image = read(path)
        except DicomError as exc:
            header = _header_or_none(path)
            if header is None or not IMAGE_ID.fullmatch(header.image_id) or \
                    header.image_id in first_path or eligibility_rejection(header.source.dataset):
                return Rejection(exc.path, exc.reason)
            first_path[header.image_id] = header.path
            return Rejection(exc.path, exc.reason, header.image_id)
        outside = eligibility_rejection(image.source.dataset)
        if outside is not None and not self.any_image:
            return Rejection(image.path, outside)
        if not IMAGE_ID.fullmatch(image.image_id):
            return Rejection(image.path, f"ImageId (SOPInstanceUID) {image.image_id!r} has "
                                         f"characters a submission cannot hold (only "
                                         f"[0-9A-Za-z._-])")
        if image.image_id in first_path:
            return Rejection(image.path, f"duplicate ImageId {image.image_id} (first in "
                                         f"{first_path[image.image_id]})")
        first_path[image.image_id] = image.path
        return image, outside

    def _run_batch(self, batch, bar) -> Iterator[Prediction]:
        squares = np.stack([image_to_square(image.pixels, self.predictor.size)
                            for image, _ in batch])
        maps, probability = self.predictor.from_gray(squares)
        for (image, outside), square_map, p in zip(batch, maps, probability):
            prob_map = image_map(square_map, *image.pixels.shape)
            mask = self.post.apply(prob_map, float(p)).astype(bool)
            bar.update(1)
            yield Prediction(image=image, mask=mask, probability=float(p), outside_use=outside)


def batched(items: Iterable, size: int) -> Iterator:
    """``items`` in order, each :class:`Rejection` as it comes and the others gathered into
    lists of ``size`` (the last one shorter)."""
    batch = []
    for item in items:
        if isinstance(item, Rejection):
            yield item
            continue
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_ahead(items: Iterable, depth: int) -> Iterator:
    """``items`` in order, taken from them by a background thread up to ``depth`` ahead (the
    next batch's files are read and decoded while the network runs one: ``bin/predict`` 2-4%
    faster, BENCHMARKS.md). An exception there is raised here; closing this iterator stops
    the thread at its next item."""
    ready: queue.Queue = queue.Queue(max(1, depth))
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:    # noqa: BLE001 - raised in the consumer
            put((_END, exc))
            return
        put((_END, None))

    threading.Thread(target=produce, name="keras_ptx-read-ahead", daemon=True).start()
    try:
        while True:
            item, error = ready.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()


_END = object()


def _header_or_none(path):
    try:
        return read_dicom_header(path)
    except DicomError:
        return None
