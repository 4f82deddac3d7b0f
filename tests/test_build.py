"""bin/build-tfrecords: real DICOMs and label CSVs in, TFRecord shards + manifest out."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

from keras_ptx.commands.build_tfrecords import command
from keras_ptx.data import geometry, records, rle
from keras_ptx.data.annotations import union_mask, write_annotations
from keras_ptx.data.build import BuildError, Options, build, make_plan, read_inputs
from keras_ptx.data.dicom import read_dicom
from keras_ptx.data.geometry import image_to_square, mask_to_square
from keras_ptx.data.manifest import verify
from keras_ptx.data.records_dir import RecordsDir, RecordsError
from keras_ptx.data.split import assign_bins
from keras_ptx.errors import UserError
from keras_ptx.synthetic.dicom_writer import write_dicom
from keras_ptx.tf_setup import tf

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
SHARD = 7
# A kill -9 test patches the writer inside a child process; it stops at this record.
KILL_AT = SHARD + 3


def _pixels(rng, shape):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    base = 60 + 120 * (xx / shape[1]) + 40 * np.sin(yy / 7.0)
    return np.clip(base + rng.normal(0, 12, shape), 0, 255).astype(np.uint8)


def _annotation(rng, shape):
    mask = np.zeros(shape, np.uint8)
    y, x = rng.integers(0, shape[0] - 12), rng.integers(0, shape[1] - 12)
    mask[y:y + rng.integers(4, 12), x:x + rng.integers(4, 12)] = 1
    return rle.encode(mask)


def _write(path, image_id, pixels, patient="", **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # pydicom warns about deliberately bad UIDs
        return write_dicom(path, pixels, image_id=image_id, study_uid=generate_uid(),
                           series_uid=generate_uid(), patient_id=patient,
                           patient_name="Doe^Jane" if patient else "", **kwargs)


def make_dataset(root: Path, n: int = 36, seed: int = 0) -> dict:
    """n DICOMs (nested and flat, some non-square), 1/3 positive with 1-3 annotations each,
    12 of them from 4 patients with 3 images; returns image_id -> info."""
    rng = np.random.default_rng(seed)
    images, rows = {}, []
    for i in range(n):
        image_id = f"1.2.826.0.1.{seed}.{i}"
        shape = [(96, 96), (80, 112), (112, 72)][i % 3]
        patient = f"PAT-{i // 3}" if i < 12 else ("" if i % 5 == 0 else f"PAT-solo-{i}")
        folder = root / "dicom" / (f"study{i}/series{i}" if i % 2 else "")
        _write(folder / f"{image_id}.dcm", image_id, _pixels(rng, shape), patient,
               sex="MF"[i % 2], age=30 + i, view=("PA", "AP")[i % 2])
        rles = [_annotation(rng, shape) for _ in range(1 + i % 3)] if i % 3 == 0 else []
        if i == 3:                          # a run ending on the very last pixel
            last = np.zeros(shape, np.uint8)
            last[-5:, -1] = 1
            rles.append(rle.encode(last))
        rows += [(image_id, r) for r in rles] or [(image_id, "-1")]
        images[image_id] = {"path": folder / f"{image_id}.dcm", "rles": rles, "patient": patient}
    write_annotations(root / "labels.csv", rows)
    return images


def options(root: Path, out, **kwargs) -> Options:
    base = dict(dicom_dir=str(root / "dicom"), labels=str(root / "labels.csv"), out=str(out),
                image_size=SIZE, shard_size=SHARD, folds=3, val_fraction=0.25, workers=2)
    base.update(kwargs)
    return Options(**base)


def examples(out) -> dict[str, dict]:
    found = {}
    for split in records.SPLITS:
        for file in records.shard_files(str(out), split):
            for ex in tf.data.TFRecordDataset(file).map(records.parse).as_numpy_iterator():
                ex["split"] = split
                found[ex["image_id"].decode()] = ex
    return found


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim")
    return root, make_dataset(root)


@pytest.fixture(scope="module")
def built(dataset):
    root, images = dataset
    out = root / "out"
    manifest = build(options(root, out), log=lambda *_: None)
    return out, manifest


# --- the split -------------------------------------------------------------------------------

def test_assign_bins_is_stratified_grouped_and_deterministic():
    rng = np.random.default_rng(1)
    images = {}
    for i in range(500):
        patient = f"p{i // 4}" if i < 100 else ("" if i % 7 == 0 else f"q{i}")
        images[f"id{i:03d}"] = (bool(rng.random() < 0.22), patient)
    share = sum(p for p, _ in images.values()) / len(images)
    for fractions in ((0.9, 0.1), (1, 1, 1, 1, 1)):
        bins = assign_bins(images, fractions, seed=3)
        for b in range(len(fractions)):
            members = [i for i in bins if bins[i] == b]
            positives = sum(images[i][0] for i in members)
            assert abs(positives - share * len(members)) <= 1
            assert abs(len(members) - len(images) * fractions[b] / sum(fractions)) <= 4
        patients = {}
        for image_id, b in bins.items():
            patient = images[image_id][1]
            if patient:
                assert patients.setdefault(patient, b) == b
        shuffled = dict(sorted(images.items(), reverse=True))
        assert assign_bins(shuffled, fractions, seed=3) == bins
        assert assign_bins(images, fractions, seed=4) != bins


# --- a clean build ---------------------------------------------------------------------------

def test_build_verifies_and_records_equal_their_sources(dataset, built):
    root, images = dataset
    out, manifest = built
    result = CliRunner().invoke(command, ["--verify", str(out)])
    assert result.exit_code == 0, result.output
    found = examples(out)
    assert sorted(found) == sorted(images)
    assert manifest["totals"] == {"inputs": 36, "train": manifest["splits"]["train"]["images"],
                                  "val": manifest["splits"]["val"]["images"], "test": 0,
                                  "rejected": 0}
    for image_id, ex in found.items():
        info = images[image_id]
        image = read_dicom(info["path"])
        mask = union_mask(info["rles"], *image.pixels.shape)
        assert np.array_equal(ex["mask"][..., 0], mask_to_square(mask, SIZE)), image_id
        assert np.array_equal(ex["image"][..., 0], image_to_square(image.pixels, SIZE)), image_id
        assert (ex["height"], ex["width"]) == image.pixels.shape
        assert ex["mask_area"] == mask.sum()
        assert ex["has_pneumothorax"] == bool(info["rles"])
        assert ex["n_annotations"] == len(info["rles"])
        assert (ex["sex"].decode(), ex["age"], ex["view"].decode()) == (image.sex, image.age, image.view)
        assert ex["labeled"] == 1 and ex["size"] == SIZE and 0 <= ex["fold"] < 3
    stored = b"".join((out / s["file"]).read_bytes() for split in manifest["splits"].values()
                      for s in split["shards"])
    assert b"PAT-" not in stored and b"Doe" not in stored
    assert not [p for p in out.iterdir() if ".tmp-" in p.name or p.name == "build-state.json"]


def test_split_is_stratified_and_grouped_by_patient(dataset, built):
    root, images = dataset
    found = examples(built[0])
    positive = {i: bool(info["rles"]) for i, info in images.items()}
    share = sum(positive.values()) / len(positive)
    val = [i for i, ex in found.items() if ex["split"] == "val"]
    assert len(val) == 9
    assert abs(sum(positive[i] for i in val) - share * len(val)) <= 1
    for key in ("split", "fold"):
        sides = {}
        for image_id, ex in found.items():
            patient = images[image_id]["patient"]
            if patient:
                sides.setdefault(patient, set()).add(ex[key])
        assert all(len(s) == 1 for s in sides.values()), key
    folds = Counter(int(ex["fold"]) for ex in found.values())
    assert sorted(folds) == [0, 1, 2] and max(folds.values()) - min(folds.values()) <= 3


def test_rerun_is_a_no_op_and_other_options_are_refused(dataset, built):
    root, _ = dataset
    out, manifest = built
    before = files(out)
    said = []
    assert build(options(root, out, workers=1), log=said.append) == manifest
    assert "nothing to do" in said[0] and files(out) == before
    with pytest.raises(BuildError, match=r"other inputs or options \(seed: 42 -> 7\)"):
        build(options(root, out, seed=7, workers=1), log=lambda *_: None)


@pytest.mark.parametrize("option, message", [
    ({"image_size": 100}, "--image-size: 100 is not a positive multiple of 32 (the encoder "
                          "halves the size five times); try 96"),
    ({"image_size": 16}, "--image-size: 16 is not a positive multiple of 32"),
    ({"val_fraction": 1.0}, "--val-fraction must be in [0, 1)"),
    ({"folds": 1}, "--folds must be 0 (no folds) or at least 2"),
    ({"out": "a-file"}, "exists and is not a directory"),
    ({"out": "a-file/out"}, "a-file/out: cannot be created ("),
    ({"labels": "utf16.csv"}, "utf16.csv: not UTF-8 text (byte 0xff on line 1); a label CSV must "
                              "be saved as UTF-8"),
    ({"labels": "header.csv"}, "header.csv: line 1 is ['ImageId', 'Rle']; expected the header"),
    ({"dicom_dir": "empty"}, "empty: no DICOM files (.dcm, .dicom) found"),
])
def test_unusable_options_and_inputs_are_refused_before_anything_is_written(dataset, tmp_path,
                                                                             option, message):
    (tmp_path / "a-file").write_text("keep me")
    (tmp_path / "utf16.csv").write_text("ImageId,EncodedPixels\n1.2.3,-1\n", encoding="utf-16")
    (tmp_path / "header.csv").write_text("ImageId,Rle\n1.2.3,-1\n")
    (tmp_path / "empty").mkdir()
    option = {key: str(tmp_path / value) if key in ("out", "labels", "dicom_dir") else value
              for key, value in {"out": "out", **option}.items()}
    with pytest.raises(UserError, match=re.escape(message)):
        build(options(dataset[0], **option), log=lambda *_: None)
    assert not (tmp_path / "out").exists() and (tmp_path / "a-file").read_text() == "keep me"


def test_verify_fails_on_tampered_missing_or_stray_shards(built, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(built[0], out)
    shard = sorted(out.glob("train-*.tfrecord"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = CliRunner().invoke(command, ["--verify", str(out)])
    assert result.exit_code != 0
    assert f"{shard.name}: sha256" in result.output
    shard.unlink()
    (out / "val-00009-of-00010.tfrecord").write_bytes(b"")
    problems = verify(str(out))
    assert any(p.endswith(f"{shard.name}: missing") for p in problems)
    assert any("val-00009-of-00010.tfrecord: shard file not in the manifest" in p for p in problems)


def test_a_negative_with_mask_pixels_fails_verify_and_is_what_training_skips(built, tmp_path):
    """Training decodes no mask for negatives (they are built empty); verify guards that."""
    out = tmp_path / "copy"
    shutil.copytree(built[0], out)
    manifest = json.loads((out / records.MANIFEST).read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    shard = out / entry["file"]
    serialized = [s.numpy() for s in tf.data.TFRecordDataset(str(shard))]
    parsed = [records.parse(s) for s in serialized]
    negative = next(i for i, ex in enumerate(parsed) if not ex["has_pneumothorax"])
    example = tf.train.Example.FromString(serialized[negative])
    mark = np.zeros(parsed[negative]["mask"].shape[:2], np.uint8)
    mark[:4, :4] = 1
    example.features.feature["mask"].bytes_list.value[0] = tf.io.encode_png(mark[..., None]).numpy()
    serialized[negative] = example.SerializeToString()
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for s in serialized:
            writer.write(s)
    entry["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (out / records.MANIFEST).write_text(json.dumps(manifest))

    image_id = parsed[negative]["image_id"].numpy().decode()
    assert verify(str(out)) == [f"{shard}: image {image_id} has no pneumothorax but mask pixels"]
    assert records.parse(serialized[negative])["mask"].numpy().sum() == 16
    assert records.parse(serialized[negative], negatives_empty=True)["mask"].numpy().sum() == 0
    positive = next(i for i, ex in enumerate(parsed) if ex["has_pneumothorax"])
    np.testing.assert_array_equal(
        records.parse(serialized[positive], negatives_empty=True)["mask"], parsed[positive]["mask"])


def test_records_of_the_zero_padding_rule_fail_verify_and_are_not_reused(dataset, built, tmp_path):
    """A build before #21 (zero padding) is found out by --verify, training and evaluation
    (RecordsDir) and a rebuild into its folder, each naming both rules and the way out."""
    old = "pad-bottom-right-to-square-then-resize"
    out = tmp_path / "copy"
    shutil.copytree(built[0], out)
    manifest = json.loads((out / records.MANIFEST).read_text())
    manifest["options"]["geometry"] = old
    manifest["plan_sha256"] = "0" * 64          # the old options made another plan
    (out / records.MANIFEST).write_text(json.dumps(manifest))
    rebuild = f"rule '{old}', but this keras_ptx .* with '{geometry.RULE}' .* rebuild them"
    assert len(verify(str(out))) == 1 and re.search(rebuild, verify(str(out))[0])
    result = CliRunner().invoke(command, ["--verify", str(out)])
    assert result.exit_code != 0 and re.search(rebuild, result.output)
    with pytest.raises(RecordsError, match=rebuild):
        RecordsDir.open(str(out)).checked_files("train", SIZE)
    with pytest.raises(BuildError, match=f"geometry: '{old}' -> '{geometry.RULE}'"):
        build(options(dataset[0], out, workers=1), log=lambda *_: None)


# --- bad inputs ------------------------------------------------------------------------------

def _without_pixels(path):
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)


def _structured_report(path, image_id):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = image_id
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = BasicTextSRStorage, image_id, "SR"
    ds.save_as(path, enforce_file_format=True)


def test_bad_inputs_are_rejected_with_reasons(tmp_path):
    rng = np.random.default_rng(5)
    dicom = tmp_path / "dicom"
    good = [f"1.5.{i}" for i in range(6)]
    rows = [(g, "-1") for g in good[:3]] + [(g, _annotation(rng, (64, 64))) for g in good[3:]]
    for g in good:
        _write(dicom / f"{g}.dcm", g, _pixels(rng, (64, 64)))
    bad = {  # input -> (image id, expected reason)
        "truncated-pixels.dcm": ("1.6.1", "unreadable-dicom"),
        "truncated-header.dcm": ("", "unreadable-dicom"),
        "no-pixels.dcm": ("1.6.3", "unreadable-dicom"),
        "report.dcm": ("1.6.4", "unreadable-dicom"),
        "text.dcm": ("", "unreadable-dicom"),
        "a/twin.dcm": ("1.6.6", "duplicate-image-id"),
        "b/twin.dcm": ("1.6.6", "duplicate-image-id"),
        "dots.dcm": ("../x", "invalid-image-id"),
        "syntax.dcm": ("1.6.8", "malformed-label"),
        "overrun.dcm": ("1.6.9", "malformed-label"),
        "conflict.dcm": ("1.6.10", "conflicting-labels"),
        "unlabeled.dcm": ("1.6.11", "image-without-label"),
        "labels.csv ImageId 1.6.12": ("1.6.12", "label-without-image"),
        "labels.csv ImageId ../y": ("../y", "invalid-image-id"),
        "labels.csv ImageId 1.6.2": ("1.6.2", "label-without-image"),
    }
    for name, (image_id, _) in bad.items():
        if name.endswith(".dcm") and name != "text.dcm":
            _write(dicom / name, image_id or "1.6.2", _pixels(rng, (64, 64)))
    whole = (dicom / "truncated-pixels.dcm").read_bytes()
    (dicom / "truncated-pixels.dcm").write_bytes(whole[:len(whole) - 300])
    (dicom / "truncated-header.dcm").write_bytes(whole[:200])
    (dicom / "text.dcm").write_text("not a DICOM file\n")
    _without_pixels(dicom / "no-pixels.dcm")
    _structured_report(dicom / "report.dcm", "1.6.4")
    rows += [("1.6.1", "-1"), ("1.6.2", "-1"), ("1.6.3", "-1"), ("1.6.4", "-1"), ("1.6.6", "-1"),
             ("../x", "-1"), ("1.6.8", "3 4 5"), ("1.6.9", f"{64 * 64 - 2} 5"), ("1.6.10", "-1"),
             ("1.6.10", "3 4"), ("1.6.12", "-1"), ("../y", "-1"), (good[0], "-1")]
    write_annotations(tmp_path / "labels.csv", [r for r in rows if r[1] != "3 4 5"])
    with open(tmp_path / "labels.csv", "a") as f:
        f.write("1.6.8, 3 4 5\n")           # odd token count: the writer refuses it

    args = ["--dicom-dir", str(dicom), "--labels", str(tmp_path / "labels.csv"),
            "--out", str(tmp_path / "out"), "--image-size", "32", "--workers", "1"]
    result = CliRunner().invoke(command, args + ["--strict"])
    assert result.exit_code == 2, result.output
    assert "--strict: 15 input(s) rejected" in result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    got = {r["input"]: (r["image_id"], r["reason"]) for r in manifest["rejected"]}
    assert got == bad
    assert all(r["detail"] for r in manifest["rejected"])
    details = {r["input"]: r["detail"] for r in manifest["rejected"]}
    assert "truncated file" in details["truncated-pixels.dcm"], details
    assert manifest["totals"]["inputs"] == len(good) + 15
    assert manifest["totals"]["train"] + manifest["totals"]["val"] == len(good)
    assert len(manifest["label_warnings"]) == 1 and "kept once" in manifest["label_warnings"][0]
    assert sorted(examples(tmp_path / "out")) == sorted(good)
    assert re.search(r"^rejected +15 *$", result.output, re.MULTILINE)
    assert CliRunner().invoke(command, ["--verify", str(tmp_path / "out")]).exit_code == 0
    assert CliRunner().invoke(command, args).exit_code == 0      # without --strict


def test_the_plan_takes_any_worker_map(dataset, built):
    """The phases only call the map they are given: in this process, the same plan."""
    root, _ = dataset
    o = options(root, built[0])
    paths, labels = read_inputs(o)
    plan = make_plan(o, paths, labels, lambda fn, tasks, desc: map(fn, tasks))
    assert plan.digest == built[1]["plan_sha256"]


# --- unlabeled, and a gfile URL --------------------------------------------------------------

def test_unlabeled_build_to_a_gfile_url(dataset):
    root, images = dataset
    out = "ram://keras-ptx-test/unlabeled"
    manifest = build(options(root, out, labels=None, workers=1, folds=0), log=lambda *_: None)
    assert manifest["splits"]["test"]["images"] == len(images)
    assert manifest["splits"]["train"]["images"] == manifest["splits"]["val"]["images"] == 0
    assert verify(out) == []
    found = examples(out)
    assert sorted(found) == sorted(images)
    for ex in found.values():
        assert ex["labeled"] == 0 and ex["fold"] == -1 and not ex["mask"].any()


# --- kill -9 and resume ----------------------------------------------------------------------

CHILD = f"""
import sys, time
import keras_ptx.data.records as records
original, calls = records.serialize, [0]
def serialize(record):
    calls[0] += 1
    if calls[0] == {KILL_AT}:
        open(sys.argv[1], "w").close()
        time.sleep(600)
    return original(record)
records.serialize = serialize
from keras_ptx.cli import main
main(args=["build-tfrecords", *sys.argv[2:]])
"""


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_dataset(dataset, built, tmp_path):
    root, _ = dataset
    out = tmp_path / "out"
    o = options(root, out)
    marker = tmp_path / "stopped"
    args = ["--dicom-dir", o.dicom_dir, "--labels", o.labels, "--out", str(out), "--image-size",
            str(SIZE), "--shard-size", str(SHARD), "--folds", "3", "--val-fraction", "0.25",
            "--workers", "2"]
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(marker), *args], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the build never reached the second shard"
            time.sleep(0.05)
    finally:
        # kill -9 of the build's own process, as a user or the OOM killer would; then SIGTERM
        # for its workers, which multiprocessing's resource tracker ignores, so it outlives
        # them and removes the pool's semaphores (a SIGKILL to the whole process group killed
        # it too and left them in /dev/shm, ~5 per run)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
    first = sorted(out.glob("[!.]*.tfrecord"))
    assert len(first) == 1 and not (out / "manifest.json").exists()
    leftovers = [p.name for p in out.glob("*.tmp-*")]     # hidden from the DICOM finder
    assert leftovers and all(name.startswith(".") for name in leftovers), leftovers
    kept = first[0].stat().st_mtime_ns

    said = []
    build(o, log=said.append)
    assert any("resuming: 1 of" in s for s in said)
    assert first[0].stat().st_mtime_ns == kept
    assert files(out) == files(built[0])
