"""The node: receive instances, run each study once it is quiet, send its objects, forget it.

Three threads beside pynetdicom's: the predictor takes a study once no instance of it arrived
for ``quiet_seconds`` and records an outcome for each of its instances (result objects, or the
reason it was skipped); the sender sends the objects of predicted studies, retrying with
backoff while the destination fails, and then marks the study sent and deletes it (after
``retention_seconds``); the status thread rewrites ``status.json``. Everything they act on is
read from the spool (:mod:`keras_ptx.node.spool`), so a restart after a crash resumes every
unfinished study: its quiet period starts again, instances without an outcome are predicted,
unacknowledged objects are sent (the same objects: their UIDs are derived from the source).

Log lines carry digests of UIDs, counts and reasons; never a name, an ID or a UID.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time

from keras_ptx.data.eligibility import rejection
from keras_ptx.node import receiver
from keras_ptx.node.config import NodeConfig, NodeError
from keras_ptx.node.sender import Backoff, SendError
from keras_ptx.node.spool import Spool, digest
from keras_ptx.node.status import Status

log = logging.getLogger("keras_ptx.node")
SHORT = 12                                  # digest characters in log lines
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
OUT_OF_RESOURCES, OTHER_RESOURCE_FAILURE, CANNOT_UNDERSTAND = 0xA700, 0xA701, 0xC210


class Node:
    """``start()`` listens and works in background threads until ``stop()``."""

    def __init__(self, config: NodeConfig, model, sender, tls=None):
        self.config, self.model, self.sender, self.tls = config, model, sender, tls
        os.umask(0o077)                     # spool files 0600, folders 0700: they hold PHI
        self.spool = Spool(config.spool)
        self.status = Status(os.path.join(self.spool.root, "status.json"))
        self._quiet_since: dict[str, float] = {}     # study key -> monotonic time of its last instance
        self._lock = threading.Lock()
        self._work = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.server = None

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._recover()
        ae, handlers = receiver.make_scp(self.config.ae_title, self.config.allowed, self.on_store)
        try:
            self.server = receiver.start(ae, handlers, self.config.host, self.config.port,
                                         self.tls)
        except OSError as exc:
            raise NodeError(f"--host {self.config.host} --port {self.config.port}: cannot "
                            f"listen ({exc.strerror or exc})") from None
        for target in (self._predict_loop, self._send_loop, self._status_loop):
            thread = threading.Thread(target=target, name=target.__name__, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("listening as %s on %s:%d; sending by %s; model %s; quiet period %.1f s",
                 self.config.ae_title, self.config.host, self.config.port, self.sender,
                 self.model.identity.describe(), self.config.quiet_seconds)

    def stop(self) -> None:
        """Stop listening and working (once; later calls do nothing) and write the status."""
        self._stopping.set()
        self._work.set()
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []
        self.status.flush()

    def _recover(self) -> None:
        """Every study in the spool that is not sent is unfinished: resume it."""
        now = time.monotonic()
        for key in self.spool.keys():
            study = self.spool.study(key) or {}
            if self.spool.pending(key):
                self._quiet_since[key] = now
            elif study.get("state", "received") == "received":
                self.spool.set_state(key, "predicted")
        unfinished = sum((self.spool.study(k) or {}).get("state") != "sent"
                         for k in self.spool.keys())
        if unfinished:
            log.info("resuming %d unfinished stud%s from the spool", unfinished,
                     "y" if unfinished == 1 else "ies")

    # --- receiving (pynetdicom's threads) --------------------------------------------------
    def on_store(self, event) -> int:
        """C-STORE: the instance is on the disk before success is answered."""
        try:
            ds = event.dataset
            study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
        except Exception as exc:            # noqa: BLE001 - any undecodable stream
            log.warning("instance refused: not a readable DICOM dataset with Study and SOP "
                        "Instance UIDs (%s)", type(exc).__name__)
            self.status.add("failed")
            return CANNOT_UNDERSTAND
        where = f"instance {digest(sop_uid, SHORT)} of study {digest(study_uid, SHORT)}"
        reason = rejection(ds)
        if reason:
            log.info("%s skipped: %s", where, reason)
            self.status.add("skipped")
            return 0x0000
        try:
            key, new = self.spool.store(study_uid, sop_uid, event.encoded_dataset())
        except OSError as exc:
            full = exc.errno in FULL_DISK
            log.error("%s refused: %s", where, "the spool's disk is full" if full
                      else f"cannot write the spool ({errno.errorcode.get(exc.errno, exc.errno)})")
            self.status.add("failed")
            return OUT_OF_RESOURCES if full else OTHER_RESOURCE_FAILURE
        if new:
            with self._lock:
                self._quiet_since[key] = time.monotonic()
            self.status.add("received")
        else:
            log.info("%s already answered: not answered again", where)
        return 0x0000

    # --- predicting ------------------------------------------------------------------------
    def _due(self) -> list[str]:
        """The studies whose quiet period is over, taken off the waiting list."""
        now = time.monotonic()
        with self._lock:
            due = [key for key, since in self._quiet_since.items()
                   if now - since >= self.config.quiet_seconds]
            for key in due:
                del self._quiet_since[key]
        return due

    def _predict_loop(self) -> None:
        backoff = Backoff(1.0, self.config.max_backoff)
        while not self._stopping.is_set():
            keys = self._due()
            if not keys:
                self._stopping.wait(0.1)
                continue
            try:
                self._predict_studies(keys)
                backoff.reset()
            except Exception as exc:        # noqa: BLE001 - a model server down, a bug: retry
                wait = backoff.next_wait()
                log.error("%d stud%s: prediction failed (%s: %s); next attempt in %.0f s",
                          len(keys), "y" if len(keys) == 1 else "ies", type(exc).__name__,
                          str(exc)[:200], wait)
                self.status.add("failed")
                with self._lock:
                    for key in keys:
                        self._quiet_since.setdefault(
                            key, time.monotonic() - self.config.quiet_seconds + wait)

    def _predict_studies(self, keys: list[str]) -> None:
        """Every pending instance of the studies, in one stream of batches (several small
        studies fill a batch together), then each study whose instances all have an outcome
        is predicted."""
        from keras_ptx.inference.prediction import Rejection

        study_of = {self.spool.instance_file(key, instance): key
                    for key in keys for instance in self.spool.pending(key)}
        for item in self.model.results(list(study_of)):
            path = item.path if isinstance(item, Rejection) else item.image.path
            key = study_of[str(path)]
            if isinstance(item, Rejection):
                self._skip(key, _instance(path), item.reason)
            else:
                self._answer(key, item)
        for key in keys:
            with self.spool.lock(key):
                if not self.spool.pending(key):
                    self.spool.set_state(key, "predicted", predicted_at=time.time())
        self._work.set()

    def _answer(self, key: str, prediction) -> None:
        from keras_ptx.results.dicom_objects import build_objects

        image = prediction.image
        try:
            objects = build_objects(image.source.dataset, prediction.mask,
                                    prediction.probability, self.model.identity,
                                    self.config.kinds, pixels=image.pixels)
        except Exception as exc:            # noqa: BLE001 - a header the builder cannot use
            self._skip(key, _instance(image.path),
                       f"result objects could not be built ({type(exc).__name__})")
            return
        positive = bool(prediction.mask.any())
        self.spool.record(key, _instance(image.path),
                          {"outcome": "predicted", "positive": positive,
                           "probability": prediction.probability}, list(objects.values()))
        self.status.add("processed")
        self.status.add("positives", positive)

    def _skip(self, key: str, instance: str, reason: str) -> None:
        reason = " ".join(reason.split())[:300]         # one line, whatever a decoder said
        log.info("instance %s of study %s skipped: %s", instance[:SHORT], key[:SHORT], reason)
        self.spool.record(key, instance, {"outcome": "skipped", "reason": reason})
        self.status.add("skipped")

    # --- sending ---------------------------------------------------------------------------
    def _send_loop(self) -> None:
        """Every predicted study's objects in one call (one association), then each study
        is finished; a failure waits the backoff and tries them all again."""
        backoff = Backoff(1.0, self.config.max_backoff)
        while not self._stopping.is_set():
            self._work.clear()
            ready = []
            for key in self.spool.keys():
                study = self.spool.study(key) or {}
                if study.get("state") == "sent":
                    self._expire(key, study)
                elif study.get("state") == "predicted":
                    ready.append(key)
            try:
                self.sender.send([p for key in ready for p in self.spool.outbox(key)],
                                 self._acknowledged)
            except (SendError, OSError) as exc:
                wait = backoff.next_wait()
                log.warning("sending failed for %d stud%s (%s); next attempt in %.0f s",
                            len(ready), "y" if len(ready) == 1 else "ies", exc, wait)
                self.status.add("failed")
                self._stopping.wait(wait)
                continue
            backoff.reset()
            for key in ready:
                self._finish(key)
            self._work.wait(0.5)

    def _acknowledged(self, path: str) -> None:
        self.spool.acknowledge(path)
        self.status.add("sent")

    def _finish(self, key: str) -> None:
        with self.spool.lock(key):
            study = self.spool.study(key) or {}
            if study.get("state") != "predicted" or self.spool.outbox(key):
                return                      # new instances came, or objects are left
            study = self.spool.set_state(key, "sent", sent_at=time.time())
        outcomes = self.spool.outcomes(key)
        predicted = [o for o in outcomes if o["outcome"] == "predicted"]
        latency = f"{study['sent_at'] - study['last_at']:.1f} s" if "last_at" in study else "?"
        log.info("study %s answered: %d image(s), %d positive, %d skipped, %d object(s), "
                 "latency %s", key[:SHORT], len(predicted), sum(o["positive"] for o in predicted),
                 len(outcomes) - len(predicted), sum(len(o["objects"]) for o in outcomes), latency)
        self.status.add("studies_answered")
        self._expire(key, study)

    def _expire(self, key: str, study: dict) -> None:
        if time.time() - study.get("sent_at", 0) >= self.config.retention_seconds:
            self.spool.remove(key)

    def _status_loop(self) -> None:
        while not self._stopping.wait(1.0):
            keys = self.spool.keys()
            self.status.set(pending_studies=sum(
                (self.spool.study(k) or {}).get("state") != "sent" for k in keys))
            self.status.flush()


def _instance(path: str) -> str:
    """The instance key of a spooled file (``in/<key>.dcm``)."""
    return os.path.basename(str(path))[:-len(".dcm")]
