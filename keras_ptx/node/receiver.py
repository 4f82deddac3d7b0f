"""The node's DICOM Storage SCP (pynetdicom): C-ECHO, and C-STORE of every storage SOP class.

What it accepts: each storage SOP class pynetdicom knows (``AllStoragePresentationContexts``)
in every transfer syntax pydicom can decode (:func:`decodable_syntaxes`: the uncompressed
ones, JPEG Baseline, Extended and Lossless, JPEG-LS, JPEG 2000, RLE). An acceptor may support
any number of contexts; the 128-context limit binds what one peer proposes per association,
which senders handle (storescu ``-R`` proposes only its files' classes). Non-image classes (SEG,
SR) are accepted too, so that the node can say why it skips them.

Who gets in: only the calling AE titles of ``allowed`` (others are rejected at association,
A-ASSOCIATE-RJ "calling AE title not recognised", and logged); with a TLS context, only over
TLS. The C-STORE handler hands each dataset to ``on_store(event) -> status``
(:meth:`keras_ptx.node.service.Node.on_store`), which answers only after the spool holds it.
"""
from __future__ import annotations

import logging
import ssl
import weakref

from pydicom.pixels import get_decoder
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

log = logging.getLogger("keras_ptx.node")


def decodable_syntaxes() -> list[str]:
    """Transfer syntaxes whose pixel data this pydicom installation decodes."""
    found = []
    for uid in AllTransferSyntaxes:
        try:
            if get_decoder(uid).is_available:
                found.append(str(uid))
        except NotImplementedError:
            pass
    return found


def server_tls(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """A server context that presents ``cert`` and requires client certificates from ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


# The largest PDU the node takes (pynetdicom's default is 16 kB): a sender may then put a 200 kB
# radiograph in one PDU, not thirteen, each a round of Python work (node 2-3% faster with
# storescu, BENCHMARKS.md)
MAX_PDU = 2 ** 20


def make_scp(ae_title: str, allowed: tuple[str, ...], on_store) -> tuple[AE, list]:
    """The acceptor AE and its event handlers; start with :func:`start`."""
    ae = AE(ae_title=ae_title)
    syntaxes = decodable_syntaxes()
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, syntaxes)
    ae.add_supported_context(Verification)
    ae.require_calling_aet = list(allowed)
    ae.maximum_associations = 16
    ae.maximum_pdu_size = MAX_PDU
    ae.network_timeout = ae.dimse_timeout = ae.acse_timeout = 60

    def refused(event):
        caller = event.assoc.requestor.ae_title
        why = "calling AE title not on the allow-list" if allowed and caller not in allowed \
            else "association refused"
        log.warning("association from %s refused: %s (calling AE %r)",
                    event.assoc.requestor.address, why, caller)

    def aborted(event):
        log.warning("association from %s aborted", event.assoc.requestor.address)

    requested = weakref.WeakSet()           # connections that sent an association request

    def closed(event):
        if event.assoc not in requested:
            log.warning("connection from %s closed without an association request: not a "
                        "DICOM stream", event.assoc.requestor.address)

    handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_REJECTED, refused),
                (evt.EVT_ABORTED, aborted), (evt.EVT_REQUESTED, lambda e: requested.add(e.assoc)),
                (evt.EVT_CONN_CLOSE, closed)]
    return ae, handlers


def start(ae: AE, handlers: list, host: str, port: int, tls: ssl.SSLContext | None = None):
    """Listen on ``host:port`` in background threads; returns the server (``.shutdown()``)."""
    return ae.start_server((host, port), block=False, evt_handlers=handlers, ssl_context=tls)
