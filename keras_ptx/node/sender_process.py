"""The node's sender in a child process of its own (:mod:`keras_ptx.node.child`: pynetdicom's
association threads poll every millisecond and need the GIL at each step, so in the node's
process every DIMSE message waited for the predicting thread).

:class:`ProcessSender` is used like the sender it runs (``send(paths, acknowledged)``,
``close()``): the child reports which objects the destination confirmed, and the parent
acknowledges them in the spool. A child that dies during a send makes that attempt a
:class:`~keras_ptx.node.sender.SendError`.
"""
from __future__ import annotations

from typing import Callable

from keras_ptx.node.child import Child, ChildGone
from keras_ptx.node.sender import SendError, failure_reason


class ProcessSender:
    """``make(*args)``, called in the child, builds the sender (module-level and picklable);
    ``description`` is what ``str()`` gives, for the log."""

    def __init__(self, description: str, make: Callable, *args):
        self._description = description
        self.child = Child("sending", _Sending, make, args)

    def __str__(self):
        return self._description

    def send(self, paths: list[str], acknowledged: Callable[[str], None]) -> None:
        if not paths:
            return
        try:
            acked, error = self.child.ask(("send", paths))
        except ChildGone as exc:
            raise SendError(str(exc)) from None
        for path in acked:
            acknowledged(path)
        if error is not None:
            raise SendError(error)

    def close(self) -> None:
        """Release the child's association (the child keeps running; one that died is
        started again at the next send)."""
        if self.child.alive:
            try:
                self.child.ask(("close", []))
            except ChildGone:
                pass

    def stop(self) -> None:
        """End the child."""
        self.child.stop()


class _Sending:
    """The worker in the child: ``(kind, paths)`` -> (the paths the destination stored, the
    failure's reason or None)."""

    def __init__(self, make: Callable, args: tuple):
        self.sender = make(*args)

    def __call__(self, request) -> tuple[list[str], str | None]:
        kind, paths = request
        acked: list[str] = []
        try:
            if kind == "send":
                self.sender.send(paths, acked.append)
            else:
                self.sender.close()
        except Exception as exc:            # noqa: BLE001 - reported to the parent
            return acked, failure_reason(exc)
        return acked, None

    def close(self) -> None:
        self.sender.close()
