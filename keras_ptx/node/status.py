"""The counters users poll: ``SPOOL/status.json``, rewritten whole at most once a second.

    {"received": 12, "skipped": 1, "processed": 11, "positives": 2, "sent": 22, "failed": 0,
     "studies_answered": 4, "pending_studies": 1, "updated": "2026-12-08T10:00:00+00:00",
     "started": "...", "pid": 1234}

``received``: instances stored; ``skipped``: instances refused a prediction (not a frontal chest
radiograph, unreadable pixels, own objects); ``processed``: images predicted; ``sent``: objects
the destination acknowledged; ``failed``: failed attempts (a send, a model call). Counts
continue across restarts (read back from the file).
"""
from __future__ import annotations

import datetime
import json
import os
import threading

from keras_ptx.fileio import write_atomic

COUNTERS = ("received", "skipped", "processed", "positives", "sent", "failed",
            "studies_answered")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Status:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._dirty = True
        try:
            with open(path) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = {}
        self.counts = {name: int(previous.get(name, 0)) for name in COUNTERS}
        self.extra = {"started": _now(), "pid": os.getpid(), "pending_studies": 0}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n
            self._dirty = True

    def set(self, **values) -> None:
        with self._lock:
            self._dirty |= any(self.extra.get(k) != v for k, v in values.items())
            self.extra.update(values)

    def flush(self) -> None:
        """Rewrite the file if anything changed since the last write."""
        with self._lock:
            if not self._dirty:
                return
            body = {**self.counts, **self.extra, "updated": _now()}
            self._dirty = False
        write_atomic(self.path, json.dumps(body, indent=1) + "\n")
