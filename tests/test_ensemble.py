"""Ensembles: runs, their best epochs and fold folders averaged as one model, in process and in
an exported SavedModel (64x64, B0 without weights, models differing by their random start)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from keras_ptx import rundir
from keras_ptx.commands.export import command as export_command
from keras_ptx.config import dump_config, load_config
from keras_ptx.inference.ensemble import Ensemble
from keras_ptx.inference.postprocess import PostProcess
from keras_ptx.inference.runner import Predictor
from keras_ptx.model import build_model
from keras_ptx.serving.export import read_metadata
from keras_ptx.tf_setup import tf

SIZE = 64


def _config(*overrides):
    return load_config(None, [f"data.image_size={SIZE}", "model.encoder=efficientnetb0",
                              "model.weights=none", "model.prune_level=1", *overrides])


def _write_run(path, seed, epochs=(), overrides=()):
    """A run directory of a freshly initialised network (seed), with ``epochs`` in top/ (each
    a differently initialised network) and metrics.json naming them."""
    config = _config(f"train.keep_best={max(1, len(epochs))}", *overrides)
    path.mkdir(parents=True)
    dump_config(config, path / rundir.CONFIG)
    tf.keras.utils.set_random_seed(seed)
    build_model(config).save_weights(str(path / rundir.BEST_WEIGHTS))
    (path / rundir.TOP).mkdir()
    for k, epoch in enumerate(epochs):
        tf.keras.utils.set_random_seed(seed * 100 + k)
        build_model(config).save_weights(str(path / rundir.TOP / rundir.TOP_FILE.format(epoch)))
    (path / rundir.METRICS).write_text(json.dumps({"completed": True,
                                                   "top_epochs": list(epochs) or [1]}))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"a": _write_run(root / "a", 1, epochs=(4, 2)), "b": _write_run(root / "b", 2)}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.normal(size=(3, SIZE, SIZE, 3)).astype(np.float32)


def _outputs(models, images, tta="none"):
    return Predictor(models, tta)(images)


def test_an_ensemble_of_one_run_or_of_a_run_with_itself_is_that_run(runs, images):
    single = Ensemble(str(runs["a"]))
    assert single.members() == [{"run_dir": str(runs["a"]), "weights": rundir.BEST_WEIGHTS}]
    model = single.models[0]
    for tta in ("none", "hflip"):
        plain = _outputs(model, images, tta)
        for got, want in zip(single.predictor(tta)(images), plain):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(_outputs([model, model], images, tta), plain):
            np.testing.assert_array_equal(got, want)


def test_two_runs_average_as_numpy_would(runs, images):
    both = Ensemble([str(runs["a"]), str(runs["b"])])
    assert [m["run_dir"] for m in both.members()] == [str(runs["a"]), str(runs["b"])]
    (maps_a, prob_a), (maps_b, prob_b) = (_outputs(m, images) for m in both.models)
    assert not np.allclose(maps_a, maps_b)
    maps, prob = both.predictor("none")(images)
    np.testing.assert_allclose(maps, (maps_a + maps_b) / 2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(prob, (prob_a + prob_b) / 2, rtol=0, atol=1e-6)
    assert both.post_source.startswith(f"no {rundir.POSTPROCESS} in {runs['a']}")


def test_checkpoints_take_the_best_epochs_and_fold_folders_their_folds(runs, tmp_path):
    top = Ensemble(str(runs["a"]), checkpoints=2)
    assert [m["weights"] for m in top.members()] == [f"{rundir.TOP}/epoch-004.weights.h5",
                                                     f"{rundir.TOP}/epoch-002.weights.h5"]
    with pytest.raises(rundir.RunDirError, match="kept the weights of 1 epoch "):
        Ensemble([str(runs["a"]), str(runs["b"])], checkpoints=2)
    folder = tmp_path / "cv"
    for k in (0, 2):
        _write_run(folder / f"fold-{k}", 10 + k)
    (folder / rundir.FOLDS).write_text(json.dumps({"folds": 3, "trained": [0, 2]}))
    assert [m["run_dir"] for m in Ensemble(str(folder)).members()] == [
        rundir.fold_dir(str(folder), 0), rundir.fold_dir(str(folder), 2)]
    other = tmp_path / "other"
    _write_run(other, 3)
    dump_config(load_config(other / rundir.CONFIG, ["data.image_size=96"]), other / rundir.CONFIG)
    with pytest.raises(rundir.RunDirError, match="different grid sizes"):
        Ensemble([str(runs["a"]), str(other)])


def test_a_rule_gating_on_the_label_head_refuses_members_without_one(tmp_path):
    run = _write_run(tmp_path / "headless", 4, overrides=["model.classification_head=false"])
    PostProcess(threshold=0.5, cls_threshold=0.6).save(str(run / rundir.POSTPROCESS))
    ensemble = Ensemble(str(run))
    assert ensemble.post_source == str(run / rundir.POSTPROCESS)
    with pytest.raises(rundir.RunDirError, match="gates on the image-level head, but the model"):
        ensemble.predictor("none")


FRESH = r"""
import json, sys
import numpy as np
import tensorflow as tf
export, images, out = sys.argv[1:]
loaded = tf.saved_model.load(export)
grid = np.load(images)
squares = np.round(grid).astype(np.float32)
png = tf.io.encode_png(tf.constant(grid[0].astype(np.uint8))).numpy()
result = {}
for name, fn, kwargs in (("predict_image", "predict_image", {"images": tf.constant(squares)}),
                         ("serving_default", "serving_default",
                          {"image_bytes": tf.constant([png])})):
    outputs = loaded.signatures[fn](**kwargs)
    result[name] = {k: v.numpy().tolist() for k, v in outputs.items() if v.dtype != tf.string}
result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "keras_ptx")
json.dump(result, open(out, "w"))
"""


@pytest.mark.slow
def test_an_exported_ensemble_answers_what_the_ensemble_does(runs, tmp_path):
    from keras_ptx.serving.export import serving_functions

    result = CliRunner().invoke(export_command, [
        "--model", str(runs["a"]), "--model", str(runs["b"]), "--out", str(tmp_path / "base")])
    assert result.exit_code == 0, result.output
    assert "(2 models averaged)" in result.output
    export = tmp_path / "base" / "1"
    assert [m["run_dir"] for m in read_metadata(export)["members"]] == [str(runs["a"]),
                                                                      str(runs["b"])]
    grid = np.random.default_rng(3).integers(0, 256, (2, SIZE, SIZE, 1)).astype(np.float32)
    np.save(tmp_path / "grid.npy", grid)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "SM_FRAMEWORK")}
    subprocess.run([sys.executable, "-c", FRESH, str(export), str(tmp_path / "grid.npy"),
                    str(tmp_path / "out.json")], check=True, env=env, timeout=300)
    served = json.loads((tmp_path / "out.json").read_text())
    assert served["modules"] == []

    ensemble = Ensemble([str(runs["a"]), str(runs["b"])])
    functions = serving_functions(ensemble.predictor("none"), ensemble.post)
    png = tf.io.encode_png(tf.constant(grid[0].astype(np.uint8))).numpy()
    local = {"predict_image": functions["predict_image"](tf.constant(grid)),
             "serving_default": functions["serving_default"](tf.constant([png]))}
    assert isinstance(ensemble.post, PostProcess)
    for signature, outputs in local.items():
        for key, value in outputs.items():
            if value.dtype == tf.string:
                continue
            np.testing.assert_allclose(np.asarray(served[signature][key], dtype=np.float64),
                                       value.numpy().astype(np.float64), rtol=0, atol=1e-5,
                                       err_msg=f"{signature}/{key}")


def test_evaluate_scores_a_runs_best_epochs_together(runs, tmp_path, monkeypatch):
    from keras_ptx.cli import main
    from keras_ptx.inference import evaluate as evaluate_module
    from test_train import write_records

    data = write_records(tmp_path / "records", "val", 6, seed=4)
    write_records(data, "train", 2, seed=5)
    seen = []
    real = evaluate_module.Predictor
    monkeypatch.setattr(evaluate_module, "Predictor",
                        lambda models, *args: seen.append(len(models)) or real(models, *args))
    result = CliRunner().invoke(main, ["evaluate", "--model", str(runs["a"]), "--data", str(data),
                                       "--checkpoints", "2", "--no-save-postprocess"])
    assert result.exit_code == 0, result.output
    report = json.loads((runs["a"] / rundir.EVAL / rundir.EVAL_REPORT).read_text())
    assert report["checkpoints"] == 2 and report["images"] == 6 and seen == [2]
    result = CliRunner().invoke(main, ["evaluate", "--model", str(runs["b"]), "--data", str(data),
                                       "--checkpoints", "2"])
    assert result.exit_code == 2 and "kept the weights of 1 epoch" in result.output


def test_an_evaluated_ensemble_folder_is_one_model_with_its_rule(runs, tmp_path):
    from keras_ptx.cli import main
    from test_train import write_records

    data = write_records(tmp_path / "records", "val", 6, seed=4)
    write_records(data, "train", 2, seed=5)
    models = ["--model", str(runs["a"]), "--model", str(runs["b"])]
    result = CliRunner().invoke(main, ["evaluate", *models, "--data", str(data)])
    assert result.exit_code == 2 and "name the folder that keeps its report" in result.output
    ens = tmp_path / "ens"
    result = CliRunner().invoke(main, ["evaluate", *models, "--data", str(data),
                                       "--out", str(ens), "--cases", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads((ens / rundir.EVAL / rundir.EVAL_REPORT).read_text())
    assert report["run_dir"] == [str(runs["a"]), str(runs["b"])] and report["images"] == 6
    assert json.loads((ens / rundir.ENSEMBLE).read_text())["members"] == report["run_dir"]
    assert not (runs["a"] / rundir.POSTPROCESS).exists()          # the members are untouched
    ensemble = Ensemble(str(ens))
    assert [m["run_dir"] for m in ensemble.members()] == [str(runs["a"]), str(runs["b"])]
    assert ensemble.post_source == str(ens / rundir.POSTPROCESS)
