"""The node's sending thread: predicted studies in the order they became ready, each study's
objects through one sender (one association while studies are ready, released when none
is), then the study marked sent, logged once and deleted after the retention.

:meth:`Delivery.put` hands a study over (the predictor, as soon as every instance of it has an
outcome; the recovery at start for studies left predicted); putting a study twice is
harmless: only a study still ``predicted`` with nothing left in ``out/`` becomes ``sent``. A
failed send waits the backoff and puts the study back at the end of the line.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

from keras_ptx.node.sender import Backoff, failure_reason

log = logging.getLogger("keras_ptx.node")
SHORT = 12                                  # digest characters in log lines


class Delivery:
    """``run()`` (a thread) until ``stopping`` is set; ``expire()`` deletes the sent studies
    whose retention is over (the caller's thread)."""

    def __init__(self, spool, status, sender, retention_seconds: float, max_backoff: float,
                 stopping: threading.Event):
        self.spool, self.status, self.sender = spool, status, sender
        self.retention_seconds, self.max_backoff = retention_seconds, max_backoff
        self._stopping = stopping
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._cv = threading.Condition()
        self._retained: dict[str, float] = {}       # sent study key -> when it was sent
        self._retained_lock = threading.Lock()

    def put(self, key: str) -> None:
        with self._cv:
            if key not in self._queued:
                self._queued.add(key)
                self._ready.append(key)
                self._cv.notify()

    def retain(self, key: str, sent_at: float) -> None:
        with self._retained_lock:
            self._retained[key] = sent_at

    @property
    def retained(self) -> int:
        """Sent studies still in the spool."""
        return len(self._retained)

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def run(self) -> None:
        backoff = Backoff(1.0, self.max_backoff)
        try:
            while not self._stopping.is_set():
                key = self._next()
                if key is None:
                    continue
                try:
                    self.sender.send(self.spool.outbox(key), self._acknowledged)
                except Exception as exc:    # noqa: BLE001 - the destination, a bug: retry
                    wait = backoff.next_wait()
                    why = failure_reason(exc)
                    log.warning("sending failed for study %s (%s); next attempt in %.0f s",
                                key[:SHORT], why, wait)
                    self.sender.close()
                    self.status.add("failed")
                    self.put(key)
                    self._stopping.wait(wait)
                    continue
                backoff.reset()
                self._finish(key)
        finally:
            self.sender.close()

    def _next(self) -> str | None:
        """The next ready study; when none is, the association is released first (pynetdicom's
        threads poll an open one every millisecond), then None after a second without one or
        when stopping."""
        with self._cv:
            if self._ready:
                return self._pop()
        self.sender.close()
        with self._cv:
            if not self._ready:
                self._cv.wait(1.0)
            return self._pop() if self._ready else None

    def _pop(self) -> str:
        key = self._ready.popleft()
        self._queued.discard(key)
        return key

    def _acknowledged(self, path: str) -> None:
        self.spool.acknowledge(path)
        self.status.add("sent")

    def _finish(self, key: str) -> None:
        """The study is sent: its state says so, with the instances this answer covers (a
        study answered before, still in the spool, reports only its new instances)."""
        with self.spool.lock(key):
            study = self.spool.study(key) or {}
            if study.get("state") != "predicted" or self.spool.outbox(key):
                return                      # new instances came, or objects are left
            before = set(study.get("reported", ()))
            outcomes = [o for o in self.spool.outcomes(key) if o["instance"] not in before]
            study = self.spool.set_state(key, "sent", sent_at=time.time(), reported=sorted(
                before | {o["instance"] for o in outcomes}))
            last = self.spool.last_received(key)
        predicted = [o for o in outcomes if o["outcome"] == "predicted"]
        latency = f"{study['sent_at'] - last:.1f} s" if last else "?"
        log.info("study %s answered: %d image(s), %d positive, %d skipped, %d object(s), "
                 "latency %s", key[:SHORT], len(predicted), sum(o["positive"] for o in predicted),
                 len(outcomes) - len(predicted), sum(len(o["objects"]) for o in outcomes), latency)
        self.status.add("studies_answered")
        self.retain(key, study["sent_at"])

    def expire(self) -> None:
        now = time.time()
        with self._retained_lock:
            due = [k for k, at in self._retained.items()
                   if now - at >= self.retention_seconds]
        for key in due:
            with self.spool.lock(key):
                if (self.spool.study(key) or {}).get("state") == "sent":
                    self.spool.remove(key)
            with self._retained_lock:
                self._retained.pop(key, None)
