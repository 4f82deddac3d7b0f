"""Run directories, records and outputs on a URL: train -> evaluate -> export -> predict with
every path on TensorFlow's in-memory filesystem (ram://), in one process, against the same flow
on local paths."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from keras_ptx import rundir
from keras_ptx.cli import main
from keras_ptx.serving import SERVING_DEFAULT
from keras_ptx.tf_setup import tf
from test_evaluate_predict import SHAPES, _radiograph
from test_train import SLIM, TEST_CONFIG, write_records
from keras_ptx.synthetic.dicom_writer import write_dicom

SETTINGS = ["train.epochs=2", "train.steps_per_epoch=2", "train.tensorboard_images=1", *SLIM]


def _cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _copy_tree(src: str, dst: str) -> None:
    for folder, _, files in tf.io.gfile.walk(src):
        target = folder.replace(src, dst, 1)
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(f"{folder}/{name}", f"{target}/{name}", overwrite=True)


def _read(path) -> str:
    with tf.io.gfile.GFile(str(path)) as f:
        return f.read()


def _use(data, run, export, predictions, dicoms):
    _cli("evaluate", "--model", run, "--data", data)
    _cli("export", "--model", run, "--out", export, "--version", "1")
    _cli("predict", "--model", run, "--dicom-dir", dicoms, "--out", predictions, "--overlays")


@pytest.mark.slow
def test_the_whole_flow_on_ram_urls_writes_nothing_local_and_equals_a_local_run(
        tmp_path, monkeypatch):
    local = tmp_path / "local"
    write_records(local / "records", "train", 8, seed=1)
    write_records(local / "records", "val", 6, seed=2)
    rng = np.random.default_rng(5)
    dicoms = tmp_path / "dicoms"
    for k, shape in enumerate(SHAPES[:3]):
        write_dicom(dicoms / f"{k}.dcm", _radiograph(rng, shape), image_id=f"1.2.{k}",
                    study_uid="1.2", series_uid="1.2.9", patient_id=f"p{k}", patient_name="X")
    url = "ram://flow"
    _copy_tree(str(local / "records"), f"{url}/records")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())

    _cli("train", "--config", TEST_CONFIG, "--data", f"{url}/records", "--out", f"{url}/run",
         *(arg for setting in SETTINGS for arg in ("--set", setting)))
    names = [rundir.CONFIG, rundir.HISTORY, rundir.METRICS, rundir.BEST_WEIGHTS]
    for name in names:
        assert tf.io.gfile.exists(f"{url}/run/{name}"), name
    assert tf.io.gfile.glob(f"{url}/run/{rundir.LOGS}/train/events.out.tfevents.*")
    assert not tf.io.gfile.exists(f"{url}/run/{rundir.CHECKPOINTS}/{rundir.BACKUP}/chief")
    assert len(_read(f"{url}/run/{rundir.HISTORY}").splitlines()) == 3    # header, 2 epochs
    _copy_tree(f"{url}/run", str(local / "run"))      # the same trained run, on local disk
    _use(local / "records", local / "run", local / "export", local / "predictions", dicoms)
    _use(f"{url}/records", f"{url}/run", f"{url}/export", f"{url}/predictions", dicoms)

    assert sorted(p.name for p in tmp_path.iterdir()) == before       # no "ram:" folder
    assert not list(tmp_path.rglob("ram:*"))
    for name in (rundir.POSTPROCESS, f"{rundir.EVAL}/roc.png"):
        assert tf.io.gfile.exists(f"{url}/run/{name}"), name
    assert _read(f"{url}/run/{rundir.POSTPROCESS}") == _read(local / "run" / rundir.POSTPROCESS)
    ram_report, local_report = (json.loads(_read(f"{r}/{rundir.EVAL}/{rundir.EVAL_REPORT}"))
                                for r in (f"{url}/run", local / "run"))
    assert ram_report["kinds"] == local_report["kinds"]
    assert ram_report["image_level"] == local_report["image_level"]
    for name in ("submission.csv", "predictions.csv"):
        ram = _read(f"{url}/predictions/{name}")
        assert ram == _read(local / "predictions" / name) and ram.count("\n") >= 3
    assert len(tf.io.gfile.listdir(f"{url}/predictions/overlays")) == 3

    png = tf.io.encode_png(tf.constant(_radiograph(rng, (80, 64))[..., None])).numpy()
    served = [tf.saved_model.load(f"{base}/1").signatures[SERVING_DEFAULT](
        image_bytes=tf.constant([png])) for base in (f"{url}/export", local / "export")]
    for key in ("probabilities", "mask", "pneumothorax_probability"):
        np.testing.assert_array_equal(served[0][key].numpy(), served[1][key].numpy())
