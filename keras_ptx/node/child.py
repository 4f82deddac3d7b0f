"""Work done in a child process of its own, so that it neither waits for the node's GIL nor
makes the node's threads wait for it.

The node's predicting thread needs the GIL between the network's calls (decoding, mapping
masks back); building and encoding result objects is pure Python and held it for most of the
rest, and pynetdicom's association threads poll every millisecond and need it at each step
(BENCHMARKS.md, "The DICOM node"). :class:`Child` runs a worker in a process started by
``spawn`` (never ``fork`` from a process running TensorFlow's threads): ``ask(request)`` hands
it one request and returns its reply. A child that dies during a request (killed, out of
memory) makes that request a :class:`ChildGone`; a dead child is replaced at the next request;
closing the parent's end of the pipe ends the child. The child ignores SIGINT and SIGTERM: a
signal to the node's process group is the parent's to handle, and the request in flight
finishes.
"""
from __future__ import annotations

import multiprocessing
import signal
from typing import Callable


class ChildGone(Exception):
    """The child process ended during a request (the message says how; no PHI)."""


class Child:
    """``make(*args)``, called in the child, builds the worker: a callable from a request to
    its reply (both picklable; it handles its own errors), with an optional ``close()`` called
    when the child ends. ``make`` must be module-level and picklable, as ``spawn`` needs."""

    def __init__(self, name: str, make: Callable, *args):
        self.name, self._make, self._args = name, make, args
        self._conn = self._process = None
        self._start()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def ask(self, request):
        """The worker's reply to ``request``; ChildGone if the child ended meanwhile."""
        if not self.alive:
            self.stop()
            self._start()
        try:
            self._conn.send(request)
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            process = self._process
            self.stop()                     # reaped: its exit code is known
            code = process.exitcode if process is not None else None
            raise ChildGone(f"the {self.name} process ended ({type(exc).__name__}, exit code "
                            f"{code}); a new one takes the next attempt") from None

    def stop(self) -> None:
        """End the child (it finishes the request in flight)."""
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.kill()
        self._conn = self._process = None

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, self._make, self._args),
                                        name=f"keras_ptx-{self.name}", daemon=True)
        self._process.start()
        child.close()


def _serve(conn, make: Callable, args: tuple) -> None:
    """The child: requests from ``conn`` until the parent's end closes."""
    from keras_ptx.node.main import log_without_phi

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    log_without_phi()
    worker = make(*args)
    try:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return
            reply = worker(request)
            try:
                conn.send(reply)
            except OSError:
                return
    finally:
        getattr(worker, "close", lambda: None)()
