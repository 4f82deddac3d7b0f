"""The node's spool: every received instance and every result object, on disk before anyone
is told, and each study's progress, so that a node killed at any instant resumes where it was.

    SPOOL/
      status.json                     counters (keras_ptx.node.status)
      studies/<study key>/            key: digest of the StudyInstanceUID (no UID in names)
        study.json                    state (received / predicted / sent) and times
        in/<instance key>.dcm         an instance as received (DICOM file format)
        done/<instance key>.json      its outcome: predicted (probability, objects) or skipped
        out/<instance key>-<n>.dcm    result objects the destination has not acknowledged
        sent/<instance key>-<n>.dcm   result objects it acknowledged
      trash/                          studies being deleted (renamed here first)

Every file is written beside its name, flushed to the disk and renamed into place
(:func:`keras_ptx.fileio.replace`): a crash leaves the old file or the new one. The progress
of a study is read from the files, not only from ``study.json``: an instance without an
outcome still needs its prediction, an object in ``out/`` still needs sending. An outcome is
written after its objects, and an object moves to ``sent/`` after its acknowledgement (a
rename not flushed: a crash may undo it, and the object is sent again), so a crash between
two steps repeats the later one only; result UIDs are derived from the source, so a repeat
sends the same objects again. ``study.json`` is rewritten when the state changes, not for
every instance: a study's last instance is its newest file in ``in/``. The node sets its
umask to 077: files are 0600.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

from keras_ptx.fileio import write_atomic

STATES = ("received", "predicted", "sent")
KEY_CHARS = 24


def digest(uid: str, chars: int = KEY_CHARS) -> str:
    """A one-way name for a UID: what file names and log lines carry instead of the UID."""
    return hashlib.sha256(str(uid).encode()).hexdigest()[:chars]


class Spool:
    """One folder of studies. Thread-safe: each study has its lock (:meth:`lock`), held by
    every call that changes it."""

    def __init__(self, root):
        self.root = os.path.abspath(os.fspath(root))
        self.studies_dir = os.path.join(self.root, "studies")
        self.trash = os.path.join(self.root, "trash")
        for folder in (self.studies_dir, self.trash):
            os.makedirs(folder, exist_ok=True)
        shutil.rmtree(self.trash, ignore_errors=True)         # deletions a crash interrupted
        os.makedirs(self.trash, exist_ok=True)
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    def lock(self, key: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(key, threading.RLock())

    def path(self, key: str, *parts: str) -> str:
        return os.path.join(self.studies_dir, key, *parts)

    # --- receiving -------------------------------------------------------------------------
    def store(self, study_uid: str, sop_uid: str, data: bytes) -> tuple[str, bool]:
        """Write one received instance durably; returns (study key, whether it is new: an
        instance already answered in this spool is not answered again). Raises OSError (a
        full disk among them) with nothing half-written left behind."""
        key, instance = digest(study_uid), digest(sop_uid)
        with self.lock(key):
            for folder in ("in", "done", "out", "sent"):
                os.makedirs(self.path(key, folder), exist_ok=True)
            answered = self.answered(key, instance)
            if not answered:
                write_atomic(self.path(key, "in", f"{instance}.dcm"), data)
                study = self.study(key)
                if study is None or study.get("state") != "received":
                    self._write_study(key, {**(study or {"first_at": time.time()}),
                                            "state": "received"})
            return key, not answered

    # --- reading progress ------------------------------------------------------------------
    def keys(self) -> list[str]:
        return sorted(name for name in os.listdir(self.studies_dir) if not name.startswith("."))

    def study(self, key: str) -> dict | None:
        try:
            with open(self.path(key, "study.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def pending(self, key: str) -> list[str]:
        """The instance keys of a study that have no outcome yet."""
        done = {name[:-5] for name in _names(self.path(key, "done"), ".json")}
        return [name[:-4] for name in _names(self.path(key, "in"), ".dcm")
                if name[:-4] not in done]

    def answered(self, key: str, instance: str) -> bool:
        """Whether the instance has its outcome."""
        return os.path.exists(self.path(key, "done", f"{instance}.json"))

    def is_pending(self, key: str, instance: str) -> bool:
        """Whether the instance is stored and has no outcome yet (:meth:`pending`, for one)."""
        return (os.path.exists(self.instance_file(key, instance))
                and not self.answered(key, instance))

    def last_received(self, key: str) -> float | None:
        """When the study's newest instance was stored (epoch seconds), None without any."""
        folder = self.path(key, "in")
        times = [os.stat(os.path.join(folder, name)).st_mtime
                 for name in _names(folder, ".dcm")]
        return max(times, default=None)

    def instance_file(self, key: str, instance: str) -> str:
        return self.path(key, "in", f"{instance}.dcm")

    def outbox(self, key: str) -> list[str]:
        """Result objects of a study not yet acknowledged, as file paths."""
        return [self.path(key, "out", name) for name in _names(self.path(key, "out"), ".dcm")]

    def outcomes(self, key: str) -> list[dict]:
        return [json.loads(Path(self.path(key, "done", name)).read_text())
                for name in _names(self.path(key, "done"), ".json")]

    # --- progress --------------------------------------------------------------------------
    def record(self, key: str, instance: str, outcome: dict, objects=()) -> None:
        """An instance's result objects (DICOM files' bytes) into ``out/``, then its
        outcome."""
        with self.lock(key):
            names = []
            for n, data in enumerate(objects):
                names.append(f"{instance}-{n}.dcm")
                write_atomic(self.path(key, "out", names[-1]), data)
            write_atomic(self.path(key, "done", f"{instance}.json"),
                         json.dumps({**outcome, "instance": instance, "objects": names}))

    def acknowledge(self, path: str) -> None:
        """The destination stored the object at ``path`` (in some study's ``out/``): moved to
        ``sent/``, not flushed (after a crash it may be sent again, the same object)."""
        study_dir = os.path.dirname(os.path.dirname(path))
        with self.lock(os.path.basename(study_dir)):
            os.replace(path, os.path.join(study_dir, "sent", os.path.basename(path)))

    def set_state(self, key: str, state: str, **fields) -> dict:
        assert state in STATES, state
        with self.lock(key):
            study = {**(self.study(key) or {}), **fields, "state": state}
            self._write_study(key, study)
            return study

    def remove(self, key: str) -> None:
        """Delete a study: renamed into ``trash/`` first, so that a crash mid-way leaves no
        half study that looks unfinished."""
        with self.lock(key):
            if not os.path.isdir(self.path(key)):
                return
            target = os.path.join(self.trash, f"{key}-{uuid.uuid4().hex[:8]}")
            os.rename(self.path(key), target)
            shutil.rmtree(target, ignore_errors=True)

    def _write_study(self, key: str, study: dict) -> None:
        write_atomic(self.path(key, "study.json"), json.dumps(study))


def _names(folder: str, suffix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(folder) if n.endswith(suffix) and not n.startswith("."))
    except FileNotFoundError:
        return []

