"""Whether a DICOM header is an image the model was made for: one frontal chest radiograph.

:func:`rejection` returns the reason a dataset is not, else None. The rules, in order:

* **Our own objects** (Manufacturer ``keras_ptx``: a SEG, SR or burned-in result fed back).
* **SOP class**: Computed Radiography, Digital X-Ray For Presentation, or Secondary Capture
  (SIIM's files are Secondary Capture with Modality CR). Anything else (a Segmentation, a
  report, a CT, DX For Processing's raw detector data) is refused by its class name. A bare
  dataset without a SOP class is judged by its Modality alone.
* **Modality** CR or DX where the class allows others (Secondary Capture: an ``OT`` capture is
  not known to be a radiograph).
* **Body part**: BodyPartExamined, when present, is CHEST (or THORAX). Absent or empty is
  accepted: many archives leave it empty, and the class and view already say "radiograph".
* **View**: ViewPosition, when present, is PA or AP. Lateral (LL, RL, LATERAL), oblique and
  decubitus views are refused. Absent or empty is accepted, as for the body part.
* **Frames**: one. A multi-frame object is refused before its pixels are decoded.

Reasons name tags and their values, never patient data.
"""
from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import UID

MANUFACTURER = "keras_ptx"          # written into every object keras_ptx makes
RADIOGRAPH_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",                  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",                # Digital X-Ray, For Presentation
    "1.2.840.10008.5.1.4.1.1.7": None,                  # Secondary Capture: by its Modality
}
MODALITIES = ("CR", "DX")
BODY_PARTS = ("CHEST", "THORAX")
FRONTAL_VIEWS = ("PA", "AP")


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def rejection(ds: Dataset) -> str | None:
    """Why ``ds`` is not one frontal chest radiograph, or None when it is."""
    if _text(ds, "Manufacturer") == MANUFACTURER.upper():
        return "a keras_ptx result object fed back (Manufacturer keras_ptx), not a radiograph"
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    modality = _text(ds, "Modality")
    if sop_class and sop_class not in RADIOGRAPH_CLASSES:
        name = UID(sop_class).name
        return f"{name or 'SOP class ' + sop_class}: not a chest radiograph (CR, DX or " \
               f"Secondary Capture)"
    required = RADIOGRAPH_CLASSES.get(sop_class)
    if required is None and modality not in MODALITIES:
        what = f"{UID(sop_class).name} with " if sop_class else ""
        return f"{what}Modality {modality or '(none)'}: not a radiograph (CR or DX)"
    body_part = _text(ds, "BodyPartExamined")
    if body_part and body_part not in BODY_PARTS:
        return f"BodyPartExamined {body_part}: not a chest radiograph"
    view = _text(ds, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        return f"ViewPosition {view}: not a frontal (PA or AP) view"
    frames = ds.get("NumberOfFrames", 1)
    try:
        frames = int(frames or 1)
    except (TypeError, ValueError):
        return f"NumberOfFrames {frames!r}: unreadable"
    if frames != 1:
        return f"multi-frame object ({frames} frames): one radiograph expected"
    return None
