"""Instances decoded as they arrive, before the network gets to them.

:class:`Predecoded` decodes each stored instance in a thread of its own, so that the
predicting thread finds the image ready (:meth:`Predecoded.read`, ``read_dicom``'s contract)
instead of decoding it between the network's calls: in a flood of studies the instances
arrive faster than the network predicts them, and are decoded while it works.
Images are kept up to ``budget`` bytes (more arrivals are decoded when predicted, as before);
an image is handed out once and only while its file is the one decoded (a resent instance
replaces the file: it is read again). An instance the predictor read before this thread got to
it is not decoded again, nor kept (it would never be read).
"""
from __future__ import annotations

import collections
import os
import queue
import threading

from keras_ptx.data.dicom import DicomError, DicomImage, read_dicom

BUDGET = 512 * 2 ** 20                  # bytes of decoded pixels kept: 512 SIIM radiographs


def _version(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _decoded(path: str) -> DicomImage | None:
    """The decoded image; None when it cannot be decoded (the predictor reads it again and
    gets the error, which becomes the instance's rejection)."""
    try:
        return read_dicom(path)
    except DicomError:
        return None


class Predecoded:
    """``put(path)`` after an instance is stored; ``run(stopping)`` in a thread decodes them;
    ``read(path)`` gives the decoded image (or decodes it now)."""

    def __init__(self, budget: int = BUDGET):
        self.budget = budget
        self._paths: queue.Queue = queue.Queue()
        self._images: dict[str, tuple[tuple, DicomImage]] = {}
        self._bytes = 0
        self._queued: collections.Counter = collections.Counter()   # put, neither decoded
        # nor read yet (a path the predictor read first leaves it: not worth decoding)
        self._lock = threading.Lock()

    def put(self, path: str) -> None:
        with self._lock:
            self._queued[path] += 1
        self._paths.put(path)

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                path = self._paths.get(timeout=0.2)
            except queue.Empty:
                continue
            with self._lock:
                wanted = path in self._queued and self._bytes < self.budget
            version, image = (_version(path), _decoded(path)) if wanted else (None, None)
            with self._lock:
                if path not in self._queued:
                    continue                # read first: would never be read again
                self._queued[path] -= 1
                if not self._queued[path]:
                    del self._queued[path]
                if image is not None:
                    old = self._images.pop(path, None)
                    self._bytes -= old[1].pixels.nbytes if old else 0
                    self._images[path] = (version, image)
                    self._bytes += image.pixels.nbytes

    def read(self, path: str) -> DicomImage:
        path = os.fspath(path)
        with self._lock:
            version, image = self._images.pop(path, (None, None))
            if image is not None:
                self._bytes -= image.pixels.nbytes
            else:
                self._queued.pop(path, None)
        if image is not None and version is not None and version == _version(path):
            return image
        return read_dicom(path)

    @property
    def held(self) -> int:
        """Images decoded and not yet read."""
        return len(self._images)
