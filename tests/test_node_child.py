"""Work in a child process (node/child.py) and the node's result objects built there
(node/builder.py): the same objects as in the calling thread, a refusal as a reason, a child
killed during a request as ChildGone and replaced at the next one."""
import os
import signal
import threading
import time

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from dicom_checks import seg_mask
from dicom_services import wait_for
from keras_ptx.data.dicom import read_dicom
from keras_ptx.inference.prediction import ModelIdentity
from keras_ptx.node.builder import Builder, ObjectsNotBuilt, ProcessBuilder
from keras_ptx.node.child import Child, ChildGone
from keras_ptx.synthetic.dicom_writer import write_dicom

IDENTITY = ModelIdentity(model="0123456789ab")


class Echo:
    """A test worker: replies with its request; "wait" blocks until the process is killed."""

    def __init__(self, prefix):
        self.prefix = prefix

    def __call__(self, request):
        if request == "wait":
            time.sleep(600)
        return self.prefix + request


def test_a_child_answers_and_one_killed_during_a_request_is_replaced_at_the_next():
    child = Child("echo", Echo, "got ")
    try:
        assert child.ask("one") == "got one"
        errors = []

        def ask_and_fail():
            try:
                child.ask("wait")
            except ChildGone as exc:
                errors.append(str(exc))
        asking = threading.Thread(target=ask_and_fail)
        asking.start()
        time.sleep(0.5)
        first = child.pid
        os.kill(first, signal.SIGKILL)
        asking.join(30)
        assert errors and "the echo process ended" in errors[0] and "-9" in errors[0]
        assert child.ask("two") == "got two" and child.pid != first
    finally:
        child.stop()
    assert not child.alive


def _image(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (72, 64), dtype=np.uint8)
    return read_dicom(write_dicom(tmp_path / "cr.dcm", pixels, image_id=generate_uid(),
                                  study_uid=generate_uid(), series_uid=generate_uid(),
                                  patient_id="P1", patient_name="DOE^JANE", view="PA"))


def test_objects_built_in_the_child_are_those_built_in_the_thread(tmp_path):
    image = _image(tmp_path)
    mask = np.zeros(image.pixels.shape, bool)
    mask[10:30, 5:41] = True                        # 36 columns: not a multiple of 8
    here = Builder(IDENTITY, ("seg", "sr", "sc"))
    there = ProcessBuilder(IDENTITY, ("seg", "sr", "sc"))
    try:
        built = [b.build(image.source.dataset, mask, 0.8, pixels=image.pixels)
                 for b in (here, there)]
        with pytest.raises(ObjectsNotBuilt, match="^ObjectError$"):
            there.build(image.source.dataset, mask[:-1], 0.8)      # not on the source's grid
        with pytest.raises(ObjectsNotBuilt, match="^ObjectError$"):
            here.build(image.source.dataset, mask[:-1], 0.8)
    finally:
        there.stop()
    for objects in built:
        assert np.array_equal(seg_mask(DicomBytesIO(objects[0])), mask)     # SEG, SC, SR
    (seg, sc, sr), (seg2, sc2, sr2) = [[pydicom.dcmread(DicomBytesIO(b)) for b in objects]
                                       for objects in built]
    for ours, theirs in ((seg, seg2), (sr, sr2), (sc, sc2)):
        assert ours.SOPInstanceUID == theirs.SOPInstanceUID
        assert ours.SOPClassUID == theirs.SOPClassUID
    assert sr.ContentSequence == sr2.ContentSequence
    assert np.array_equal(sc.pixel_array, sc2.pixel_array)
