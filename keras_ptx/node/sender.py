"""Sending result objects to the destination: C-STORE (pynetdicom SCU) or STOW-RS
(dicomweb-client). ``send(paths, acknowledged)`` calls ``acknowledged(path)`` for each object
the destination confirmed, in order, and raises :class:`SendError` at the first that failed
(the rest stay unsent, for the next attempt). :class:`Backoff` spaces the attempts.
"""
from __future__ import annotations

import ssl
from typing import Callable

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from keras_ptx.node.config import Destination

# C-STORE statuses that mean stored: success and the three warnings (PS3.4 B.2.3)
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class SendError(Exception):
    """The destination did not take an object; the message says how (no PHI)."""


def client_tls(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """A client context that presents ``cert`` and checks the server against ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.load_cert_chain(cert, key)
    return context


class CStoreSender:
    """One association per call, proposing only the objects' SOP classes (far below the
    128-context limit), each in the object's own transfer syntax and the two uncompressed."""

    def __init__(self, destination: Destination, calling_ae: str,
                 tls: ssl.SSLContext | None = None, timeout: float = 30.0):
        self.destination, self.calling_ae, self.tls, self.timeout = \
            destination, calling_ae, tls, timeout

    def __str__(self):
        return f"C-STORE to {self.destination}"

    def send(self, paths: list[str], acknowledged: Callable[[str], None]) -> None:
        if not paths:
            return
        datasets = [pydicom.dcmread(path) for path in paths]
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        contexts: dict[str, set] = {}
        for ds in datasets:
            contexts.setdefault(ds.SOPClassUID, set()).add(ds.file_meta.TransferSyntaxUID)
        for sop_class, syntaxes in contexts.items():
            ae.add_requested_context(sop_class, sorted(
                syntaxes | {ExplicitVRLittleEndian, ImplicitVRLittleEndian}))
        where = self.destination
        tls_args = (self.tls, where.host) if self.tls else None
        assoc = ae.associate(where.host, where.port, ae_title=where.ae_title, tls_args=tls_args)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted \
                else "no answer"
            raise SendError(f"association with {where} failed ({why})")
        try:
            for path, ds in zip(paths, datasets):
                status = assoc.send_c_store(ds)
                if "Status" not in status:
                    raise SendError(f"{where}: no C-STORE response (connection lost or timed "
                                    f"out)")
                if status.Status not in STORED:
                    raise SendError(f"{where}: C-STORE status 0x{status.Status:04X}")
                acknowledged(path)
        finally:
            if assoc.is_established:
                assoc.release()


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
