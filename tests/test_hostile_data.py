"""The hostile-input matrix, data inputs (#33): damaged DICOMs, label CSVs, records and manifests,
each against every command that reads it (tests/hostile.py checks the promises).

One bad DICOM among good ones is a *recorded rejection* (predict's errors.csv, the build's
manifest, the node's Rejection) with its reason, and the good ones still come out; a bad label
row rejects its image with the file, line and reason; a damaged records folder or manifest, or a
bad option, is a *refusal*: exit 2, one ``Error:`` line, nothing written.
"""
from __future__ import annotations

import csv
import json
import shutil
import warnings
import zlib

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGTransferSyntaxes, JPEGLSTransferSyntaxes

import hostile
import test_ensemble
from keras_ptx import rundir
from keras_ptx.data import records
from keras_ptx.data.records_dir import RecordsDir, RecordsError
from keras_ptx.data import dicom
from keras_ptx.data.dicom import (DEFAULT_MAX_PIXELS, MAX_PIXELS_VARIABLE, DicomError,
                                  max_inflated_bytes, read_dicom, read_dicom_header)
from keras_ptx.node.model import _admit as node_admit
from keras_ptx.model import build_model
from keras_ptx.synthetic.dicom_writer import write_dicom

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")   # pydicom's notes on bad files

SIZE = 64
BOMB = 60000                        # the side the 1,260-byte bomb declares
MiB = hostile.MiB
GOOD = [f"1.2.826.0.1.7.{k}" for k in range(4)]


# ------------------------------------------------------------------ damaged DICOMs

def _good(path, image_id, syntax="jpeg_baseline", shape=(SIZE, SIZE)):
    rng = np.random.default_rng(len(image_id))
    return write_dicom(path, rng.integers(30, 220, shape, dtype=np.uint8), image_id=image_id,
                       study_uid="1.2.826.0.1.7", series_uid="1.2.826.0.1.7.99",
                       patient_id=f"p{image_id[-1]}", patient_name="Doe^J", view="PA",
                       transfer_syntax=syntax)


def _edit(path, change):
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _frame(ds, change):
    """Replace the one compressed frame by ``change(frame bytes)``."""
    frame = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    ds.PixelData = encapsulate([bytes(change(frame))])


def _set_sof(side):
    def change(frame):
        at = frame.find(b"\xff\xc0") + 5            # SOF0: length, precision, then Y and X
        frame[at:at + 4] = side.to_bytes(2, "big") * 2
        return frame
    return change


def _set_siz(side):
    def change(frame):
        at = frame.find(b"\xff\x4f\xff\x51") + 8    # SIZ's Xsiz, Ysiz
        frame[at:at + 8] = side.to_bytes(4, "big") * 2
        return frame
    return change


def _header_claims(side):
    def change(ds):
        ds.Rows = ds.Columns = side
    return change


def _bomb(ds):                      # the issue's: a small JPEG whose SOF and header claim 60000
    _frame(ds, _set_sof(BOMB))
    _header_claims(BOMB)(ds)


def _deflated(path, body):
    """Rewrite ``path`` as Deflated Explicit VR Little Endian holding the raw bytes ``body``
    yields (deflated a chunk at a time)."""
    meta = pydicom.dcmread(path).file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    with open(path, "wb") as handle:
        handle.write(bytes(128) + b"DICM")
        write_file_meta_info(handle, meta)
        for chunk in body:
            handle.write(packer.compress(chunk))
        handle.write(packer.flush())


def _deflate_bomb(path):            # ~130 KB of zeros past what the pixel limit lets inflate
    _deflated(path, (bytes(MiB) for _ in range(max_inflated_bytes(DEFAULT_MAX_PIXELS) // MiB + 2)))


def _cut_pixels(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 300])


# name -> (how the file is made from a good one, or None for the bytes given, the reason)
DICOM_CASES = {
    "zero-byte": (b"", "not a DICOM file"),
    "not-dicom": (b"ImageId,EncodedPixels\n1.2.3,-1\n", "not a DICOM file"),
    "no-pixels": (lambda p: _edit(p, lambda ds: ds.pop("PixelData")), "no pixel data"),
    "truncated-pixels": (_cut_pixels, "truncated file"),
    "jpeg-garbage": (lambda p: _edit(p, lambda ds: _frame(ds, lambda f: bytes(range(256)) * 4)),
                     "without a readable JPEG SOF header"),
    "jpeg-bomb": (lambda p: _edit(p, _bomb), "exceed the limit of 64,000,000"),
    "sof-disagrees": (lambda p: _edit(p, lambda ds: _frame(ds, _set_sof(BOMB))),
                      f"JPEG SOF header declares {BOMB}x{BOMB} pixels, the DICOM header 64x64"),
    "uncompressed-bomb": ("explicit_le", _header_claims(BOMB), "exceed the limit"),
    "j2k-siz-disagrees": ("jpeg2000", lambda ds: _frame(ds, _set_siz(BOMB)),
                          f"JPEG 2000 SIZ header declares {BOMB}x{BOMB}"),
    "huge-samples": ("explicit_le", lambda ds: setattr(ds, "SamplesPerPixel", 65535),
                     "exceed the limit"),
    "deflate-bomb": (_deflate_bomb, f"inflates past {max_inflated_bytes(DEFAULT_MAX_PIXELS):,} bytes"),
    "multi-frame": (lambda p: _edit(p, lambda ds: setattr(ds, "NumberOfFrames", 100000)),
                    "multi-frame image (100000 frames)"),
    "dicomdir": (pydicom.data.get_testdata_file("DICOMDIR"), "a DICOMDIR"),
}


def _make_case(folder, name, k):
    spec, reason = DICOM_CASES[name][:-1], DICOM_CASES[name][-1]
    path = folder / f"{name}.dcm"
    image_id = f"1.2.826.0.1.8.{k}"
    if isinstance(spec[0], bytes):
        path.write_bytes(spec[0])
    elif isinstance(spec[0], str) and spec[0].endswith("DICOMDIR"):
        shutil.copy(spec[0], path)
    elif isinstance(spec[0], str):                  # (syntax, change of the dataset)
        _good(path, image_id, spec[0])
        _edit(path, spec[1])
    else:
        _good(path, image_id)
        spec[0](path)
    return path, reason


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicoms")
    for image_id in GOOD:
        _good(folder / f"good-{image_id}.dcm", image_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, name in enumerate(DICOM_CASES):
            _make_case(folder, name, k)
    return folder


@pytest.mark.parametrize("name", DICOM_CASES)
def test_read_dicom_rejects_with_its_reason_before_decoding(dicom_dir, name):
    with hostile.PeakMemory() as memory, pytest.raises(DicomError) as caught:
        read_dicom(dicom_dir / f"{name}.dcm")
    assert DICOM_CASES[name][-1] in caught.value.reason
    assert len(str(caught.value)) < 300
    assert memory.peak < 64 * MiB, f"{name}: peak {memory.peak / MiB:.0f} MiB"


def test_the_pixel_limit_is_one_setting_and_real_radiographs_pass(tmp_path, monkeypatch):
    big = _good(tmp_path / "in" / "big.dcm", "1.2.826.0.1.9", "explicit_le", shape=(4300, 4300))
    assert read_dicom(big).pixels.shape == (4300, 4300)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, str(4300 * 4300 - 1))
    with pytest.raises(DicomError, match=f"exceed the limit of {4300 * 4300 - 1:,}"):
        read_dicom(big)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "lots")
    outcome = hostile.run("build-tfrecords", ["--dicom-dir", tmp_path / "in",
                                              "--out", tmp_path / "out"])
    hostile.assert_refused(outcome, f"{MAX_PIXELS_VARIABLE}='lots'", str(DEFAULT_MAX_PIXELS))
    assert not (tmp_path / "out").exists()


def test_a_full_size_colour_radiograph_is_within_the_pixel_limit():
    ds = Dataset()
    ds.Rows = ds.Columns = 4300
    ds.SamplesPerPixel = 3
    assert dicom._declared_size("rgb.dcm", ds, dicom.max_pixels()) == (4300, 4300)


def test_a_deflated_dicom_decodes_as_pydicom_reads_it():
    path = pydicom.data.get_testdata_file("image_dfl.dcm")
    expected = pydicom.dcmread(path)
    image, header = read_dicom(path), read_dicom_header(path)
    for read in image, header:
        assert (read.rows, read.columns, read.image_id) == (512, 512, expected.SOPInstanceUID)
    np.testing.assert_array_equal(image.pixels, expected.pixel_array)


def test_a_cut_deflated_dicom_is_truncated(tmp_path):
    path = tmp_path / "cut.dcm"
    data = open(pydicom.data.get_testdata_file("image_dfl.dcm"), "rb").read()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(DicomError, match="truncated file"):
        read_dicom(path)


@pytest.mark.parametrize("name", ["good", "jpeg-bomb", "sof-disagrees", "jpeg-garbage"])
def test_the_jpeg_size_check_stands_without_pydicoms_private_parser(dicom_dir, name, monkeypatch):
    monkeypatch.setattr(dicom, "_get_jpg_parameters", None)
    if name == "good":
        assert read_dicom(dicom_dir / f"good-{GOOD[0]}.dcm").pixels.shape == (SIZE, SIZE)
        return
    with pytest.raises(DicomError) as caught:
        read_dicom(dicom_dir / f"{name}.dcm")
    assert DICOM_CASES[name][-1] in caught.value.reason


def test_the_own_sof_parser_agrees_with_pydicoms_on_its_jpegs():
    syntaxes = {*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes}
    frames = []
    for name in pydicom.data.get_testdata_files("*.dcm"):
        ds = pydicom.dcmread(name, force=True)
        if ds.get("file_meta", {}).get("TransferSyntaxUID") in syntaxes and "PixelData" in ds:
            frames.append(get_frame(ds.PixelData, 0, number_of_frames=int(ds.get("NumberOfFrames") or 1)))
    assert len(frames) >= 10
    for frame in frames:
        assert dicom._sof_size(frame) == dicom._jpeg_size(frame) is not None
    assert dicom._sof_size(b"\xff\xd8\xff\xdb\x00") is None


@pytest.mark.parametrize("name", DICOM_CASES)
def test_the_node_rejects_with_the_reason(dicom_dir, name):
    rejection = node_admit(str(dicom_dir / f"{name}.dcm"))
    assert DICOM_CASES[name][-1] in rejection.reason


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run of a freshly initialised B0 at 64 px; the commands' loads of it are served from
    memory (a rebuild costs seconds per command; rundir's own tests cover it)."""
    built = []
    path = tmp_path_factory.mktemp("run") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(test_ensemble, "build_model", lambda c: built.append(build_model(c)) or built[-1])
        test_ensemble._write_run(path, seed=3)
        real = rundir.load_model
        patch.setattr(rundir, "load_model", lambda d, c, w=rundir.BEST_WEIGHTS: built[0]
                      if str(d) == str(path) and w == rundir.BEST_WEIGHTS else real(d, c, w))
        yield path


@pytest.fixture(scope="module")
def predicted(dicom_dir, run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "out"
    before = hostile.snapshot(dicom_dir)
    outcome = hostile.run("predict", ["--model", run_dir, "--dicom-dir", dicom_dir, "--out", out])
    hostile.assert_unchanged(before, dicom_dir)
    with open(out / "errors.csv", newline="") as handle:
        errors = {row["path"].rsplit("/", 1)[-1]: row["reason"] for row in csv.DictReader(handle)}
    return outcome, out, errors


def test_predict_predicts_the_good_files_within_memory(predicted):
    outcome, out, _ = predicted
    assert outcome.status == 0 and outcome.exception is None, outcome.stderr
    with open(out / "submission.csv", newline="") as handle:
        ids = {row[0] for row in list(csv.reader(handle))[1:]}
    assert set(GOOD) <= ids
    # a B0 at 64 px and the bombs' rejections: far below the 14.9 GB the bomb took
    assert outcome.peak < 500 * MiB, f"peak {outcome.peak / MiB:.0f} MiB"


@pytest.mark.parametrize("name", DICOM_CASES)
def test_predict_records_each_bad_file_in_errors_csv(predicted, name):
    errors = predicted[2]
    assert DICOM_CASES[name][-1] in errors[f"{name}.dcm"]


@pytest.fixture(scope="module")
def built(dicom_dir, tmp_path_factory):
    """An unlabeled build of the folder (every DICOM is an input of the test split)."""
    out = tmp_path_factory.mktemp("build") / "records"
    outcome = hostile.run("build-tfrecords", ["--dicom-dir", dicom_dir, "--out", out,
                                              "--image-size", SIZE, "--workers", 1])
    assert outcome.status == 0 and outcome.exception is None, outcome.stderr
    manifest = json.loads((out / records.MANIFEST).read_text())
    return manifest, {r["input"]: r for r in manifest["rejected"]}


def test_build_writes_the_good_files(built):
    manifest = built[0]
    assert manifest["splits"]["test"]["images"] == len(GOOD)
    assert manifest["totals"]["inputs"] == len(GOOD) + len(DICOM_CASES)


@pytest.mark.parametrize("name", DICOM_CASES)
def test_build_records_each_bad_file_with_its_reason(built, name):
    rejection = built[1][f"{name}.dcm"]
    assert rejection["reason"] == "unreadable-dicom"
    assert DICOM_CASES[name][-1] in rejection["detail"]


# ------------------------------------------------------------------ label CSVs

# ImageId's last digit -> (the row's value, the reason its image is rejected with)
LABEL_CASES = {
    "past-int64": ("1 99999999999999999999999", "is too large for any image"),
    "int64-wraps": ("4611686018427387904 4611686018427387904", "past the 64x64 image"),
    "negative-length": ("1 -3", "non-positive length -3"),
    "odd-length": ("1 2 3", "odd number of tokens"),
    "past-the-image": ("100 5000", "past the 64x64 image"),
    "nul-byte": ("1 2\x00", "is not an integer"),
    "missing-column": (None, "expected 2 columns, got 1"),
}


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    """A labeled build at 64 px: four good images (two positive) and one per LABEL_CASES."""
    root = tmp_path_factory.mktemp("labeled")
    lines = ["ImageId,EncodedPixels"]
    for k, image_id in enumerate(GOOD):
        _good(root / "dicom" / f"{image_id}.dcm", image_id)
        lines.append(f"{image_id},{'100 50' if k % 2 else '-1'}")
    lines_of = {}
    for k, (name, (value, _)) in enumerate(LABEL_CASES.items()):
        image_id = f"1.2.826.0.1.6.{k}"
        _good(root / "dicom" / f"{image_id}.dcm", image_id)
        lines.append(image_id if value is None else f"{image_id},{value}")
        lines_of[name] = (image_id, len(lines))
    lines.append("1.2\x00.3,-1")                    # an ImageId with a NUL: no file can match
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    out = root / "records"
    outcome = hostile.run("build-tfrecords", [
        "--dicom-dir", root / "dicom", "--labels", root / "labels.csv", "--out", out,
        "--image-size", SIZE, "--val-fraction", 0.5, "--workers", 1])
    assert outcome.status == 0 and outcome.exception is None, outcome.stderr
    manifest = json.loads((out / records.MANIFEST).read_text())
    return root, out, manifest, lines_of


@pytest.mark.parametrize("name", LABEL_CASES)
def test_a_hostile_label_row_rejects_its_image_with_file_line_and_reason(labeled, name):
    _, _, manifest, lines_of = labeled
    image_id, line = lines_of[name]
    rejection = next(r for r in manifest["rejected"] if r["image_id"] == image_id)
    assert rejection["reason"] == "malformed-label"
    assert f"labels.csv line {line}:" in rejection["detail"]
    assert LABEL_CASES[name][1] in rejection["detail"]
    assert len(rejection["detail"]) < 300


def test_the_good_labeled_images_are_built(labeled):
    manifest = labeled[2]
    splits = manifest["splits"]
    assert splits["train"]["images"] + splits["val"]["images"] == len(GOOD)
    assert splits["train"]["positives"] + splits["val"]["positives"] == len(GOOD) // 2
    assert any(r["reason"] == "invalid-image-id" and "\x00" in r["image_id"]
               for r in manifest["rejected"])


@pytest.mark.parametrize("content, fragment", [
    (b"ImageId\n1.2.3\n", "expected the header"),
    (b"", "expected the header"),
    (b"ImageId,EncodedPixels\n1.2.3,\xff\xfe -1\n", "not UTF-8 text (byte 0xff on line 2)"),
    (b"ImageId,EncodedPixels\n1.2.3,\"" + b"1 " * 70000 + b"\"\n", "field larger than field limit"),
], ids=["missing-column", "empty", "binary", "huge-field"])
def test_an_unreadable_label_file_is_refused_before_anything_is_written(labeled, tmp_path,
                                                                          content, fragment):
    root = labeled[0]
    (tmp_path / "labels.csv").write_bytes(content)
    before = hostile.snapshot(tmp_path)
    outcome = hostile.run("build-tfrecords", ["--dicom-dir", root / "dicom", "--labels",
                                              tmp_path / "labels.csv", "--out", tmp_path / "out"])
    hostile.assert_refused(outcome, "labels.csv", fragment)
    hostile.assert_unchanged(before, tmp_path)


# ------------------------------------------------------------------ records and manifests

def _manifest_edit(change):
    def damage(folder):
        path = folder / records.MANIFEST
        manifest = json.loads(path.read_text())
        path.write_text(json.dumps(change(manifest)))
    return damage


def _lie_consistently(manifest):
    manifest["splits"]["train"]["images"] = 1250
    manifest["splits"]["train"]["shards"][0]["examples"] += 1250 - sum(
        s["examples"] for s in manifest["splits"]["train"]["shards"])
    return manifest


def _first_shard(folder, split="val"):      # the split both train and evaluate read
    return sorted(folder.glob(f"{split}-*.tfrecord"))[0]


def _truncate(folder):
    shard = _first_shard(folder)
    shard.write_bytes(shard.read_bytes()[:-40])


def _randomize(folder):
    shard = _first_shard(folder)
    shard.write_bytes(np.random.default_rng(0).bytes(shard.stat().st_size))


def _traverse(manifest):
    manifest["splits"]["train"]["shards"][0]["file"] = "../../outside.tfrecord"
    return manifest


# name -> (damage to a good build, what --verify says first, what train and evaluate say)
RECORDS_CASES = {
    "manifest-null": (_manifest_edit(lambda m: None), "not a JSON object but null", None),
    "manifest-list": (_manifest_edit(lambda m: []), "not a JSON object but list", None),
    "manifest-binary": (lambda f: (f / records.MANIFEST).write_bytes(b"\x89PNG\xff\x00"),
                        "unreadable (UnicodeDecodeError", None),
    "no-train-split": (_manifest_edit(lambda m: {**m, "splits": {
        k: v for k, v in m["splits"].items() if k != "train"}}), "splits.train: missing", None),
    "counts-lie": (_manifest_edit(lambda m: {**m, "splits": {**m["splits"], "train": {
        **m["splits"]["train"], "images": 1250}}}),
        "splits.train.images is 1250, its shards' examples add up to", None),
    "counts-lie-consistently": (_manifest_edit(_lie_consistently),
                                "examples, the manifest says", "skip"),
    "shard-path-outside": (_manifest_edit(_traverse), "is not a train shard's file", None),
    "shard-missing": (lambda f: _first_shard(f).unlink(), ": missing",
                      "the val shards differ from the manifest's (missing: val-00000"),
    "shard-truncated": (_truncate, "does not match the manifest's", "skip"),
    "shard-random": (_randomize, "does not match the manifest's", "a record shard is damaged"),
}


@pytest.fixture
def damaged(labeled, tmp_path, request):
    folder = tmp_path / "records"
    shutil.copytree(labeled[1], folder)
    RECORDS_CASES[request.param][0](folder)
    return folder


@pytest.mark.parametrize("damaged", RECORDS_CASES, indirect=True)
def test_verify_refuses_damaged_records_with_the_first_problem(damaged, request):
    name = request.node.callspec.params["damaged"]
    before = hostile.snapshot(damaged)
    outcome = hostile.run("build-tfrecords", ["--verify", damaged])
    hostile.assert_refused(outcome, str(damaged), RECORDS_CASES[name][1])
    hostile.assert_unchanged(before, damaged)


READ_CASES = [name for name, case in RECORDS_CASES.items() if case[2] != "skip"]
# evaluate traces its model before it reads the records (~8 s a case here): one of the cases
# through the command; every case through RecordsDir, the reading side train and evaluate share
EVALUATED = ["shard-missing"]


def _expected(name):
    return RECORDS_CASES[name][2] or RECORDS_CASES[name][1]


@pytest.mark.parametrize("damaged", READ_CASES, indirect=True)
def test_the_records_reader_refuses_damaged_records(damaged, request):
    with pytest.raises(RecordsError) as caught:
        data = RecordsDir.open(str(damaged))
        for split in ("train", "val"):
            data.counts(split)
            data.checked_files(split, SIZE)
    assert _expected(request.node.callspec.params["damaged"]) in str(caught.value)


@pytest.mark.parametrize("command, damaged", [("train", name) for name in READ_CASES] +
                         [("evaluate", name) for name in EVALUATED], indirect=["damaged"])
def test_train_and_evaluate_refuse_damaged_records(damaged, command, run_dir, tmp_path, request):
    expected = _expected(request.node.callspec.params["damaged"])
    args = (["--config", run_dir / "config.yaml", "--data", damaged, "--out", tmp_path / "run",
             "--set", "train.batch_size=1"]
            if command == "train" else
            ["--model", run_dir, "--data", damaged, "--out", tmp_path / "eval"])
    before = hostile.snapshot(tmp_path)
    outcome = hostile.run(command, args)
    hostile.assert_refused(outcome, expected)
    hostile.assert_unchanged(before, tmp_path)


@pytest.mark.parametrize("command", ["build-tfrecords --verify", "train", "evaluate"])
def test_a_records_folder_that_is_a_file_is_refused(command, run_dir, tmp_path):
    data = tmp_path / "records"
    data.write_text("not a folder")
    args = {"build-tfrecords --verify": ["--verify", data],
            "train": ["--config", run_dir / "config.yaml", "--data", data, "--out", tmp_path / "r"],
            "evaluate": ["--model", run_dir, "--data", data, "--out", tmp_path / "e"]}[command]
    outcome = hostile.run(command.split()[0], args)
    hostile.assert_refused(outcome, str(data))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records"]


def test_a_build_over_a_damaged_manifest_is_refused(labeled, tmp_path):
    root = labeled[0]
    out = tmp_path / "records"
    out.mkdir()
    (out / records.MANIFEST).write_text("null")
    before = hostile.snapshot(tmp_path)
    outcome = hostile.run("build-tfrecords", ["--dicom-dir", root / "dicom", "--out", out,
                                              "--workers", 1])
    hostile.assert_refused(outcome, "not a JSON object but null", "choose an empty --out")
    hostile.assert_unchanged(before, tmp_path)


# ------------------------------------------------------------------ synthetic data and the demo

@pytest.mark.parametrize("args, fragment", [
    (["--n-images", 10 ** 9], "n_images must be within [1, 100000]"),
    (["--n-images", 5, "--size", 100_000], "size must be within [32, 4096]"),
])
def test_make_synthetic_bounds_what_it_is_asked_for(tmp_path, args, fragment):
    outcome = hostile.run("make-synthetic", [tmp_path / "synthetic", *args, "--workers", 1])
    hostile.assert_refused(outcome, fragment)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args", [["--n-images", -5], ["--n-images", 0], ["--size", 8]])
def test_make_synthetic_refuses_negative_and_tiny_values_in_one_line(tmp_path, args):
    outcome = hostile.run("make-synthetic", [tmp_path / "synthetic", "--n-images", 5, *args])
    hostile.assert_refused(outcome, f"Invalid value for '{args[0]}'", "is not in the range")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, fragment", [
    (["--n-images", -5], "n_images must be within [1, 100000], got -5"),
    (["--dicom-size", 10 ** 6], "size must be within [32, 4096]"),
    (["--positive-fraction", 2], "positive_fraction must be within [0, 1]"),
    (["--workers", 0], "--workers must be at least 1"),
])
def test_demo_validates_before_creating_its_workdir(tmp_path, args, fragment):
    outcome = hostile.run("demo", ["--workdir", tmp_path / "demo", *args])
    hostile.assert_refused(outcome, fragment)
    assert not any(tmp_path.iterdir())
