"""The writer interface: every output of ``bin/predict`` is one :class:`Writer`.

Predict's loop knows only this interface. It opens each writer with the output folder and the
:class:`~keras_ptx.inference.prediction.ModelIdentity`, hands every image either as a
:class:`~keras_ptx.inference.prediction.Prediction` (the source header, the mask on the image's
own grid, the probability) or as a :class:`~keras_ptx.inference.prediction.Rejection` (a file
that got no prediction, with its reason), and closes them. :class:`Outputs` runs the writers in one
background thread, in order, so writing overlaps the model's next batch; a writer's error
stops predict at the next image.
"""
from __future__ import annotations

import queue
import threading
from typing import Sequence

from keras_ptx.inference.prediction import ModelIdentity, Prediction, Rejection


class Writer:
    """One output. The defaults ignore what a writer has no use for."""

    def open(self, out: str, identity: ModelIdentity) -> None:
        pass

    def write(self, prediction: Prediction) -> None:
        pass

    def reject(self, rejection: Rejection) -> None:
        pass

    def close(self, complete: bool) -> None:
        """Called once after the last image: ``complete`` publishes the output, otherwise
        (predict failed) whatever was begun is discarded and nothing earlier is replaced."""


_DONE = object()


class Outputs:
    """Writers fed from one background thread, in the order items are given; a context
    manager whose clean exit closes every writer. An error in a writer is raised in the
    caller at its next :meth:`write`/:meth:`reject` or at the exit; every writer is then
    closed incomplete (an atomic output never replaces an earlier one)."""

    def __init__(self, writers: Sequence[Writer], out: str, identity: ModelIdentity,
                 backlog: int = 64):
        self.writers: list[Writer] = []
        for writer in writers:
            try:
                writer.open(out, identity)
            except BaseException:
                for opened in self.writers:
                    opened.close(False)
                raise
            self.writers.append(writer)
        self._queue: queue.Queue = queue.Queue(maxsize=backlog)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="keras_ptx-writers", daemon=True)
        self._thread.start()

    def write(self, prediction: Prediction) -> None:
        self._put(("write", prediction))

    def reject(self, rejection: Rejection) -> None:
        self._put(("reject", rejection))

    def _put(self, item) -> None:
        self._raise()
        self._queue.put(item)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            if self._error is not None:
                continue                        # drain: the caller stops at its next put
            method, value = item
            try:
                for writer in self.writers:
                    getattr(writer, method)(value)
            except BaseException as exc:        # noqa: BLE001 - handed to the caller
                self._error = exc

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self._queue.put(_DONE)
        self._thread.join()
        complete = kind is None and self._error is None
        for writer in self.writers:
            writer.close(complete)
        if kind is None:
            self._raise()
