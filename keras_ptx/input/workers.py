"""Augmentation worker processes: albumentations outside TensorFlow's interpreter lock.

albumentations runs much of each image in Python and in small numpy steps that hold the
interpreter lock, so tf.data calls running it in threads of one process serialise on that lock
(BENCHMARKS.md). :func:`augment` instead hands a batch to a worker process (``python -m
keras_ptx.input.workers``, which imports albumentations but not TensorFlow) and waits for it
without holding the lock.

- Pixels travel through a shared buffer per worker (an anonymous file both map, handed over
  as a descriptor, so nothing is left on disk): the caller copies inputs in, the worker writes
  outputs there (with border weights, :mod:`keras_ptx.input.border`, a float32 one more), and
  the caller copies them out. Only a small header goes through the pipe.
- The policy travels as a pickled factory (e.g. ``functools.partial(build_policy, ...)``);
  each worker builds it once and keeps it.
- Each worker has :data:`SLOTS` buffer slots and serves its calls in order, so a second call
  can hand over its batch while the first is computed: the worker then never waits for
  tf.data between calls. :func:`augment` takes ``streams``, the workers wanted: a call uses
  only the first ``streams`` workers of the pool, takes an idle one, else (with that many
  running) queues behind one, else starts one (a new interpreter: slow). With ``streams``
  None every call that finds no idle worker starts one. Workers are shared by the whole process (:data:`pool`, a
  :class:`WorkerPool`). One whose buffer is too small for a batch, or that died, is replaced.
  They end when their pipe closes: at exit, when :meth:`WorkerPool.shutdown` runs, or when
  this process dies; Ctrl-C is left to this process.
- A failure in the policy comes back as :class:`AugmentWorkerError` carrying the worker's
  traceback, and the worker carries on; a worker that dies (killed, out of memory) is dropped
  and named with its exit code.
"""
from __future__ import annotations

import atexit
import contextlib
import mmap
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import numpy as np

from keras_ptx.input.border import Border
from keras_ptx.tf_errors import AugmentWorkerError

# glibc hands each array of 128 KB or more (a float32 256 px image is 256 KB) to mmap and back,
# and trims the heap as it shrinks, so every image faulted in fresh pages. Keeping the worker's
# memory in its heap saves that CPU (BENCHMARKS.md). 32 MB is glibc's largest mmap threshold on
# 64 bits.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def _shared_file(nbytes: int) -> int:
    """A descriptor of an anonymous file of ``nbytes`` (memfd where the system has it, else an
    unlinked temporary file): nothing is left behind, however the processes end."""
    try:
        fd = os.memfd_create("keras_ptx-augment")
    except (AttributeError, OSError):      # not Linux, or a sandbox that refuses memfd
        fd, path = tempfile.mkstemp(prefix="keras_ptx-augment-")
        os.unlink(path)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, nbytes)   # ENOSPC now rather than SIGBUS later
        else:
            os.ftruncate(fd, nbytes)
    except OSError as error:
        os.close(fd)
        raise AugmentWorkerError(f"cannot reserve {nbytes:,} bytes of shared memory for "
                                 f"augmentation: {error}") from error
    return fd


def aligned_empty(shape: tuple[int, ...], dtype=np.uint8, alignment: int = 64) -> np.ndarray:
    """An uninitialised array starting on an ``alignment``-byte boundary: TensorFlow adopts
    such a ``numpy_function`` result as it is, where it copies a less aligned one."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _layout(batch: int, side: int, out_side: int, weights: bool) -> list[tuple]:
    """(shape, dtype) of images, masks, out images, out masks and, with ``weights``, the out
    masks' float32 border weights, laid end to end in a buffer."""
    inputs, outputs = (batch, side, side, 1), (batch, out_side, out_side, 1)
    return ([(inputs, np.uint8)] * 2 + [(outputs, np.uint8)] * 2
            + [(outputs, np.float32)] * weights)


def _layout_bytes(batch: int, side: int, out_side: int, weights: bool) -> int:
    return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize
               for shape, dtype in _layout(batch, side, out_side, weights))


def _views(buffer, offset: int, batch: int, side: int, out_side: int,
           weights: bool) -> list[np.ndarray]:
    """Views of :func:`_layout` in ``buffer`` from ``offset`` on."""
    views = []
    for shape, dtype in _layout(batch, side, out_side, weights):
        count = int(np.prod(shape))
        views.append(np.frombuffer(buffer, dtype, count, offset).reshape(shape))
        offset += count * np.dtype(dtype).itemsize
    return views


SLOTS = 2     # calls one worker holds at once: one computed, the next waiting in its slot


class Worker:
    """One worker process and the shared buffer it maps: :data:`SLOTS` slots of ``slot_bytes``,
    request ``n`` in slot ``n % SLOTS``. The pool lets at most :data:`SLOTS` calls hold it; as
    replies come in order and a call reads its own only after the one before has copied its
    results out, a slot is free again by the time a call is let in to reuse it."""

    def __init__(self, slot_bytes: int):
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**WORKER_MALLOC, **os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        nbytes = SLOTS * slot_bytes
        fd = _shared_file(nbytes)
        try:
            self.buffer = mmap.mmap(fd, nbytes)
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", __name__, str(fd), str(nbytes)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, env=env, pass_fds=(fd,))
        except OSError as error:
            raise AugmentWorkerError(f"cannot start an augmentation worker process: {error}") from error
        finally:
            os.close(fd)
        self.slot_bytes = slot_bytes
        self.holders = 0                    # calls holding it (the pool's lock guards this)
        self._send = threading.Lock()       # requests go out in order...
        self._turn = threading.Condition()  # ...and their replies are read in the same order
        self.sent = self._read = 0          # requests written, replies read
        self.failure: str | None = None     # why it can answer no more

    def usable(self) -> bool:
        return self.failure is None and self.process.poll() is None

    def run(self, factory: bytes, images: np.ndarray, masks: np.ndarray, seeds: np.ndarray,
            out_side: int, border: Border | None = None) -> tuple[np.ndarray, ...]:
        batch, side = images.shape[:2]
        with self._send:
            n = self.sent
            offset = n % SLOTS * self.slot_bytes
            in_images, in_masks, *outputs = _views(self.buffer, offset, batch, side, out_side,
                                                   border is not None)
            np.copyto(in_images, images)            # nothing is sent yet if these fail
            np.copyto(in_masks, masks)
            header = pickle.dumps((factory, offset, batch, side, out_side,
                                   np.asarray(seeds, np.int64), border),
                                  protocol=pickle.HIGHEST_PROTOCOL)
            try:
                self.process.stdin.write(header)
                self.process.stdin.flush()
            except BaseException as error:          # part of a request may be in the pipe
                self._died(error)
            self.sent = n + 1
        with self._turn:
            self._turn.wait_for(lambda: self._read == n or self.failure is not None)
        answered = False
        try:
            if self.failure is not None:
                raise AugmentWorkerError(self.failure)
            try:
                status, detail = pickle.load(self.process.stdout)
            except BaseException as error:
                self._died(error)
            answered = True
            if status != "ok":
                raise AugmentWorkerError(f"augmentation failed in worker process "
                                         f"{self.process.pid}:\n{detail}")
            outs = tuple(aligned_empty(out.shape, out.dtype) for out in outputs)
            for out, shared in zip(outs, outputs):
                np.copyto(out, shared)
            return outs
        finally:
            with self._turn:
                if not answered and self.failure is None:   # its reply is still in the pipe
                    self.failure = "an augmentation call left its reply unread"
                self._read += 1
                self._turn.notify_all()

    def _died(self, error: BaseException):
        """Fail every call on this worker (waiters at once), end it, raise for this call."""
        with self._turn:
            self.failure = self.failure or (f"augmentation worker process {self.process.pid} "
                                            f"stopped answering")
            self._turn.notify_all()
        if not isinstance(error, (EOFError, OSError, ValueError)):   # it may be alive: out of step
            self.process.kill()
        code = self.process.wait()
        if not isinstance(error, Exception):        # KeyboardInterrupt and the like go on as they are
            raise error
        raise AugmentWorkerError(
            f"augmentation worker process {self.process.pid} died (exit code {code}"
            f"{': killed, perhaps for lack of memory' if code == -9 else ''}); "
            f"its own messages, if any, are on stderr above") from error

    def close(self):
        with contextlib.suppress(BrokenPipeError):   # dead with a request unread, as subprocess does
            self.process.stdin.close()               # EOF: the worker's loop ends
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


class WorkerPool:
    """Worker processes shared by calls: a call takes one with :meth:`borrow` and releases it
    with :meth:`give_back`; :meth:`shutdown` ends them all. :func:`augment` and the exit
    handler use the module's :data:`pool`."""

    def __init__(self):
        self._lock = threading.Lock()
        self._started: list[Worker] = []

    @property
    def workers(self) -> tuple[Worker, ...]:
        """The running workers, in the order calls look at them (a snapshot)."""
        return tuple(self._started)

    def borrow(self, slot_bytes: int, streams: int | None = None) -> Worker:
        """Of the first ``streams`` workers whose slots hold ``slot_bytes``: an idle one, else
        (with ``streams`` of them running) the least held one with a free slot; else a new one."""
        streams = streams or None
        stale: list[Worker] = []
        try:
            with self._lock:
                stale = [w for w in self._started if w.holders == 0 and
                         (not w.usable() or w.slot_bytes < slot_bytes)]
                for worker in stale:        # died while idle, or too small for this batch
                    self._started.remove(worker)
                fitting = [w for w in self._started if w.usable() and w.slot_bytes >= slot_bytes]
                fitting = fitting[:streams]     # a call looks at the first ``streams`` workers only
                idle = [w for w in fitting if w.holders == 0]
                worker = idle[0] if idle else None
                if worker is None and streams is not None and len(fitting) >= streams:
                    worker = min(fitting, key=lambda w: w.holders)
                    if worker.holders >= SLOTS:
                        worker = None
                if worker is None:          # under the lock, so parallel calls start no extra one
                    worker = Worker(slot_bytes)
                    self._started.append(worker)
                worker.holders += 1
                return worker
        finally:
            for old in stale:
                old.close()

    def give_back(self, worker: Worker):
        """Release a call's hold; a worker that failed or was shut down ends with its last call."""
        with self._lock:
            worker.holders -= 1
            ending = worker.holders == 0 and (not worker.usable() or worker not in self._started)
            if ending and worker in self._started:
                self._started.remove(worker)
        if ending:
            worker.close()

    def shutdown(self):
        """End every worker process (they are started again when needed). A worker answers the
        calls it holds before it ends, if it can within 5 s; the others fail with
        :class:`AugmentWorkerError`."""
        with self._lock:
            ending = list(self._started)
            self._started.clear()
        for worker in ending:
            worker.close()


pool = WorkerPool()
atexit.register(pool.shutdown)


def augment(factory: bytes, images: np.ndarray, masks: np.ndarray, seeds: np.ndarray,
            out_side: int, streams: int | None = None,
            border: Border | None = None) -> tuple[np.ndarray, ...]:
    """Augment a uint8 [B, S, S, 1] batch in a worker process of :data:`pool` with the policy
    that the pickled ``factory`` builds; returns images and masks of [B, out_side, out_side, 1]
    and, with ``border``, the masks' float32 border weights of that shape.
    ``streams``: the workers wanted (None: one per call that finds none idle)."""
    worker = pool.borrow(_layout_bytes(images.shape[0], images.shape[1], out_side,
                                       border is not None), streams)
    try:
        return worker.run(factory, images, masks, seeds, out_side, border)
    finally:
        pool.give_back(worker)


def _serve(buffer: mmap.mmap, requests, replies):
    """The worker's loop: read a header, augment the batch in the shared buffer, reply."""
    import cv2
    from keras_ptx.input.policy import augment_batch

    cv2.setNumThreads(0)                      # one core's worth per worker, no OpenCV pool
    policies: dict[bytes, object] = {}
    while True:
        try:
            factory, offset, batch, side, out_side, seeds, border = pickle.load(requests)
        except EOFError:
            return
        try:
            if factory not in policies:
                policies[factory] = pickle.loads(factory)()
            images, masks, *outputs = _views(buffer, offset, batch, side, out_side,
                                             border is not None)
            augment_batch(policies[factory], images, masks, seeds, *outputs[:2], border,
                          *outputs[2:])
            reply = ("ok", None)
        except Exception:   # reported to the caller, which raises it there
            reply = ("error", traceback.format_exc())
        try:
            pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
            replies.flush()
        except BrokenPipeError:         # the caller is gone
            return


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the caller's; EOF ends a worker
    _fd, _nbytes = int(sys.argv[1]), int(sys.argv[2])
    _buffer = mmap.mmap(_fd, _nbytes)
    os.close(_fd)
    # Replies get a private copy of stdout; anything a library prints goes to stderr instead.
    _replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _serve(_buffer, sys.stdin.buffer, _replies)
