"""keras_ptx.data.dicom against pydicom's and pydicom-data's real files and written variants."""
import hashlib
import os
import pickle
from dataclasses import fields

import numpy as np
import pydicom
from pydicom.pixels import pixel_array
import pydicom.data
import pytest
from pydicom.uid import UID

from keras_ptx.data import dicom
from keras_ptx.data.dicom import (DicomError, DicomHeader, DicomImage, parse_age, read_dicom,
                                  read_dicom_header)
from keras_ptx.synthetic.dicom_writer import write_dicom

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")   # pydicom's notes on odd files

TESTDATA = sorted(f for f in pydicom.data.get_testdata_files() if os.path.isfile(f))
CORPUS_ROOT = os.path.commonpath(TESTDATA)


def shipped(name):
    return pydicom.data.get_testdata_file(name)


def make_dicom(tmp_path, pixels, name="image.dcm", **options):
    tags = dict(image_id="1.2.826.0.1.3680043.8.498.1", study_uid="1.2.826.0.1.3680043.8.498.2",
                series_uid="1.2.826.0.1.3680043.8.498.3", patient_id="patient-7",
                patient_name="Doe^Jane", sex="F", age=58, view="PA")
    tags.update(options)
    return write_dicom(tmp_path / name, pixels, **tags)


def edit_dicom(path, change, out=None):
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(out or path)
    return out or path


def chest_like(height=48, width=40, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    base = 40 + 150 * np.exp(-((xx - width / 2) / (width / 8)) ** 2) + 30 * yy / height
    return np.clip(base + rng.normal(0, 6, (height, width)), 0, 255).astype(np.uint8)


def ramp16(height=32, width=64):
    return np.tile(np.linspace(0, 4095, width).astype(np.uint16), (height, 1))


# ---------------------------------------------------------------- every shipped file

@pytest.fixture(scope="module")
def corpus():
    """path -> DicomImage or DicomError, for every file pydicom and pydicom-data ship."""
    results = {}
    for path in TESTDATA:
        try:
            results[path] = read_dicom(path)
        except DicomError as exc:
            results[path] = exc
    return results


def test_pydicom_data_is_installed():
    assert any(name.endswith("RG1_UNCR.dcm") for name in TESTDATA)
    assert len(TESTDATA) > 200


@pytest.mark.parametrize("path", TESTDATA, ids=lambda p: os.path.relpath(p, CORPUS_ROOT))
def test_every_shipped_file_is_read_or_rejected_with_a_reason(corpus, path):
    try:                                    # anything but DicomError escaping fails the test
        header = read_dicom_header(path)
    except DicomError as exc:
        header = exc
    for result in (corpus[path], header):
        if isinstance(result, DicomError):
            assert result.path == path and result.reason.strip()
            assert str(result) == f"{path}: {result.reason}"
            continue
        assert result.image_id and result.path == path
        if isinstance(result, DicomImage):
            assert result.pixels.dtype == np.uint8 and result.pixels.ndim == 2
            assert result.pixels.shape == (result.rows, result.columns)


def test_header_matches_the_full_read(corpus):
    compared = 0
    for path, image in corpus.items():
        if isinstance(image, DicomImage):
            header = read_dicom_header(path)
            assert header == DicomHeader(**{f.name: getattr(image, f.name)
                                            for f in fields(DicomHeader)})
            compared += 1
    assert compared > 100


@pytest.mark.parametrize("name, reason", [
    ("rtdose.dcm", "multi-frame image (15 frames)"),
    ("emri_small_RLE.dcm", "multi-frame"),
    ("rtstruct.dcm", "no pixel data"),
    ("MR_truncated.dcm", "truncated file (PixelData needs 8,192 bytes"),
    ("rtplan_truncated.dcm", "truncated file (BeamSequence needs 976 bytes"),
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "truncated file (no data elements"),
    ("README.txt", "not a DICOM file"),
    ("test1.json", "not a DICOM file"),
    ("meta_missing_tsyntax.dcm", "no SOPInstanceUID"),
    ("badVR.dcm", "invalid or unsupported DICOM"),
])
def test_known_bad_files_give_their_reason(corpus, name, reason):
    path = next(p for p in corpus if os.path.basename(p) == name)
    assert isinstance(corpus[path], DicomError)
    assert reason in corpus[path].reason


def test_only_the_cut_files_of_the_corpus_are_called_truncated(corpus):
    truncated = {os.path.basename(path) for path, result in corpus.items()
                 if isinstance(result, DicomError) and result.reason.startswith("truncated")}
    assert truncated == {"MR_truncated.dcm", "rtplan_truncated.dcm",
                         "emri_small_jpeg_2k_lossless_too_short.dcm"}


@pytest.mark.parametrize("name", [
    "RG1_J2KI.dcm",                         # JPEG 2000
    "MR_small_jpeg_ls_lossless.dcm",        # JPEG-LS
    "JPEGLSNearLossless_08.dcm",
    "MR_small_RLE.dcm",                     # RLE Lossless
    "SC_rgb_jpeg.dcm",                      # JPEG Baseline
    "JPEG-LL.dcm",                          # JPEG Lossless
    "image_dfl.dcm",                        # Deflated
    "MR_small_bigendian.dcm",               # Explicit VR Big Endian
    "OT-PAL-8-face.dcm",                    # no preamble / file meta: a bare dataset
])
def test_compressed_and_unusual_encodings_are_read(corpus, name):
    assert isinstance(corpus[shipped(name)], DicomImage)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm", "MR_small_padded.dcm"])
def test_lossless_encodings_of_one_image_agree_exactly(corpus, name):
    assert np.array_equal(corpus[shipped(name)].pixels, corpus[shipped("MR_small.dcm")].pixels)


# ---------------------------------------------------------------- the real chest radiograph

def upper_middle(pixels):
    height, width = pixels.shape
    band = pixels[int(0.25 * height):int(0.55 * height)].astype(np.float64)
    centre = band[:, int(0.45 * width):int(0.55 * width)].mean()
    lateral = np.concatenate([band[:, :width // 3], band[:, -(width // 3):]], axis=1).mean()
    return centre, lateral


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KI.dcm"])
def test_chest_radiograph_has_dark_lungs_and_bright_mediastinum(corpus, name):
    image = corpus[shipped(name)]
    assert image.photometric == "MONOCHROME1"
    assert (image.rows, image.columns) == (1955, 1841) == image.pixels.shape   # not square
    centre, lateral = upper_middle(image.pixels)
    assert centre > lateral + 25, (centre, lateral)
    assert image.sex == "F" and image.view == "PA"


def test_uncompressed_and_jpeg2000_chest_agree(corpus):
    a = corpus[shipped("RG1_UNCR.dcm")].pixels.astype(np.float64)
    b = corpus[shipped("RG1_J2KI.dcm")].pixels.astype(np.float64)
    assert np.abs(a - b).mean() < 2.0
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_monochrome1_file_is_inverted(corpus):
    stored = pydicom.dcmread(shipped("RG1_UNCR.dcm")).pixel_array[::8, ::8].astype(np.float64)
    shown = corpus[shipped("RG1_UNCR.dcm")].pixels[::8, ::8].astype(np.float64)
    assert np.corrcoef(stored.ravel(), shown.ravel())[0, 1] < -0.95


# ---------------------------------------------------------------- pixel conversion rules

@pytest.mark.parametrize("syntax", ["explicit_le", "jpeg_baseline"])
def test_8bit_monochrome2_passes_through_bit_exact(tmp_path, syntax):
    pixels = chest_like()
    path = make_dicom(tmp_path, pixels, transfer_syntax=syntax)
    image = read_dicom(path)
    decoded = pixel_array(path, decoding_plugin="pillow" if syntax == "jpeg_baseline" else "")
    assert image.pixels.dtype == np.uint8 and np.array_equal(image.pixels, decoded)
    if syntax == "explicit_le":
        assert np.array_equal(image.pixels, pixels)
    else:
        assert np.abs(image.pixels.astype(int) - pixels).mean() < 3     # JPEG is lossy
        other = pixel_array(path, decoding_plugin="pylibjpeg")          # IDCT rounding apart
        assert np.abs(image.pixels.astype(int) - other).max() <= 1


def test_8bit_monochrome1_is_inverted_exactly(tmp_path):
    pixels = chest_like()
    path = make_dicom(tmp_path, pixels, transfer_syntax="explicit_le", photometric="MONOCHROME1")
    assert np.array_equal(pydicom.dcmread(path).pixel_array, 255 - pixels)   # stored inverted
    image = read_dicom(path)
    assert image.photometric == "MONOCHROME1" and np.array_equal(image.pixels, pixels)


def test_deep_data_without_window_gets_a_percentile_window(tmp_path):
    path = make_dicom(tmp_path, ramp16(), transfer_syntax="explicit_le", bits=16)
    pixels = read_dicom(path).pixels
    assert pixels.min() == 0 and pixels.max() == 255
    assert (np.diff(pixels[0].astype(int)) >= 0).all()     # monotone along the ramp
    assert abs(int(pixels[0, 32]) - 128) <= 3


def window(center, width):
    def change(ds):
        ds.WindowCenter, ds.WindowWidth = center, width
    return change


def test_window_center_and_width_are_applied(tmp_path):
    path = edit_dicom(make_dicom(tmp_path, ramp16(), transfer_syntax="explicit_le", bits=16),
                      window(2048, 1024))
    row = read_dicom(path).pixels[0].astype(int)
    values = ramp16()[0].astype(np.float64)
    assert (row[values <= 1536] == 0).all() and (row[values >= 2560] == 255).all()
    linear = np.clip((values - 2047.5) / 1023 + 0.5, 0, 1) * 255     # DICOM PS3.3 C.11.2.1.2
    assert np.abs(row - linear).max() <= 1


def test_monochrome1_is_inverted_after_windowing(tmp_path):
    mono2 = edit_dicom(make_dicom(tmp_path, ramp16(), transfer_syntax="explicit_le", bits=16),
                       window(2048, 1024))
    mono1 = edit_dicom(mono2, lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"),
                       out=tmp_path / "mono1.dcm")
    assert np.array_equal(read_dicom(mono1).pixels, 255 - read_dicom(mono2).pixels)


def test_an_unusable_window_falls_back_to_percentiles(tmp_path):
    plain = make_dicom(tmp_path, ramp16(), transfer_syntax="explicit_le", bits=16)
    broken = edit_dicom(plain, window(2048, 0), out=tmp_path / "broken.dcm")
    assert np.array_equal(read_dicom(broken).pixels, read_dicom(plain).pixels)


def test_voi_lut_is_scaled_by_its_nominal_range(corpus):
    # vlut_04's 16-bit LUT is value * 257: the identity once scaled to 8 bits.
    assert np.array_equal(corpus[shipped("vlut_04.dcm")].pixels,
                          pydicom.dcmread(shipped("vlut_04.dcm")).pixel_array)


def test_rgb_becomes_luma(corpus):
    rgb = pydicom.dcmread(shipped("SC_rgb.dcm")).pixel_array.astype(np.float64)
    luma = np.rint(rgb @ [0.299, 0.587, 0.114]).astype(np.uint8)
    assert np.array_equal(corpus[shipped("SC_rgb.dcm")].pixels, luma)


@pytest.mark.parametrize("name", ["SC_ybr_full_uncompressed.dcm", "SC_ybr_full_422_uncompressed.dcm",
                                  "SC_rgb_dcmtk_+eb+cy+n1.dcm", "SC_rgb_rle_16bit.dcm"])
def test_ybr_and_deeper_colour_give_the_same_gray(corpus, name):
    diff = corpus[shipped(name)].pixels.astype(int) - corpus[shipped("SC_rgb.dcm")].pixels
    assert np.abs(diff).mean() < 2


def test_palette_colour_with_8bit_entries_in_a_16bit_lut(corpus):
    little = corpus[shipped("OBXXXX1A.dcm")].pixels.astype(int)
    big = corpus[shipped("OBXXXX1A_expb.dcm")].pixels.astype(int)
    assert little.max() > 200 and np.abs(little - big).mean() < 1


def test_non_square_image_keeps_its_shape(corpus, tmp_path):
    image = corpus[shipped("JPEG2000.dcm")]
    assert (image.rows, image.columns) == image.pixels.shape == (1024, 256)
    wide = read_dicom(make_dicom(tmp_path, chest_like(20, 70), transfer_syntax="jpeg_baseline"))
    assert wide.pixels.shape == (20, 70) and (wide.rows, wide.columns) == (20, 70)


# ---------------------------------------------------------------- tags and privacy

def test_tags_are_read_and_the_patient_stays_private(tmp_path):
    image = read_dicom(make_dicom(tmp_path, chest_like(), sex="M", age=58, view="AP"))
    assert image.image_id == "1.2.826.0.1.3680043.8.498.1"
    assert (image.sex, image.age, image.view) == ("M", 58, "AP")
    assert image.photometric == "MONOCHROME2"
    assert image.patient_hash == hashlib.sha256(b"patient-7").hexdigest()[:16]
    text = repr(image) + repr([getattr(image, f.name) for f in fields(image) if f.name != "pixels"])
    assert "patient-7" not in text and "Doe" not in text and "Jane" not in text
    assert not hasattr(image, "patient_name") and not hasattr(image, "patient_id")


def test_absent_tags_give_empty_values(tmp_path):
    path = edit_dicom(make_dicom(tmp_path, chest_like(), sex="", view="", age=None),
                      lambda ds: delattr(ds, "PatientID"))
    image = read_dicom(path)
    assert (image.sex, image.age, image.view, image.patient_hash) == ("", -1, "", "")


def test_siim_plain_age_string(tmp_path):
    path = edit_dicom(make_dicom(tmp_path, chest_like()), lambda ds: setattr(ds, "PatientAge", "58"))
    assert read_dicom(path).age == 58


@pytest.mark.parametrize("text, years", [("058Y", 58), ("58", 58), (" 7 ", 7), ("018M", 1),
                                         ("006M", 0), ("104W", 2), ("400D", 1), ("058y", 58),
                                         ("", -1), (None, -1), ("abc", -1), ("58Q", -1),
                                         ("-5", -1), ("413", -1), ("5.5", -1)])
def test_parse_age(text, years):
    assert parse_age(text) == years


def test_images_with_one_patient_share_a_hash_and_others_differ(tmp_path):
    a = read_dicom_header(make_dicom(tmp_path, chest_like(), name="a.dcm"))
    b = read_dicom_header(make_dicom(tmp_path, chest_like(), name="b.dcm",
                                     image_id="1.2.826.0.1.3680043.8.498.9"))
    c = read_dicom_header(make_dicom(tmp_path, chest_like(), name="c.dcm", patient_id="other"))
    assert a.patient_hash == b.patient_hash != c.patient_hash and len(a.patient_hash) == 16


# ---------------------------------------------------------------- failures

def rejected(path):
    with pytest.raises(DicomError) as info:
        read_dicom(path)
    assert info.value.path == os.fspath(path) and info.value.reason
    return info.value.reason


@pytest.mark.parametrize("syntax", ["explicit_le", "jpeg_baseline"])
@pytest.mark.parametrize("keep", [0.05, 0.3, 0.9, -1])
def test_truncated_file_is_named_as_such(tmp_path, syntax, keep):
    """pydicom itself reads cut files without complaint (an empty dataset, a short value)."""
    path = make_dicom(tmp_path, chest_like(64, 64), transfer_syntax=syntax)
    data = path.read_bytes()
    path.write_bytes(data[:keep if keep < 0 else int(len(data) * keep)])
    assert rejected(path).startswith("truncated file (")
    if keep > 0.1:                  # the header before the pixels is whole
        assert read_dicom_header(path).rows == 64


@pytest.mark.parametrize("padding", [2, 8, 100])
def test_bytes_after_the_last_element_are_not_a_cut(tmp_path, padding):
    path = make_dicom(tmp_path, chest_like(64, 64))
    expected = read_dicom(path).pixels
    path.write_bytes(path.read_bytes() + bytes(padding))
    np.testing.assert_array_equal(read_dicom(path).pixels, expected)


def test_file_without_pixel_data(tmp_path):
    path = edit_dicom(make_dicom(tmp_path, chest_like()), lambda ds: delattr(ds, "PixelData"))
    assert rejected(path) == "no pixel data"


def test_file_without_sop_instance_uid(tmp_path):
    path = edit_dicom(make_dicom(tmp_path, chest_like()), lambda ds: delattr(ds, "SOPInstanceUID"))
    assert "SOPInstanceUID" in rejected(path)
    with pytest.raises(DicomError, match="SOPInstanceUID"):
        read_dicom_header(path)


@pytest.mark.parametrize("content", [b"", b"ImageId,EncodedPixels\n", b"\x89PNG\r\n\x1a\n" * 40,
                                     b"DICM" * 100, bytes(range(256)) * 8])
def test_non_dicom_files(tmp_path, content):
    path = tmp_path / "not.dcm"
    path.write_bytes(content)
    assert rejected(path)


def test_missing_path_and_directory(tmp_path):
    assert rejected(tmp_path / "absent.dcm") == "no such file"
    assert rejected(tmp_path) == "not a regular file"


def test_zero_size_image(tmp_path):
    def zero(ds):
        ds.Rows = 0
    assert "zero-size" in rejected(edit_dicom(make_dicom(tmp_path, chest_like(),
                                                         transfer_syntax="explicit_le"), zero))


def test_multi_frame_written_file(tmp_path):
    def frames(ds):
        ds.NumberOfFrames = 2
    path = edit_dicom(make_dicom(tmp_path, chest_like(), transfer_syntax="explicit_le"), frames)
    assert "multi-frame" in rejected(path)


def test_unsupported_transfer_syntax(tmp_path):
    def mpeg(ds):
        ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")   # MPEG2 video
    path = edit_dicom(make_dicom(tmp_path, chest_like()), mpeg)
    assert "unsupported transfer syntax" in rejected(path)


def test_missing_decoder_is_named(tmp_path, monkeypatch):
    class Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg-libjpeg"]
    monkeypatch.setattr(dicom, "get_decoder", lambda syntax: Unavailable())
    reason = rejected(make_dicom(tmp_path, chest_like()))
    assert "no decoder installed" in reason and "pylibjpeg-libjpeg" in reason


@pytest.mark.parametrize("source", ["MR_small.dcm", "synthetic"])
def test_corrupted_bytes_never_escape_as_another_exception(tmp_path, source):
    if source == "synthetic":
        data = make_dicom(tmp_path, chest_like(32, 32)).read_bytes()
    else:
        data = open(shipped(source), "rb").read()
    rng = np.random.default_rng(11)
    path = tmp_path / "corrupt.dcm"
    for _ in range(40):
        damaged = bytearray(data)
        for position in rng.integers(128, len(data), size=int(rng.integers(1, 6))):
            damaged[position] = int(rng.integers(0, 256))
        path.write_bytes(bytes(damaged))
        try:
            image = read_dicom(path)
        except DicomError:
            continue
        assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 2


def test_dicom_error_pickles_for_worker_processes():
    error = pickle.loads(pickle.dumps(DicomError("/x/y.dcm", "no pixel data")))
    assert (error.path, error.reason, str(error)) == ("/x/y.dcm", "no pixel data",
                                                      "/x/y.dcm: no pixel data")


def test_image_pickles_and_is_frozen(tmp_path):
    image = read_dicom(make_dicom(tmp_path, chest_like()))
    again = pickle.loads(pickle.dumps(image))
    assert again == image and np.array_equal(again.pixels, image.pixels)
    with pytest.raises(AttributeError):
        image.image_id = "other"
