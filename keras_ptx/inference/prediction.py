"""What a predictor answers for one file: a :class:`Prediction` or a :class:`Rejection`, and
the :class:`ModelIdentity` of the model that answered. Outputs (``keras_ptx.results``) and the
DICOM node consume them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keras_ptx import __version__
from keras_ptx.data.dicom import DicomHeader


@dataclass(frozen=True)
class ModelIdentity:
    """What made the predictions: this package's version and the model's identity (a run's
    or an export's digest), written into every object that records its algorithm."""
    model: str
    version: str = __version__

    def describe(self) -> str:
        return f"{self.version} model {self.model}"


@dataclass(frozen=True)
class Prediction:
    """One image's answer. ``image`` is its header (a :class:`~keras_ptx.data.dicom.DicomImage`
    with the display pixels when they were decoded here); ``mask`` is bool (Rows, Columns);
    ``outside_use`` says why the image is outside the intended use, when a research user let
    it through (None otherwise)."""
    image: DicomHeader
    mask: np.ndarray
    probability: float
    outside_use: str | None = None

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass(frozen=True)
class Rejection:
    """A file that got no prediction. ``image_id``: the ImageId a competition submission
    still lists it under (as -1), when its header named one."""
    path: str
    reason: str
    image_id: str | None = None
