"""The node's receiving side without a model or a PACS: real pynetdicom associations into a
node running in this process, its spool on a real (and, for the full disk, a tiny tmpfs) disk.

The receiving tests answer no study (the quiet period is an hour), the pipeline tests a
scripted model's; tests/test_node_orthanc.py runs
the whole path against Orthanc and dcmtk.
"""
import dataclasses
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from keras_ptx.node.config import Destination, NodeConfig, NodeError, parse_destination
from keras_ptx.node.receiver import server_tls
from keras_ptx.node.sender import Backoff, CStoreSender, client_tls
from keras_ptx.node.service import Node
from keras_ptx.node.spool import Spool, digest
from keras_ptx.results.dicom_objects import encode
from keras_ptx.inference.prediction import ModelIdentity

HOST = "127.0.0.1"


class Unanswering:
    """The model slot of a node whose instances stay pending in these tests: it is handed
    them (predicted early, while their study waits) and answers none."""
    identity = ModelIdentity(model="unanswering")
    batch_size = 8

    def results(self, files, read=None):
        return iter(())


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _radiograph(side=64, study="1.2.826.0.1.3680043.10.9999.7"):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, study + ".1"
    ds.PatientName, ds.PatientID, ds.Modality = "Test^Patient", "P1", "CR"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.zeros((side, side), np.uint8).tobytes()
    return ds


@pytest.fixture
def node_at(tmp_path):
    """Start nodes (spool, **settings) in this process; all stopped and the umask restored."""
    nodes, umask = [], os.umask(0o022)
    os.umask(umask)

    def start(spool, tls=None, **settings):
        config = NodeConfig(**{"ae_title": "KPTX", "port": _free_port(), "spool": str(spool),
                               "allowed": ("PACS",), "destination": Destination("X", HOST, 9),
                               "quiet_seconds": 3600, **settings})
        node = Node(config, Unanswering(), CStoreSender(config.destination, "KPTX"), tls)
        node.start()
        nodes.append(node)
        return node
    yield start
    for node in nodes:
        node.stop()
    os.umask(umask)


def _store(port, ds, calling="PACS", tls=None):
    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, port, ae_title="KPTX", tls_args=tls)
    if not assoc.is_established:
        return None
    try:
        return assoc.send_c_store(ds).Status
    finally:
        assoc.release()


def test_an_instance_is_on_the_disk_privately_before_success(node_at, tmp_path):
    node = node_at(tmp_path / "spool")
    ds = _radiograph()
    assert _store(node.config.port, ds) == 0x0000
    key, instance = digest(ds.StudyInstanceUID), digest(ds.SOPInstanceUID)
    path = node.spool.instance_file(key, instance)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert node.spool.study(key)["state"] == "received"
    assert node.spool.pending(key) == [instance]
    import pydicom
    assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
    names = " ".join(os.listdir(node.spool.path(key)) + os.listdir(node.spool.path(key, "in")))
    assert ds.StudyInstanceUID not in names and ds.SOPInstanceUID not in names


def test_the_node_takes_large_pdus(node_at, tmp_path):
    from keras_ptx.node.receiver import MAX_PDU

    node = node_at(tmp_path / "spool")
    ae = AE(ae_title="PACS")
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, node.config.port, ae_title="KPTX")
    try:
        assert assoc.is_established and assoc.acceptor.maximum_length == MAX_PDU
    finally:
        assoc.release()


def test_an_ae_title_not_on_the_list_is_refused_at_association(node_at, tmp_path):
    node = node_at(tmp_path / "spool")
    assert _store(node.config.port, _radiograph(), calling="INTRUDER") is None
    assert _store(node.config.port, _radiograph(), calling="PACS") == 0x0000


def test_a_full_disk_answers_out_of_resources_and_leaves_nothing_half_written(node_at,
                                                                              tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        node = node_at(mount / "spool")
        filler = mount / "filler"
        free = shutil.disk_usage(mount).free
        filler.write_bytes(bytes(free - 64 * 1024))          # 64 KB left
        big = _radiograph(side=400)                          # 160 KB of pixels
        assert _store(node.config.port, big) == 0xA700
        leftovers = [f for _, _, files in os.walk(mount / "spool" / "studies") for f in files
                     if not f.endswith("study.json")]
        assert leftovers == []
        assert node.spool.pending(digest(big.StudyInstanceUID)) == []
        filler.unlink()
        assert _store(node.config.port, big) == 0x0000       # room again: stored
        assert node.spool.pending(digest(big.StudyInstanceUID)) == [digest(big.SOPInstanceUID)]
        node.stop()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_an_answered_instance_is_not_answered_again_and_progress_is_read_from_files(tmp_path):
    spool = Spool(tmp_path / "spool")
    key, new = spool.store("1.2.3", "1.2.3.4", b"DICM")
    assert new and spool.pending(key) == [digest("1.2.3.4")]
    spool.record(key, digest("1.2.3.4"), {"outcome": "predicted", "positive": False},
                 [encode(_radiograph())])
    assert spool.pending(key) == [] and len(spool.outbox(key)) == 1
    assert spool.store("1.2.3", "1.2.3.4", b"DICM") == (key, False)
    spool.acknowledge(spool.outbox(key)[0])
    assert spool.outbox(key) == [] and os.listdir(spool.path(key, "sent"))
    spool.remove(key)
    assert spool.keys() == [] and os.listdir(spool.trash) == []


def test_counters_continue_after_a_restart(node_at, tmp_path):
    node = node_at(tmp_path / "spool")
    assert _store(node.config.port, _radiograph()) == 0x0000
    node.stop()
    again = node_at(tmp_path / "spool")
    assert _store(again.config.port, _radiograph()) == 0x0000
    again.status.flush()
    import json
    assert json.loads((tmp_path / "spool" / "status.json").read_text())["received"] == 2


def _certificates(folder):
    """A CA and a certificate it signed for 127.0.0.1 (openssl)."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "node.pem", "-days", "2", "-extfile", "ext.cnf")
    return [str(folder / name) for name in ("node.pem", "node.key", "ca.pem")]


def test_tls_lets_in_only_peers_with_a_certificate(node_at, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    cert, key, ca = _certificates(tmp_path)
    node = node_at(tmp_path / "spool", tls=server_tls(cert, key, ca))
    assert _store(node.config.port, _radiograph(), tls=(client_tls(cert, key, ca), HOST)) == 0
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    plain = ae.associate(HOST, node.config.port, ae_title="KPTX")
    assert not plain.is_established


def test_settings_are_checked_with_the_option_named():
    with pytest.raises(NodeError, match="--allow"):
        NodeConfig(ae_title="KPTX", port=1, spool="s", allowed=(), destination=None,
                   stow_url="http://x")
    with pytest.raises(NodeError, match="exactly one of --send-to"):
        NodeConfig(ae_title="KPTX", port=1, spool="s", allowed=("A",))
    with pytest.raises(NodeError, match="AE title"):
        NodeConfig(ae_title="A" * 17, port=1, spool="s", allowed=("A",), stow_url="http://x")
    assert parse_destination("PACS@10.0.0.5:104") == Destination("PACS", "10.0.0.5", 104)
    with pytest.raises(NodeError, match="AE@host:port"):
        parse_destination("PACS:104")


def test_backoff_doubles_to_its_limit_and_resets():
    backoff = Backoff(1.0, 5.0)
    assert [backoff.next_wait() for _ in range(5)] == [1, 2, 4, 5, 5]
    backoff.reset()
    assert backoff.next_wait() == 1


def test_a_port_in_use_is_a_clear_error(node_at, tmp_path):
    first = node_at(tmp_path / "a")
    with pytest.raises(NodeError, match=f"--port {first.config.port}: cannot listen"):
        node_at(tmp_path / "b", port=first.config.port)


# --- the pipeline: a scripted model, a recording sender -------------------------------------
class ScriptedModel:
    """Predicts every file as negative, ``batch`` files at a time (rounds of ``batch_size``);
    calls ``before(path)`` before each file, raises once for paths in ``fail_once`` and rejects
    those in ``reject`` at once, ahead of its batch's predictions (as DicomPredictor does)."""
    identity = ModelIdentity(model="scripted")
    batch_size = batch = 1

    def __init__(self, before=lambda path: None, fail_once=(), reject=()):
        self.before, self.fail_once, self.reject = before, set(fail_once), set(reject)
        self.calls = []

    def results(self, files, read):
        from keras_ptx.inference.prediction import Prediction, Rejection

        self.calls.append([os.path.basename(f) for f in files])
        batch = []
        for path in files:
            self.before(path)
            if path in self.fail_once:
                self.fail_once.discard(path)
                raise ConnectionError("model server down")
            if path in self.reject:
                yield Rejection(path, "ViewPosition LL: not a frontal view")
                continue
            image = read(path)
            batch.append(Prediction(image=image, mask=np.zeros(image.pixels.shape, bool),
                                    probability=0.1))
            if len(batch) == self.batch:
                yield from batch
                batch = []
        yield from batch


class RecordingSender:
    """Acknowledges every object; ``sent``: study keys in the order their objects went."""

    def __init__(self):
        self.sent, self.closed = [], 0

    def send(self, paths, acknowledged):
        for path in paths:
            self.sent.append(os.path.basename(os.path.dirname(os.path.dirname(path))))
            acknowledged(path)

    def close(self):
        self.closed += 1


def _synthetic(folder, k, i):
    """Image ``i`` of study ``k``: a small frontal chest radiograph, uncompressed."""
    from keras_ptx.synthetic.dicom_writer import write_dicom

    study = f"1.2.826.0.1.3680043.10.9999.{50 + k}"
    return study, write_dicom(folder / f"{k}-{i}.dcm", np.full((48, 40), 60 + i, np.uint8),
                              image_id=f"{study}.{i + 1}", study_uid=study,
                              series_uid=f"{study}.0", patient_id="P1",
                              patient_name="Test^Patient", view="PA",
                              transfer_syntax="explicit_le")


def _spool_studies(spool_dir, counts):
    """Studies of ``counts[k]`` synthetic radiographs each, stored as the receiver stores them;
    returns the study keys in the order a starting node takes them (all quiet since its
    start: by key)."""
    spool, keys = Spool(spool_dir), []
    for k, n in enumerate(counts):
        for i in range(n):
            study, path = _synthetic(spool_dir.parent, k, i)
            keys.append(spool.store(study, f"{study}.{i + 1}", path.read_bytes())[0])
    return sorted(set(keys))


def _pipeline(tmp_path, model, counts, sender=None, **settings):
    keys = _spool_studies(tmp_path / "spool", counts)
    config = NodeConfig(**{"ae_title": "KPTX", "port": _free_port(),
                           "spool": str(tmp_path / "spool"), "allowed": ("PACS",),
                           "destination": Destination("X", HOST, 9), "quiet_seconds": 0,
                           "max_backoff": 1, **settings})
    node = Node(config, model, sender or RecordingSender())
    return node, keys


def _wait(predicate, timeout=60):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the time limit"
        time.sleep(0.05)


def _run_until(node, predicate, timeout=60):
    """Start ``node``, wait for ``predicate``, stop it (also when the wait fails)."""
    node.start()
    try:
        _wait(predicate, timeout)
    finally:
        node.stop()


def test_a_study_is_sent_while_later_studies_are_predicted(tmp_path):
    """Four one-image studies due at once: rounds of one model batch, and the first study's
    objects leave before the last study's prediction starts."""
    import threading

    first_sent = threading.Event()
    seen_before_last = []
    sender = RecordingSender()
    model = ScriptedModel()
    node, keys = _pipeline(tmp_path, model, [1, 1, 1, 1], sender)
    last = node.spool.instance_file(keys[-1], node.spool.pending(keys[-1])[0])

    def before(path):
        if path == last:
            seen_before_last.append(first_sent.wait(30))
    model.before = before
    real_send = sender.send

    def send(paths, acknowledged):
        real_send(paths, acknowledged)
        if keys[0] in sender.sent:
            first_sent.set()
    sender.send = send
    _run_until(node, lambda: node.status.counts["studies_answered"] == 4)
    assert seen_before_last == [True]
    assert [len(call) for call in model.calls] == [1, 1, 1, 1]
    assert sender.sent == [k for k in keys for _ in "SEG SR".split()]     # study by study


def test_a_failed_round_keeps_recorded_outcomes_and_answers_the_study_once(tmp_path):
    """The model fails on a study's second image: the first image's outcome stays, the
    study is not predicted or sent until the second has one, and then only it is predicted
    again."""
    model = ScriptedModel()
    node, keys = _pipeline(tmp_path, model, [2])
    model.batch_size = 2
    files = [node.spool.instance_file(keys[0], i) for i in node.spool.pending(keys[0])]
    second = files[1]
    model.fail_once = {second}
    sender = node.delivery.sender
    _run_until(node, lambda: node.status.counts["studies_answered"] == 1)
    assert model.calls == [[os.path.basename(f) for f in files], [os.path.basename(second)]]
    assert len(sender.sent) == 4 and node.status.counts["failed"] == 1
    assert node.status.counts["processed"] == 2


def test_a_restart_sends_a_predicted_study_and_does_not_predict_it_again(tmp_path):
    """A node killed after the study was predicted (its objects in out/): the next one sends
    them without calling the model."""
    first = _pipeline(tmp_path, ScriptedModel(), [1])[0]
    key = first.spool.keys()[0]
    instance = first.spool.pending(key)[0]
    from keras_ptx.data.dicom import read_dicom
    from keras_ptx.inference.prediction import Prediction

    image = read_dicom(first.spool.instance_file(key, instance))
    first._answer(key, instance, Prediction(image=image, mask=np.zeros(image.pixels.shape, bool),
                                            probability=0.1))
    first.spool.set_state(key, "predicted")
    model, sender = ScriptedModel(), RecordingSender()
    config = first.config
    again = Node(config, model, sender)
    _run_until(again, lambda: again.status.counts["studies_answered"] == 1)
    assert model.calls == [] and sender.sent == [key, key]


def test_the_sender_keeps_one_association_and_sends_files_as_they_are(tmp_path):
    """Two calls, one association (released by close()); each object arrives as its file
    holds it."""
    from pynetdicom import evt
    from pynetdicom.sop_class import ComputedRadiographyImageStorage as CR

    received, associations = [], []
    scp = AE(ae_title="DEST")
    scp.add_supported_context(CR, ExplicitVRLittleEndian)

    def on_store(event):
        received.append(event.encoded_dataset(include_meta=False))
        return 0x0000
    port = _free_port()
    server = scp.start_server((HOST, port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, on_store), (evt.EVT_ACCEPTED, lambda e: associations.append(1))])
    try:
        paths = []
        for k in range(3):
            paths.append(str(tmp_path / f"{k}.dcm"))
            _radiograph().save_as(paths[-1], enforce_file_format=True)
        sender, acknowledged = CStoreSender(Destination("DEST", HOST, port), "KPTX"), []
        sender.send(paths[:2], acknowledged.append)
        sender.send(paths[2:], acknowledged.append)
        assert len(associations) == 1 and acknowledged == paths
        # no 40 ms wait for a delayed acknowledgement at the end of each message
        assert sender._assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP,
                                                          socket.TCP_NODELAY)
        sender.close()
        sender.send(paths[:1], acknowledged.append)
        assert len(associations) == 2
        sender.close()
    finally:
        server.shutdown()
    import pydicom
    for data, path in zip(received, paths):
        whole = open(path, "rb").read()
        assert whole.endswith(data)
        assert pydicom.dcmread(path).SOPInstanceUID in data.decode("latin-1")


def test_the_sending_process_reports_what_was_stored_and_outlives_its_child(tmp_path):
    """The sender runs in a child process: the objects the destination stored are
    acknowledged in order up to a refused one, whose status is the error; a child that died
    is replaced at the next attempt."""
    from pynetdicom import evt
    from pynetdicom.sop_class import ComputedRadiographyImageStorage as CR

    from keras_ptx.node.sender import SendError, open_sender
    from keras_ptx.node.sender_process import ProcessSender

    refused, storing, release = set(), threading.Event(), threading.Event()
    scp = AE(ae_title="DEST")
    scp.add_supported_context(CR, ExplicitVRLittleEndian)

    def on_store(event):
        storing.set()
        release.wait(10)
        return 0xA700 if event.request.AffectedSOPInstanceUID in refused else 0x0000
    port = _free_port()
    server = scp.start_server((HOST, port), block=False, evt_handlers=[(evt.EVT_C_STORE,
                                                                        on_store)])
    paths, uids = [], []
    for k in range(3):
        ds = _radiograph()
        paths.append(str(tmp_path / f"{k}.dcm"))
        uids.append(ds.SOPInstanceUID)
        ds.save_as(paths[-1], enforce_file_format=True)
    refused.add(uids[1])
    sender = ProcessSender("test", open_sender, Destination("DEST", HOST, port), None, "KPTX",
                           None)
    try:
        acknowledged, errors = [], []

        def send_first():
            try:
                sender.send(paths[:1], acknowledged.append)
            except SendError as exc:
                errors.append(str(exc))
        attempt = threading.Thread(target=send_first)
        attempt.start()
        assert storing.wait(30)                 # the child is waiting for the destination
        os.kill(sender.child.pid, signal.SIGKILL)
        attempt.join(30)
        assert acknowledged == [] and "the sending process ended" in errors[0]
        release.set()
        with pytest.raises(SendError, match="C-STORE status 0xA700"):
            sender.send(paths, acknowledged.append)
        assert acknowledged == paths[:1]
        refused.clear()
        first = sender.child.pid
        os.kill(first, signal.SIGKILL)
        _wait(lambda: not sender.child.alive)
        sender.send(paths[1:], acknowledged.append)
        assert sender.child.pid != first
        assert acknowledged == paths
    finally:
        sender.stop()
        server.shutdown()


def test_a_late_reactor_does_not_take_the_c_store_response(tmp_path, monkeypatch):
    """pynetdicom's reactor, descheduled just after passing its checkpoint, takes the
    response a C-STORE waits for when it arrives before the sending thread asks for it (the
    send then times out); CStoreSender holds the reactor at the checkpoint first. Both
    threads' delays are simulated: the reactor sleeps 30 ms each time it passes, the sender
    60 ms before it waits for a response."""
    from pynetdicom import evt
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.sop_class import ComputedRadiographyImageStorage as CR

    from keras_ptx.node import sender as sending

    class LateReactor(sending.ReactorCheckpoint):
        def wait(self, timeout=None):
            passed = super().wait(timeout)
            time.sleep(0.03)
            return passed
    get_msg = DIMSEServiceProvider.get_msg

    def late_get_msg(self, block=False):
        if block:
            time.sleep(0.06)
        return get_msg(self, block)
    monkeypatch.setattr(sending, "ReactorCheckpoint", LateReactor)
    monkeypatch.setattr(DIMSEServiceProvider, "get_msg", late_get_msg)
    scp = AE(ae_title="DEST")
    scp.add_supported_context(CR, ExplicitVRLittleEndian)
    port = _free_port()
    server = scp.start_server((HOST, port), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    paths = []
    for k in range(8):
        paths.append(str(tmp_path / f"{k}.dcm"))
        _radiograph().save_as(paths[-1], enforce_file_format=True)
    try:
        acknowledged = []
        sender = sending.CStoreSender(Destination("DEST", HOST, port), "KPTX", timeout=2)
        with monkeypatch.context() as pynetdicom_as_is:     # clear only, as send_c_store does
            pynetdicom_as_is.setattr(LateReactor, "hold", lambda self, reactor: self.clear())
            with pytest.raises(sending.SendError, match="no C-STORE response"):
                sender.send(paths, acknowledged.append)
        assert len(acknowledged) < len(paths)
        acknowledged.clear()
        sender.send(paths, acknowledged.append)
        sender.close()
        assert acknowledged == paths
    finally:
        server.shutdown()


def test_an_instance_arriving_after_the_answer_gets_its_own(tmp_path, caplog):
    """A study answered and still in the spool (retention) gets one more instance by C-STORE:
    a second answer covers that instance only, and a resent first instance is not answered
    again."""
    import logging

    import pydicom

    caplog.set_level(logging.INFO, logger="keras_ptx.node")
    node, keys = _pipeline(tmp_path, ScriptedModel(), [1], retention_seconds=3600)
    node.start()
    try:
        _wait(lambda: node.status.counts["studies_answered"] == 1)
        _, later = _synthetic(tmp_path, 0, 1)
        assert _store(node.config.port, pydicom.dcmread(later)) == 0x0000
        _wait(lambda: node.status.counts["studies_answered"] == 2)
        first = pydicom.dcmread(tmp_path / "0-0.dcm")
        assert _store(node.config.port, first) == 0x0000
    finally:
        node.stop()
    lines = [r.getMessage() for r in caplog.records]
    answers = [line for line in lines if " answered: " in line and "already" not in line]
    assert len(answers) == 2 and all(" answered: 1 image(s)" in a for a in answers), answers
    assert sum("already answered: not answered again" in line for line in lines) == 1
    assert node.spool.study(keys[0])["state"] == "sent"
    assert node.spool.pending(keys[0]) == []
    assert len(os.listdir(node.spool.path(keys[0], "sent"))) == 4


def test_a_rejection_ahead_of_its_batch_still_finishes_the_study(tmp_path):
    """The study's last file is rejected before the batch holding its first one has run: the
    study is answered once both have an outcome (one image, one skipped)."""
    model = ScriptedModel()
    node, keys = _pipeline(tmp_path, model, [2])
    model.batch_size = model.batch = 2
    files = [node.spool.instance_file(keys[0], i) for i in node.spool.pending(keys[0])]
    model.reject = {files[1]}
    _run_until(node, lambda: node.status.counts["studies_answered"] == 1, timeout=20)
    assert node.status.counts["processed"] == 1 and node.status.counts["skipped"] == 1
    assert len(node.delivery.sender.sent) == 2


def test_instances_are_predicted_while_their_study_waits_and_answered_once_it_is_quiet(
        tmp_path):
    """A study of two instances in a node with an hour's quiet period: both get their outcome
    (predicted early, one round) and nothing is sent; a node that finds the study quiet sends
    it without predicting it again."""
    model = ScriptedModel()
    node, keys = _pipeline(tmp_path, model, [2], quiet_seconds=3600)
    model.batch_size = model.batch = 2
    sender = node.delivery.sender
    _run_until(node, lambda: node.status.counts["processed"] == 2)
    assert len(model.calls) == 1 and len(model.calls[0]) == 2
    assert node.spool.pending(keys[0]) == [] and node.spool.study(keys[0])["state"] == "received"
    assert sender.sent == []
    model, sender = ScriptedModel(), RecordingSender()
    restarted = Node(node.config, model, sender)    # the quiet period starts again
    _run_until(restarted, lambda: time.sleep(0.5) or True)
    assert model.calls == [] and sender.sent == []
    again = Node(dataclasses.replace(node.config, quiet_seconds=0), model, sender)
    _run_until(again, lambda: again.status.counts["studies_answered"] == 1)
    assert model.calls == [] and sender.sent == [keys[0]] * 4


def test_an_early_round_takes_only_instances_still_pending(tmp_path):
    """Arrivals that have their outcome, or whose file is gone (their study answered and
    deleted, then sent again), are passed over."""
    node, keys = _pipeline(tmp_path, ScriptedModel(), [3], quiet_seconds=3600)
    node.model.batch_size = 8
    first, second, third = node.spool.pending(keys[0])
    node._recover()                                 # the arrival list, no thread started
    node.spool.record(keys[0], first, {"outcome": "skipped", "reason": "test"})
    os.remove(node.spool.instance_file(keys[0], third))
    assert node._due() == [(keys[0], [second], False)]


def test_an_early_round_that_failed_is_tried_again_after_the_backoff(tmp_path):
    """The model fails on an instance predicted early: it is predicted again after the
    backoff (a model server down is not called in a loop), still before its study is due."""
    model = ScriptedModel()
    node, keys = _pipeline(tmp_path, model, [1], quiet_seconds=3600)
    model.fail_once = {node.spool.instance_file(keys[0], node.spool.pending(keys[0])[0])}
    called = []
    model.before = lambda path: called.append(time.monotonic())
    _run_until(node, lambda: node.status.counts["processed"] == 1)
    assert node.status.counts["failed"] == 1 and len(called) == 2
    assert called[1] - called[0] >= 0.9                 # Backoff's first wait: 1 s
    assert node.spool.study(keys[0])["state"] == "received"
