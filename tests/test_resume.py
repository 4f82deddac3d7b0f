"""training.resume without training: what a RUN_DIR's saved config lets a new run do."""
import pytest

from keras_ptx import rundir
from keras_ptx.config import Config, load_config
from keras_ptx.training import TrainingError
from keras_ptx.training.resume import BEST_EPOCH_KEYS, Change, config_changes, prepare_run_dir


def _trained_run(tmp_path, config):
    """A RUN_DIR that trained one epoch and kept no backup."""
    run = str(tmp_path / "run")
    prepare_run_dir(run, config)
    (tmp_path / "run" / rundir.HISTORY).write_text("epoch,loss\n0,0.5\n")
    return run


def test_changes_are_structured_by_key():
    old = load_config(None, ["train.epochs=5", "eval.tta=none"])
    changes = config_changes(old, load_config(None, ["train.epochs=3", "eval.tta=hflip"]))
    assert changes == [Change("eval.tta", "none", "hflip"), Change("train.epochs", 5, 3)]
    assert str(changes[1]) == "train.epochs: 5 -> 3"


def test_every_best_epoch_key_is_a_setting():
    settings = Config().to_dict()
    for key in BEST_EPOCH_KEYS:
        section, name = key.split(".")
        assert name in settings[section], key


@pytest.mark.parametrize("override", ["train.monitor=loss", "train.metric_threshold=[0.3, 0.5]"])
def test_a_resumed_run_keeps_the_settings_that_chose_its_best_epoch(tmp_path, override):
    run = _trained_run(tmp_path, Config())
    with pytest.raises(TrainingError, match=r"best checkpoint was chosen by the old setting"):
        prepare_run_dir(run, load_config(None, [override]), resume=True)


def test_a_resumed_run_may_change_other_settings(tmp_path):
    run = _trained_run(tmp_path, Config())
    changed = load_config(None, ["train.epochs=3"])
    with pytest.raises(TrainingError, match="different config"):
        prepare_run_dir(run, changed)
    assert "epoch 1" in prepare_run_dir(run, changed, resume=True)
