"""bin/serve-dicom against real DICOM software: dcmtk's storescu sends, Orthanc stores and
forwards, the node answers into Orthanc (``make test-node``; tests/dicom_services.py).

One Orthanc and one node (test_evaluate_predict's tiny 64x64 B0 run, which bin/predict here
takes from memory and the node loads from its files) serve the module. Images are tiny synthetic radiographs; every check reads what Orthanc stored
through its REST API, or what the node logged and wrote to its status file.
"""
import json
import os
import random
import re
import socket
import subprocess
import threading
import time

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

import dicom_services as services
from dicom_services import HOST, NodeProcess, Orthanc, free_port, storescu, wait_for
from test_evaluate_predict import SIZE, _radiograph, monkeypatch_module, run  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("KERAS_PTX_NODE_TESTS") != "1",
    reason="needs Orthanc and dcmtk: make test-node runs it")]

NODE_AE, ORTHANC_AE = "KPTX", "ORTHANC"
QUIET = 1.0


def _study(folder, study_uid, n, shape=(SIZE, SIZE), seed=0, view="PA", **options):
    from keras_ptx.synthetic.dicom_writer import write_dicom

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_dicom(folder / f"{k}.dcm", _radiograph(rng, shape),
                        image_id=f"{study_uid}.{k + 1}", study_uid=study_uid,
                        series_uid=f"{study_uid}.0", patient_id=f"P{seed}",
                        patient_name="Test^Patient", view=view, **options)
            for k in range(n)]


@pytest.fixture(scope="module")
def site(tmp_path_factory, run):
    """Orthanc and a node that knows it: the node lets ORTHANC and STORESCU in and answers
    to ORTHANC; Orthanc knows the node as ``node``."""
    services.require()
    root = tmp_path_factory.mktemp("site")
    node_port = free_port()
    orthanc = Orthanc(root / "orthanc", {"node": (NODE_AE, node_port),
                                          "storescu": ("STORESCU", 104)}).start()
    spool = root / "spool"
    node = NodeProcess(["--model", str(run), "--ae-title", NODE_AE, "--port", str(node_port),
                        "--allow", ORTHANC_AE, "--allow", "STORESCU", "--spool", str(spool),
                        "--send-to", f"{ORTHANC_AE}@{HOST}:{orthanc.dicom_port}",
                        "--quiet", str(QUIET), "--max-backoff", "2"], root / "node.log")
    node.start(wait_port=node_port)
    yield {"orthanc": orthanc, "node": node, "port": node_port, "spool": spool, "root": root}
    node.stop()
    orthanc.stop()


def _wait_objects(orthanc, study_uid, n, timeout=120):
    """The SEGs and SRs of a study once Orthanc holds ``n`` of each."""
    def ready():
        segs, srs = (orthanc.instances(m, study_uid) for m in ("SEG", "SR"))
        return (segs, srs) if len(segs) >= n and len(srs) >= n else None
    return wait_for(ready, timeout, f"{n} SEG and SR of the study in Orthanc", interval=0.5)


def _status(site):
    return json.loads((site["spool"] / "status.json").read_text())


def _echo(port, calling="STORESCU"):
    return subprocess.run(["echoscu", "-aet", calling, "-aec", NODE_AE, HOST, str(port)],
                          capture_output=True, text=True, timeout=60).returncode == 0


def _source_uid(seg):
    return str(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
               .ReferencedSOPInstanceUID)


def test_end_to_end_through_orthanc_matches_bin_predict(site, run, tmp_path):
    from keras_ptx.cli import main
    from keras_ptx.data import rle

    orthanc = site["orthanc"]
    study_uid = "1.2.826.0.1.3680043.10.9999.1"
    files = _study(tmp_path / "study", study_uid, 3, shape=(100, 80), seed=3)
    sent = storescu(files, orthanc.dicom_port, ORTHANC_AE)
    assert sent.returncode == 0, sent.stderr
    orthanc.forward_study(study_uid, "node")
    segs, srs = _wait_objects(orthanc, study_uid, 3)
    assert len(segs) == len(srs) == 3
    assert {s["StudyInstanceUID"] for s in segs + srs} == {study_uid}

    result = CliRunner().invoke(main, ["predict", "--model", str(run), "--dicom-dir",
                                       str(tmp_path / "study"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = dict(line.split(",", 1) for line in
                (tmp_path / "out" / "submission.csv").read_text().splitlines()[1:])
    positives = 0
    for seg in segs:
        ds = orthanc.file(seg["ID"])
        source = _source_uid(ds)
        expected = rle.decode(rows[source].strip(), 100, 80).astype(bool)
        mask = ds.pixel_array.reshape(-1, 100, 80).any(axis=0) if ds.NumberOfFrames else \
            np.zeros((100, 80), bool)
        np.testing.assert_array_equal(mask, expected)
        positives += expected.any()
    assert positives, "the test should see at least one non-empty mask"
    status = _status(site)
    assert status["processed"] >= 3 and status["sent"] >= 6
    log = site["node"].text()
    assert study_uid not in log and "Test^Patient" not in log
    assert re.search(r"study [0-9a-f]{12} answered: 3 image\(s\)", log)


def test_refusals_and_bad_input_give_reasons_and_the_node_stays_up(site, tmp_path):
    port, node = site["port"], site["node"]
    stranger = subprocess.run(["storescu", "-aet", "STRANGER", "-aec", NODE_AE, "-R", HOST,
                               str(port), str(_study(tmp_path / "s", "1.2.3.77", 1)[0])],
                              capture_output=True, text=True, timeout=60)
    assert stranger.returncode != 0
    wait_for(lambda: "calling AE title not on the allow-list" in node.text(), 10, "refusal")

    streams = node.text().count("not a DICOM stream")
    with socket.create_connection((HOST, port), timeout=10) as s:     # not DICOM at all
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(512))
        s.settimeout(10)
        try:
            s.recv(100)
        except OSError:
            pass
    wait_for(lambda: node.text().count("not a DICOM stream") > streams, 10,
             "the stream that is not DICOM logged")

    lateral = _study(tmp_path / "lat", "1.2.3.78", 1, view="LL")
    corrupt = _study(tmp_path / "bad", "1.2.3.79", 1, seed=5)[0]
    raw = bytearray(corrupt.read_bytes())
    raw[raw.index(b"\xff\xdb") + 1] = 0x01               # the JPEG's quantisation table marker
    corrupt.write_bytes(bytes(raw))
    seg_back = tmp_path / "seg.dcm"
    orthanc_seg = site["orthanc"].instances("SEG")
    assert orthanc_seg, "runs after the end-to-end test, which leaves SEGs in Orthanc"
    site["orthanc"].file(orthanc_seg[0]["ID"]).save_as(seg_back)
    for path in (lateral[0], corrupt, seg_back):
        sent = storescu([path], port, NODE_AE)
        assert sent.returncode == 0, sent.stderr
    reasons = ("ViewPosition LL: not a frontal", "cannot decode pixel data",
               "keras_ptx result object fed back")
    wait_for(lambda: all(r in node.text() for r in reasons), 30, "the three reasons logged")
    assert _echo(port), "the node answers C-ECHO after all that"
    assert not site["orthanc"].instances("SEG", "1.2.3.79")


def test_load_four_associations_of_25_images(site, tmp_path):
    orthanc, port = site["orthanc"], site["port"]
    studies = [f"1.2.826.0.1.3680043.10.9999.{100 + k}" for k in range(4)]
    batches = [_study(tmp_path / str(k), uid, 25, seed=10 + k) for k, uid in enumerate(studies)]
    results = [None] * 4

    def send(k):
        results[k] = storescu(batches[k], port, NODE_AE)
    threads = [threading.Thread(target=send, args=(k,)) for k in range(4)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    for uid in studies:
        segs, srs = _wait_objects(orthanc, uid, 25, timeout=300)
        assert len(segs) == len(srs) == 25
        assert len({s["SOPInstanceUID"] for s in segs}) == 25
    print(f"100 images in 4 associations answered in {time.monotonic() - start:.1f} s")


def test_broken_destination_objects_arrive_after_it_restarts(site, tmp_path):
    orthanc, node = site["orthanc"], site["node"]
    study_uid = "1.2.826.0.1.3680043.10.9999.200"
    files = _study(tmp_path / "s", study_uid, 2, seed=21)
    failures = node.text().count("sending failed")
    orthanc.stop()
    try:
        assert storescu(files, site["port"], NODE_AE).returncode == 0
        wait_for(lambda: node.text().count("sending failed") > failures, 60,
                 "the node failing to send")
    finally:
        orthanc.start()
    segs, srs = _wait_objects(orthanc, study_uid, 2, timeout=120)
    assert len(segs) == len(srs) == 2
    assert _status(site)["failed"] >= 1


def test_spool_files_are_private_and_answered_studies_leave(site):
    wait_for(lambda: _status(site)["pending_studies"] == 0, 60, "every study answered")
    studies = site["spool"] / "studies"
    assert not [p for p in studies.iterdir()], "retention 0: answered studies are deleted"
    assert oct((site["spool"] / "status.json").stat().st_mode & 0o777) == "0o600"


def test_stow_rs_to_orthancs_dicomweb(site, run, tmp_path):
    orthanc = site["orthanc"]
    port = free_port()
    node = NodeProcess(["--model", str(run), "--ae-title", "KPTXWEB", "--port", str(port),
                        "--allow", "STORESCU", "--spool", str(tmp_path / "spool"),
                        "--stow", f"{orthanc.url}/dicom-web", "--quiet", str(QUIET)],
                       tmp_path / "node.log")
    study_uid = "1.2.826.0.1.3680043.10.9999.400"
    try:
        node.start(wait_port=port)
        assert storescu(_study(tmp_path / "s", study_uid, 2, seed=40), port, NODE_AE) \
            .returncode == 0
        segs, srs = _wait_objects(orthanc, study_uid, 2)
        assert len(segs) == len(srs) == 2
    finally:
        node.stop()
    assert "sending by STOW-RS" in node.text()


@pytest.fixture
def killable(tmp_path, run, site):
    """A second node (its own spool and port) for the kill test, answering into the same
    Orthanc, which must know it: its AE title is the one Orthanc knows as ``node``."""
    port = free_port()
    orthanc = site["orthanc"]
    args = ["--model", str(run), "--ae-title", NODE_AE, "--port", str(port),
            "--allow", "STORESCU", "--spool", str(tmp_path / "spool"),
            "--send-to", f"{ORTHANC_AE}@{HOST}:{orthanc.dicom_port}", "--quiet", str(QUIET),
            "--max-backoff", "2"]
    nodes = []

    def start():
        nodes.append(NodeProcess(args, tmp_path / f"node-{len(nodes)}.log"))
        return nodes[-1].start(wait_port=port)
    yield start, port, tmp_path
    for node in nodes:
        node.stop()


def test_kill_9_at_random_instants_every_study_answered_exactly_once(killable, site):
    """Three studies stream in while the node is killed three times; each image ends with
    one SEG and one SR in Orthanc and is counted in exactly one "answered" line."""
    start, port, tmp_path = killable
    orthanc = site["orthanc"]
    rng = random.Random(30)
    studies = {f"1.2.826.0.1.3680043.10.9999.{300 + k}": 4 for k in range(3)}
    files = [f for k, (uid, n) in enumerate(studies.items())
             for f in _study(tmp_path / str(k), uid, n, seed=30 + k)]
    rng.shuffle(files)
    node = start()
    done = threading.Event()

    def stream():                   # a PACS resending each instance until it is stored
        for path in files:
            while storescu([path], port, NODE_AE).returncode != 0:
                time.sleep(0.5)
            time.sleep(rng.uniform(0.0, 0.6))
        done.set()
    sender = threading.Thread(target=stream)
    sender.start()
    for _ in range(3):
        time.sleep(rng.uniform(0.5, 4.0))
        node.kill()
        node = start()
    sender.join(timeout=300)
    assert done.is_set()
    for uid, n in studies.items():
        segs, srs = _wait_objects(orthanc, uid, n, timeout=180)
        assert len(segs) == len(srs) == n
        assert len({s["SOPInstanceUID"] for s in segs}) == n
    from keras_ptx.node.spool import digest

    def answered(uid):              # images in the study's "answered" lines, over all restarts
        logs = "".join((tmp_path / f"node-{k}.log").read_text() for k in range(4))
        return sum(int(n) for n in re.findall(
            rf"study {digest(uid, 12)} answered: (\d+) image", logs))
    for uid, n in studies.items():
        wait_for(lambda: answered(uid) >= n, 30, "the answers logged")
        assert answered(uid) == n, "every image answered exactly once"
