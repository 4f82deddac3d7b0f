"""The node: receive instances, predict them, answer each study once it is quiet, forget it.

Five threads beside pynetdicom's, a pipeline: each stored instance is decoded as it arrives
(:mod:`keras_ptx.node.predecode`); the predictor takes the studies whose quiet period
(``quiet_seconds`` without a new instance) is over, oldest first, in rounds of about one
model batch (a flood of studies does not hold back the first ones), fills a round with room
left with instances of studies still waiting, in the order they came (predicted early: the
network does not idle through a quiet period, and the answer is ready when it ends), and
hands each prediction or rejection to the builder; the builder writes each instance's
outcome (result objects, or the reason it was skipped) and, once a study is quiet and every
instance of it has one, marks it predicted and hands it to the sender
(:class:`~keras_ptx.node.delivery.Delivery`), which sends it while the next studies are
predicted; the housekeeper rewrites ``status.json`` and deletes
sent studies after their retention. Everything they act on is on the disk first
(:mod:`keras_ptx.node.spool`), so a restart after a crash resumes every unfinished study: its
quiet period starts again, instances without an outcome are predicted, unacknowledged objects
are sent (the same objects: their UIDs are derived from the source).

Log lines carry digests of UIDs, counts and reasons; never a name, an ID or a UID.
"""
from __future__ import annotations

import collections
import errno
import logging
import os
import queue
import threading
import time

from keras_ptx.data.eligibility import rejection
from keras_ptx.inference.prediction import Rejection
from keras_ptx.node import receiver
from keras_ptx.node.builder import Builder, ObjectsNotBuilt
from keras_ptx.node.config import NodeConfig, NodeError
from keras_ptx.node.delivery import SHORT, Delivery
from keras_ptx.node.predecode import Predecoded
from keras_ptx.node.sender import Backoff
from keras_ptx.node.spool import Spool, digest
from keras_ptx.node.status import Status

log = logging.getLogger("keras_ptx.node")
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
OUT_OF_RESOURCES, OTHER_RESOURCE_FAILURE, CANNOT_UNDERSTAND = 0xA700, 0xA701, 0xC210
FINISH = "finish"                           # builder job: a study's last outcome was handed over


class Node:
    """``start()`` listens and works in background threads until ``stop()``. The model
    backend gives ``results(files, read)``, ``identity`` and ``batch_size`` (images per round);
    ``builder`` makes the result objects (:mod:`keras_ptx.node.builder`; by default in the
    builder thread)."""

    def __init__(self, config: NodeConfig, model, sender, tls=None, builder=None):
        self.config, self.model, self.sender, self.tls = config, model, sender, tls
        self.builder = builder or Builder(model.identity, config.kinds)
        self.predecoded = Predecoded()
        os.umask(0o077)                     # spool files 0600, folders 0700: they hold PHI
        self.spool = Spool(config.spool)
        self.status = Status(os.path.join(self.spool.root, "status.json"))
        self._quiet_since: dict[str, float] = {}     # waiting study key -> monotonic time its
        # quiet period started (its last instance, a restart, a retry's backoff)
        self._in_flight: set[tuple[str, str]] = set()   # (study, instance) handed to the builder
        self._fresh: collections.deque = collections.deque()   # (study, instance) as stored:
        # predicted early if still pending when a round has room
        self._early_from = 0.0              # no early predictions before (after a failed round)
        self._lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue(maxsize=2 * max(1, model.batch_size))
        self._stopping = threading.Event()
        self.delivery = Delivery(self.spool, self.status, sender, config.retention_seconds,
                                 config.max_backoff, self._stopping)
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
        for target, args in ((self._predict_loop, ()), (self._build_loop, ()),
                             (self.delivery.run, ()), (self._housekeeping_loop, ()),
                             (self.predecoded.run, (self._stopping,))):
            thread = threading.Thread(target=target, args=args, name=target.__name__,
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("listening as %s on %s:%d; sending by %s; model %s; quiet period %.1f s",
                 self.config.ae_title, self.config.host, self.config.port, self.sender,
                 self.model.identity.describe(), self.config.quiet_seconds)

    def stop(self) -> None:
        """Stop listening and working (once; later calls do nothing) and write the status:
        the predictor ends its batch, the builder records what it was handed."""
        self._stopping.set()
        self.delivery.wake()
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        if self._threads:
            predictor, builder, *others = self._threads
            predictor.join(timeout=30)
            self._jobs.put(None)
            for thread in (builder, *others):
                thread.join(timeout=30)
        self._threads = []
        self.status.flush()

    def _recover(self) -> None:
        """Every study in the spool that is not sent is unfinished: resume it."""
        now, unfinished = time.monotonic(), 0
        for key in self.spool.keys():
            study = self.spool.study(key) or {}
            state = study.get("state", "received")
            pending = self.spool.pending(key)
            if not pending and state == "sent":
                self.delivery.retain(key, study.get("sent_at", 0))
                continue
            if not pending and state == "predicted":
                self.delivery.put(key)
            else:   # instances to predict, or all predicted (early) and not yet quiet again
                self._quiet_since[key] = now
                self._fresh.extend((key, instance) for instance in pending)
            unfinished += 1
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
            instance = digest(sop_uid)
            with self._lock:
                self._quiet_since[key] = time.monotonic()
                self._fresh.append((key, instance))
            self.status.add("received")
            self.predecoded.put(self.spool.instance_file(key, instance))
        else:
            log.info("%s already answered: not answered again", where)
        return 0x0000

    # --- predicting ------------------------------------------------------------------------
    def _due(self) -> list[tuple[str, list[str], bool]]:
        """The next round, (study, instances, whether to finish it): the studies whose quiet
        period is over, oldest first, until they hold a model batch of instances (at least
        one study), each with its pending instances not already handed to the builder, taken
        off the waiting list; then, while the round has room, pending instances of studies
        still waiting, in the order they came (not after a failed round's backoff)."""
        now = time.monotonic()
        with self._lock:
            due = sorted((since, key) for key, since in self._quiet_since.items()
                         if now - since >= self.config.quiet_seconds)
        round_, images = [], 0
        for _, key in due:
            if images >= self.model.batch_size:
                break
            with self._lock:
                del self._quiet_since[key]
                busy = {i for k, i in self._in_flight if k == key}
            instances = [i for i in self.spool.pending(key) if i not in busy]
            round_.append((key, instances, True))
            images += len(instances)
        early: dict[str, list[str]] = {}
        while images < self.model.batch_size and now >= self._early_from:
            with self._lock:
                if not self._fresh:
                    break
                key, instance = self._fresh.popleft()
                taken = key not in self._quiet_since or (key, instance) in self._in_flight
            if taken or instance in early.get(key, ()) or not self.spool.is_pending(key, instance):
                continue                    # due (in this round or before), has its outcome, gone
            early.setdefault(key, []).append(instance)
            images += 1
        return round_ + [(key, instances, False) for key, instances in early.items()]

    def _requeue(self, keys, wait: float) -> None:
        """Studies back on the waiting list, due again in ``wait`` seconds."""
        with self._lock:
            for key in keys:
                self._quiet_since.setdefault(
                    key, time.monotonic() - self.config.quiet_seconds + wait)

    def _predict_loop(self) -> None:
        backoff = Backoff(1.0, self.config.max_backoff)
        while not self._stopping.is_set():
            round_ = self._due()
            if not round_:
                self._stopping.wait(0.1)
                continue
            try:
                self._predict_round(round_)
                backoff.reset()
            except _RoundFailed as failed:  # a model server down, a bug: retry
                wait, cause = backoff.next_wait(), failed.__cause__
                studies = failed.unfinished | {key for key, _ in failed.early}
                log.error("%d stud%s: prediction failed (%s: %s); next attempt in %.0f s",
                          len(studies), "y" if len(studies) == 1 else "ies",
                          type(cause).__name__, str(cause)[:200], wait)
                self.status.add("failed")
                self._requeue(failed.unfinished, wait)
                with self._lock:
                    self._fresh.extendleft(reversed(failed.early))
                self._early_from = time.monotonic() + wait

    def _predict_round(self, round_: list[tuple[str, list[str], bool]]) -> None:
        """The round's instances in one stream of batches; each outcome goes to the builder
        as it comes (rejections may come before earlier files' predictions), and the last one
        of a study to finish is followed by a FINISH. Raises _RoundFailed naming the studies
        to finish that were not and the early instances without an outcome."""
        where: dict[str, tuple[str, str]] = {}
        remaining = {key: len(instances) for key, instances, finish in round_ if finish}
        early = {(key, i): None for key, instances, finish in round_ if not finish
                 for i in instances}          # an ordered set
        try:
            for key, instances, finish in round_:
                if finish and not instances:    # outcomes in flight: the FINISH follows them
                    self._jobs.put((FINISH, key))
                for instance in instances:
                    where[self.spool.instance_file(key, instance)] = (key, instance)
            for item in self.model.results(list(where), self.predecoded.read) if where else ():
                path = str(item.path if isinstance(item, Rejection) else item.image.path)
                key, instance = where[path]
                with self._lock:
                    self._in_flight.add((key, instance))
                self._jobs.put((key, instance, item))
                early.pop((key, instance), None)
                if key in remaining:
                    remaining[key] -= 1
                    if remaining[key] == 0:
                        self._jobs.put((FINISH, key))
                if self._stopping.is_set():
                    return                  # the rest stays pending in the spool
        except Exception as exc:            # noqa: BLE001 - the caller retries these studies
            raise _RoundFailed({key for key, n in remaining.items() if n}, list(early)) from exc

    # --- building --------------------------------------------------------------------------
    def _build_loop(self) -> None:
        """Jobs in the order handed: an outcome is written, a FINISH hands its study to the
        sender once nothing of it is pending; ends at ``None`` (from stop())."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job[0] == FINISH:
                self._predicted(job[1])
                continue
            key, instance, item = job
            try:
                self._record(key, instance, item)
            except Exception as exc:        # noqa: BLE001 - a disk full, a bug: retry later
                log.error("instance %s of study %s: outcome not written (%s: %s); next attempt "
                          "in %.0f s", instance[:SHORT], key[:SHORT], type(exc).__name__,
                          str(exc)[:200], self.config.max_backoff)
                self.status.add("failed")
                self._requeue([key], self.config.max_backoff)
            finally:
                with self._lock:
                    self._in_flight.discard((key, instance))

    def _record(self, key: str, instance: str, item) -> None:
        if isinstance(item, Rejection):
            self._skip(key, instance, item.reason)
        else:
            self._answer(key, instance, item)

    def _predicted(self, key: str) -> None:
        """Every instance of the study has an outcome: predicted, to the sender."""
        with self.spool.lock(key):
            if self.spool.pending(key):
                return                      # a new instance came: the study waits again
            state = (self.spool.study(key) or {}).get("state")
            if state == "received":
                self.spool.set_state(key, "predicted", predicted_at=time.time())
            elif state != "predicted":
                return
        self.delivery.put(key)

    def _answer(self, key: str, instance: str, prediction) -> None:
        image = prediction.image
        try:
            objects = self.builder.build(image.source.dataset, prediction.mask,
                                         prediction.probability, pixels=image.pixels)
        except ObjectsNotBuilt as exc:
            self._skip(key, instance, f"result objects could not be built ({exc})")
            return
        positive = bool(prediction.mask.any())
        self.spool.record(key, instance, {"outcome": "predicted", "positive": positive,
                                          "probability": prediction.probability}, objects)
        self.status.add("processed")
        self.status.add("positives", positive)

    def _skip(self, key: str, instance: str, reason: str) -> None:
        reason = " ".join(reason.split())[:300]         # one line, whatever a decoder said
        log.info("instance %s of study %s skipped: %s", instance[:SHORT], key[:SHORT], reason)
        self.spool.record(key, instance, {"outcome": "skipped", "reason": reason})
        self.status.add("skipped")

    # --- housekeeping ----------------------------------------------------------------------
    def _housekeeping_loop(self) -> None:
        while not self._stopping.wait(1.0):
            self.delivery.expire()
            self.status.set(pending_studies=len(self.spool.keys()) - self.delivery.retained)
            self.status.flush()


class _RoundFailed(Exception):
    """A round's stream of predictions broke; ``unfinished``: its studies to finish without a
    FINISH; ``early``: its early (study, instance) pairs without an outcome."""

    def __init__(self, unfinished: set[str], early: list[tuple[str, str]]):
        super().__init__("prediction round failed")
        self.unfinished, self.early = unfinished, early
