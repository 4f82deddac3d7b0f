"""The hostile-input matrix (#33), configs and training inputs: every command that reads a config
(train, train-folds, doctor) or a run's training history refuses a damaged one with one short
``Error:`` line naming it, within a memory bound, before writing anything (tests/hostile.py).

Each case is refused before TensorFlow builds a network: nothing here trains.
"""
import importlib
import json

import pytest

import hostile
from keras_ptx import rundir
from keras_ptx.cli import COMMANDS
from keras_ptx.config import MAX_CONFIG_BYTES, dump_config, load_config
from keras_ptx.data.records import write_shards
from keras_ptx.training.folds import _fold_config, _mark
from keras_ptx.data.records_dir import RecordsDir
from test_folds import TRAIN_FOLDS, VAL_FOLDS, _examples
from test_train import TEST_CONFIG

CONFIG_COMMANDS = ("train", "train-folds", "doctor")
TRAINING = ("train", "train-folds")
# A refusal at load adds little; this bound is far below any bomb and above module imports.
BOMB_MEMORY = 256 * hostile.MiB


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A list whose aliases expand to ``width ** levels`` strings."""
    anchors = ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}" if i else "x"] * width) + "]"
                        for i in range(levels))
    return f"[{anchors}]"


# name -> (config file content, fragments of the message besides the file's path)
FILES = {
    "latin-1": (b"model:\n  weights: caf\xe9\n", ["not UTF-8 text", "byte 0xe9 on line 2"]),
    "binary (an HDF5 file)": (b"\x89HDF\r\n\x1a\n\x00\x00\x00\x00", ["not UTF-8 text", "0x89"]),
    "too large": (b"#" * (MAX_CONFIG_BYTES + 1), ["larger than 1 MiB"]),
    "alias bomb": (f"model:\n  weights: {_alias_bomb()}\n".encode(),
                   ["not valid YAML", "line 2", "more than 10000 values"]),
    "alias inside its anchor": (b"model:\n  weights: &a [*a]\n", ["inside its own anchor"]),
    "deep nesting": (b"model:\n  weights: " + b"[" * 5000, ["nested deeper than 16 levels"]),
    "integer of 5000 digits": (b"train:\n  epochs: " + b"9" * 5000,
                               ["line 2, column 11", "cannot read '999"]),
    "syntax error": (b"train: [1\nmodel: {\n", ["not valid YAML: line 2"]),
    "control character": (b"train:\n  epochs: 1\x07\n", ["special characters are not allowed"]),
    "duplicate key": (b"train:\n  epochs: 1\ntrain:\n  batch_size: 2\n",
                      ["line 3, column 1", "key 'train' appears twice"]),
    "a list": (b"- train\n- model\n", ["top level must be a mapping", "not list"]),
    "a scalar": (b"train\n", ["top level must be a mapping", "not str"]),
    "two documents": (b"train: {}\n---\nmodel: {}\n", ["another document"]),
}

# name -> (overrides of configs/test.yaml, fragments of the message)
OVERRIDES = {
    "NaN learning rate": (["train.learning_rate=.nan"],
                          ["train.learning_rate: expected a finite number, got nan"]),
    "infinite loss weight": (["train.loss.dice=.inf"], ["train.loss.dice: expected a finite"]),
    "infinite warm-up": (["train.warmup_epochs=1e999"], ["train.warmup_epochs: expected a finite"]),
    "-inf augmentation limit": (["augment.intensity.brightness_limit=-.inf"],
                                ["augment.intensity.brightness_limit: expected a finite"]),
    "NaN plateau factor": (["train.plateau_factor=.nan"], ["train.plateau_factor: expected"]),
    "plateau factor 1": (["train.lr_schedule=plateau", "train.plateau_factor=1"],
                         ["train.plateau_factor", "must lie in (0, 1), got 1.0"]),
    "epochs past int64": (["train.epochs=99999999999999999999999"],
                          ["train.epochs: must be at most 100000"]),
    "steps past int64": (["train.steps_per_epoch=9223372036854775808"],
                         ["train.steps_per_epoch: must be at most"]),
    "batch of 1e12": (["train.batch_size=1000000000000"],
                      ["train.batch_size: must be at most 4096"]),
    "negative seed": (["train.seed=-1"], ["train.seed: must be at least 0"]),
    "33-bit data seed": (["data.seed=4294967296"], ["data.seed: must be at most 4294967295"]),
    "huge image size": (["data.image_size=1048576"], ["data.image_size: 1048576 is above"]),
    "huge decoder": (["model.decoder_filters=[100000000, 8, 8, 8, 8]"],
                     ["model.decoder_filters", "up to 4096"]),
    "100000 augmentation processes": (["data.num_parallel_calls=100000"],
                                      ["data.num_parallel_calls: must be at most 256"]),
    "a section set to nothing": (["train="], ["'train='", "train is a section"]),
    "a section set to an empty mapping": (["train={}"], ["'train={}'", "train is a section"]),
    "NUL in a path": (['model.weights="a\\0b"'], ["model.weights: expected a string", "NUL"]),
    "a path of 100000 characters": ([f"model.weights={'a' * 100_000}"],
                                    ["model.weights: expected a string of at most 4096"]),
    "alias bomb": ([f"model.weights={_alias_bomb()}"],
                   ["override 'model.weights'", "more than 10000 values"]),
}

# name -> (history.csv content, fragments): a run of configs/test.yaml that a re-run continues
HISTORIES = {
    "binary": (b"epoch,loss\n0,\xff\xfe\n", ["history.csv: not UTF-8 text (byte 0xff on line 2)"]),
    "text for a number": (b"epoch,loss\n0,0.5\n1,lots\n",
                          ["history.csv line 3: not a row of numbers"]),
    "no epoch column": (b"loss\n0.5\n", ["history.csv: no epoch column"]),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """records/ (3 folds, 10 training and 4 validation images of 64 px); the commands and what
    they import loaded, so that a case's memory is its own."""
    root = tmp_path_factory.mktemp("hostile-config")
    write_shards(root / "records", "train", _examples(10, 1), shards=2, original=64,
                 folds=TRAIN_FOLDS)
    write_shards(root / "records", "val", _examples(4, 2), original=64, folds=VAL_FOLDS)
    for name in CONFIG_COMMANDS:
        importlib.import_module(COMMANDS[name])
    importlib.import_module("keras_ptx.training.folds")
    importlib.import_module("keras_ptx.doctor")
    return root


def _args(command: str, root, config, overrides=(), out="out") -> list:
    sets = [arg for override in overrides for arg in ("--set", override)]
    if command == "doctor":
        return ["--config", config, *sets]
    return ["--config", config, "--data", root / "records", "--out", root / out, *sets]


def _refused_unchanged(root, command: str, args: list, *fragments: str,
                       memory: int = hostile.MEMORY_BOUND):
    before = hostile.snapshot(root)
    outcome = hostile.run(command, args)
    hostile.assert_refused(outcome, *fragments, memory=memory)
    hostile.assert_unchanged(before, root)


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
@pytest.mark.parametrize("case", FILES)
def test_a_damaged_config_file_is_refused_by_name(root, command, case):
    content, fragments = FILES[case]
    config = root / f"{case.replace(' ', '-')}.yaml"
    config.write_bytes(content)
    _refused_unchanged(root, command, _args(command, root, config), f"{config}:", *fragments,
                       memory=BOMB_MEMORY)


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_a_config_that_never_ends_is_read_no_further_than_its_limit(root, command):
    _refused_unchanged(root, command, _args(command, root, "/dev/zero"),
                       "/dev/zero: larger than 1 MiB", memory=BOMB_MEMORY)


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
@pytest.mark.parametrize("case", OVERRIDES)
def test_a_setting_that_cannot_work_is_refused_by_name(root, command, case):
    overrides, fragments = OVERRIDES[case]
    _refused_unchanged(root, command, _args(command, root, TEST_CONFIG, overrides), *fragments,
                       memory=BOMB_MEMORY)


@pytest.mark.parametrize("command", TRAINING)
@pytest.mark.parametrize("overrides, fragments", [
    (["train.batch_size=64"], ["training records, fewer than one batch of train.batch_size=64"]),
    (["model.weights=/nowhere/encoder.h5"], ["model.weights: '/nowhere/encoder.h5' is not a file"]),
], ids=["batch larger than the data", "missing weights file"])
def test_settings_the_data_or_the_disk_cannot_serve_are_refused_before_writing(
        root, command, overrides, fragments):
    _refused_unchanged(root, command, _args(command, root, TEST_CONFIG, overrides), *fragments)


def test_a_mapping_for_a_section_sets_its_keys_and_keeps_the_others():
    config = load_config(TEST_CONFIG, ["train={epochs: 3, seed: 5}"])
    expected = load_config(TEST_CONFIG, ["train.epochs=3", "train.seed=5"])
    assert config == expected and config.train != load_config(None).train


def test_doctor_refuses_a_batch_whose_data_alone_would_take_gigabytes(root):
    overrides = ["data.image_size=256", "train.batch_size=4096"]
    _refused_unchanged(root, "doctor", _args("doctor", root, TEST_CONFIG, overrides),
                       "train.batch_size=4096", "at 256 px: its random batch would take 3.0 GiB")


def _run_to_continue(root, command: str, history: bytes, out: str) -> None:
    """root/out: a run of configs/test.yaml (for train-folds: fold 0 of a fold folder) that
    trained but has no backup, with ``history`` as its history.csv."""
    config, run = load_config(TEST_CONFIG), root / out
    if command == "train-folds":
        _mark(str(run), RecordsDir.open(str(root / "records")), [0])
        config, run = _fold_config(config, 0), run / "fold-0"
    (run / rundir.CHECKPOINTS).mkdir(parents=True)
    dump_config(config, run / rundir.CONFIG)
    (run / rundir.HISTORY).write_bytes(history)


@pytest.mark.parametrize("flags", [[], ["--resume"]], ids=["re-run", "resume"])
@pytest.mark.parametrize("command", TRAINING)
@pytest.mark.parametrize("case", HISTORIES)
def test_a_damaged_history_is_refused_by_name(root, command, case, flags):
    history, fragments = HISTORIES[case]
    out = "-".join(["run", command, *case.split(), *flags])
    _run_to_continue(root, command, history, out)
    args = _args(command, root, TEST_CONFIG, out=out) + flags
    if command == "train-folds":
        args += ["--folds", "0"]
    _refused_unchanged(root, command, args, str(root / out), *fragments)


def test_a_finished_runs_metrics_are_json_even_when_an_epoch_diverged():
    from keras_ptx.training.finish import _finite

    metrics = {"best": {"loss": float("nan"), "val_score": 0.5}, "images_per_sec": float("inf")}
    text = json.dumps(_finite(metrics), allow_nan=False)
    assert json.loads(text) == {"best": {"loss": None, "val_score": 0.5}, "images_per_sec": None}
