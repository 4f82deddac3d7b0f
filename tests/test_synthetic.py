"""bin/make-synthetic: SIIM layout and formats, labels that are exactly the drawn lesions,
label statistics, determinism (seed, workers), and the DICOM writer's variants."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.uid import (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                         ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless,
                         SecondaryCaptureImageStorage)

from dicom_checks import dciodvfy_errors
from keras_ptx.cli import main
from keras_ptx.data import records, rle
from keras_ptx.data.annotations import load_annotations, union_mask
from keras_ptx.data.build import Options as BuildOptions, build
from keras_ptx.data.dicom import read_dicom
from keras_ptx.data.geometry import from_square, mask_to_square
from keras_ptx.synthetic.anatomy import _skin_fold
from keras_ptx.synthetic.dataset import (Options, SyntheticError, is_positive, make_dataset,
                                         plan_image)
from keras_ptx.synthetic.dicom_writer import write_dicom
from keras_ptx.synthetic.radiograph import generate_image, image_shape
from keras_ptx.synthetic.raster import Frame
from keras_ptx.tf_setup import tf

OPTIONS = Options(n_images=30, seed=3, size=128, positive_fraction=0.5, test_fraction=0.2,
                  mix_formats=True, mix_shapes=True)
JPEG_MEAN_ERROR = 3.0               # grey levels, mean absolute, quality 95


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    summary = make_dataset(out, OPTIONS, workers=1, progress=False)
    return out, summary


def _hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_labels_and_pixels_are_exactly_what_was_drawn(dataset):
    out, summary = dataset
    labels = load_annotations(out / "train-rle.csv")
    truth = load_annotations(out / "synthetic-test-labels.csv")
    assert not labels.report and not truth.report
    seen = {"train": 0, "test": 0}
    for index in range(OPTIONS.n_images):
        plan = plan_image(OPTIONS, index)
        drawn = generate_image(OPTIONS.seed, index, OPTIONS.size, plan.positive, plan.patient,
                               plan.aspect)
        rles = (labels if plan.split == "train" else truth)[plan.image_id]
        assert plan.image_id not in (truth if plan.split == "train" else labels)
        assert len(rles) == len(drawn.masks) and bool(rles) == plan.positive
        for text, mask in zip(rles, drawn.masks):
            np.testing.assert_array_equal(rle.decode(text, *drawn.pixels.shape), mask)
        image = read_dicom(out / plan.relpath)
        assert image.pixels.shape == drawn.pixels.shape == image_shape(OPTIONS.size, plan.aspect)
        assert image.image_id == plan.image_id
        error = np.abs(image.pixels.astype(int) - drawn.pixels)
        if plan.transfer_syntax == "jpeg_baseline":
            assert error.mean() < JPEG_MEAN_ERROR
        else:
            assert error.max() == 0
        seen[plan.split] += 1
    assert seen["train"] and seen["test"]
    assert summary["counts"]["positive"] == round(OPTIONS.n_images * OPTIONS.positive_fraction)


def test_one_image_in_five_is_non_square_when_asked_and_builds_into_records(dataset, tmp_path):
    """--mix-shapes: detector formats with --size as the long side, labelled on their own grid,
    whose record masks come back onto it (area-resized to 64 and back from 128)."""
    out, summary = dataset
    assert summary["counts"]["shapes"] == {"128x128": 24, "128x104": 2, "104x128": 2,
                                           "128x121": 1, "102x128": 1}
    build(BuildOptions(dicom_dir=str(out / "dicom-images-train"), labels=str(out / "train-rle.csv"),
                       out=str(tmp_path), image_size=64, workers=1), log=lambda *_: None)
    labels = load_annotations(out / "train-rle.csv")
    positives = 0
    for split in ("train", "val"):
        for ex in tf.data.TFRecordDataset(records.shard_files(str(tmp_path), split)).map(
                records.parse).as_numpy_iterator():
            height, width = int(ex["height"]), int(ex["width"])
            if height == width:
                continue
            mask = union_mask(labels[ex["image_id"].decode()], height, width)
            square = ex["mask"][..., 0]
            np.testing.assert_array_equal(square, mask_to_square(mask, 64))
            back = from_square(square, height, width) >= 0.5
            if mask.any():
                positives += 1
                assert 2 * (back & (mask > 0)).sum() / (back.sum() + mask.sum()) > 0.6
            else:
                assert not square.any() and not back.any()
    assert positives, "no non-square positive in the records: the round trip is untested"


def test_lesion_mask_is_exactly_the_darkened_region():
    # A positive image is its negative twin plus the lesions: darker exactly inside the mask,
    # and the bright visceral pleural line lies just outside it.
    for index in range(12):
        aspect = (1.0, 35 / 43, 43 / 35)[index % 3]
        positive = generate_image(5, index, 192, positive=True, aspect=aspect)
        negative = generate_image(5, index, 192, positive=False, aspect=aspect)
        diff = positive.pixels.astype(int) - negative.pixels
        mask = positive.union
        assert mask.any() and not negative.masks
        assert not (diff < 0)[~mask].any()
        assert not (diff > 0)[mask].any()
        assert diff[mask].mean() < -2
        assert (diff > 0).any()
        for a in range(len(positive.masks)):
            for b in range(a):
                assert not (positive.masks[a] & positive.masks[b]).any()


def test_siim_layout_headers_and_csv_conventions(dataset):
    out, summary = dataset
    lines = (out / "train-rle.csv").read_text().splitlines()
    assert lines[0] == "ImageId, EncodedPixels"
    rows = [line.split(",", 1) for line in lines[1:]]
    assert all(value.startswith(" ") for _, value in rows)
    assert any(value == " -1" for _, value in rows)
    ids = [image_id for image_id, _ in rows]
    assert any(ids.count(i) > 1 for i in ids), "no image with several annotations"
    files = sorted((out / "dicom-images-train").rglob("*.dcm"))
    files += sorted((out / "dicom-images-test").rglob("*.dcm"))
    assert len(files) == OPTIONS.n_images
    syntaxes, photometrics, patients = set(), set(), {}
    for path in files:
        ds = pydicom.dcmread(path)
        study, series = path.parent.parent.name, path.parent.name
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == \
            (study, series, path.stem)
        assert ds.Modality == "CR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1"
        assert max(ds.Rows, ds.Columns) == OPTIONS.size
        assert str(ds.PatientName).startswith("SYNTHETIC^PATIENT")
        assert ds.PatientID.startswith("SYNTHETIC-")
        assert ds.PatientSex in ("M", "F") and ds.ViewPosition in ("AP", "PA")
        assert ds.PatientAge.endswith("Y")
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        photometrics.add((ds.PhotometricInterpretation, ds.BitsAllocated))
        patients.setdefault(ds.PatientID, []).append(path)
    assert syntaxes == {JPEGBaseline8Bit, ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless}
    assert photometrics == {("MONOCHROME2", 8), ("MONOCHROME1", 8), ("MONOCHROME2", 16),
                            ("MONOCHROME1", 16)}
    assert any(len(paths) == 2 for paths in patients.values()), "no patient with two images"
    for paths in patients.values():     # a patient's images stay in one split
        assert len({p.parts[-4] for p in paths}) == 1
    assert summary["counts"]["patients"] == len(patients)
    assert (out / "preview.png").stat().st_size > 10_000


def test_label_statistics_near_the_real_data():
    for n in (1, 7, 100, 12047):
        assert sum(is_positive(i, 0.22) for i in range(n)) == round(n * 0.22)
    images = [generate_image(11, index, 128, positive=True) for index in range(240)]
    areas = np.array([image.union.mean() for image in images])
    counts = np.array([len(image.masks) for image in images])
    assert 0.004 < np.median(areas) < 0.016
    assert 0.04 < np.mean(areas < 0.002) < 0.25
    assert areas.max() < 0.2 and areas.min() > 0
    assert 0.6 < np.mean(counts == 1) < 0.95 and counts.max() <= 4
    sides = {tag.rsplit("_", 1)[1] for image in images for tag in image.tags
             if tag.startswith("ptx_")}
    assert sides == {"left", "right"}


def test_large_pneumothoraces_reach_the_real_top_of_the_range():
    # The log-normal asks for up to 15%; a band along one stretch of pleura holds ~7% at most,
    # so the largest ones must collapse the whole (bigger) lung toward the hilum.
    images = [generate_image(11, index, 128, positive=True) for index in range(300)]
    areas = np.array([image.union.mean() for image in images])
    assert areas.max() >= 0.125
    assert 0.004 < np.median(areas) < 0.016
    biggest = images[int(np.argmax(areas))]
    assert sum(tag.startswith("ptx_") for tag in biggest.tags) == len(biggest.masks)


def test_skin_fold_is_a_one_sided_edge():
    frame = Frame(128)
    u, v = frame.grid()
    fold = _skin_fold(frame, u, v, np.random.default_rng(0))
    assert 0.9 < fold.max() <= 1.0 and fold.min() == 0.0
    rows = np.flatnonzero(fold.max(axis=1) > 0.5)
    assert rows.size > 64                    # a long edge, not a spot
    row = fold[rows[rows.size // 2]]
    peak = int(np.argmax(row))
    assert (row[:peak] == 0).all() or (row[peak + 1:] == 0).all()    # dense on one side only


@pytest.mark.slow
def test_same_seed_same_bytes_whatever_the_workers(dataset, tmp_path):
    out, _ = dataset
    make_dataset(tmp_path / "again", OPTIONS, workers=2, progress=False)
    assert _hashes(tmp_path / "again") == _hashes(out)


def test_different_seed_different_output(dataset, tmp_path):
    out, _ = dataset
    other = Options(**{**OPTIONS.__dict__, "seed": 4, "n_images": 4})
    make_dataset(tmp_path, other, workers=1, progress=False)
    assert not set(_hashes(tmp_path).values()) & set(_hashes(out).values())
    a, b = generate_image(3, 0, 128), generate_image(4, 0, 128)
    assert np.abs(a.pixels.astype(int) - b.pixels).mean() > 5


def test_command_stage2_and_refuses_to_overwrite(tmp_path):
    runner = CliRunner()
    args = ["make-synthetic", str(tmp_path), "--n-images", "6", "--size", "64", "--stage", "2",
            "--workers", "1", "--positive-fraction", "0.5", "--test-fraction", "0"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "stage_2_train.csv").read_text().splitlines()
    assert lines[0] == "ImageId,EncodedPixels"
    assert sum(line.endswith(",-1") for line in lines) == 3
    assert not (tmp_path / "train-rle.csv").exists()
    assert json.loads((tmp_path / "synthetic.json").read_text())["counts"]["shapes"] == {"64x64": 6}
    again = runner.invoke(main, args)
    assert again.exit_code == 2 and "already holds a dataset" in again.output
    assert runner.invoke(main, [*args, "--overwrite"]).exit_code == 0
    bad = runner.invoke(main, ["make-synthetic", str(tmp_path / "x"), "--n-images", "0"])
    assert bad.exit_code == 2


@pytest.mark.parametrize("variant", [
    {}, {"photometric": "MONOCHROME1"}, {"transfer_syntax": "explicit_le"},
    {"transfer_syntax": "explicit_le", "bits": 16},
    {"transfer_syntax": "explicit_le", "bits": 16, "photometric": "MONOCHROME1"}])
def test_dicom_writer_variants_read_back(tmp_path, variant):
    pixels = np.random.default_rng(0).integers(0, 256, (48, 40)).astype(np.uint8)
    path = write_dicom(tmp_path / "a" / "b.dcm", pixels, image_id="1.2.3.4", study_uid="1.2.3",
                       series_uid="1.2.3.5", patient_id="P", patient_name="SYNTHETIC^X",
                       sex="F", age=40, view="PA", **variant)
    image = read_dicom(path)
    error = np.abs(image.pixels.astype(int) - pixels)
    if variant.get("transfer_syntax") == "explicit_le":
        assert error.max() == 0
    else:
        assert error.mean() < 12         # random noise is JPEG's worst case
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == variant.get("photometric", "MONOCHROME2")
    assert ds.BitsAllocated == variant.get("bits", 8)
    assert (image.sex, image.age, image.view, image.image_id) == ("F", 40, "PA", "1.2.3.4")
    assert [p.name for p in path.parent.iterdir()] == ["b.dcm"]     # no partial file left


@pytest.mark.parametrize("bad, message", [
    ({"bits": 16}, "JPEG Baseline holds 8-bit"),
    ({"transfer_syntax": "jpeg_ls"}, "transfer_syntax must be"),
    ({"sop_class": "mr"}, "sop_class must be"),
    ({"photometric": "RGB"}, "photometric must be"),
    ({"pixels": np.zeros((4, 4), np.float32)}, "cannot be stored"),
    ({"pixels": np.full((4, 4), 5000, np.uint16), "bits": 16,
      "transfer_syntax": "explicit_le"}, "must be <= 4095")])
def test_dicom_writer_rejects_what_it_cannot_write(tmp_path, bad, message):
    kwargs = dict(image_id="1.2", study_uid="1.3", series_uid="1.4", patient_id="P",
                  patient_name="N")
    pixels = bad.pop("pixels", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=message):
        write_dicom(tmp_path / "x.dcm", pixels, **kwargs, **bad)
    assert not list(tmp_path.iterdir())


def test_the_three_classes_in_turn_are_valid_dicom_and_read_back(tmp_path):
    """--classes cr,dx,sc with --mix-formats: every file passes dciodvfy; DX carries its
    spacing as ImagerPixelSpacing, Secondary Capture keeps Modality CR as SIIM's files do."""
    options = Options(n_images=20, seed=4, size=64, mix_formats=True, classes=("cr", "dx", "sc"))
    make_dataset(tmp_path, options, workers=1, progress=False)
    classes = set()
    for index in range(options.n_images):
        plan = plan_image(options, index)
        path = tmp_path / plan.relpath
        assert dciodvfy_errors(path) == [], plan
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        classes.add(ds.SOPClassUID)
        assert ds.Modality == {"cr": "CR", "sc": "CR", "dx": "DX"}[plan.sop_class]
        spacing = ds.ImagerPixelSpacing if plan.sop_class == "dx" else ds.PixelSpacing
        assert float(spacing[0]) == pytest.approx(plan.pixel_spacing)
        assert read_dicom(path).pixels.shape == (64, 64)
    assert classes == {ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                       SecondaryCaptureImageStorage}
    with pytest.raises(SyntheticError, match="classes"):
        Options(n_images=1, classes=("cr", "mr"))
