"""Write one chest radiograph as a DICOM file the way SIIM-ACR ships them (or deliberately not).

The default: Computed Radiography Image Storage, MONOCHROME2, 8 bits, one JPEG Baseline frame
encapsulated in the pixel data. The other options exercise readers with the variants hospitals
send: the class (``sc``: Secondary Capture with Modality CR, as SIIM's own files are; ``dx``:
Digital X-Ray For Presentation, whose spacing is ImagerPixelSpacing), MONOCHROME1, 16-bit
(BitsStored 12), and the transfer syntaxes Explicit VR Little Endian, RLE Lossless and JPEG
2000 Lossless (pydicom's encoders). Each class carries the attributes its IOD requires.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (PYDICOM_IMPLEMENTATION_UID, ComputedRadiographyImageStorage,
                         DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian,
                         JPEG2000Lossless, JPEGBaseline8Bit, RLELossless,
                         SecondaryCaptureImageStorage)

from keras_ptx.fileio import atomic_path

TRANSFER_SYNTAXES = {"jpeg_baseline": JPEGBaseline8Bit, "explicit_le": ExplicitVRLittleEndian,
                     "rle": RLELossless, "jpeg2000": JPEG2000Lossless}
SOP_CLASSES = {"cr": ComputedRadiographyImageStorage, "sc": SecondaryCaptureImageStorage,
               "dx": DigitalXRayImageStorageForPresentation}
MODALITY = {"cr": "CR", "sc": "CR", "dx": "DX"}
MANUFACTURER = "keras_ptx synthetic"
VIEW_CODES = {"PA": ("399348003", "SCT", "postero-anterior"),
              "AP": ("399067008", "SCT", "antero-posterior")}
PHOTOMETRICS = ("MONOCHROME2", "MONOCHROME1")
BITS_STORED = {8: 8, 16: 12}


def _stored_pixels(pixels: np.ndarray, bits: int, photometric: str) -> np.ndarray:
    """Display pixels (uint8, or uint16 below 2**12 for 16 bits; air dark) -> stored values."""
    top = (1 << BITS_STORED[bits]) - 1
    if pixels.dtype == np.uint8:
        values = (pixels.astype(np.uint32) * top + 127) // 255 if bits == 16 else pixels
    elif pixels.dtype == np.uint16 and bits == 16:
        if int(pixels.max(initial=0)) > top:
            raise ValueError(f"16-bit pixels must be <= {top} (BitsStored "
                             f"{BITS_STORED[bits]}), got {int(pixels.max())}")
        values = pixels
    else:
        raise ValueError(f"pixels of dtype {pixels.dtype} cannot be stored with {bits} bits "
                         "(give uint8, or uint16 for bits=16)")
    if photometric == "MONOCHROME1":
        values = top - values
    return np.ascontiguousarray(values, dtype=np.uint8 if bits == 8 else np.uint16)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _dx_modules(ds, spacing: list[str], view: str) -> None:
    """What the DX IOD adds: a presentation-ready image with its detector spacing, a frontal
    chest's orientation (Type 1 in DX), anatomy and view codes, laterality U (both sides)."""
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImagerPixelSpacing = spacing
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PresentationLUTShape = "INVERSE" if ds.PhotometricInterpretation == "MONOCHROME1" \
        else "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.AnatomicRegionSequence = [_code("816094009", "SCT", "Chest")]
    ds.ViewCodeSequence = [_code(*VIEW_CODES[view])] if view in VIEW_CODES else []
    ds.AcquisitionContextSequence = []
    ds.DetectorType = ""
    ds.AcquisitionDeviceProcessingDescription = ""
    ds.KVP = ""
    ds.ExposureTime = ""
    ds.Exposure = ""
    ds.Grid = ""
    ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
    ds.DetectorConditionsNominalFlag = ""
    ds.PositionerType = ""


def _jpeg(values: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(values, mode="L").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def write_dicom(path, pixels, *, image_id: str, study_uid: str, series_uid: str,
                patient_id: str, patient_name: str, sex: str = "", age: int | None = None,
                view: str = "", transfer_syntax: str = "jpeg_baseline",
                photometric: str = "MONOCHROME2", bits: int = 8,
                pixel_spacing=(0.14, 0.14), jpeg_quality: int = 95,
                sop_class: str = "cr") -> Path:
    """Write ``pixels`` (2-D, display convention: air dark) as a DICOM of ``sop_class`` (cr,
    sc or dx) at ``path``.

    ``image_id`` becomes the SOPInstanceUID. With ``photometric='MONOCHROME1'`` the stored
    values are inverted so that a reader applying the photometric rule gets ``pixels`` back.
    JPEG Baseline holds only 8 bits; 16 bits (BitsStored 12) needs ``explicit_le``. The file
    appears atomically (written beside ``path``, then renamed). Returns ``path``.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or 0 in pixels.shape:
        raise ValueError(f"pixels must be a non-empty 2-D array, got shape {pixels.shape}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}, "
                         f"got {transfer_syntax!r}")
    if photometric not in PHOTOMETRICS:
        raise ValueError(f"photometric must be one of {PHOTOMETRICS}, got {photometric!r}")
    if sop_class not in SOP_CLASSES:
        raise ValueError(f"sop_class must be one of {sorted(SOP_CLASSES)}, got {sop_class!r}")
    if bits not in BITS_STORED:
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    if bits != 8 and transfer_syntax == "jpeg_baseline":
        raise ValueError("JPEG Baseline holds 8-bit pixels only; use transfer_syntax="
                         "'explicit_le' for 16 bits")
    values = _stored_pixels(pixels, bits, photometric)
    syntax = TRANSFER_SYNTAXES[transfer_syntax]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASSES[sop_class]
    meta.MediaStorageSOPInstanceUID = image_id
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    path = Path(path)
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SOP_CLASSES[sop_class]
    ds.SOPInstanceUID = image_id
    ds.StudyDate = "19010101"
    ds.StudyTime = "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = MODALITY[sop_class]
    ds.Manufacturer = MANUFACTURER
    if sop_class == "sc":
        ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {view}" if view else ""
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = sex
    if age is not None:
        ds.PatientAge = f"{int(age):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = values.shape
    spacing = [f"{s:.6g}" for s in pixel_spacing]
    if sop_class == "dx":
        _dx_modules(ds, spacing, view)
    else:
        ds.PixelSpacing = spacing
    ds.BitsAllocated = bits
    ds.BitsStored = BITS_STORED[bits]
    ds.HighBit = BITS_STORED[bits] - 1
    ds.PixelRepresentation = 0
    if bits != 8 or sop_class == "dx":  # a full-range linear window: the 8-bit image back
        ds.WindowCenter = 1 << (BITS_STORED[bits] - 1)
        ds.WindowWidth = 1 << BITS_STORED[bits]
    if transfer_syntax == "jpeg_baseline":
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([_jpeg(values, jpeg_quality)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()
        ds["PixelData"].VR = "OB" if bits == 8 else "OW"
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax, values, generate_instance_uid=False)

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        ds.save_as(partial, enforce_file_format=True)
    return path
