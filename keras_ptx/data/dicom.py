"""Read one DICOM file into a 2-D uint8 image in display convention (air dark, bone bright).

``read_dicom(path)`` returns a :class:`DicomImage`: the pixels plus the tags keras_ptx uses.
Pixel conversion:

* 8-bit grayscale without a modality or VOI transform (SIIM's MONOCHROME2 files) passes through
  unchanged;
* deeper data goes through the modality LUT / rescale, then the file's VOI LUT or window
  (scaled by that transform's output range), else a robust 0.5-99.5 percentile window;
* MONOCHROME1 is inverted after windowing; RGB, YBR and palette colour become luma (BT.601).

Every failure (not DICOM, a DICOMDIR, truncated, no pixels, multi-frame, too many pixels,
unsupported transfer syntax, missing decoder, ...) raises :class:`DicomError` carrying the path
and the reason; no other exception type leaves :func:`read_dicom` or :func:`read_dicom_header`
(but a bad :data:`MAX_PIXELS_VARIABLE` is a :class:`PixelLimitError`, refused as a setting).

Decompression bombs. Before any pixel is decoded, the pixel count the header declares
(Rows x Columns x samples; a multi-frame object is refused before) must be at most :func:`max_pixels`, and a compressed frame's
own header (JPEG SOF, JPEG 2000 SIZ) must declare the same Rows and Columns: a codec allocates
what its header says, not what the DICOM header says. The limit is the environment variable
``KERAS_PTX_MAX_PIXELS`` (a whole number of pixels, samples counted), default 64 million: any
radiograph detector fits, in colour too (the largest, 43 x 43 cm at 0.1 mm, is ~4,300 x 4,300 =
18.5 million, 55.5 million as RGB). A Deflated Explicit VR Little Endian file is inflated here,
never past :func:`max_inflated_bytes` (pydicom would inflate all of it: ~1000:1). RLE
declares no size; it is decoded with pylibjpeg-rle, which writes into the frame's size (pydicom's
own RLE decoder grows a segment by up to 64 bytes per byte read before it checks). The decoded
array must have the header's shape. JPEG Baseline (SIIM's syntax) is decoded with Pillow
(libjpeg-turbo): 4.5 ms per 1024 x 1024 radiograph against pylibjpeg's 17.6, and without the
GIL, which the DICOM node's receiving and predicting threads need (BENCHMARKS.md); the two
decoders differ by at most one grey level on about 3% of pixels (IDCT rounding). Patient names and IDs
leave this module only inside :class:`SourceHeader`, which shows nothing of them when printed
or logged (the DICOM result objects must carry the source's patient module), and otherwise a
PatientID only as a one-way hash (``patient_hash``).
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_preamble
from pydicom.pixels import (apply_color_lut, apply_modality_lut, apply_voi, apply_windowing,
                            as_pixel_options, get_decoder)
try:                                # the SOF parser pydicom's decoders use; private to pydicom
    from pydicom.pixels.utils import _get_jpg_parameters
except ImportError:                 # gone in a later pydicom: keras_ptx's own (_sof_size)
    _get_jpg_parameters = None
from pydicom.uid import (JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes,
                         DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit,
                         MediaStorageDirectoryStorage, RLELossless)

from keras_ptx.errors import UserError

PATIENT_HASH_CHARS = 16
MAX_AGE = 130                       # older "ages" are data-entry errors (SIIM has some): -1
_LUMA = np.array([0.299, 0.587, 0.114])
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_DIVISOR = {"": 1, "Y": 1, "M": 12, "W": 52, "D": 365}
_ENCODING_SYNTAX = {(True, True): ImplicitVRLittleEndian, (False, True): ExplicitVRLittleEndian,
                    (False, False): ExplicitVRBigEndian}
DICOM_SUFFIXES = (".dcm", ".dicom")     # any case; dotfiles are skipped
UNDEFINED_LENGTH = 0xFFFFFFFF
# pydicom warns of a cut in encapsulated pixel data; read_dicom reports it as "truncated file".
warnings.filterwarnings("ignore", message="End of file reached before delimiter",
                        category=UserWarning, module=r"pydicom\.")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAG_NUMBERS = {tag_for_keyword(keyword) for keyword in _PIXEL_TAGS}
MAX_PIXELS_VARIABLE = "KERAS_PTX_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 64_000_000
INFLATED_BYTES_PER_PIXEL = 2        # 16 bits a sample, the most a radiograph stores
INFLATED_OTHER_BYTES = 1 << 20      # the elements besides the pixels
_INFLATE_CHUNK = 1 << 20
# JPEG's start-of-frame markers (ITU T.81 B.1.1.3: C0-CF but DHT, JPG, DAC) and JPEG-LS's SOF55
_SOF_MARKERS = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7}
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD9)}      # TEM, RSTn, SOI: no length follows
_JPEG_SYNTAXES = {*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes}
_J2K_START = b"\xff\x4f\xff\x51"     # SOC then SIZ: how every JPEG 2000 codestream begins
_PLUGIN = {RLELossless: "pylibjpeg", JPEGBaseline8Bit: "pillow"}     # see the module docstring


class PixelLimitError(UserError):
    """A ``KERAS_PTX_MAX_PIXELS`` that is not a positive whole number."""


def max_pixels() -> int:
    """The most pixels a DICOM may declare (module docstring): ``KERAS_PTX_MAX_PIXELS``, else
    :data:`DEFAULT_MAX_PIXELS`; :class:`PixelLimitError` for a value that is not a positive
    whole number."""
    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise PixelLimitError(f"{MAX_PIXELS_VARIABLE}={text[:40]!r}: expected a positive whole "
                              f"number of pixels (default {DEFAULT_MAX_PIXELS})")
    return limit


def max_inflated_bytes(limit: int) -> int:
    """The most bytes a deflated dataset may inflate to when a DICOM may declare ``limit``
    pixels: those at :data:`INFLATED_BYTES_PER_PIXEL` plus :data:`INFLATED_OTHER_BYTES`."""
    return limit * INFLATED_BYTES_PER_PIXEL + INFLATED_OTHER_BYTES


class DicomError(Exception):
    """A file that cannot become one image; ``str()`` is ``"path: reason"``."""

    def __init__(self, path, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):           # picklable across worker processes
        return type(self), (self.path, self.reason)


class SourceHeader:
    """The file's header as read (a pydicom Dataset without pixel data), for the objects that
    must carry the source's patient and study. Its repr and str show none of it."""
    __slots__ = ("dataset",)

    def __init__(self, dataset: pydicom.Dataset):
        self.dataset = dataset

    def __repr__(self) -> str:
        return "SourceHeader(<not shown>)"


@dataclass(frozen=True, kw_only=True)
class DicomHeader:
    """The tags keras_ptx uses; '' / -1 where the file lacks them."""
    path: str
    image_id: str                   # SOPInstanceUID
    rows: int
    columns: int
    photometric: str                # the file's PhotometricInterpretation
    sex: str
    age: int                        # years
    view: str                       # ViewPosition (PA / AP)
    patient_hash: str               # sha256 prefix of PatientID
    source: SourceHeader = field(compare=False, repr=False)


@dataclass(frozen=True, kw_only=True)
class DicomImage(DicomHeader):
    """A decoded image: ``pixels`` is (rows, columns) uint8, air dark, bone bright.
    Keyword construction only; equality compares the tags, not the pixels."""
    pixels: np.ndarray = field(compare=False, repr=False)


def find_dicom_files(folder) -> tuple[list[str], int]:
    """Every DICOM file under ``folder`` (nested or flat, by :data:`DICOM_SUFFIXES`), as
    '/'-separated paths relative to it, folders and names in sorted order; and how many other
    files (dotfiles aside) the walk passed over."""
    found, skipped = [], 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        rel = os.path.relpath(root, folder)
        for name in sorted(files):
            if name.startswith("."):
                continue
            if name.lower().endswith(DICOM_SUFFIXES):
                found.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
            else:
                skipped += 1
    return found, skipped


def read_dicom_header(path) -> DicomHeader:
    """The tags of ``path`` without decoding its pixels (cheap: stops before Pixel Data)."""
    path = os.fspath(path)
    limit = max_pixels()
    try:
        return _header(path, _dataset(path, limit, stop_before_pixels=True))
    except DicomError:
        raise
    except Exception as exc:        # noqa: BLE001 - the contract: only DicomError escapes
        raise DicomError(path, f"unreadable header ({type(exc).__name__}: {exc})") from exc


def read_dicom(path) -> DicomImage:
    """Decode ``path`` into a :class:`DicomImage`; raises :class:`DicomError` on any failure."""
    path = os.fspath(path)
    limit = max_pixels()
    try:
        ds = _dataset(path, limit, stop_before_pixels=False)
        header = _header(path, ds)
        pixels = _pixels(path, ds, limit)
        for tag in _PIXEL_TAGS:         # decoded: the header alone travels on
            ds.pop(tag, None)
        return DicomImage(pixels=pixels, **vars(header))
    except DicomError:
        raise
    except Exception as exc:        # noqa: BLE001 - the contract: only DicomError escapes
        raise DicomError(path, f"invalid or unsupported DICOM ({type(exc).__name__}: {exc})") from exc


def parse_age(text) -> int:
    """Years from a DICOM age string ('058Y', '006M', SIIM's plain '58'); -1 if absent or bad."""
    match = _AGE.match(str(text or ""))
    if not match:
        return -1
    years = int(match.group(1)) // _AGE_DIVISOR[match.group(2).upper()]
    return years if years <= MAX_AGE else -1


def patient_hash(patient_id) -> str:
    """One-way hash of a PatientID ('' when there is none)."""
    text = str(patient_id or "").strip()
    if not text:
        return ""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:PATIENT_HASH_CHARS]


def _dataset(path: str, limit: int, stop_before_pixels: bool) -> pydicom.Dataset:
    if not os.path.isfile(path):
        raise DicomError(path, "not a regular file" if os.path.exists(path) else "no such file")
    try:
        ds = _deflated_dataset(path, limit, stop_before_pixels) or \
            pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except DicomError:
        raise
    except InvalidDicomError:       # no preamble / file meta: maybe a bare dataset
        ds = _bare_dataset(path, stop_before_pixels)
    except Exception as exc:        # noqa: BLE001
        raise DicomError(path, f"corrupt DICOM ({type(exc).__name__}: {exc})") from exc
    cut = _cut_short(path, ds, whole=not stop_before_pixels)
    if cut:
        raise DicomError(path, f"truncated file ({cut})")
    return ds


def _deflated_dataset(path: str, limit: int, stop_before_pixels: bool) -> FileDataset | None:
    """The dataset of a Deflated Explicit VR Little Endian file (with or without preamble),
    inflated within :func:`max_inflated_bytes` of ``limit``; None for another transfer
    syntax."""
    with open(path, "rb") as handle:
        preamble = read_preamble(handle, force=True)
        try:
            meta = FileMetaDataset(read_dataset(handle, False, True, stop_when=_after_meta))
            deflated = meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
        except Exception:           # noqa: BLE001 - no readable file meta: pydicom's to judge
            return None
        if not deflated:
            return None
        deflated = handle.read()
    most = max_inflated_bytes(limit)
    if _inflated_size(deflated, most) > most:
        raise DicomError(path, f"the deflated data set inflates past {most:,} bytes, more than "
                               f"{limit:,} pixels need ({MAX_PIXELS_VARIABLE})")
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    data = inflater.decompress(deflated)
    if not inflater.eof:
        raise DicomError(path, "truncated file (the deflated data set ends early)")
    dataset = read_dataset(DicomBytesIO(data), False, True,
                           stop_when=_at_pixels if stop_before_pixels else None)
    return FileDataset(path, dataset, preamble, meta, False, True)


def _inflated_size(deflated: bytes, most: int) -> int:
    """How many bytes raw deflate data inflates to, counted a chunk at a time and no further
    than past ``most`` (so a bomb costs no memory)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size, chunk = 0, inflater.decompress(deflated, _INFLATE_CHUNK)
    while chunk and size <= most:
        size += len(chunk)
        chunk = inflater.decompress(inflater.unconsumed_tail, _INFLATE_CHUNK)
    return size


def _after_meta(tag, vr, length) -> bool:
    return tag >> 16 != 2


def _at_pixels(tag, vr, length) -> bool:
    return tag in _PIXEL_TAG_NUMBERS


def _cut_short(path: str, ds, whole: bool) -> str | None:
    """How a freshly read dataset shows its file was cut short, else None.

    pydicom reads a cut file without an error: it drops every element when the cut falls in
    encapsulated pixel data and returns a short value for a cut inside one. With ``whole``
    (the file read to its end), the last element must not run past the file's end (unless the
    dataset was deflated: its positions are in the inflated stream). Bytes after it (padding
    that some writers leave) are no sign of a cut: a lost element shows as missing pixels."""
    if not len(ds):
        return "no data elements after the file meta"
    meta = getattr(ds, "file_meta", None) or {}
    if not whole or meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return None
    last = ds.get_item(max(ds.keys()), keep_deferred=True)
    if not isinstance(last, RawDataElement) or last.value is None:
        return None                 # already converted by pydicom, or a sequence: no length
    undefined = last.length == UNDEFINED_LENGTH        # read up to its 8-byte delimiter
    end = last.value_tell + (len(last.value) + 8 if undefined else last.length)
    size = os.path.getsize(path)
    if end > size:
        return (f"{pydicom.datadict.keyword_for_tag(last.tag) or last.tag} needs "
                f"{last.length:,} bytes, {size - last.value_tell:,} are left")
    return None                     # bytes after the last element: padding, kept as it was


def _bare_dataset(path: str, stop_before_pixels: bool) -> pydicom.Dataset:
    """A file without preamble and file meta, accepted only if it names its SOPInstanceUID."""
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    except Exception as exc:        # noqa: BLE001
        raise DicomError(path, "not a DICOM file") from exc
    if "SOPInstanceUID" not in ds:
        raise DicomError(path, "not a DICOM file (no DICOM preamble and no SOPInstanceUID)")
    return ds


def _text(ds, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _header(path: str, ds) -> DicomHeader:
    meta = getattr(ds, "file_meta", None) or {}
    if meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage or \
            "DirectoryRecordSequence" in ds:
        raise DicomError(path, "a DICOMDIR (the index of a DICOM medium), not an image")
    image_id = _text(ds, "SOPInstanceUID")
    if not image_id:
        raise DicomError(path, "no SOPInstanceUID")
    return DicomHeader(
        path=path, image_id=image_id,
        rows=int(ds.get("Rows", 0) or 0), columns=int(ds.get("Columns", 0) or 0),
        photometric=_text(ds, "PhotometricInterpretation").upper(),
        sex=_text(ds, "PatientSex").upper(), age=parse_age(ds.get("PatientAge")),
        view=_text(ds, "ViewPosition").upper(), patient_hash=patient_hash(ds.get("PatientID")),
        source=SourceHeader(ds))


def _pixels(path: str, ds, limit: int) -> np.ndarray:
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise DicomError(path, "no pixel data")
    rows, columns = _declared_size(path, ds, limit)
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if not syntax:
        syntax = _ENCODING_SYNTAX.get(ds.original_encoding)
        if syntax is None:
            raise DicomError(path, "no transfer syntax and unknown dataset encoding")
        ds.file_meta.TransferSyntaxUID = syntax
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomError(path, f"unsupported transfer syntax {syntax.name} ({syntax})") from None
    if not decoder.is_available:
        raise DicomError(path, f"no decoder installed for {syntax.name} (needs one of: "
                               f"{'; '.join(decoder.missing_dependencies)})")
    _check_codec_size(path, ds, syntax, rows, columns, limit)
    plugin = _PLUGIN.get(syntax, "")
    try:
        arr, meta = decoder.as_array(ds, decoding_plugin=plugin, **as_pixel_options(ds))
    except Exception as exc:        # noqa: BLE001 - truncated / corrupt pixel data
        raise DicomError(path, f"cannot decode pixel data ({syntax.name}): {exc}") from exc
    if arr.shape[:2] != (rows, columns):
        raise DicomError(path, f"decoded {arr.shape[1]}x{arr.shape[0]} pixels, the header "
                               f"says {columns}x{rows}")
    photometric = str(meta["photometric_interpretation"]).upper()
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return _color_to_gray(arr, meta["bits_stored"])
    if arr.ndim != 2:
        raise DicomError(path, f"expected one 2-D image, decoded shape {arr.shape}")
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        # Writers often put 8-bit entries in a 16-bit LUT; like DCMTK, read those as 8-bit.
        return _color_to_gray(rgb, 8 if rgb.max() < 256 else 8 * rgb.dtype.itemsize)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(path, f"unsupported photometric interpretation {photometric!r}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise DicomError(path, "non-finite pixel values")
    if _display_ready(arr, ds):
        image = arr
    else:
        values = apply_modality_lut(arr, ds)
        unit = _voi_unit(values, ds)
        if unit is None:
            unit = _percentile_unit(values)
        image = np.rint(np.clip(unit, 0.0, 1.0) * 255).astype(np.uint8)
    return 255 - image if photometric == "MONOCHROME1" else image


def _declared_size(path: str, ds, limit: int) -> tuple[int, int]:
    """(Rows, Columns) of the one image ``ds`` declares, its pixels (samples counted) at most
    ``limit``; DicomError for more, none, or several frames."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:                 # never decoded, so frames need no place in the count
        raise DicomError(path, f"multi-frame image ({frames} frames); expected one image")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    _check_pixel_count(path, f"{columns}x{rows}", rows * columns * samples, limit)
    if not rows or not columns:
        raise DicomError(path, f"zero-size image ({ds.get('Rows')}x{ds.get('Columns')})")
    return rows, columns


def _check_pixel_count(path: str, what: str, pixels: int, limit: int) -> None:
    if pixels > limit:
        raise DicomError(path, f"{what} image: {pixels:,} pixels (rows x columns x samples)"
                               f" exceed the limit of {limit:,} ({MAX_PIXELS_VARIABLE})")


def _check_codec_size(path: str, ds, syntax, rows: int, columns: int, limit: int) -> None:
    """Refuse a compressed frame whose own header declares another size than Rows x Columns
    (or more samples than the limit allows): its decoder would allocate that size."""
    if syntax not in _JPEG_SYNTAXES and syntax not in JPEG2000TransferSyntaxes:
        return
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    except Exception as exc:        # noqa: BLE001 - broken encapsulation
        raise DicomError(path, f"unreadable encapsulated pixel data ({exc})") from exc
    codec = "JPEG 2000 SIZ" if syntax in JPEG2000TransferSyntaxes else "JPEG SOF"
    declared = _j2k_size(frame) if syntax in JPEG2000TransferSyntaxes else _jpeg_size(frame)
    if declared is None:
        raise DicomError(path, f"compressed frame without a readable {codec} header "
                               f"({syntax.name})")
    height, width, samples = declared
    if (height, width) != (rows, columns):
        raise DicomError(path, f"the {codec} header declares {width}x{height} pixels, the "
                               f"DICOM header {columns}x{rows}")
    _check_pixel_count(path, f"{columns}x{rows}", rows * columns * samples, limit)


def _jpeg_size(frame: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) of a JPEG or JPEG-LS frame's SOF, None if it has none."""
    if _get_jpg_parameters is None:
        return _sof_size(frame)
    info = _get_jpg_parameters(frame)
    return (info["height"], info["width"], info["components"]) if "height" in info else None


def _sof_size(frame: bytes) -> tuple[int, int, int] | None:
    """:func:`_jpeg_size` by keras_ptx's own walk of the marker segments from SOI to the first
    SOF (:data:`_SOF_MARKERS`: length, precision, Y, X, components); None without one."""
    if frame[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(frame):
        if frame[at] != 0xFF:
            return None
        marker = frame[at + 1]
        if marker == 0xFF or marker in _STANDALONE_MARKERS:     # a fill byte, or no length
            at += 1 if marker == 0xFF else 2
            continue
        if marker in _SOF_MARKERS:
            sof = frame[at + 4:at + 10]
            if len(sof) < 6:
                return None
            return (int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big"), sof[5])
        at += 2 + int.from_bytes(frame[at + 2:at + 4], "big")
    return None


def _j2k_size(frame: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG 2000 codestream's SIZ segment (ISO 15444-1
    A.5.1: Xsiz, Ysiz, XOsiz, YOsiz at bytes 8-23 after SOC, Csiz at 40), in a bare codestream
    or a JP2 file; None without one."""
    start = frame.find(_J2K_START)
    siz = frame[start:start + 42] if start >= 0 else b""
    if len(siz) < 42:
        return None
    x, y, x0, y0 = (int.from_bytes(siz[k:k + 4], "big") for k in (8, 12, 16, 20))
    return y - y0, x - x0, int.from_bytes(siz[40:42], "big")


def _display_ready(arr: np.ndarray, ds) -> bool:
    """8-bit grayscale with no modality or VOI transform: already display values."""
    if arr.dtype != np.uint8 or int(ds.get("BitsStored", 8)) != 8:
        return False
    if any(k in ds for k in ("ModalityLUTSequence", "VOILUTSequence", "WindowCenter", "WindowWidth")):
        return False
    return float(ds.get("RescaleSlope", 1) or 1) == 1 and float(ds.get("RescaleIntercept", 0) or 0) == 0


def _voi_unit(values: np.ndarray, ds):
    """``values`` through the file's VOI LUT or window, as [0, 1]; None if it has neither
    (or the transform is unusable, e.g. a zero window width)."""
    try:
        item = (ds.get("VOILUTSequence") or [None])[0]
        if item is not None and "LUTDescriptor" in item and "LUTData" in item:
            return apply_voi(values, ds) / float(2 ** int(item.LUTDescriptor[2]) - 1)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            with np.errstate(over="ignore"):     # the output range: the window's two limits
                low, high = apply_windowing(np.array([-1e300, 1e300]), ds)
            if high > low:
                return (apply_windowing(values, ds) - low) / (high - low)
    except (ValueError, TypeError, IndexError, NotImplementedError, AttributeError):
        pass
    return None


def _percentile_unit(values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values, (0.5, 99.5))
    if high <= low:
        low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(values.shape)
    return (values.astype(np.float64) - low) / (high - low)


def _color_to_gray(rgb: np.ndarray, bits: int) -> np.ndarray:
    luma = rgb.astype(np.float64) @ _LUMA
    return np.rint(np.clip(luma * (255.0 / (2 ** int(bits) - 1)), 0, 255)).astype(np.uint8)
