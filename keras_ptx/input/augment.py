"""The bridge from tf.data to the albumentations policy (:mod:`keras_ptx.input.policy`).

:class:`GraphAugmenter` augments batches inside a ``tf.data`` map through one
``tf.numpy_function`` call per batch it is given (the training pipeline gives it a group of
``data.batches_per_call`` batches at once, flat), either in that call's own thread or, with
``processes=True``, in a worker process (:mod:`keras_ptx.input.workers`) that the call waits
for without holding the interpreter lock, so parallel calls really run in parallel.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pickle
import threading
import time
from typing import Callable

import albumentations as A
import cv2
import numpy as np

from keras_ptx.config import AugmentConfig
from keras_ptx.input import workers
from keras_ptx.input.border import Border
from keras_ptx.input.policy import augment_batch, build_policy
from keras_ptx.tf_setup import tf


class GraphAugmenter:
    """Apply an albumentations policy to batches ``(images, masks, seeds)`` in a tf.data map.

    One ``tf.numpy_function`` call per batch it is given (uint8 [N, S, S, 1] images and masks,
    int64 [N] seeds; N may span several model batches), so the hand-over is paid once per call
    rather than once per image; each example's
    policy stream restarts from its own seed (:func:`~keras_ptx.input.policy.augment_batch`),
    so threads and processes give the same result.

    ``streams`` is how many augment at once: threads, or worker processes (None: as many as
    tf.data's autotuned calls); :attr:`parallel_calls` is the matching ``num_parallel_calls``
    for the map, :data:`~keras_ptx.input.workers.SLOTS` calls per worker process, so each
    worker has its next batch while tf.data is between calls.

    ``make_policy`` builds a policy; with ``processes`` it must pickle (a module-level function
    or a ``functools.partial`` of one). In threads, policies are not thread-safe: each call
    borrows one from a free list and returns it, so there are as many as calls ever ran at once,
    each built once (``threading.local`` would not do: TensorFlow's threads get a fresh Python
    thread state per call, which rebuilt the policy for every batch).
    """

    def __init__(self, make_policy: Callable[[], A.BaseCompose], out_size: int | None = None,
                 processes: bool = False, streams: int | None = None,
                 border: Border | None = None):
        self._make_policy = make_policy
        self._border = border
        self._streams = streams
        self.parallel_calls = (tf.data.AUTOTUNE if streams is None
                               else streams * (workers.SLOTS if processes else 1))
        self._out_size = out_size             # None: the policy keeps the input size
        self._idle: list[A.BaseCompose] = []  # list.pop/append are atomic under the GIL
        if processes and os.name != "posix":
            raise ValueError("augmentation in worker processes needs a POSIX system (Linux, "
                             "macOS); set data.augment_processes=false")
        self._factory = _pickled(make_policy) if processes else None

    def _in_thread(self, images, masks, seeds, out_side):
        try:
            policy = self._idle.pop()
        except IndexError:
            policy = self._make_policy()
        shape = (len(images), out_side, out_side, 1)
        outs = [workers.aligned_empty(shape) for _ in range(2)]
        if self._border is not None:
            outs.append(workers.aligned_empty(shape, np.float32))
        try:
            augment_batch(policy, images, masks, seeds, *outs[:2], self._border, *outs[2:])
        finally:
            self._idle.append(policy)
        return tuple(outs)

    def _apply(self, images: np.ndarray, masks: np.ndarray, seeds) -> tuple[np.ndarray, ...]:
        out_side = self._out_size or images.shape[1]
        with _calls.running():
            if self._factory is None:
                return self._in_thread(images, masks, seeds, out_side)
            return workers.augment(self._factory, images, masks, seeds, out_side, self._streams,
                                   self._border)

    def __call__(self, images, masks, seeds):
        """(images, masks) augmented, and with border weighting their float32 weights."""
        types = [tf.uint8, tf.uint8] + [tf.float32] * (self._border is not None)
        outputs = tf.numpy_function(self._apply, [images, masks, seeds], types, stateful=False,
                                    name="albumentations")
        side = self._out_size or images.shape[1]
        for output in outputs:
            output.set_shape([images.shape[0], side, side, 1])
        return tuple(outputs)


class _CallsInFlight:
    """Counts augmentation calls; :meth:`close` refuses new ones and waits for the rest."""

    def __init__(self):
        self._changed = threading.Condition()
        self._running = self._entered = 0     # calls running now; calls ever begun, refused too
        self._closed = False

    @contextlib.contextmanager
    def running(self):
        with self._changed:
            self._entered += 1
            self._changed.notify_all()
            if self._closed:
                raise RuntimeError("augmentation refused: the interpreter is exiting")
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def close(self, timeout: float = 30.0, quiet: float = 0.25):
        """Refuse new calls, then wait (up to ``timeout`` s) until none runs and none has begun
        for ``quiet`` s. tf.data stops starting calls once its buffers hold their refusals, so
        this narrows the danger to an upstream stage that needs more than ``quiet`` s for one
        element; it cannot close it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self._closed = True
            if not self._entered:             # never used: nothing to wait for
                return
            seen, since = -1, 0.0
            while (now := time.monotonic()) < deadline:
                if self._running or self._entered != seen:
                    seen, since = self._entered, now
                elif now - since >= quiet:
                    return
                self._changed.wait(min(quiet, deadline - now))   # wakes on each call's start/end


_calls = _CallsInFlight()


# Registered after workers' own handler, so it runs first; that one then finds nothing to end.
@atexit.register
def _close_at_exit():
    _calls.close()
    workers.pool.shutdown()


def _pickled(make_policy) -> bytes:
    try:
        return pickle.dumps(make_policy)
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise TypeError(f"a policy factory for worker processes must pickle (a module-level "
                        f"function or a functools.partial of one): {error}") from error


def graph_augmenter(config: AugmentConfig, size: int, train_crop: int = 0,
                    processes: bool = False, streams: int | None = None,
                    border: Border | None = None) -> GraphAugmenter:
    """The configured policy, ready to map over batches ``(images, masks, seeds)``; with
    ``border``, each augmented mask's border weights come out as well.

    Switches OpenCV's own thread pool off for the process (``cv2.setNumThreads(0)``, as
    albumentations advises for data loaders; worker processes do the same): tf.data already
    runs the calls in parallel, and OpenCV's waiting workers took CPU from them
    (BENCHMARKS.md).
    """
    build_policy(config, size, train_crop=train_crop)  # fail now, not inside a tf.data thread
    cv2.setNumThreads(0)
    return GraphAugmenter(functools.partial(build_policy, config, size, train_crop=train_crop),
                          train_crop or None, processes, streams, border)
