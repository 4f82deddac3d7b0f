"""What ``bin/predict`` (and the DICOM node) write: every output is a writer.

``writers``: the interface (:class:`~keras_ptx.results.writers.Writer`), the items it is fed
and the background thread that feeds them. ``tables``: submission, predictions and errors
CSVs. ``overlays``: PNG overlays. ``dicom_objects``: one prediction as DICOM SEG, SR and SC
(highdicom). ``dicom_files``: those objects as files.
"""

# The DICOM object kinds and the default series description, here (no heavy imports) so that
# command options can offer them without loading highdicom.
KINDS = ("seg", "sr", "sc")
DEFAULT_KINDS = ("seg", "sr")
DESCRIPTION = "AI pneumothorax result, derived: not for diagnostic use"
