"""Sending result objects to the destination: C-STORE (pynetdicom SCU) or STOW-RS
(dicomweb-client). ``send(paths, acknowledged)`` calls ``acknowledged(path)`` for each object
the destination confirmed, in order, and raises :class:`SendError` at the first that failed
(the rest stay unsent, for the next attempt); ``close()`` ends what a sender keeps open
between calls. :class:`Backoff` spaces the attempts. A sender is used by one thread.
"""
from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Callable

import pydicom
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config

from keras_ptx.node.config import Destination, Tls

# C-STORE statuses that mean stored: success and the three warnings (PS3.4 B.2.3)
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class SendError(Exception):
    """The destination did not take an object; the message says how (no PHI)."""


def failure_reason(exc: Exception) -> str:
    """What a failed send says in the log: the message of a SendError or an OS error (no PHI),
    only the type of anything else (whose message may quote a header)."""
    return str(exc) if isinstance(exc, (SendError, OSError)) else type(exc).__name__


def open_sender(destination: Destination | None, stow_url: str | None, calling_ae: str,
                tls: Tls | None):
    """The C-STORE sender to ``destination`` (over TLS when ``tls``), else the STOW-RS one to
    ``stow_url``."""
    if destination is not None:
        return CStoreSender(destination, calling_ae,
                            client_tls(tls.cert, tls.key, tls.ca) if tls else None)
    return StowSender(stow_url)


def client_tls(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """A client context that presents ``cert`` and checks the server against ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.load_cert_chain(cert, key)
    return context


class ReactorCheckpoint:
    """What an association's reactor thread waits at (pynetdicom 3's ``_reactor_checkpoint``:
    ``set``, ``clear``, ``wait``), telling whether the reactor is blocked there.

    A ``send_*`` method pauses the reactor so that it does not take the peer's response off
    the queue: it clears the event and waits until the reactor says it is paused, which the
    reactor says just *before* it waits. A reactor that passed the event while it was still
    set and was descheduled before saying otherwise then takes the response itself ("Received
    unexpected C-STORE service message"), and the C-STORE waits out the DIMSE timeout (30 s
    stalls in the node's benchmark under load, BENCHMARKS.md).
    :meth:`hold` returns once the reactor is blocked, so the send that follows is safe."""

    def __init__(self):
        self._cond = threading.Condition()
        self._open, self._opened = True, 0              # is set; how many times it was set
        self._waiting: list[int] = []                   # each waiter's count at its start

    def set(self) -> None:
        with self._cond:
            self._open, self._opened = True, self._opened + 1
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._open = False

    def is_set(self) -> bool:
        return self._open

    def wait(self, timeout: float | None = None) -> bool:
        """As ``threading.Event.wait``: True once set, even if cleared again since."""
        with self._cond:
            if self._open:
                return True
            opened = self._opened
            self._waiting.append(opened)
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._opened != opened, timeout)
            finally:
                self._waiting.remove(opened)

    def hold(self, reactor: threading.Thread, timeout: float = 10.0) -> None:
        """Close the checkpoint and return once ``reactor`` is blocked at it (or has ended,
        or ``timeout`` passed: the send then fails or succeeds on its own)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._open = False
            # a waiter counted before the last set() is on its way out: not blocked
            while self._opened not in self._waiting and reactor.is_alive() \
                    and time.monotonic() < deadline:
                self._cond.wait(0.05)


class CStoreSender:
    """One association kept open across calls until ``close()``, proposing the SOP
    classes of the objects sent so far (far below the 128-context limit), each in the
    objects' own transfer syntaxes and the two uncompressed; a call with a new class or
    syntax associates again. An object whose own syntax was accepted is sent from its file
    as it is (pynetdicom's chunked sending: no decoding and encoding again). Each C-STORE
    has its own Message ID and waits until the association's reactor is held
    (:class:`ReactorCheckpoint`)."""

    def __init__(self, destination: Destination, calling_ae: str,
                 tls: ssl.SSLContext | None = None, timeout: float = 30.0):
        self.destination, self.calling_ae, self.tls, self.timeout = \
            destination, calling_ae, tls, timeout
        self._proposed: dict[str, set[str]] = {}        # SOP class -> transfer syntaxes
        self._assoc = self._checkpoint = None
        self._message_id = 0
        _config.STORE_SEND_CHUNKED_DATASET = True       # a path is sent as its file holds it

    def __str__(self):
        return f"C-STORE to {self.destination}"

    def send(self, paths: list[str], acknowledged: Callable[[str], None]) -> None:
        if not paths:
            return
        metas = [read_file_meta_info(path) for path in paths]
        wanted = {(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas}
        if any(syntax not in self._proposed.get(sop_class, ()) for sop_class, syntax in wanted):
            for sop_class, syntax in wanted:
                self._proposed.setdefault(sop_class, {ExplicitVRLittleEndian,
                                                      ImplicitVRLittleEndian}).add(syntax)
            self.close()
        assoc = self._association()
        accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0]))
                    for c in assoc.accepted_contexts}
        where = self.destination
        for path, meta in zip(paths, metas):
            sop_class = str(meta.MediaStorageSOPClassUID)
            if (sop_class, str(meta.TransferSyntaxUID)) in accepted:
                what = path
            elif any(c == sop_class for c, _ in accepted):
                what = pydicom.dcmread(path)                    # converted by pynetdicom
            else:
                raise SendError(f"{where} accepted no presentation context for "
                                f"{getattr(meta.MediaStorageSOPClassUID, 'name', sop_class)}")
            self._message_id = self._message_id % 0xFFFF + 1
            self._checkpoint.hold(assoc)
            status = assoc.send_c_store(what, msg_id=self._message_id)
            if "Status" not in status:
                self.close()
                raise SendError(f"{where}: no C-STORE response (connection lost or timed out)")
            if status.Status not in STORED:
                raise SendError(f"{where}: C-STORE status 0x{status.Status:04X}")
            acknowledged(path)

    def close(self) -> None:
        """Release the association, if one is open."""
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None

    def _association(self):
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for sop_class, syntaxes in self._proposed.items():
            ae.add_requested_context(sop_class, sorted(syntaxes))
        where = self.destination
        tls_args = (self.tls, where.host) if self.tls else None
        assoc = ae.associate(where.host, where.port, ae_title=where.ae_title, tls_args=tls_args)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted \
                else "no answer"
            raise SendError(f"association with {where} failed ({why})")
        # An object goes out in several PDUs: with Nagle's algorithm the last segment of each
        # waits for the acknowledgement the destination delays (40 ms per message on Linux).
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._checkpoint = assoc._reactor_checkpoint = ReactorCheckpoint()
        self._assoc, self._message_id = assoc, 0
        return assoc


class StowSender:
    """STOW-RS of all objects in one request to ``url`` (the DICOMweb root, e.g.
    ``http://pacs:8042/dicom-web``); the response's Failed SOP Sequence names refused ones."""

    def __init__(self, url: str, timeout: float = 30.0):
        from dicomweb_client.api import DICOMwebClient

        self.url = url
        self.client = DICOMwebClient(url=url, timeout=timeout)

    def __str__(self):
        return f"STOW-RS to {self.url}"

    def send(self, paths: list[str], acknowledged: Callable[[str], None]) -> None:
        if not paths:
            return
        datasets = [pydicom.dcmread(path) for path in paths]
        try:
            answer = self.client.store_instances(datasets)
        except Exception as exc:        # noqa: BLE001 - requests' and the client's errors
            raise SendError(f"STOW-RS to {self.url} failed ({type(exc).__name__})") from None
        failed = {str(item.get("ReferencedSOPInstanceUID", ""))
                  for item in (answer or {}).get("FailedSOPSequence", [])}
        for path, ds in zip(paths, datasets):
            if str(ds.SOPInstanceUID) not in failed:
                acknowledged(path)
        if failed:
            raise SendError(f"STOW-RS to {self.url}: {len(failed)} object(s) refused")

    def close(self) -> None:
        """Nothing is kept open between requests."""


class Backoff:
    """Waits that double after each failure, from ``first`` up to ``longest`` seconds;
    :meth:`reset` after a success."""

    def __init__(self, first: float = 1.0, longest: float = 60.0):
        self.first, self.longest = first, longest
        self.failures = 0

    def next_wait(self) -> float:
        self.failures += 1
        return min(self.longest, self.first * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0
