"""An instance's result objects as the node writes them: built
(:func:`~keras_ptx.results.dicom_objects.build_objects`) and encoded as DICOM files.

:class:`Builder` does it in the calling thread; :class:`ProcessBuilder` in a child process of
its own (:mod:`keras_ptx.node.child`), which ``bin/serve-dicom`` uses: building and encoding
are pure Python, and in the node's process they held the GIL the predicting thread needs
between the network's calls (BENCHMARKS.md, "The DICOM node"). Both raise
:class:`ObjectsNotBuilt` for a source the objects cannot be built from; a child that died
raises :class:`~keras_ptx.node.child.ChildGone` (try again later).
"""
from __future__ import annotations

import numpy as np

from keras_ptx.inference.prediction import ModelIdentity
from keras_ptx.node.child import Child


class ObjectsNotBuilt(Exception):
    """The objects cannot be built from this source and mask; the message is the error's
    type (a header's values may be in its text)."""


class Builder:
    """``build(source, mask, probability, pixels)`` -> the objects of ``kinds`` as DICOM files'
    bytes (``pixels``, the decoded image, is used for a secondary capture only)."""

    def __init__(self, identity: ModelIdentity, kinds: tuple[str, ...]):
        self.identity, self.kinds = identity, tuple(kinds)

    def build(self, source, mask: np.ndarray, probability: float, pixels=None) -> list[bytes]:
        from keras_ptx.results.dicom_objects import build_objects, encode

        try:
            objects = build_objects(source, mask, probability, self.identity, self.kinds,
                                    pixels=pixels)
            return [encode(ds) for ds in objects.values()]
        except Exception as exc:            # noqa: BLE001 - a header the builder cannot use
            raise ObjectsNotBuilt(type(exc).__name__) from None

    def stop(self) -> None:
        """Nothing runs between calls."""


class ProcessBuilder(Builder):
    """The same, in a child process; the mask travels as packed bits."""

    def __init__(self, identity: ModelIdentity, kinds: tuple[str, ...]):
        super().__init__(identity, kinds)
        self.child = Child("building", _Building, identity, self.kinds)

    def build(self, source, mask: np.ndarray, probability: float, pixels=None) -> list[bytes]:
        mask = np.asarray(mask, bool)
        reply = self.child.ask((source, np.packbits(mask), mask.shape, float(probability),
                                pixels if "sc" in self.kinds else None))
        if isinstance(reply, str):
            raise ObjectsNotBuilt(reply)
        return reply

    def stop(self) -> None:
        self.child.stop()


class _Building(Builder):
    """The worker in the child: a request -> the encoded objects, or the error's type."""

    def __call__(self, request) -> list[bytes] | str:
        source, packed, shape, probability, pixels = request
        mask = np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)
        try:
            return self.build(source, mask, probability, pixels)
        except ObjectsNotBuilt as exc:
            return str(exc)
