"""The node's sender in a process of its own.

pynetdicom runs an association on threads that poll every millisecond and need the GIL at
each step; in the node's process the predicting and building threads hold it most of the
time, so every DIMSE message waited for them (BENCHMARKS.md, "The DICOM node"). In a child
process started by ``spawn`` (never ``fork`` from a process running TensorFlow's threads)
the sender answers at once. :class:`ProcessSender` is used like the sender it runs
(``send(paths, acknowledged)``, ``close()``): the child reports which objects the destination
confirmed, and the parent acknowledges them in the spool. A child that dies during a send
(killed, out of memory) makes that attempt a :class:`~keras_ptx.node.sender.SendError`; a dead
child is replaced at the next request; closing the parent's end of the pipe ends the child.
"""
from __future__ import annotations

import multiprocessing
import signal
from typing import Callable

from keras_ptx.node.sender import SendError, failure_reason


class ProcessSender:
    """``make(*args)``, called in the child, builds the sender (module-level and picklable,
    as ``spawn`` needs); ``description`` is what ``str()`` gives, for the log."""

    def __init__(self, description: str, make: Callable, *args):
        self._description, self._make, self._args = description, make, args
        self._conn = self._process = None
        self._start()

    def __str__(self):
        return self._description

    def send(self, paths: list[str], acknowledged: Callable[[str], None]) -> None:
        if not paths:
            return
        acked, error = self._ask(("send", paths))
        for path in acked:
            acknowledged(path)
        if error is not None:
            raise SendError(error)

    def close(self) -> None:
        """Release the child's association (the child keeps running; one that died is
        started again at the next send)."""
        if self._process is not None and self._process.is_alive():
            try:
                self._ask(("close", []))
            except SendError:
                pass

    def stop(self) -> None:
        """End the child."""
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
                                        name="keras_ptx-sender", daemon=True)
        self._process.start()
        child.close()

    def _ask(self, request) -> tuple[list[str], str | None]:
        if self._process is None or not self._process.is_alive():
            self.stop()
            self._start()
        try:
            self._conn.send(request)
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            code = self._process.exitcode if self._process is not None else None
            self.stop()
            raise SendError(f"the sending process ended ({type(exc).__name__}, exit code "
                            f"{code}); a new one takes the next attempt") from None


def _serve(conn, make: Callable, args: tuple) -> None:
    """The child: requests from ``conn`` until the parent's end closes (a signal to the
    node's process group is the parent's to handle: it lets the send in flight finish)."""
    from keras_ptx.node.main import log_without_phi

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    log_without_phi()
    sender = make(*args)
    try:
        while True:
            try:
                kind, paths = conn.recv()
            except (EOFError, OSError):
                return
            acked: list[str] = []
            error = None
            try:
                if kind == "send":
                    sender.send(paths, acked.append)
                else:
                    sender.close()
            except Exception as exc:            # noqa: BLE001 - reported to the parent
                error = failure_reason(exc)
            try:
                conn.send((acked, error))
            except OSError:
                return
    finally:
        sender.close()
