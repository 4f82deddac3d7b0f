"""DICOM result objects (results/dicom_objects.py) and the intended-use gate (data/eligibility.py).

Sources: the synthetic writer's three classes (CR, DX For Presentation, Secondary Capture with
Modality CR) in both photometrics, 8 and 16 bits, uncompressed, JPEG Baseline, RLE and JPEG 2000,
non-square; and pydicom-data's real radiographs RG1_J2KI.dcm (a chest CR, PA, 1955 x 1841,
MONOCHROME1, JPEG 2000) and RG3_UNCR.dcm (an extremity CR). Every object must pass dciodvfy
without an error and read back to what was built.
"""
import dataclasses
import json

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.uid import generate_uid

from dicom_checks import dciodvfy_errors, seg_mask, sr_finding
from keras_ptx.data import rle
from keras_ptx.data.dicom import read_dicom
from keras_ptx.data.eligibility import rejection
from keras_ptx.results.dicom_objects import ObjectError, build_objects, encode, spacing_mm
from keras_ptx.inference.prediction import ModelIdentity
from keras_ptx.synthetic.dicom_writer import write_dicom

IDENTITY = ModelIdentity(model="0123456789ab")
SOURCES = {   # name: (class, transfer syntax, photometric, bits, shape)
    "cr-jpeg-m2-8": ("cr", "jpeg_baseline", "MONOCHROME2", 8, (96, 80)),
    "dx-rle-m1-16": ("dx", "rle", "MONOCHROME1", 16, (80, 112)),
    "sc-j2k-m2-16": ("sc", "jpeg2000", "MONOCHROME2", 16, (64, 64)),
    "sc-raw-m1-8": ("sc", "explicit_le", "MONOCHROME1", 8, (72, 56)),
}
SPACING = (0.2, 0.3)


def _source(tmp_path, name, view="PA", **changes):
    sop_class, syntax, photometric, bits, shape = SOURCES[name]
    pixels = np.random.default_rng(len(name)).integers(0, 255, shape, dtype=np.uint8)
    path = write_dicom(tmp_path / f"{name}.dcm", pixels, image_id=generate_uid(),
                       study_uid=generate_uid(), series_uid=generate_uid(), patient_id="P1",
                       patient_name="DOE^JANE", view=view, transfer_syntax=syntax,
                       photometric=photometric, bits=bits, pixel_spacing=SPACING,
                       sop_class=sop_class)
    if changes:
        ds = pydicom.dcmread(path)
        for keyword, value in changes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(path)
    return read_dicom(path)


def _blob(shape):
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return (rows - shape[0] // 3) ** 2 + (cols - shape[1] // 2) ** 2 < (min(shape) // 5) ** 2


def _write(objects, folder):
    paths = {}
    for kind, ds in objects.items():
        paths[kind] = folder / f"{kind}.dcm"
        paths[kind].write_bytes(encode(ds))
    return paths


@pytest.mark.parametrize("name", SOURCES)
def test_every_class_and_format_gives_valid_objects_that_read_back(tmp_path, name):
    image = _source(tmp_path, name)
    mask = _blob(image.pixels.shape)
    paths = _write(build_objects(image.source.dataset, mask, 0.875, IDENTITY, ("seg", "sr", "sc"),
                                 pixels=image.pixels), tmp_path)
    for kind, path in paths.items():
        assert dciodvfy_errors(path) == [], kind
    np.testing.assert_array_equal(seg_mask(paths["seg"]), mask)
    seg, sr, sc = (pydicom.dcmread(paths[k]) for k in ("seg", "sr", "sc"))
    finding = sr_finding(paths["sr"])
    assert finding["present"] is True and finding["probability"] == pytest.approx(0.875)
    assert finding["areas"] == {"mm2": pytest.approx(mask.sum() * SPACING[0] * SPACING[1])}
    assert finding["references"] == [(seg.SOPInstanceUID, 1)]
    for ds in (seg, sr, sc):            # the source's patient and study, a new series
        assert ds.PatientName == "DOE^JANE" and ds.PatientID == "P1"
        assert ds.StudyInstanceUID == image.source.dataset.StudyInstanceUID
        assert ds.SeriesInstanceUID != image.source.dataset.SeriesInstanceUID
        assert ds.Manufacturer == "keras_ptx" and "not for diagnostic use" in ds.SeriesDescription
        assert "FrameOfReferenceUID" not in ds        # a radiograph has none: none invented
    segment = seg.SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "36118008"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "keras_ptx" and IDENTITY.model in algorithm.AlgorithmVersion
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert seg.PatientOrientation == image.source.dataset.PatientOrientation
    assert "PlanePositionSequence" not in seg.PerFrameFunctionalGroupsSequence[0]
    assert sc.BurnedInAnnotation == "YES" and sc.pixel_array.shape == (*mask.shape, 3)


def test_a_negative_image_gets_an_empty_segment_and_an_absent_finding(tmp_path):
    image = _source(tmp_path, "cr-jpeg-m2-8")
    paths = _write(build_objects(image.source.dataset, np.zeros(image.pixels.shape, bool), 0.03,
                                 IDENTITY), tmp_path)
    assert set(paths) == {"seg", "sr"}
    for path in paths.values():
        assert dciodvfy_errors(path) == []
    assert not seg_mask(paths["seg"]).any()
    assert sr_finding(paths["sr"]) == {"present": False, "probability": pytest.approx(0.03),
                                       "areas": {}, "references": []}


@pytest.mark.parametrize("spacing", [None, ["0", "0"]])
def test_without_a_usable_spacing_the_area_is_in_pixels(tmp_path, spacing):
    image = _source(tmp_path, "sc-raw-m1-8", PixelSpacing=spacing)
    assert spacing_mm(image.source.dataset) is None
    mask = _blob(image.pixels.shape)
    paths = _write(build_objects(image.source.dataset, mask, 0.9, IDENTITY, ("sr",)), tmp_path)
    assert dciodvfy_errors(paths["sr"]) == []
    finding = sr_finding(paths["sr"])
    assert finding["areas"] == {"{pixels}": mask.sum()} and finding["references"] == []


def test_imager_pixel_spacing_comes_before_pixel_spacing(tmp_path):
    image = _source(tmp_path, "dx-rle-m1-16", PixelSpacing=["0.5", "0.5"])
    assert spacing_mm(image.source.dataset) == SPACING


def test_the_compact_serving_answer_gives_the_same_objects_and_uids_are_stable(tmp_path):
    image = _source(tmp_path, "dx-rle-m1-16")
    mask = _blob(image.pixels.shape)
    full = build_objects(image.source.dataset, mask, 0.6, IDENTITY)
    compact = build_objects(image.source.dataset, (rle.encode(mask), *mask.shape), 0.6, IDENTITY)
    for kind in ("seg", "sr"):
        assert full[kind].SOPInstanceUID == compact[kind].SOPInstanceUID
        assert full[kind].SeriesInstanceUID == compact[kind].SeriesInstanceUID
    np.testing.assert_array_equal(full["seg"].pixel_array, compact["seg"].pixel_array)
    other = build_objects(image.source.dataset, mask, 0.6, dataclasses.replace(IDENTITY, model="other"))
    assert other["seg"].SOPInstanceUID != full["seg"].SOPInstanceUID


@pytest.mark.parametrize("positive", [True, False])
def test_the_sr_document_is_what_highdicoms_comprehensive_3d_sr_makes(tmp_path, monkeypatch,
                                                                       positive):
    """report() wraps highdicom's TID 1500 content itself, skipping Comprehensive3DSR's
    second pass; the document must be the same, attribute for attribute, but for the times."""
    import highdicom as hd
    from keras_ptx.results import dicom_objects

    image = _source(tmp_path, "dx-rle-m1-16")
    mask = _blob(image.pixels.shape) & positive
    made = {}
    wrap = dicom_objects._sr_document
    monkeypatch.setattr(dicom_objects, "_sr_document",
                        lambda *args: made.setdefault("ours", (args, wrap(*args)))[1])
    ours = build_objects(image.source.dataset, mask, 0.4, IDENTITY)["sr"]
    (source, content, evidence, identity, description), _ = made["ours"]
    reference = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=content, series_instance_uid=ours.SeriesInstanceUID,
        series_number=ours.SeriesNumber, sop_instance_uid=ours.SOPInstanceUID,
        instance_number=ours.InstanceNumber, manufacturer="keras_ptx", is_complete=True,
        series_description=description)

    def comparable(ds):
        return json.dumps(ds.to_json_dict(), sort_keys=True, default=str)

    for ds in (ours, reference):
        for keyword in ("InstanceCreationDate", "InstanceCreationTime", "ContentDate",
                        "ContentTime"):
            delattr(ds, keyword)
        for item in ds.ContributingEquipmentSequence:
            item.pop("ContributionDateTime", None)
    assert comparable(ours) == comparable(reference)
    assert ours.file_meta.MediaStorageSOPClassUID == reference.file_meta.MediaStorageSOPClassUID


def test_masks_off_the_source_grid_and_unknown_kinds_are_refused(tmp_path):
    image = _source(tmp_path, "cr-jpeg-m2-8")
    with pytest.raises(ObjectError, match="shape"):
        build_objects(image.source.dataset, np.zeros((10, 10), bool), 0.5, IDENTITY)
    with pytest.raises(ObjectError, match="kind"):
        build_objects(image.source.dataset, _blob(image.pixels.shape), 0.5, IDENTITY, ("seg", "pdf"))
    with pytest.raises(ObjectError, match="pixels"):
        build_objects(image.source.dataset, _blob(image.pixels.shape), 0.5, IDENTITY, ("sc",))


def test_a_real_chest_radiograph_gives_valid_objects(tmp_path):
    image = read_dicom(pydicom.data.get_testdata_file("RG1_J2KI.dcm"))
    assert rejection(image.source.dataset) is None
    mask = _blob(image.pixels.shape)
    paths = _write(build_objects(image.source.dataset, mask, 0.7, IDENTITY, ("seg", "sr", "sc"),
                                 pixels=image.pixels), tmp_path)
    for path in paths.values():
        assert dciodvfy_errors(path) == []
    np.testing.assert_array_equal(seg_mask(paths["seg"]), mask)


# ---------------------------------------------------------------- the intended-use gate

@pytest.mark.parametrize("name,changes,reason", [
    ("cr-jpeg-m2-8", {"ViewPosition": "LL"}, "ViewPosition LL: not a frontal"),
    ("sc-raw-m1-8", {"ViewPosition": "LATERAL"}, "ViewPosition LATERAL"),
    ("dx-rle-m1-16", {"ViewPosition": "RL"}, "ViewPosition RL"),
    ("cr-jpeg-m2-8", {"BodyPartExamined": "HAND"}, "BodyPartExamined HAND"),
    ("sc-raw-m1-8", {"Modality": "OT"}, "Modality OT: not a radiograph"),
    ("cr-jpeg-m2-8", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1.1"}, "For Processing"),
    ("cr-jpeg-m2-8", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, "CT Image Storage"),
    ("cr-jpeg-m2-8", {"NumberOfFrames": 2}, "multi-frame object (2 frames)"),
    ("cr-jpeg-m2-8", {"Manufacturer": "keras_ptx"}, "keras_ptx result object fed back"),
])
def test_images_the_model_was_not_made_for_get_a_reason(tmp_path, name, changes, reason):
    image = _source(tmp_path, name)
    for keyword, value in changes.items():
        setattr(image.source.dataset, keyword, value)
    found = rejection(image.source.dataset)
    assert found is not None and reason in found
    assert "DOE" not in found and "P1" not in found


@pytest.mark.parametrize("name", SOURCES)
def test_frontal_chest_radiographs_pass_with_or_without_body_part_and_view(tmp_path, name):
    assert rejection(_source(tmp_path, name).source.dataset) is None
    assert rejection(_source(tmp_path, name, view="AP").source.dataset) is None
    assert rejection(_source(tmp_path, name, view="", BodyPartExamined=None).source.dataset) is None


def test_real_files_that_are_not_a_chest_radiograph_and_our_own_objects_are_refused(tmp_path):
    extremity = pydicom.dcmread(pydicom.data.get_testdata_file("RG3_UNCR.dcm"),
                                stop_before_pixels=True)
    assert "BodyPartExamined EXTREMITY" in rejection(extremity)
    multi_frame = pydicom.dcmread(pydicom.data.get_testdata_file("emri_small_RLE.dcm"),
                                  stop_before_pixels=True)
    assert "Enhanced MR Image Storage" in rejection(multi_frame)
    image = _source(tmp_path, "cr-jpeg-m2-8")
    for ds in build_objects(image.source.dataset, _blob(image.pixels.shape), 0.9, IDENTITY,
                            ("seg", "sr", "sc"), pixels=image.pixels).values():
        assert "fed back" in rejection(pydicom.dcmread(pydicom.filebase.DicomBytesIO(encode(ds))))
