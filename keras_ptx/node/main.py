"""``bin/serve-dicom`` put together: settings checked, model loaded, node run until a signal."""
from __future__ import annotations

import logging
import signal
import threading

from keras_ptx.node.config import NodeConfig, NodeError, Tls, parse_destination

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def serve(*, model, model_server, tta, engine, ae_title, host, port, allowed, allow_any, spool,
          send_to, stow, calling_ae, quiet_seconds, retention_seconds, objects, tls,
          max_backoff) -> None:
    """Check everything the user gave before loading the model, then serve until SIGTERM or
    SIGINT; the node finishes its current step and writes its status before it exits."""
    tls = _tls(*tls)
    config = NodeConfig(
        ae_title=ae_title, host=host, port=port, spool=spool, allowed=tuple(allowed),
        allow_any=allow_any, destination=parse_destination(send_to) if send_to else None,
        stow_url=stow, quiet_seconds=quiet_seconds, retention_seconds=retention_seconds,
        kinds=tuple(k.strip().lower() for k in objects.split(",") if k.strip()), tls=tls,
        max_backoff=max_backoff)
    log_without_phi()
    from keras_ptx.fileio import check_output
    from keras_ptx.node import receiver, sender
    from keras_ptx.node.builder import ProcessBuilder
    from keras_ptx.node.model import open_model
    from keras_ptx.node.sender_process import ProcessSender
    from keras_ptx.node.service import Node

    destination = (config.destination, stow, calling_ae or ae_title, tls)
    described = str(sender.open_sender(*destination))  # TLS files checked before the model
    check_output(spool, "--spool", {"--model": list(model)})
    backend = open_model(tuple(model), model_server, tta, engine)
    backend.warm_up()
    out = ProcessSender(described, sender.open_sender, *destination)
    builder = ProcessBuilder(backend.identity, config.kinds)
    node = Node(config, backend, out,
                receiver.server_tls(tls.cert, tls.key, tls.ca) if tls else None, builder)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    node.start()
    try:
        stop.wait()
    finally:
        logging.getLogger("keras_ptx.node").info("stopping")
        node.stop()
        out.stop()
        builder.stop()


def log_without_phi() -> None:
    """The node's own lines (INFO: no PHI by construction) and other libraries' errors only:
    pynetdicom, highdicom and pydicom write UIDs and headers at INFO and in warnings."""
    logging.basicConfig(level=logging.ERROR, format=LOG_FORMAT)
    logging.captureWarnings(True)
    logging.getLogger("keras_ptx.node").setLevel(logging.INFO)


def _tls(cert, key, ca) -> Tls | None:
    given = [v for v in (cert, key, ca) if v]
    if not given:
        return None
    if len(given) != 3:
        raise NodeError("TLS needs all of --tls-cert, --tls-key and --tls-ca")
    return Tls(cert, key, ca)
