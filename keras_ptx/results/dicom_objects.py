"""One prediction -> the DICOM objects a PACS stores: Segmentation, Structured Report and
optionally a Secondary Capture with the result burned in (highdicom builds them).

:func:`build_objects` takes the source header, the mask (a bool array on the source's Rows x
Columns, or TF Serving's compact form ``(rle, height, width)``), the image-level probability
and the :class:`~keras_ptx.results.writers.ModelIdentity`; ``bin/predict --dicom-out`` and the
DICOM node both call it.

* **SEG**: BINARY, one segment "Pneumothorax" (SCT 36118008, category SCT 49755003, algorithm
  AUTOMATIC, family DCM 123110 Artificial Intelligence), one frame, empty for a negative
  image (an explicit "absent", not a missing object).
* **SR**: Comprehensive 3D SR, TID 1500 measurement report: an image-level group (TID 1501)
  with the finding Pneumothorax Present/Absent and the probability, and for a positive image
  with a SEG a planar ROI group (TID 1410) that references the segment and gives its area,
  in mm2 where the source has a spacing (ImagerPixelSpacing, else PixelSpacing), else in
  pixels (unit ``{pixels}``).
* **SC**: the radiograph with the outline and the probability burned in (BurnedInAnnotation
  YES), for viewers that show neither SEG nor SR.

Projection radiographs have no frame of reference: none is made up; the SEG carries the
source's PatientOrientation (empty when the source has none, as Type 2C allows). UIDs derive
from the source instance, the model identity and the kind, so predicting the same image with
the same model again gives the same objects' UIDs (a resend replaces, never duplicates).
"""
from __future__ import annotations

import copy
import io

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian, generate_uid

from keras_ptx.data import rle
from keras_ptx.data.eligibility import MANUFACTURER
from keras_ptx.inference import plots
from keras_ptx.results import DEFAULT_KINDS, DESCRIPTION, KINDS
from keras_ptx.inference.prediction import ModelIdentity

SERIES_NUMBERS = {"seg": 9901, "sr": 9902, "sc": 9903}
MODEL_NAME = "keras_ptx UNet++"
PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
CHEST_RADIOGRAPH = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
LO_LENGTH = 64                      # a Long String's limit: descriptions, versions


class ObjectError(ValueError):
    """A mask or request that cannot become objects for this source."""


def as_mask(mask, rows: int, columns: int) -> np.ndarray:
    """``mask`` (a 2-D array, or ``(rle, height, width)`` as TF Serving's ``serving_compact``
    answers) as bool (rows, columns); ObjectError when it is not on that grid."""
    if isinstance(mask, tuple) and len(mask) == 3 and isinstance(mask[0], (str, bytes)):
        text, height, width = mask
        text = text.decode() if isinstance(text, bytes) else text
        mask = rle.decode(text, int(height), int(width))
    mask = np.asarray(mask)
    if mask.shape != (rows, columns):
        raise ObjectError(f"mask of shape {mask.shape} on a {rows}x{columns} source")
    return mask.astype(bool)


def encode(ds: Dataset) -> bytes:
    """``ds`` as a DICOM file (preamble, file meta, dataset)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def spacing_mm(source: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm: ImagerPixelSpacing first, then PixelSpacing; None when
    neither holds two positive numbers."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        spacing = _spacing(source, keyword)
        if spacing is not None:
            return spacing
    return None


def _spacing(source: Dataset, keyword: str) -> tuple[float, float] | None:
    try:
        values = [float(v) for v in source.get(keyword) or ()]
    except (TypeError, ValueError):
        return None
    if len(values) == 2 and all(np.isfinite(v) and v > 0 for v in values):
        return values[0], values[1]
    return None


def uid(source: Dataset, identity: ModelIdentity, *what: str) -> str:
    """A UID derived from the source instance, the model and ``what``: the same inputs always
    give the same UID."""
    return generate_uid(entropy_srcs=[str(source.SOPInstanceUID), identity.describe(), *what])


def build_objects(source: Dataset, mask, probability: float, identity: ModelIdentity,
                  kinds=DEFAULT_KINDS, description: str = DESCRIPTION,
                  pixels: np.ndarray | None = None) -> dict[str, Dataset]:
    """The objects of ``kinds`` for one prediction, by kind (SR last: it references the SEG).
    ``pixels``: the display image (uint8, Rows x Columns), needed for ``sc``."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ObjectError(f"unknown DICOM object kind(s) {sorted(unknown)}; use {KINDS}")
    mask = as_mask(mask, int(source.Rows), int(source.Columns))
    description = description[:LO_LENGTH]
    objects: dict[str, Dataset] = {}
    if "seg" in kinds:
        objects["seg"] = segmentation(source, mask, identity, description)
    if "sc" in kinds:
        if pixels is None:
            raise ObjectError("a secondary capture needs the decoded pixels")
        objects["sc"] = secondary_capture(source, pixels, mask, probability, identity,
                                          description)
    if "sr" in kinds:
        objects["sr"] = report(source, mask, probability, identity, description,
                               objects.get("seg"))
    return objects


def _series(source: Dataset, identity: ModelIdentity, kind: str) -> dict:
    """A kind's series (one per source series and model) and instance UIDs and numbers."""
    return dict(series_instance_uid=generate_uid(entropy_srcs=[
                    str(source.get("SeriesInstanceUID", "")), identity.describe(), kind]),
                series_number=SERIES_NUMBERS[kind],
                sop_instance_uid=uid(source, identity, kind),
                instance_number=int(source.get("InstanceNumber") or 1))


def _algorithm(identity: ModelIdentity) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=MANUFACTURER, version=identity.describe()[:LO_LENGTH],
        family=codes.cid7162.ArtificialIntelligence)


def segmentation(source: Dataset, mask: np.ndarray, identity: ModelIdentity,
                 description: str) -> hd.seg.Segmentation:
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Pneumothorax",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Pneumothorax,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(identity))
    seg = hd.seg.Segmentation(
        source_images=[_with_usable_spacing(source)], pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], **_series(source, identity, "seg"),
        manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME,
        software_versions=identity.describe()[:LO_LENGTH],
        device_serial_number=identity.model[:LO_LENGTH], omit_empty_frames=False,
        content_label="PNEUMOTHORAX", content_description=description,
        series_description=description)
    seg.PatientOrientation = source.get("PatientOrientation", "")
    return seg


def _with_usable_spacing(source: Dataset) -> Dataset:
    """``source``, or a shallow copy without its PixelSpacing when that is unusable (real
    archives hold 0\\0): highdicom would copy it into the SEG's pixel measures."""
    if "PixelSpacing" not in source or _spacing(source, "PixelSpacing") is not None:
        return source
    usable = copy.copy(source)
    del usable.PixelSpacing
    return usable


def report(source: Dataset, mask: np.ndarray, probability: float, identity: ModelIdentity,
           description: str, seg: hd.seg.Segmentation | None) -> hd.SOPClass:
    present = bool(mask.any())
    area = _area(source, mask)
    algorithm = hd.sr.AlgorithmIdentification(name=MANUFACTURER,
                                              version=identity.describe()[:LO_LENGTH])
    image_level = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uid(source, identity, "sr", "image"), identifier="image-level finding"),
        finding_type=codes.SCT.Pneumothorax, algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=codes.SCT.Pneumothorax,
            value=codes.SCT.Present if present else codes.SCT.Absent)],
        measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=float(probability),
                                        unit=codes.UCUM.NoUnits)]
        + ([area] if present and seg is None else []))
    groups = [image_level]
    if present and seg is not None:
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=uid(source, identity, "sr", "region"), identifier="pneumothorax region"),
            referenced_segment=_whole_segment(seg, source),
            finding_type=codes.SCT.Pneumothorax, algorithm_id=algorithm,
            measurements=[area]))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid(source, identity, "device"), name=MANUFACTURER,
            manufacturer_name=MANUFACTURER, model_name=MODEL_NAME,
            serial_number=identity.model[:LO_LENGTH]))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CHEST_RADIOGRAPH, imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport)
    return _sr_document(source, content, [source] + ([seg] if seg is not None else []),
                        identity, description)


def _sr_document(source: Dataset, content, evidence: list, identity: ModelIdentity,
                 description: str) -> hd.SOPClass:
    """The Comprehensive 3D SR document around ``content``, attribute for attribute what
    ``highdicom.sr.Comprehensive3DSR`` makes (tests/test_dicom_objects.py compares them), but
    without its second pass over the content: a deep copy, a re-parse to validate what
    highdicom's own templates just built, and a search of the tree for the references that
    ``evidence`` already lists. That pass took most of the SR's time."""
    document = hd.SOPClass(
        study_instance_uid=source.StudyInstanceUID, **_series(source, identity, "sr"),
        sop_class_uid=Comprehensive3DSRStorage, modality="SR", manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian, patient_id=source.get("PatientID"),
        patient_name=source.get("PatientName"),
        patient_birth_date=source.get("PatientBirthDate"),
        patient_sex=source.get("PatientSex"), accession_number=source.get("AccessionNumber"),
        study_id=source.get("StudyID"), study_date=source.get("StudyDate"),
        study_time=source.get("StudyTime"),
        referring_physician_name=source.get("ReferringPhysicianName"),
        specific_character_set=source.get("SpecificCharacterSet"),
        series_description=description)
    document.CompletionFlag, document.VerificationFlag = "COMPLETE", "UNVERIFIED"
    document.PreliminaryFlag = "PRELIMINARY"
    for tag, value in content[0].items():
        document[tag] = value
    document.CurrentRequestedProcedureEvidenceSequence = [_evidence(evidence)]
    document.PerformedProcedureCodeSequence = []
    document.ReferencedPerformedProcedureStepSequence = []
    document.copy_patient_and_study_information(source)
    document.ContributingEquipmentSequence = [hd.ContributingEquipment.for_highdicom()]
    if source.get("Manufacturer"):     # the acquisition equipment, as highdicom lists it
        document.ContributingEquipmentSequence.insert(
            0, hd.ContributingEquipment.for_image_acquisition(source))
    return document


def _evidence(instances: list) -> Dataset:
    """The study's item of the evidence sequence: each instance under its series."""
    study = Dataset()
    study.ReferencedSeriesSequence = []
    for instance in instances:
        reference = Dataset()
        reference.ReferencedSOPClassUID = instance.SOPClassUID
        reference.ReferencedSOPInstanceUID = instance.SOPInstanceUID
        series = Dataset()
        series.ReferencedSOPSequence = [reference]
        series.SeriesInstanceUID = instance.SeriesInstanceUID
        study.ReferencedSeriesSequence.append(series)
    study.StudyInstanceUID = instances[0].StudyInstanceUID
    return study


def _area(source: Dataset, mask: np.ndarray) -> hd.sr.Measurement:
    pixels = int(np.count_nonzero(mask))
    spacing = spacing_mm(source)
    if spacing is None:
        return hd.sr.Measurement(name=codes.SCT.Area, value=pixels, unit=PIXELS)
    return hd.sr.Measurement(name=codes.SCT.Area, value=round(pixels * spacing[0] * spacing[1], 3),
                             unit=codes.UCUM.SquareMillimeter)


def _whole_segment(seg: hd.seg.Segmentation, source: Dataset) -> hd.sr.ReferencedSegmentationFrame:
    """The reference to segment 1 of ``seg``. The SEG has one frame and one segment, for
    which TID 1410 says Referenced Frame Number is absent (with both present the reference
    is invalid), so highdicom's frame number is taken out."""
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, frame_number=1,
        segment_number=1,
        source_image=hd.sr.SourceImageForSegmentation.from_source_image(source))
    for item in reference:
        if "ReferencedSOPSequence" in item:
            for referenced in item.ReferencedSOPSequence:
                referenced.pop("ReferencedFrameNumber", None)
    return reference


def secondary_capture(source: Dataset, pixels: np.ndarray, mask: np.ndarray,
                      probability: float, identity: ModelIdentity,
                      description: str) -> hd.sc.SCImage:
    caption = f"AI pneumothorax p={probability:.2f}" + (" (outlined)" if mask.any() else "")
    rgb = plots.overlay(pixels, mask, caption=caption)
    # highdicom asks for two orientation letters in the patient coordinate system; the
    # source's value (often empty for a projection radiograph) replaces them at once
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", patient_orientation=("A", "F"),
        **_series(source, identity, "sc"), manufacturer=MANUFACTURER,
        series_description=description)
    sc.PatientOrientation = source.get("PatientOrientation", "")
    sc.Laterality = source.get("Laterality", "")
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = description
    return sc
