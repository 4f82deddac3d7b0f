"""Reading back the DICOM objects keras_ptx writes, with software nobody here wrote: David
Clunie's dciodvfy (the dicom3tools package) judges validity, pydicom decodes the SEG's pixels
and walks the SR's content tree."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pydicom

DCIODVFY = os.path.join(os.path.dirname(sys.executable), "dciodvfy")


def dciodvfy_errors(path) -> list[str]:
    """dciodvfy's "Error" lines for ``path`` (its warnings are not errors)."""
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error", "Abort"))]


def seg_mask(path) -> np.ndarray:
    """The one frame of a BINARY SEG as bool (Rows, Columns)."""
    ds = pydicom.dcmread(path)
    assert ds.SegmentationType == "BINARY" and int(ds.NumberOfFrames) == 1
    return ds.pixel_array.astype(bool)


def _items(content):
    for item in content:
        yield item
        yield from _items(item.get("ContentSequence", []))


def _code(item, keyword="ConceptNameCodeSequence"):
    code = item[keyword][0]
    return code.CodingSchemeDesignator, code.CodeValue


def sr_finding(path) -> dict:
    """The SR's pneumothorax finding (SCT 52101004 present / 272519000 absent), probability
    (DCM 122157), areas by unit and referenced SEG instances."""
    ds = pydicom.dcmread(path)
    found = {"areas": {}, "references": []}
    for item in _items(ds.ContentSequence):
        kind = item.ValueType
        if kind == "CODE" and _code(item) == ("SCT", "36118008"):
            found["present"] = {"52101004": True, "272519000": False}[
                _code(item, "ConceptCodeSequence")[1]]
        elif kind == "NUM":
            value = item.MeasuredValueSequence[0]
            unit = value.MeasurementUnitsCodeSequence[0].CodeValue
            if _code(item) == ("DCM", "122157"):
                found["probability"] = float(value.NumericValue)
            elif _code(item) == ("SCT", "42798000"):
                found["areas"][unit] = float(value.NumericValue)
        elif kind == "IMAGE":
            ref = item.ReferencedSOPSequence[0]
            if ref.ReferencedSOPClassUID == pydicom.uid.SegmentationStorage:
                found["references"].append((ref.ReferencedSOPInstanceUID,
                                            ref.get("ReferencedSegmentNumber")))
    return found
