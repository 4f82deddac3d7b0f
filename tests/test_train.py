"""bin/train: refusals, run-directory states, schedule, averaging, an end-to-end run with a planted
plateau, and resuming after SIGKILL (tiny 64x64 records written with the shared schema)."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from keras_ptx import rundir
from keras_ptx.commands.train import command
from keras_ptx.config import load_config
from keras_ptx.data.records import write_shards
from keras_ptx.inference.trained import TrainedRun
from keras_ptx.tf_setup import tf
from keras_ptx.training import TrainingError
from keras_ptx.training.averaging import WeightAveraging
from keras_ptx.training.callbacks import EpochSummary, ResumablePlateau
from keras_ptx.training.resume import (Monitor, ResumePoint, backup_epoch, best_row, delete_backup,
                                       prepare_run_dir, resume_point)
from keras_ptx.training.schedules import learning_rate_schedule
from keras_ptx.training.strategy import cluster_size, resolve_strategy_name


REPO = Path(__file__).resolve().parents[1]
TEST_CONFIG = REPO / "configs" / "test.yaml"
# A network whose mask needs only the first encoder stages: a quarter of the tracing time.
SLIM = ("model.prune_level=1", "model.classification_head=false")


def write_records(directory, split, n, size=64, seed=0, shards=1):
    """``n`` records of ``split``: noisy gray images, every other one with a bright disc that is
    also its mask."""
    rng = np.random.default_rng(seed)

    def examples():
        for i in range(n):
            image = rng.integers(40, 90, (size, size), dtype=np.uint8)
            mask = np.zeros((size, size), np.uint8)
            if i % 2 == 0:
                x, y = (int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
                cv2.circle(mask, (x, y), int(rng.integers(size // 10, size // 5)), 1, -1)
                image[mask > 0] = 200
            yield image, mask

    write_shards(directory, split, examples(), shards=shards, original=size)
    return Path(directory)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("records")
    write_records(directory, "train", 16, seed=1, shards=2)
    write_records(directory, "val", 6, seed=2)
    return directory


def _run_cli(*args):
    return CliRunner().invoke(command, [str(a) for a in args])


# --- refusals ---------------------------------------------------------------------------------

def test_refuses_missing_empty_and_incomplete_data_dirs(tmp_path):
    base = ["--config", TEST_CONFIG, "--out", tmp_path / "run"]
    result = _run_cli(*base, "--data", tmp_path / "nowhere")
    assert result.exit_code == 2 and "no such directory" in result.output
    (tmp_path / "a-file").write_text("x")
    result = _run_cli(*base, "--data", tmp_path / "a-file")
    assert result.exit_code == 2 and "a-file: not a directory" in result.output
    (tmp_path / "empty").mkdir()
    result = _run_cli(*base, "--data", tmp_path / "empty")
    assert result.exit_code == 2 and "is empty" in result.output
    write_records(tmp_path / "train-only", "train", 2)
    result = _run_cli(*base, "--data", tmp_path / "train-only")
    assert result.exit_code == 2 and "no val split, which training validates on" in result.output
    assert "--val-fraction above 0" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_refuses_a_run_dir_url_this_tensorflow_cannot_open_before_writing_anything(
        data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run_cli("--config", TEST_CONFIG, "--data", data_dir, "--out", "s4://bucket/run")
    assert result.exit_code == 2
    assert "--out s4://bucket/run: this TensorFlow cannot open s4:// URLs" in result.output
    assert not list(tmp_path.iterdir())


def test_refuses_records_of_another_size(tmp_path):
    write_records(tmp_path / "rec32", "train", 2, size=32)
    write_records(tmp_path / "rec32", "val", 2, size=32)
    result = _run_cli("--config", TEST_CONFIG, "--data", tmp_path / "rec32",
                      "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "32x32" in result.output and "data.image_size is 64" in result.output
    assert not (tmp_path / "run").exists()


def test_refuses_config_errors(data_dir, tmp_path):
    base = ["--config", TEST_CONFIG, "--data", data_dir, "--out", tmp_path / "run"]
    for override, message in [
            ("train.batchsize=3", "did you mean train.batch_size?"),
            ("train.lr_schedule=linear", "train.lr_schedule"),
            ("train.strategy=tpu", "train.strategy"),
            ("data.train_crop=48", "data.train_crop: 48 must be a multiple of 32"),
            ("train.metric_threshold=[]", "train.metric_threshold: expected one or more"),
            ("train.monitor=dice", "train.monitor: expected one of score, loss"),
            ("data.cache=sometimes", "data.cache: expected true/false or auto"),
            ("data.image_size=100", "data.image_size: 100 is not a positive multiple of 32"),
            ("data.batches_per_call=0", "data.batches_per_call: must be at least 1"),
            ("data.num_parallel_calls=-1", "data.num_parallel_calls: must be at least 0")]:
        result = _run_cli(*base, "--set", override)
        assert result.exit_code == 2 and message in result.output, override
    result = _run_cli(*base, "--resume", "--overwrite")
    assert result.exit_code == 2 and "exclude each other" in result.output
    assert not (tmp_path / "run").exists()


def test_a_damaged_shard_stops_training_with_a_clear_error(data_dir, tmp_path):
    damaged = tmp_path / "records"
    shutil.copytree(data_dir, damaged)
    for shard in damaged.glob("train-*.tfrecord"):
        shard.write_bytes(shard.read_bytes()[:-300])
    result = _run_cli("--config", TEST_CONFIG, "--data", damaged, "--out", tmp_path / "run",
                      "--set", "data.cache=false", *(a for s in SLIM for a in ("--set", s)))
    assert result.exit_code == 2, result.output
    assert f"--data {damaged}: a record shard is damaged (truncated record at" in result.output
    assert "Traceback" not in result.output


def test_refuses_a_run_dir_of_another_config_or_no_run_dir(data_dir, tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, load_config(TEST_CONFIG))
    _write_history(run, [0.5])          # it has trained
    result = _run_cli("--config", TEST_CONFIG, "--data", data_dir, "--out", run,
                      "--set", "train.epochs=3")
    assert result.exit_code == 2 and "train.epochs: 2 -> 3" in result.output
    assert "--resume" in result.output and "--overwrite" in result.output
    result = _run_cli("--config", TEST_CONFIG, "--data", data_dir, "--out", run, "--resume",
                      "--set", "train.monitor=loss")
    assert result.exit_code == 2 and "train.monitor: 'score' -> 'loss'" in result.output
    assert "chosen by the old setting" in result.output

    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    for flag in ([], ["--overwrite"]):
        result = _run_cli("--config", TEST_CONFIG, "--data", data_dir, "--out", other, *flag)
        assert result.exit_code == 2 and "not a run directory" in result.output
    assert (other / "holiday.jpg").exists()


# --- run directory states, schedule, strategy, averaging (no network) ------------------------

def test_a_start_that_never_trained_makes_way_for_another_config(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, load_config(TEST_CONFIG))         # then failed, e.g. a bad weights file
    fixed = load_config(TEST_CONFIG, ["train.epochs=3"])
    assert prepare_run_dir(run, fixed) is None
    assert load_config(run / rundir.CONFIG).train.epochs == 3
    (run / rundir.CHECKPOINTS / "best.h5").write_bytes(b"weights")   # something worth keeping
    with pytest.raises(TrainingError, match="different config"):
        prepare_run_dir(run, load_config(TEST_CONFIG))


def _write_history(run, scores):
    with open(run / rundir.HISTORY, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "val_score"])
        writer.writerows([i, 1.0, s] for i, s in enumerate(scores))


def test_backup_epoch_and_resume_point_follow_backup_and_restore(tmp_path):
    run = tmp_path / "run"
    config = load_config(TEST_CONFIG)
    assert prepare_run_dir(run, config) is None and backup_epoch(run) is None
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    backup = tf.keras.callbacks.BackupAndRestore(str(run / rundir.CHECKPOINTS / rundir.BACKUP),
                                                 delete_checkpoint=False)
    model.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=3, verbose=0, callbacks=[backup])
    assert backup_epoch(run) == 2
    # Epochs 0-3 in the history, but the backup ends at epoch 2: epoch 3's row is dropped.
    _write_history(run, [0.2, 0.7, 0.5, 0.9])
    assert prepare_run_dir(run, config) is None
    point = resume_point(run, Monitor("val_score"))
    assert (point.epoch, point.best_score, point.best_epoch, point.wait) == (3, 0.7, 1, 1)
    point = resume_point(run, Monitor("val_score", "min"))
    assert (point.best_score, point.best_epoch, point.wait) == (0.2, 0, 2)
    with open(run / rundir.HISTORY) as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2"]


def test_run_dir_without_backup(tmp_path):
    run, config = tmp_path / "run", load_config(TEST_CONFIG)
    prepare_run_dir(run, config)
    (run / rundir.LOGS).mkdir()
    assert prepare_run_dir(run, config) is None         # nothing trained yet: start again
    assert not (run / rundir.LOGS).exists()
    # epoch 1's row but no backup (killed before the first was complete): start again
    _write_history(run, [0.3])
    said = prepare_run_dir(run, config)
    assert "epoch 1's row in history.csv was dropped; training starts again at epoch 1" in said
    assert not (run / rundir.HISTORY).exists() and (run / rundir.CONFIG).exists()
    # more epochs and no backup: it was lost (deleted by hand, an older version), not unwritten
    _write_history(run, [0.3, 0.4])
    with pytest.raises(TrainingError, match="has 2 trained epochs but neither a backup"):
        prepare_run_dir(run, config)
    (run / rundir.HISTORY).unlink()
    _write_history(run, [0.3])
    (run / rundir.METRICS).write_text(json.dumps({"completed": True}))
    assert prepare_run_dir(run, config) is None          # finished: nothing to do
    assert (run / rundir.HISTORY).exists()
    other = load_config(TEST_CONFIG, ["train.epochs=4"])
    with pytest.raises(TrainingError, match="has finished"):
        prepare_run_dir(run, other, resume=True)
    assert prepare_run_dir(run, other, overwrite=True) is None
    assert load_config(run / rundir.CONFIG) == other and not (run / rundir.HISTORY).exists()


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    train = load_config(None, ["train.epochs=10", "train.warmup_epochs=1", "train.learning_rate=1.0e-3",
                               "train.min_learning_rate=1.0e-5"]).train
    schedule = learning_rate_schedule(train, steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    assert rates[0] == pytest.approx(1e-5)
    assert rates[1] == pytest.approx((1e-5 + 1e-3) / 2)
    assert rates[2] == pytest.approx(1e-3)
    assert 1e-5 < rates[3] < 1e-3
    assert rates[4] == pytest.approx(1e-5)
    assert learning_rate_schedule(load_config(None, ["train.lr_schedule=plateau"]).train, 10) == 1e-3


def test_strategy_from_tf_config():
    two = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                    "task": {"type": "worker", "index": 1}})}
    assert cluster_size(two) == 2
    assert resolve_strategy_name("auto", two) == "multi_worker"
    assert cluster_size({}) == 1
    assert resolve_strategy_name("auto", {}) == "default"      # no GPU here
    with pytest.raises(TrainingError, match="TF_CONFIG"):
        cluster_size({"TF_CONFIG": "{not json"})


def test_weight_averaging_is_the_mean_and_survives_a_resume(tmp_path):
    model = tf.keras.Sequential([tf.keras.Input((1,)), tf.keras.layers.Dense(1)])
    snapshots = []

    def run(first, epochs, resume_epoch):
        averaging = WeightAveraging(first, str(tmp_path), tf.distribute.get_strategy(),
                                    resume_epoch=resume_epoch)
        averaging.set_model(model)
        averaging.on_train_begin()
        for epoch in epochs:
            model.set_weights([np.full((1, 1), epoch, np.float32), np.zeros(1, np.float32)])
            snapshots.append(epoch)
            averaging.on_epoch_end(epoch)
        return averaging

    run(2, range(0, 4), 0)                        # averages epochs 2, 3; then "crashes"
    averaging = run(2, range(4, 6), 4)            # resumes at epoch 4
    assert averaging.epochs == [2, 3, 4, 5]
    mean = averaging.averaged_weights(model.get_weights())
    assert mean[0].dtype == np.float32 and mean[0][0, 0] == pytest.approx(3.5)
    assert sorted(p.name for p in tmp_path.glob("swa-*")) == ["swa-epoch-004.npz",
                                                              "swa-epoch-005.npz"]


# --- training -----------------------------------------------------------------------------------

class PlantScores(tf.keras.callbacks.Callback):
    """Overrides the monitored validation score per epoch and remembers each epoch's weights."""

    def __init__(self, key, scores):
        super().__init__()
        self.key, self.scores, self.weights = key, scores, {}

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.scores[epoch]
        self.weights[epoch] = self.model.get_weights()


def _event_tags(log_dir):
    tags = {}
    for path in Path(log_dir).rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(value)
    return tags


@pytest.mark.slow
def test_end_to_end_run_with_planted_plateau_stops_early_and_keeps_the_best(data_dir, tmp_path):
    from keras_ptx.training.run import train

    run = tmp_path / "run"
    config = load_config(TEST_CONFIG, ["train.epochs=6", "train.early_stopping_patience=2",
                                       "train.keep_best=2", "model.prune_level=1"])
    planted = PlantScores("val_mask_score", [0.2, 0.6, 0.5, 0.4, 0.9, 0.9])
    lines = []
    result = train(config, str(data_dir), run, callbacks=[planted], echo=lines.append)

    # Best epoch 2 (index 1), then two epochs without improvement: stops after epoch 4.
    metrics = json.loads((run / rundir.METRICS).read_text())
    assert metrics["stopped"] == "early_stopping" and metrics["epochs_trained"] == 4
    assert metrics["best_epoch"] == 2 and metrics["best"]["val_mask_score"] == 0.6
    assert metrics["monitor"] == "val_mask_score" and metrics["final_weights"] == "best_epoch"
    with open(run / rundir.HISTORY) as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    assert {"loss", "val_loss", "val_mask_score", "lr", "images_per_sec"} <= set(rows[0])
    assert sum(line.startswith("epoch ") for line in lines) == 4
    assert any("(best 0.6000, epoch 2)" in line for line in lines)

    # The best checkpoint, the final model and RUN_DIR/best.weights.h5 hold epoch 2's weights.
    best = planted.weights[1]
    for got, want in zip(result.model.get_weights(), best):
        np.testing.assert_array_equal(got, want)
    reloaded = TrainedRun(run).model
    for got, want in zip(reloaded.get_weights(), best):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(planted.weights[3][0], best[0])     # it did train on

    # keep_best 2: epochs 2 and 3 (0.6, 0.5), best first, as inference weights in top/
    assert metrics["top_epochs"] == [2, 3]
    assert sorted(p.name for p in (run / rundir.CHECKPOINTS).glob("top-epoch-*")) == [
        "top-epoch-002.weights.h5", "top-epoch-003.weights.h5"]
    assert sorted(p.name for p in (run / rundir.TOP).iterdir()) == [
        rundir.TOP_FILE.format(2), rundir.TOP_FILE.format(3)]
    twin = TrainedRun(run).model
    for epoch in (2, 3):
        twin.load_weights(str(run / rundir.TOP / rundir.TOP_FILE.format(epoch)))
        for got, want in zip(twin.get_weights(), planted.weights[epoch - 1]):
            np.testing.assert_array_equal(got, want)

    for name in (rundir.CONFIG, rundir.HISTORY, rundir.METRICS, rundir.BEST_WEIGHTS,
                 f"{rundir.CHECKPOINTS}/{rundir.BEST_WEIGHTS}",
                 f"{rundir.CHECKPOINTS}/{rundir.LAST_WEIGHTS}"):
        assert (run / name).is_file(), name
    with h5py.File(run / rundir.BEST_WEIGHTS) as saved:     # for inference: no optimizer state
        assert "layers" in saved and "optimizer" not in saved
    assert load_config(run / rundir.CONFIG) == config
    assert backup_epoch(run) is None                     # a finished run leaves no backup
    tags = _event_tags(run / rundir.LOGS)
    assert {"epoch_loss", "epoch_mask_score"} <= set(tags)
    images = tags["validation/overlay"]
    assert len(images) == 4 and images[0].metadata.plugin_data.plugin_name == "images"
    width, height, *pngs = images[0].tensor.string_val
    assert (int(width), int(height), len(pngs)) == (64, 64, 2)
    assert cv2.imdecode(np.frombuffer(pngs[0], np.uint8), cv2.IMREAD_COLOR).shape == (64, 64, 3)

    # The same command again: nothing to do.
    lines.clear()
    again = train(config, str(data_dir), run, echo=lines.append)
    assert again.model is None and "nothing to do" in lines[0]


def test_trains_on_crops_and_validates_on_whole_images(data_dir, tmp_path):
    from keras_ptx.training.run import train

    run, lines = tmp_path / "run", []
    config = load_config(TEST_CONFIG, ["train.epochs=1", "data.train_crop=32",
                                       "train.validation_steps=1", *SLIM])
    result = train(config, str(data_dir), run, echo=lines.append)
    assert "at 64x64 on 32x32 crops" in lines[0]
    assert lines[1].startswith("decoded records kept in memory: train yes (auto: 0.00 GB decoded")
    assert lines[1].endswith("val no (train.validation_steps reads part of it)")
    assert result.model.input_shape == (None, None, None, 3)
    assert 0.0 <= float(_history(run)[0]["val_score"]) <= 1.0      # one output: no "mask_" prefix
    reloaded = TrainedRun(run).model                 # the whole-image model for inference
    assert reloaded.input_shape == (None, 64, 64, 3)
    for got, want in zip(reloaded.get_weights(), result.model.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_a_failing_augmentation_worker_is_a_training_error(data_dir, tmp_path, monkeypatch):
    from keras_ptx.input import workers
    from keras_ptx.training.run import train

    def broken(*_):
        raise workers.AugmentWorkerError("augmentation worker process 1 died (exit code -9)")

    monkeypatch.setattr(workers.Worker, "run", broken)
    config = load_config(TEST_CONFIG, ["train.epochs=1", "train.validation_steps=1",
                                       "augment.enabled=true", *SLIM])
    with pytest.raises(TrainingError, match=r"^augmentation stopped training: augmentation worker "
                                            r"process 1 died \(exit code -9\)$"):
        train(config, str(data_dir), tmp_path / "run", echo=lambda line: None)


def test_monitoring_the_validation_loss_keeps_the_lowest():
    history = [{"epoch": e, "val_loss": v, "val_score": s}
               for e, (v, s) in enumerate([(0.9, 0.5), (0.6, 0.2), (0.7, 0.3)])]
    assert best_row(history, Monitor("val_loss", "min"))["epoch"] == 1
    assert best_row(history, Monitor("val_score"))["epoch"] == 0
    lines = []
    summary = EpochSummary(Monitor("val_loss", "min"), "val_score", 3, echo=lines.append)
    for row in history:
        summary.on_epoch_end(row["epoch"], {"loss": 1.0, **row})
    assert "val_loss 0.7000 (best 0.6000, epoch 2)" in lines[-1] and "val score 0.3000" in lines[-1]


def _history(run):
    with open(run / rundir.HISTORY) as f:
        return list(csv.DictReader(f))


# Runs bin/train's command in a process that SIGKILLs itself at one instant of an epoch's end.
KILLED_AT = textwrap.dedent("""
    import os, signal, sys
    from keras_ptx.tf_setup import tf
    import keras_ptx.training.finish as finish
    from keras_ptx.cli import run_command
    window, at = sys.argv[1], int(sys.argv[2])
    callbacks = tf.keras.callbacks

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(cls, name, before):
        original = getattr(cls, name)
        def hooked(self, epoch, logs=None):
            if before and epoch == at:
                die()
            original(self, epoch, logs)
            if not before and epoch == at:
                die()
        setattr(cls, name, hooked)

    if window == "before the history row":
        wrap(callbacks.CSVLogger, "on_epoch_end", before=True)
    elif window == "between the row and the backup":
        wrap(callbacks.BackupAndRestore, "on_epoch_end", before=True)
    elif window == "after the backup":
        wrap(callbacks.BackupAndRestore, "on_epoch_end", before=False)
    elif window == "finishing":
        finish.write_atomic = lambda *args: die()
    run_command("train", "bin/train", sys.argv[3:])
""")


@pytest.mark.slow
def test_a_kill_at_any_instant_of_an_epochs_end_resumes(data_dir, tmp_path):
    """SIGKILL in each window of an epoch's end, one after the other, each followed by the same
    command: the run always goes on, and its history ends with every epoch exactly once."""
    run = tmp_path / "run"
    args = ["--config", str(TEST_CONFIG), "--data", str(data_dir), "--out", str(run),
            *(a for s in (*SLIM, "train.epochs=4", "train.steps_per_epoch=3",
                          "train.tensorboard_images=0") for a in ("--set", s))]

    def killed(window, epoch):
        result = subprocess.run([sys.executable, "-c", KILLED_AT, window, str(epoch), *args],
                                capture_output=True, text=True, timeout=240,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # lines before the kill
        assert result.returncode == -signal.SIGKILL, result.stdout[-2000:] + result.stderr[-2000:]
        return [int(row["epoch"]) for row in _history(run)], backup_epoch(run), result.stdout

    # the window the issue reported: epoch 1's row is written, its backup is not
    assert killed("between the row and the backup", 0)[:2] == ([0], None)
    rows, backup, out = killed("before the history row", 1)
    assert "training starts again at epoch 1" in out and (rows, backup) == ([0], 0)
    rows, backup, out = killed("after the backup", 1)
    assert "continuing after epoch 1" in out and (rows, backup) == ([0, 1], 1)
    assert killed("between the row and the backup", 2)[:2] == ([0, 1, 2], 1)
    first = _history(run)[:2]
    rows, backup, out = killed("finishing", 3)              # fit is over, metrics.json is not
    assert (rows, backup) == ([0, 1, 2, 3], 3) and not (run / rundir.METRICS).exists()

    last = subprocess.run([str(REPO / "bin" / "train"), *args], capture_output=True, text=True,
                          timeout=240)
    assert last.returncode == 0, last.stdout[-2000:] + last.stderr[-2000:]
    assert "continuing after epoch 4" in last.stdout
    history = _history(run)
    assert [int(row["epoch"]) for row in history] == [0, 1, 2, 3] and history[:2] == first
    rates = [float(row["lr"]) for row in history]
    assert rates == sorted(rates, reverse=True) and rates[3] < rates[0]   # one cosine, continued
    metrics = json.loads((run / rundir.METRICS).read_text())
    assert metrics["completed"] and metrics["epochs_trained"] == 4
    assert backup_epoch(run) is None and not (run / rundir.CHECKPOINTS / rundir.BACKUP).exists()
    # (a finished run given the same command again: tests/test_folds.py)


def test_a_resumed_plateau_schedule_counts_as_an_uninterrupted_one():
    """After a resume at any epoch, the plateau callback's wait, best and cooldown equal an
    uninterrupted run's, and the next epochs decide the rate as that run did; a plain
    ReduceLROnPlateau (the state lost) would not."""
    values = [0.5, 0.4, 0.45, 0.44, 0.43, 0.5, 0.39, 0.6, 0.6, 0.6, 0.6]     # val_loss per epoch
    settings = dict(monitor="val_loss", mode="min", factor=0.5, patience=2, min_lr=0.02,
                    cooldown=1, verbose=0)

    def model(rate):
        net = tf.keras.Sequential([tf.keras.Input((1,)), tf.keras.layers.Dense(1)])
        net.compile(optimizer=tf.keras.optimizers.SGD(rate), loss="mse")
        return net

    def state(callback):
        return (callback.wait, callback.best, callback.cooldown_counter,
                float(callback.model.optimizer.lr))

    uninterrupted = tf.keras.callbacks.ReduceLROnPlateau(**settings)
    uninterrupted.set_model(model(0.1))
    uninterrupted.on_train_begin()
    rows, states = [], []
    for epoch, value in enumerate(values):
        logs = {"val_loss": value}
        uninterrupted.on_epoch_end(epoch, logs)         # logs the rate it trained at, as fit does
        rows.append({"epoch": epoch, "val_loss": value, "lr": float(logs["lr"])})
        states.append(state(uninterrupted))
    assert states[-1][3] == pytest.approx(0.02)         # it did reduce, down to min_lr

    lost = 0
    for k in range(1, len(values)):
        for cls in (ResumablePlateau, tf.keras.callbacks.ReduceLROnPlateau):
            resumed = (ResumablePlateau(ResumePoint(epoch=k, history=tuple(rows[:k])), **settings)
                       if cls is ResumablePlateau else cls(**settings))
            resumed.set_model(model(states[k - 1][3]))  # the backup restores the rate
            resumed.on_train_begin()
            replayed = [state(resumed)]
            for epoch in range(k, len(values)):
                resumed.on_epoch_end(epoch, {"val_loss": values[epoch]})
                replayed.append(state(resumed))
            if cls is ResumablePlateau:
                assert replayed == states[k - 1:], k
            else:
                lost += replayed != states[k - 1:]
    assert lost > 0


def test_a_run_that_ended_itself_is_not_trained_further_on_resume():
    rows = tuple({"epoch": e, "loss": loss} for e, loss in enumerate([1.0, 0.9, float("nan")]))
    assert ResumePoint(epoch=3, history=rows).stopped(patience=0)           # TerminateOnNaN
    assert not ResumePoint(epoch=2, history=rows[:2]).stopped(patience=0)
    assert ResumePoint(epoch=4, wait=2, history=rows[:2]).stopped(patience=2)   # early stopping
    assert not ResumePoint(epoch=4, wait=1, history=rows[:2]).stopped(patience=2)


def test_the_backup_is_deleted_index_first_and_a_broken_one_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    backup = run / rundir.CHECKPOINTS / rundir.BACKUP
    (backup / "chief").mkdir(parents=True)
    (backup / "chief" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    (backup / "chief" / "ckpt-1.index").write_bytes(b"not an index")
    with pytest.raises(TrainingError, match="a backup that does not read .* or use --overwrite"):
        backup_epoch(run)
    (backup / "chief" / "checkpoint").unlink()          # a deletion killed after the index
    assert backup_epoch(run) is None                    # went: no backup, not a broken one
    delete_backup(run)
    assert os.listdir(backup.parent) == [] and backup_epoch(run) is None
    delete_backup(run)                                  # nothing to delete: fine


def test_the_best_epochs_ranking_keeps_the_first_of_ties_and_skips_nan():
    from keras_ptx.training.checkpoints import ranking
    rows = [{"epoch": 0, "val_score": 0.5}, {"epoch": 1, "val_score": float("nan")},
            {"epoch": 2, "val_score": 0.7}, {"epoch": 3, "val_score": 0.5}, {"epoch": 4}]
    assert ranking(rows, Monitor("val_score"), 3) == [(0.7, 2), (0.5, 0), (0.5, 3)]
    assert ranking(rows, Monitor("val_score"), 2) == [(0.7, 2), (0.5, 0)]
    assert ranking(rows, Monitor("val_score", "min"), 1) == [(0.5, 0)]
