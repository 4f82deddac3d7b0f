"""The writer seam (results/writers.py, results/tables.py): order, failure and atomicity."""
import numpy as np
import pytest

from keras_ptx.data.dicom import DicomHeader, SourceHeader
from keras_ptx.results.tables import ErrorsCsv, PredictionsCsv, SubmissionCsv
from keras_ptx.inference.prediction import ModelIdentity, Prediction, Rejection
from keras_ptx.results.writers import Outputs, Writer

IDENTITY = ModelIdentity("abc")


def _prediction(k, positive):
    header = DicomHeader(path=f"/in/{k}.dcm", image_id=f"1.2.{k}", rows=4, columns=3,
                         photometric="MONOCHROME2", sex="", age=-1, view="PA", patient_hash="",
                         source=SourceHeader(None))
    mask = np.zeros((4, 3), bool)
    mask[1, 1] = positive
    return Prediction(image=header, mask=mask, probability=0.9 if positive else 0.1)


class Recorder(Writer):
    def __init__(self, fail_at=None):
        self.seen, self.fail_at, self.closed = [], fail_at, None

    def write(self, prediction):
        if len(self.seen) == self.fail_at:
            raise OSError("disk full")
        self.seen.append(prediction.image.image_id)

    def reject(self, rejection):
        self.seen.append(rejection.path)

    def close(self, complete):
        self.closed = complete


def test_writers_see_every_item_in_order_and_the_csvs_agree(tmp_path):
    recorder = Recorder()
    with Outputs([SubmissionCsv("stage2"), PredictionsCsv(), ErrorsCsv(), recorder],
                 str(tmp_path), IDENTITY) as outputs:
        outputs.write(_prediction(0, True))
        outputs.reject(Rejection("/in/bad.dcm", "truncated file", "1.2.9"))
        outputs.reject(Rejection("/in/lateral.dcm", "ViewPosition LL: not a frontal view"))
        outputs.write(_prediction(1, False))
    assert recorder.seen == ["1.2.0", "/in/bad.dcm", "/in/lateral.dcm", "1.2.1"]
    assert recorder.closed is True
    assert (tmp_path / "submission.csv").read_text().splitlines() == [
        "ImageId,EncodedPixels", "1.2.0,5 1", "1.2.9,-1", "1.2.1,-1"]
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[1].split(",")[:7] == ["1.2.0", "/in/0.dcm", "4", "3", "0.900000", "1", "1"]
    assert (tmp_path / "errors.csv").read_text().splitlines()[1:] == [
        "/in/bad.dcm,truncated file (submitted as -1)",
        "/in/lateral.dcm,ViewPosition LL: not a frontal view"]


def test_a_failing_writer_stops_predict_and_leaves_the_earlier_outputs(tmp_path):
    (tmp_path / "submission.csv").write_text("earlier\n")
    failing = Recorder(fail_at=1)
    with pytest.raises(OSError, match="disk full"):
        with Outputs([SubmissionCsv(), failing], str(tmp_path), IDENTITY) as outputs:
            for k in range(200):            # the error reaches the loop, which stops
                outputs.write(_prediction(k, k % 2))
    assert failing.closed is False
    assert (tmp_path / "submission.csv").read_text() == "earlier\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]    # no partial file


def test_dicom_objects_that_cannot_be_built_stop_predict_with_the_reason(tmp_path):
    """A prediction whose objects cannot be built (here a mask off the source's grid) stops
    predict with its one-line error, not a traceback, and writes no object."""
    from pydicom.uid import generate_uid

    from keras_ptx.data.dicom import read_dicom
    from keras_ptx.inference.predict import PredictError
    from keras_ptx.results.dicom_files import DicomObjectFiles
    from keras_ptx.synthetic.dicom_writer import write_dicom

    image = read_dicom(write_dicom(tmp_path / "cr.dcm", np.zeros((8, 6), np.uint8),
                                   image_id=generate_uid(), study_uid=generate_uid(),
                                   series_uid=generate_uid(), patient_id="P1",
                                   patient_name="DOE^JANE", view="PA"))
    off_grid = Prediction(image=image, mask=np.zeros((8, 5), bool), probability=0.1)
    with pytest.raises(PredictError, match=r": its DICOM objects cannot be built \(ObjectError: "
                                           r"mask of shape \(8, 5\) on a 8x6 source\)$"):
        with Outputs([DicomObjectFiles(tmp_path / "dicom")], str(tmp_path), IDENTITY) as outputs:
            outputs.write(off_grid)
    assert list((tmp_path / "dicom").iterdir()) == []
