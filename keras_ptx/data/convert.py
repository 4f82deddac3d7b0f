"""One DICOM (and its RLE rows) -> the encoded image/mask PNGs and fields of one record.

These functions run in build worker processes, so this module does not import TensorFlow
(the parent turns the result into a :class:`keras_ptx.data.records.Record`). Failures come back
as a :class:`Failure` value, never as an exception, so one bad file cannot stop a build.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from keras_ptx.data import rle
from keras_ptx.data.annotations import union_mask
from keras_ptx.data.dicom import DicomError, DicomHeader, read_dicom, read_dicom_header
from keras_ptx.data.geometry import image_to_square, mask_to_square

UNREADABLE = "unreadable-dicom"
MALFORMED_LABEL = "malformed-label"


@dataclass(frozen=True)
class Failure:
    reason: str
    detail: str


def init_worker() -> None:
    """One OpenCV thread per worker process: the processes are the parallelism."""
    cv2.setNumThreads(1)


def run_chunk(fn, tasks: list) -> list:
    """``fn`` over a chunk of tasks (one round trip to a worker process for several)."""
    return [fn(task) for task in tasks]


def header(path: str) -> DicomHeader | Failure:
    try:
        return read_dicom_header(path)
    except DicomError as exc:
        return Failure(UNREADABLE, exc.reason)


def check_label(task: tuple[tuple[str, ...], int, int]) -> tuple[int, Failure] | None:
    """None if the RLE rows are valid on a ``height`` x ``width`` grid, else the first invalid
    one's index and why."""
    rles, height, width = task
    for k, text in enumerate(rles):
        try:
            rle.runs(text, height, width)
        except ValueError as exc:
            return k, Failure(MALFORMED_LABEL, str(exc))
    return None


def _png(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError(f"OpenCV could not PNG-encode a {array.shape} {array.dtype} array")
    return buffer.tobytes()


def convert(task: tuple[str, str, tuple[str, ...] | None, int]) -> dict | Failure:
    """``(path, image_id, rles or None when unlabeled, size)`` -> the fields of the record that
    come from the file and its labels, as keyword arguments of ``records.Record``."""
    path, image_id, rles, size = task
    try:
        image = read_dicom(path)
    except DicomError as exc:
        return Failure(UNREADABLE, exc.reason)
    if image.image_id != image_id:
        return Failure(UNREADABLE, f"SOPInstanceUID changed during the build "
                                   f"({image_id!r} -> {image.image_id!r})")
    height, width = image.pixels.shape
    try:
        mask = union_mask(rles or (), height, width)
    except ValueError as exc:
        return Failure(MALFORMED_LABEL, str(exc))
    return dict(
        image_png=_png(image_to_square(image.pixels, size)),
        mask_png=_png(mask_to_square(mask, size)),
        image_id=image_id, has_pneumothorax=int(bool(rles)), n_annotations=len(rles or ()),
        mask_area=int(mask.sum()), height=height, width=width,
        sex=image.sex, age=image.age, view=image.view)
