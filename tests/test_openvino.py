"""The OpenVINO engine (#32): a run exported as OpenVINO IR, reloaded without keras_ptx, and its
answers against the TF predictor's; refused in one line without the extra.

The run is a freshly initialised B0 at 64 px with random batch-norm statistics
(bench/trained_like.py), so the folded convolutions carry real biases. Tolerances, from
``bench/bench_openvino.py --parity --sizes 64 256 --images 16 --tta none hflip`` (B0, 16
synthetic radiographs): float32 engines were at most 4.2e-7 apart in a pixel probability and
6e-8 in an image probability (allowed: 1e-5); bfloat16 ones at most 3.6e-3 and 2.1e-4 (allowed:
1e-2), about as far as TF's own mixed_bfloat16 is from its float32 (3.1e-3).
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from keras_ptx import rundir
from keras_ptx.config import dump_config, load_config
from keras_ptx.data.geometry import image_to_square
from keras_ptx.errors import UserError
from keras_ptx.inference import openvino_engine
from keras_ptx.inference.ensemble import Ensemble
from keras_ptx.inference.openvino_engine import OpenVinoMissing, OpenVinoPredictor
from keras_ptx.input.normalize import to_model_input
from keras_ptx.model import build_model
from keras_ptx.serving.export import ExportError
from keras_ptx.serving.openvino_export import export_openvino
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


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    return export_openvino(run.path, tmp_path_factory.mktemp("export") / "ov",
                           precision="mixed_bfloat16")


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


def test_an_export_is_never_overwritten(exported, run):
    before = json.loads(Path(exported, openvino_engine.METADATA).read_text())
    with pytest.raises(ExportError, match="already exists"):
        export_openvino(run.path, exported)
    assert json.loads(Path(exported, openvino_engine.METADATA).read_text()) == before
