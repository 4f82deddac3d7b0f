"""train.init_from (a finished run's weights start a new run, at another size too) and
train.freeze_encoder_epochs (the decoder and heads train alone first), across a kill -9."""
import signal
import subprocess
import sys

import numpy as np
import pytest

from keras_ptx import rundir
from keras_ptx.config import ConfigError, load_config
from keras_ptx.inference.trained import TrainedRun
from keras_ptx.model.unetpp import build_model_to_load
from keras_ptx.tf_setup import tf
from keras_ptx.training import TrainingError
from keras_ptx.training.resume import backup_epoch

from test_train import KILLED_AT, SLIM, TEST_CONFIG, _history, write_records

SHORT = (*SLIM, "train.steps_per_epoch=1", "train.validation_steps=1",
         "train.tensorboard_images=0")


def _is_decoder(layer) -> bool:
    return layer.name.startswith(("x", "head", "label_"))


def _weights(model, decoder: bool) -> dict:
    return {layer.name: [np.array(w) for w in layer.get_weights()]
            for layer in model.layers if layer.weights and _is_decoder(layer) == decoder}


def _changed(before: dict, after: dict) -> list[str]:
    return [name for name in before
            if any(not np.array_equal(a, b) for a, b in zip(before[name], after[name]))]


class Snapshots(tf.keras.callbacks.Callback):
    """The encoder's and the decoder's weights at the start and at each epoch's end."""

    def __init__(self):
        super().__init__()
        self.taken = []

    def on_train_begin(self, logs=None):
        self.taken.append((_weights(self.model, False), _weights(self.model, True)))

    def on_epoch_end(self, epoch, logs=None):
        self.on_train_begin()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("records")
    for size in (64, 96):
        write_records(folder / str(size), "train", 8, size=size, seed=1)
        write_records(folder / str(size), "val", 4, size=size, seed=2)
    return folder


@pytest.fixture(scope="module")
def source_run(records, tmp_path_factory):
    from keras_ptx.training.run import train

    run = tmp_path_factory.mktemp("source") / "run"
    train(load_config(TEST_CONFIG, ["train.epochs=1", *SHORT]), str(records / "64"), run,
          echo=lambda line: None)
    return run


def test_frozen_epochs_change_the_decoder_only_then_everything(records, tmp_path):
    from keras_ptx.training.run import train

    snapshots, lines = Snapshots(), []
    config = load_config(TEST_CONFIG, ["train.epochs=2", "train.freeze_encoder_epochs=1",
                                       *SHORT])
    train(config, str(records / "64"), tmp_path / "run", callbacks=[snapshots],
          echo=lines.append)
    assert "epoch 1: encoder frozen through epoch 1" in lines
    assert "epoch 2: the whole network trains" in lines
    (encoder0, decoder0), (encoder1, decoder1), (encoder2, _) = snapshots.taken
    assert len(encoder0) > 20 and _changed(encoder0, encoder1) == []     # BatchNorm statistics too
    assert _changed(decoder0, decoder1) == list(decoder0)
    changed = _changed(encoder1, encoder2)
    assert "stem_conv" in changed and "stem_bn" in changed and len(changed) == len(encoder1)


def test_init_from_a_64_px_run_loads_every_layer_into_a_96_px_run(records, source_run, tmp_path):
    from keras_ptx.training.run import train

    snapshots, lines = Snapshots(), []
    config = load_config(TEST_CONFIG, ["data.image_size=96", "train.epochs=1", *SHORT,
                                       f"train.init_from={source_run}"])
    train(config, str(records / "96"), tmp_path / "run", callbacks=[snapshots],
          echo=lines.append)
    source = TrainedRun(source_run).model
    start = {**snapshots.taken[0][0], **snapshots.taken[0][1]}
    loaded = {**_weights(source, False), **_weights(source, True)}
    assert set(start) == set(loaded)
    assert _changed(loaded, start) == []
    assert f"starting from the best weights of {source_run} ({len(loaded)} layers)" in lines


def test_init_from_refuses_another_network_or_an_unfinished_run(records, source_run, tmp_path):
    from keras_ptx.training.run import train

    run = tmp_path / "run"
    config = load_config(TEST_CONFIG, [*SHORT, "model.encoder=efficientnetb3",
                                       f"train.init_from={source_run}"])
    with pytest.raises(TrainingError, match=r"its network \(efficientnetb0, decoder \[32, 16, "
                                            r"16, 8, 8\]\) does not fit this one "
                                            r"\(efficientnetb3.*layers have weights of other "
                                            r"shapes: stem_conv \[\(3, 3, 3, 32\)\] -> "
                                            r"\[\(3, 3, 3, 40\)\]"):
        train(config, str(records / "64"), run, echo=lambda line: None)
    assert not run.exists()

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / rundir.CONFIG).write_text((source_run / rundir.CONFIG).read_text())
    config = load_config(TEST_CONFIG, [*SHORT, f"train.init_from={unfinished}"])
    with pytest.raises(TrainingError, match="not a finished run"):
        train(config, str(records / "64"), run, echo=lambda line: None)
    assert not run.exists()


@pytest.mark.slow
def test_a_kill_after_the_frozen_epoch_resumes_unfrozen(records, tmp_path):
    run = tmp_path / "run"
    args = ["--config", str(TEST_CONFIG), "--data", str(records / "64"), "--out", str(run),
            *(a for s in (*SHORT, "train.epochs=2", "train.freeze_encoder_epochs=1")
              for a in ("--set", s))]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, "after the backup", "0", *args],
                            capture_output=True, text=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert backup_epoch(run) == 0
    last = run / rundir.CHECKPOINTS / rundir.LAST_WEIGHTS
    after_frozen = tmp_path / "after-frozen.weights.h5"
    after_frozen.write_bytes(last.read_bytes())

    again = subprocess.run([sys.executable, "-m", "keras_ptx.cli", "train", *args],
                           capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "continuing after epoch 1" in again.stdout
    assert "encoder frozen" not in again.stdout          # epoch 2 of 2 trains everything
    assert [int(row["epoch"]) for row in _history(run)] == [0, 1]
    model = build_model_to_load(load_config(run / rundir.CONFIG))
    model.load_weights(str(after_frozen))
    encoder, decoder = _weights(model, False), _weights(model, True)
    model.load_weights(str(last))
    assert _changed(encoder, _weights(model, False)) == list(encoder)    # the encoder trained
    assert _changed(decoder, _weights(model, True)) == list(decoder)


def test_weight_averaging_must_follow_the_frozen_epochs():
    load_config(TEST_CONFIG, ["train.epochs=5", "train.freeze_encoder_epochs=2",
                              "train.swa_epochs=3"])
    with pytest.raises(ConfigError, match="train.swa_epochs: the 4 averaged epochs overlap the 2"):
        load_config(TEST_CONFIG, ["train.epochs=5", "train.freeze_encoder_epochs=2",
                                  "train.swa_epochs=4"])
