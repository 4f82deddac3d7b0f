"""K-fold training and out-of-fold evaluation on tiny 64x64 records whose folds cut across the
build's train/val split: the folds partition the labeled images, fold k's run validates on
fold k, evaluating a fold folder scores every labeled image once with the model that never saw
it, and train-folds survives a SIGKILL in its second fold."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from keras_ptx import rundir
from keras_ptx.cli import main
from keras_ptx.config import ConfigError, dump_config, load_config
from keras_ptx.data.records import write_shards
from keras_ptx.data.records_dir import RecordsDir, RecordsError, SplitCounts
from keras_ptx.inference import evaluate as evaluate_module
from keras_ptx.input import cache
from keras_ptx.input.pipeline import epoch_steps, make_dataset, make_eval_dataset
from keras_ptx.tf_setup import tf
from keras_ptx.training import TrainingError
from keras_ptx.training.folds import parse_folds, train_folds
from test_train import REPO, SLIM, TEST_CONFIG, write_records

SIZE = 64
FOLDS = 3
TRAIN_FOLDS = [k % FOLDS for k in range(10)]      # the build's splits each hold every fold
VAL_FOLDS = [2, 0, 1, 0]


def _examples(n, seed):
    rng = np.random.default_rng(seed)
    for k in range(n):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        if k % 2 == 0:
            mask[20:30, 20:30] = 1
        image = rng.integers(40, 90, (SIZE, SIZE), dtype=np.uint8)
        image[mask > 0] = 200
        yield image, mask


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    """Records of 3 folds over train (2 shards) and val, and an unlabeled test split: the
    folder and image id -> fold of every labeled image."""
    folder = tmp_path_factory.mktemp("folded")
    written = (write_shards(folder, "train", _examples(10, 1), shards=2, original=SIZE,
                            folds=TRAIN_FOLDS)
               + write_shards(folder, "val", _examples(4, 2), original=SIZE, folds=VAL_FOLDS))
    write_shards(folder, "test", _examples(2, 3), original=SIZE, labeled=[0, 0])
    return folder, {r.image_id: r.fold for r in written}


def _config(*overrides):
    return load_config(TEST_CONFIG, [*SLIM, *overrides])


def _ids(dataset):
    return [i.decode() for batch in dataset for i in batch["image_id"].numpy()]


def test_folds_partition_the_labeled_images_and_fold_k_validates_on_fold_k(folded):
    folder, fold_of = folded
    records = RecordsDir(str(folder))
    assert records.folds == FOLDS
    assert records.fold_counts() == {0: SplitCounts(6, 2), 1: SplitCounts(4, 2),
                                     2: SplitCounts(4, 3)}
    seen = []
    for k in range(FOLDS):
        config = _config(f"data.fold={k}", "train.steps_per_epoch=null")
        val = _ids(make_eval_dataset(config, records, "val"))
        train = _ids(make_eval_dataset(config, records, "train"))
        assert sorted(val) == sorted(i for i, f in fold_of.items() if f == k)
        assert sorted(train) == sorted(i for i, f in fold_of.items() if f != k)
        assert records.counts("val", k).records == len(val)
        assert records.counts("train", k).records == len(train)
        assert epoch_steps(config.train, records, fold=k) == len(train) // 4
        assert cache.plan(config.data, records, "train").reason.startswith(
            f"auto: {len(train) * SIZE * SIZE * 2 / 1e9:.2f} GB")
        shuffled = make_dataset(config, records, "train", cached=True)       # training's stream
        assert sum(int(images.shape[0]) for images, _ in shuffled) == len(train) // 4 * 4
        seen += val
    assert sorted(seen) == sorted(fold_of)                  # each labeled image in one fold
    test = _ids(make_eval_dataset(_config("data.fold=0"), records, "test"))
    assert test == ["test-000", "test-001"]                 # folds leave the test split alone


def test_clear_errors_for_records_without_folds_or_a_fold_out_of_range(folded, tmp_path):
    folder, _ = folded
    records = RecordsDir(str(folder))
    with pytest.raises(RecordsError, match=r"data.fold=3: the records in .* have 3 folds, 0 to 2"):
        records.source("val", SIZE, 3)
    with pytest.raises(ConfigError, match="data.fold: must be at least 0"):
        _config("data.fold=-1")
    plain = tmp_path / "plain"
    write_records(plain, "train", 8)
    write_records(plain, "val", 2)
    assert RecordsDir(str(plain)).folds == 0
    result = CliRunner().invoke(main, ["train", "--config", str(TEST_CONFIG), "--data", str(plain),
                                       "--out", str(tmp_path / "run"), "--set", "data.fold=0"])
    assert result.exit_code == 2 and "the records in" in result.stderr
    assert "have no folds; build them with build-tfrecords --folds K" in result.stderr
    with pytest.raises(TrainingError, match="have no folds"):
        train_folds(_config(), str(plain), str(tmp_path / "cv"))
    with pytest.raises(TrainingError, match="the records have 3 folds, 0 to 2"):
        train_folds(_config(), str(folder), str(tmp_path / "cv"), folds="1,3")
    with pytest.raises(TrainingError, match="train-folds sets each run's fold"):
        train_folds(_config("data.fold=1"), str(folder), str(tmp_path / "cv"))
    assert not (tmp_path / "run").exists() and not (tmp_path / "cv").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / rundir.CONFIG).write_text("{}")
    with pytest.raises(TrainingError, match="not a fold folder .* and not empty"):
        train_folds(_config(), str(folder), str(tmp_path / "run"))
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / rundir.FOLDS).write_text(json.dumps({"folds": 5, "data": "elsewhere"}))
    with pytest.raises(TrainingError, match="holds runs of 5 folds .* these records have 3"):
        train_folds(_config(), str(folder), str(tmp_path / "cv"))
    assert parse_folds("all", 3) == [0, 1, 2] and parse_folds("2, 0", 3) == [0, 2]


def test_folds_need_no_val_split(tmp_path):
    """Records built with --val-fraction 0 --folds K: a fold run validates on its fold."""
    from keras_ptx.training.datasets import check_records

    write_shards(tmp_path, "train", _examples(8, 6), original=SIZE, folds=[0, 1] * 4)
    records = RecordsDir(str(tmp_path))
    check_records(_config("data.fold=1"), records)
    assert records.counts("val", 1) == SplitCounts(4, 0) and records.counts("train", 1).records == 4
    with pytest.raises(TrainingError, match="no val split"):
        check_records(_config(), records)


def _tiny_model(seed):
    """A stand-in network with only a mask output, each fold's with its own weights."""
    inputs = tf.keras.Input((SIZE, SIZE, 3))
    x = tf.keras.layers.Conv2D(1, 3, padding="same",
                               kernel_initializer=tf.keras.initializers.GlorotUniform(seed))(inputs)
    return tf.keras.Model(inputs, tf.keras.layers.Activation("sigmoid", name="mask")(x))


def test_out_of_fold_evaluation_scores_every_labeled_image_once_with_its_folds_model(
        folded, tmp_path, monkeypatch):
    folder, fold_of = folded
    out = tmp_path / "cv"
    models = {}
    for k in range(FOLDS):
        run = out / f"fold-{k}"
        run.mkdir(parents=True)
        dump_config(_config(f"data.fold={k}", "eval.batch_size=3"), run / rundir.CONFIG)
        models[str(run)] = _tiny_model(k)
    (out / rundir.FOLDS).write_text(json.dumps({"folds": FOLDS, "trained": [0, 1, 2],
                                                "data": str(folder)}))
    monkeypatch.setattr(rundir, "load_model", lambda d, c: models[str(d)])
    scored_by = {}
    real = evaluate_module._run_model

    def spy(predictor, dataset, seen, *args):
        before = len(seen.image_ids)
        real(predictor, dataset, seen, *args)
        for image_id in seen.image_ids[before:]:
            scored_by.setdefault(image_id, []).extend(predictor.models)

    monkeypatch.setattr(evaluate_module, "_run_model", spy)
    result = CliRunner().invoke(main, ["evaluate", "--model", str(out), "--data", str(folder),
                                       "--cases", "1"])
    assert result.exit_code == 0, result.output + result.stderr
    assert sorted(scored_by) == sorted(fold_of)
    for image_id, by in scored_by.items():
        assert by == [models[str(out / f"fold-{fold_of[image_id]}")]], image_id
    report = json.loads((out / rundir.EVAL / rundir.EVAL_REPORT).read_text())
    assert report["split"] == "out-of-fold" and report["images"] == len(fold_of)
    assert report["images_per_fold"] == {"0": 6, "1": 4, "2": 4}
    assert report["postprocess_file"] == str(out / rundir.POSTPROCESS)
    assert (out / rundir.POSTPROCESS).is_file() and (out / rundir.EVAL / "roc.png").is_file()
    markdown = (out / rundir.EVAL / rundir.EVAL_REPORT_MD).read_text()
    assert "fold 0: 6, fold 1: 4, fold 2: 4" in markdown
    assert not any((out / f"fold-{k}" / rundir.POSTPROCESS).exists() for k in range(FOLDS))

    result = CliRunner().invoke(main, ["evaluate", "--model", str(out), "--data", str(folder),
                                       "--split", "train"])
    assert result.exit_code == 2
    assert "is a fold folder: it is evaluated out of fold" in result.stderr


# Runs bin/train-folds' command in a process that SIGKILLs itself right after the backup of the
# first epoch of its second fold (the third epoch end of the process).
KILLED_IN_FOLD_1 = textwrap.dedent("""
    import os, signal, sys
    from keras_ptx.tf_setup import tf
    from keras_ptx.cli import run_command
    ends = []
    original = tf.keras.callbacks.BackupAndRestore.on_epoch_end

    def hooked(self, epoch, logs=None):
        original(self, epoch, logs)
        ends.append(epoch)
        if len(ends) == 3:
            os.kill(os.getpid(), signal.SIGKILL)

    tf.keras.callbacks.BackupAndRestore.on_epoch_end = hooked
    run_command("train-folds", "bin/train-folds", sys.argv[1:])
""")


@pytest.mark.slow
def test_a_kill_in_the_second_fold_resumes_it_and_skips_the_first(tmp_path):
    data = tmp_path / "records"
    write_shards(data, "train", _examples(12, 4), original=SIZE, folds=[k % 2 for k in range(12)])
    write_shards(data, "val", _examples(4, 5), original=SIZE, folds=[0, 1, 1, 0])
    out = tmp_path / "cv"
    args = ["--config", str(TEST_CONFIG), "--data", str(data), "--out", str(out),
            *(a for s in (*SLIM, "train.tensorboard_images=0") for a in ("--set", s))]
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_FOLD_1, *args], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert (out / "fold-0" / rundir.METRICS).is_file()
    assert not (out / "fold-1" / rundir.METRICS).exists()

    again = subprocess.run([str(REPO / "bin" / "train-folds"), *args], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"{out / 'fold-0'} already holds this finished run" in again.stdout
    assert "continuing after epoch 1" in again.stdout
    table = again.stdout.splitlines()[-5:]
    assert table[0].split()[:3] == ["fold", "train", "val"] and "score" in table[0]
    for k, row in enumerate(table[1:3]):
        assert row.split()[:3] == [str(k), "8", "8"] and row.split()[4] == "2"     # epochs
    assert table[3].startswith("mean") and table[4].startswith("best epoch by val_score")
    for k in range(2):
        with open(out / f"fold-{k}" / rundir.HISTORY) as f:
            assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["0", "1"]
        assert load_config(out / f"fold-{k}" / rundir.CONFIG).data.fold == k
    assert json.loads((out / rundir.FOLDS).read_text())["trained"] == [0, 1]

    result = CliRunner().invoke(main, ["evaluate", "--model", str(out), "--data", str(data),
                                       "--cases", "0"])
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((out / rundir.EVAL / rundir.EVAL_REPORT).read_text())
    assert report["images"] == 16 and report["images_per_fold"] == {"0": 8, "1": 8}


def test_a_fold_folder_as_init_from_warm_starts_each_fold_from_its_own(tmp_path):
    from keras_ptx.training.folds import _fold_init
    train = load_config(None, [f"train.init_from={tmp_path / 'cv-512'}"]).train
    assert _fold_init(train, 2) == train                      # not a fold folder: as it is
    (tmp_path / "cv-512").mkdir()
    (tmp_path / "cv-512" / rundir.FOLDS).write_text(json.dumps({"folds": 3, "trained": [0, 1, 2]}))
    assert _fold_init(train, 2).init_from == rundir.fold_dir(str(tmp_path / "cv-512"), 2)
    assert _fold_init(load_config(None).train, 1).init_from is None


def test_resume_and_overwrite_reach_every_folds_run(folded, tmp_path, monkeypatch):
    from types import SimpleNamespace
    from keras_ptx.training import folds as folds_module
    calls = []

    def fake_train(config, data_dir, run, **kwargs):
        calls.append((config.data.fold, run, kwargs["resume"], kwargs["overwrite"]))
        return SimpleNamespace(metrics={"best": {"val_score": 0.5}, "best_epoch": 1,
                                        "epochs_trained": 1, "monitor": "val_score"})

    monkeypatch.setattr(folds_module, "train", fake_train)
    folder, _ = folded
    base = ["train-folds", "--config", str(TEST_CONFIG), "--data", str(folder), "--folds", "0,2"]
    result = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "a"), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert calls == [(0, rundir.fold_dir(str(tmp_path / "a"), 0), False, True),
                     (2, rundir.fold_dir(str(tmp_path / "a"), 2), False, True)]
    calls.clear()
    result = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "b"), "--resume"])
    assert result.exit_code == 0 and [c[2:] for c in calls] == [(True, False)] * 2
    result = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "c"), "--resume",
                                       "--overwrite"])
    assert result.exit_code == 2 and "--resume and --overwrite exclude each other" in result.output
