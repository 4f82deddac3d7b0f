"""Instances decoded as they arrive (node/predecode.py): handed out once, only while
the file is the one decoded, within the budget; an unreadable file is left to the predictor."""
import threading
import time

import numpy as np
import pytest
from pydicom.uid import generate_uid

from dicom_services import wait_for
from keras_ptx.data.dicom import DicomError, read_dicom
from keras_ptx.node.predecode import Predecoded
from keras_ptx.synthetic.dicom_writer import write_dicom


def _write(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 48), dtype=np.uint8)
    write_dicom(path, pixels, image_id=generate_uid(), study_uid=generate_uid(),
                series_uid=generate_uid(), patient_id="P", patient_name="X", view="PA")
    return str(path)


@pytest.fixture
def running():
    stopping, started = threading.Event(), []

    def start(predecoded):
        thread = threading.Thread(target=predecoded.run, args=(stopping,), daemon=True)
        thread.start()
        started.append(thread)
        return predecoded
    yield start
    stopping.set()
    for thread in started:
        thread.join(5)


def test_an_image_decoded_ahead_is_handed_out_once(tmp_path, running):
    path = _write(tmp_path / "a.dcm", 1)
    ahead = running(Predecoded())
    ahead.put(path)
    wait_for(lambda: ahead.held == 1, 30, "the image decoded", 0.01)
    first = ahead.read(path)
    assert ahead.held == 0
    again = ahead.read(path)                        # decoded now, not kept
    assert first is not again and np.array_equal(first.pixels, again.pixels)
    assert np.array_equal(first.pixels, read_dicom(path).pixels)


def test_a_replaced_file_is_read_again_and_an_unreadable_one_left_to_the_reader(tmp_path,
                                                                               running):
    path, other = _write(tmp_path / "a.dcm", 1), _write(tmp_path / "b.dcm", 2)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not DICOM")
    ahead = running(Predecoded())
    for p in (path, str(broken)):
        ahead.put(p)
    wait_for(lambda: ahead.held == 1, 30, "the image decoded", 0.01)
    expected = read_dicom(other).pixels
    (tmp_path / "b.dcm").replace(path)              # a resent instance replaces its file
    assert np.array_equal(ahead.read(path).pixels, expected)
    with pytest.raises(DicomError):
        ahead.read(str(broken))


def test_no_more_is_decoded_than_the_budget(tmp_path, running):
    paths = [_write(tmp_path / f"{k}.dcm", k) for k in range(3)]
    ahead = running(Predecoded(budget=1))
    for path in paths:
        ahead.put(path)
    wait_for(lambda: ahead._paths.empty(), 30, "every path taken", 0.01)
    time.sleep(0.2)
    assert ahead.held == 1


def test_an_image_the_predictor_read_first_is_neither_decoded_again_nor_kept(tmp_path,
                                                                            running):
    """Predicted early, an instance may be read before this thread gets to it: kept, it would
    never be read and would hold its share of the budget for good."""
    paths = [_write(tmp_path / f"{k}.dcm", k) for k in range(2)]
    ahead = Predecoded()
    for path in paths:
        ahead.put(path)
    read_first = ahead.read(paths[0])               # before the thread runs
    running(ahead)
    wait_for(lambda: not ahead._queued, 30, "every path taken up", 0.01)
    assert ahead.held == 1 and ahead._bytes == read_first.pixels.nbytes   # the second only
    assert np.array_equal(ahead.read(paths[1]).pixels, read_dicom(paths[1]).pixels)
    assert ahead.held == 0 and ahead._bytes == 0
