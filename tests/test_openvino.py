"""The OpenVINO engine (#32): a run exported as OpenVINO IR, reloaded without keras_ptx, and its
answers against the TF predictor's; refused in one line without the extra.

The run is a freshly initialised B0 at 64 px with random batch-norm statistics
(bench/trained_like.py), so the folded convolutions carry real biases. Tolerances, from
``bench/bench_openvino.py --parity --sizes 64 256 --images 16 --tta none hflip`` (B0, 16
synthetic radiographs): float32 engines were at most 4.2e-7 apart in a pixel probability and
6e-8 in an image probability (allowed: 1e-5); bfloat16 ones at most 3.6e-3 and 2.1e-4 (allowed:
1e-2), about as far as TF's own mixed_bfloat16 is from its float32 (3.1e-3).
"""
import csv
import errno
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from keras_ptx import rundir
from keras_ptx.cli import main
from keras_ptx.config import dump_config, load_config
from keras_ptx.data.geometry import image_to_square
from keras_ptx.data.records import write_shards
from keras_ptx.errors import UserError
from keras_ptx.inference import openvino_engine
from keras_ptx.inference import engine as engines
from keras_ptx.inference.engine import EngineError, RunsOnEngine
from keras_ptx.inference.ensemble import Ensemble
from keras_ptx.inference.openvino_engine import OpenVinoMissing, OpenVinoPredictor
from keras_ptx.inference.predict import DicomPredictor
from keras_ptx.input.normalize import to_model_input
from keras_ptx.model import build_model
from keras_ptx.node.config import NodeError
from keras_ptx.node.model import open_model
from keras_ptx.serving.export import ExportError, write_version
from keras_ptx.serving.openvino_export import export_openvino
from keras_ptx.synthetic.dicom_writer import write_dicom
from keras_ptx.synthetic.radiograph import generate_image
from keras_ptx.tf_setup import tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from trained_like import randomise_batch_norms  # noqa: E402

SIZE = 64
FLOAT32_TOLERANCE = 1e-5
BFLOAT16_TOLERANCE = 1e-2
THRESHOLD = 0.75                        # the default rule's (eval.threshold)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    config = load_config(None, [f"data.image_size={SIZE}", "model.encoder=efficientnetb0",
                                "model.weights=none"])
    dump_config(config, path / rundir.CONFIG)
    tf.keras.utils.set_random_seed(1)
    model = build_model(config)
    randomise_batch_norms(model)
    model.save_weights(str(path / rundir.BEST_WEIGHTS))
    return SimpleNamespace(path=str(path), parameters=model.count_params())


def _killed_export(base: Path) -> Path:
    """The staging folder a killed export of version 1 to ``base`` left (its process gone)."""
    script = ("import os, sys; from keras_ptx.fileio import staging_folder; "
              "print(staging_folder(sys.argv[1])); os.makedirs(staging_folder(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", script, str(base / "1")], check=True, timeout=60)
    (left,) = (path for path in base.iterdir() if path.name.startswith(".1."))
    return left


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    base = tmp_path_factory.mktemp("export") / "ov"
    base.mkdir()
    left = _killed_export(base)
    path = export_openvino(run.path, base, precision="mixed_bfloat16")
    assert not left.exists()            # what a killed export left is removed
    return path


@pytest.fixture(scope="module")
def gray():
    """uint8 [4, S, S]: synthetic radiographs on the grid, two with a pneumothorax."""
    return np.stack([image_to_square(generate_image(7, i, 256, i % 2 == 1).pixels, SIZE)
                     for i in range(4)])


@pytest.fixture(scope="module")
def tf_answers(run, gray):
    """The TF predictor's (maps, image probabilities) in float32 and mixed_bfloat16."""
    return {precision: Ensemble(run.path, 1, precision).predictor("none").from_gray(gray)
            for precision in ("float32", "mixed_bfloat16")}


def test_the_export_holds_the_ir_and_what_predict_needs(exported, run):
    assert sorted(p.name for p in Path(exported).iterdir()) == [
        openvino_engine.METADATA, "network.bin", "network.xml"]
    metadata = openvino_engine.read_metadata(exported)
    assert metadata["image_size"] == SIZE and metadata["tta"] == "none"
    assert metadata["precision"] == "mixed_bfloat16" and metadata["has_label_head"]
    assert metadata["postprocess"]["threshold"] == THRESHOLD
    assert metadata["members"] == [{"run_dir": run.path, "weights": rundir.BEST_WEIGHTS}]
    assert metadata["model_identity"].endswith(" openvino mixed_bfloat16")
    assert Path(exported).name == "1" and metadata["version"] == 1     # OVMS: <base>/<version>
    # float32 weights, not save_model's default float16: 4 bytes per parameter, less the
    # batch norms' folded into their convolutions
    assert Path(exported, "network.bin").stat().st_size > 3.5 * run.parameters


def test_float32_answers_as_tf_does(exported, gray, tf_answers):
    engine = OpenVinoPredictor.load(exported, "float32")
    assert (engine.size, engine.tta, engine.has_label_head) == (SIZE, "none", True)
    maps, probs = tf_answers["float32"]
    normalised = to_model_input(gray[..., None], engine.normalization).numpy()
    for got_maps, got_probs in (engine.from_gray(gray), engine(normalised)):
        assert got_maps.shape == maps.shape and got_probs.shape == probs.shape
        assert np.abs(got_maps - maps).max() <= FLOAT32_TOLERANCE
        assert np.abs(got_probs - probs).max() <= FLOAT32_TOLERANCE
        assert np.array_equal(got_maps > THRESHOLD, maps > THRESHOLD)


def test_bfloat16_answers_within_the_measured_tolerance(exported, gray, tf_answers):
    engine = OpenVinoPredictor.load(exported)          # the export's own: mixed_bfloat16
    assert engine.precision == "mixed_bfloat16"
    maps, probs = tf_answers["mixed_bfloat16"]
    got_maps, got_probs = engine.from_gray(gray)
    assert np.abs(got_maps - maps).max() <= BFLOAT16_TOLERANCE
    assert np.abs(got_probs - probs).max() <= BFLOAT16_TOLERANCE
    if "BF16" in openvino_engine.import_openvino().Core().get_property(
            "CPU", "OPTIMIZATION_CAPABILITIES"):    # else OpenVINO computes float32 anyway
        # bfloat16, not float32: the hint took effect
        assert np.abs(got_maps - tf_answers["float32"][0]).max() > FLOAT32_TOLERANCE


def test_the_ir_runs_in_a_process_without_keras_ptx(exported, gray, tf_answers, tmp_path):
    np.save(tmp_path / "gray.npy", gray)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["keras_ptx"] = None            # any import of keras_ptx fails
        sys.modules["openvino_telemetry"] = None
        import numpy as np
        import openvino as ov
        core = ov.Core()
        network = core.compile_model(core.read_model({str(Path(exported, 'network.xml'))!r}),
                                     "CPU", {{"INFERENCE_PRECISION_HINT": "f32"}})
        gray = np.load({str(tmp_path / 'gray.npy')!r})
        answer = network({{"images": gray[..., None].astype(np.float32)}})
        np.save({str(tmp_path / 'maps.npy')!r}, answer["probabilities"])
        assert "tensorflow" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    maps = np.load(tmp_path / "maps.npy")
    assert np.abs(maps - tf_answers["float32"][0]).max() <= FLOAT32_TOLERANCE


def test_refused_in_one_line_naming_the_extra_without_openvino(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)         # as if it were not installed
    with pytest.raises(OpenVinoMissing) as refused:
        openvino_engine.import_openvino()
    assert isinstance(refused.value, UserError)
    assert "pip install 'keras_ptx[openvino]'" in str(refused.value)
    assert "\n" not in str(refused.value)
    # before anything is read or built: no such run, yet the refusal is the extra's
    with pytest.raises(OpenVinoMissing):
        export_openvino(str(tmp_path / "no-run"), tmp_path / "ov")


def test_an_export_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path):
    def full(folder, version):
        Path(folder).mkdir(parents=True)
        Path(folder, "network.bin").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder, "network.bin")))

    with pytest.raises(UserError, match=r"network.bin: No space left on device$"):
        write_version(tmp_path / "ov", None, full, last=openvino_engine.METADATA)
    assert not list((tmp_path / "ov").iterdir())


# name -> (change of the export's metadata, what the refusal says)
METADATA_CASES = {
    "network-outside": (dict(network="../../etc/network.xml"), "network is '../../etc/network.xml', expected one of network.xml"),
    "batch-text": (dict(batch_size="8"), "batch_size is '8', expected a whole number from 1 to 4096"),
    "batch-huge": (dict(batch_size=10 ** 12), "batch_size is 1000000000000"),
    "batch-bool": (dict(batch_size=True), "batch_size is True"),
    "members-mapping": (dict(members={"a": 1}), "members is {'a': 1}, expected a list of the runs"),
    "members-empty": (dict(members=[]), "members is []"),
    "size-odd": (dict(image_size=65), "image_size is 65, expected a multiple of 32 up to 4096"),
    "size-text": (dict(image_size="64"), "image_size is '64'"),
    "tta-unknown": (dict(tta="vflip"), "tta is 'vflip', expected one of none, hflip"),
    "label-head-number": (dict(has_label_head=1), "has_label_head is 1, expected one of True, False"),
    "precision-unknown": (dict(precision="int4"), "precision is 'int4'"),
    "postprocess-list": (dict(postprocess=[1]), "postprocess is [1], expected a mapping"),
    "identity-missing": (dict(model_identity=None), "model_identity is None, expected text"),
}


@pytest.mark.parametrize("name", METADATA_CASES)
def test_damaged_export_metadata_is_refused_in_one_line_naming_file_and_key(exported, tmp_path,
                                                                           name):
    change, expected = METADATA_CASES[name]
    folder = shutil.copytree(exported, tmp_path / "1")
    metadata = openvino_engine.read_metadata(folder)
    Path(folder, openvino_engine.METADATA).write_text(json.dumps({**metadata, **change}))
    with pytest.raises(openvino_engine.OpenVinoError) as refused:
        engines.open_model(str(folder), engine="openvino")
    message = str(refused.value)
    assert message.startswith(f"{folder / openvino_engine.METADATA}: {expected}")
    assert "\n" not in message and len(message) < 300


def test_a_missing_metadata_key_is_named(exported, tmp_path):
    folder = shutil.copytree(exported, tmp_path / "1")
    metadata = openvino_engine.read_metadata(folder)
    del metadata["batch_size"]
    Path(folder, openvino_engine.METADATA).write_text(json.dumps(metadata))
    with pytest.raises(openvino_engine.OpenVinoError, match="no batch_size; export the run"):
        engines.open_model(str(folder), engine="openvino")


def test_the_export_holds_every_key_predict_checks(exported):
    assert set(engines.EXPORT_CHECKS) <= set(openvino_engine.read_metadata(exported))


def test_an_export_is_one_model_with_its_own_checkpoints(exported, run):
    with pytest.raises(EngineError, match="an OpenVINO export is one model"):
        engines.open_model([exported, run.path], engine="openvino")
    with pytest.raises(EngineError, match=f"--checkpoints 2: {exported} is an OpenVINO export"):
        engines.open_model(exported, checkpoints=2, engine="openvino")


def test_a_model_url_this_tensorflow_cannot_open_is_refused_naming_model():
    with pytest.raises(UserError) as refused:
        engines.open_model("s3://bucket/ov", engine="openvino")
    assert str(refused.value).startswith("--model s3://bucket/ov: this TensorFlow cannot open")


def test_an_export_is_never_overwritten(exported, run):
    before = json.loads(Path(exported, openvino_engine.METADATA).read_text())
    with pytest.raises(ExportError, match="already exists"):
        export_openvino(run.path, Path(exported).parent, version=1)
    assert json.loads(Path(exported, openvino_engine.METADATA).read_text()) == before


# --engine in the commands and the node: a float32 run answers the same submission under both
# engines; an export's IR reloads in predict and the node; without openvino, one Error line.

@pytest.fixture(scope="module")
def dicoms(tmp_path_factory):
    """Four synthetic radiographs as DICOMs, two not square (the grid pads them)."""
    folder = tmp_path_factory.mktemp("dicoms")
    for i, shape in enumerate(((96, 96), (96, 80), (80, 96), (128, 128))):
        pixels = cv2.resize(generate_image(5, i, 256, i % 2 == 0).pixels, shape[::-1])
        write_dicom(folder / f"{i}.dcm", pixels, image_id=f"1.2.3.{i}", study_uid="1.2.3",
                    series_uid="1.2.3.9", patient_id=f"p{i}", patient_name="X")
    return folder


def _invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def _predict(model, dicoms, out, *options):
    result = _invoke("predict", "--model", model, "--dicom-dir", dicoms, "--out", out, *options)
    assert result.exit_code == 0, result.output + result.stderr
    with open(Path(out, "predictions.csv")) as f:
        predictions = list(csv.DictReader(f))
    return Path(out, "submission.csv").read_text(), predictions


@pytest.fixture(scope="module")
def tf_predicted(run, dicoms, tmp_path_factory):
    return _predict(run.path, dicoms, tmp_path_factory.mktemp("tf"), "--engine", "tf")


def _same_answers(got, expected):
    """Identical masks (the submission's RLEs) and image probabilities within float32's."""
    assert got[0] == expected[0]
    for row, expected_row in zip(map(dict, got[1]), map(dict, expected[1]), strict=True):
        assert abs(float(row.pop("probability")) - float(expected_row.pop("probability"))) <= \
            FLOAT32_TOLERANCE
        assert row == expected_row                          # mask areas among them


def test_predict_on_openvino_answers_as_tf(run, dicoms, tf_predicted, tmp_path):
    assert len(tf_predicted[1]) == 4 and tf_predicted[0].count(", -1") < 4     # masks to compare
    _same_answers(_predict(run.path, dicoms, tmp_path, "--engine", "openvino"), tf_predicted)


def test_the_exported_ir_reloads_in_predict(run, dicoms, tf_predicted, tmp_path):
    base = tmp_path / "ov"
    result = _invoke("export", "--model", run.path, "--out", base, "--format", "openvino")
    assert result.exit_code == 0, result.output + result.stderr
    assert "OpenVINO IR: network.xml" in result.output and Path(base, "1", "network.xml").is_file()
    # a version or the base (its highest version): the run's rule, TTA and float32 inside
    _same_answers(_predict(base / "1", dicoms, tmp_path / "v1", "--engine", "openvino"),
                  tf_predicted)
    _same_answers(_predict(base, dicoms, tmp_path / "base", "--engine", "openvino"),
                  tf_predicted)
    refused = _invoke("predict", "--model", base / "1", "--dicom-dir", dicoms, "--out",
                      tmp_path / "tf")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (f"Error: --model {base / '1'}: an OpenVINO export; run "
                                      f"it with --engine openvino")
    refused = _invoke("predict", "--model", base, "--dicom-dir", dicoms, "--out",
                      tmp_path / "hflip", "--engine", "openvino", "--tta", "hflip")
    assert refused.exit_code == 2 and "exported with TTA none" in refused.stderr


def test_the_node_runs_an_openvino_export_in_bfloat16(run, exported, dicoms):
    """The node's backend for an IR folder: bfloat16 as exported, within the measured
    tolerance of TF's own mixed_bfloat16, and named as the export names it."""
    files = sorted(str(path) for path in Path(dicoms).glob("*.dcm"))
    backend = open_model((exported,), None, engine="openvino")
    backend.warm_up()
    got = list(backend.results(files))
    assert backend.identity.model == openvino_engine.read_metadata(exported)["model_identity"]
    tf_bfloat16 = DicomPredictor(RunsOnEngine(Ensemble(run.path, 1, "mixed_bfloat16"), "tf"),
                                 log=lambda _: None)
    expected = list(tf_bfloat16.results(files, progress=False))
    assert [p.image.image_id for p in got] == [p.image.image_id for p in expected]
    assert max(abs(a.probability - b.probability)
               for a, b in zip(got, expected)) <= BFLOAT16_TOLERANCE
    with pytest.raises(NodeError, match="serves a SavedModel, which TensorFlow runs"):
        open_model((), "http://localhost:8501/v1/models/ptx", engine="openvino")


def test_evaluate_on_openvino_scores_as_tf(run, gray, tf_answers, tmp_path):
    """Records whose truth is the TF maps above 0.5: both engines find the same rules and
    scores (float32 maps at most 4.2e-7 apart move no pixel across a threshold here)."""
    maps, _ = tf_answers["float32"]
    write_shards(tmp_path, "val", zip(gray, (maps > 0.5).astype(np.uint8)), original=SIZE)
    reports = {}
    for engine in ("tf", "openvino"):
        result = _invoke("evaluate", "--model", run.path, "--data", tmp_path, "--cases", "0",
                         "--no-save-postprocess", "--engine", engine)
        assert result.exit_code == 0, result.output + result.stderr
        reports[engine] = json.loads(Path(run.path, "eval", "report.json").read_text())
    assert reports["openvino"]["engine"] == "openvino"
    assert "Network run by openvino." in Path(run.path, "eval", "report.md").read_text()
    assert reports["openvino"]["kinds"] == reports["tf"]["kinds"]
    assert reports["openvino"]["image_level"] == pytest.approx(reports["tf"]["image_level"],
                                                               abs=FLOAT32_TOLERANCE)


@pytest.mark.parametrize("command", [
    ["predict", "--engine", "openvino", "--dicom-dir", "{dicoms}", "--out", "{out}"],
    ["evaluate", "--engine", "openvino", "--data", "{out}"],
    ["export", "--format", "openvino", "--out", "{out}"],
])
def test_each_command_refuses_openvino_in_one_line_without_it(run, dicoms, tmp_path,
                                                              monkeypatch, command):
    monkeypatch.setitem(sys.modules, "openvino", None)
    args = [arg.format(dicoms=dicoms, out=tmp_path / "out") for arg in command]
    result = _invoke(*args[:1], "--model", run.path, *args[1:])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
    assert "pip install 'keras_ptx[openvino]'" in result.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(OpenVinoMissing):
        open_model((run.path,), None, engine="openvino")
