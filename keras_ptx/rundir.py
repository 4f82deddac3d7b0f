"""The layout of a training run directory, and loading its best model back.

RUN_DIR/
  config.yaml            resolved config of the run
  checkpoints/           best.weights.h5 (best epoch by train.monitor), last.weights.h5,
                         backup/ (BackupAndRestore's state), swa-epoch-NNN.npz (running weight average),
                         top-epoch-NNN.weights.h5 (train.keep_best above 1: the best epochs so far)
  logs/                  TensorBoard event files
  history.csv            one row per epoch
  metrics.json           best epoch and its scores
  best.weights.h5        the best model's weights (rebuilt from config.yaml, then loaded)
  top/                   epoch-NNN.weights.h5 of the train.keep_best best epochs (when above 1;
                         metrics.json's top_epochs lists them best first): checkpoint ensembles
  postprocess.json       post-processing chosen by `bin/evaluate` on the val split, with the
                         TTA it was tuned with (used by predict and export)
  eval/                  evaluation report, plots, overlays (eval-<split>/ for other splits)

A fold folder (``train-folds``) holds one RUN_DIR per fold and, at its top, the ensemble's:
OUT/
  folds.json             K, the folds trained, the records folder
  fold-0/, fold-1/, ...  a RUN_DIR each, trained with data.fold set to its fold
  eval/                  the out-of-fold evaluation (every image scored by the fold model that
                         never saw it)
  postprocess.json       the rule chosen on the out-of-fold predictions

An ensemble folder (``bin/evaluate --model A --model B --out OUT``) names its members and holds
their evaluation, so that ``--model OUT`` is the ensemble with its rule:
OUT/
  ensemble.json          the members (runs or fold folders) and the checkpoints evaluated
  eval/, postprocess.json

RUN_DIR may be a URL of any filesystem TensorFlow opens (``gs://``, ``ram://``, ...): paths are
strings joined with :func:`keras_ptx.fileio.join`, and files go through ``tf.io.gfile`` or
:mod:`keras_ptx.fileio`.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import os
import shutil
import typing

from keras_ptx.config import Config, ConfigError, config_from_dict, read_config_file
from keras_ptx.errors import UserError
from keras_ptx.fileio import (TEMPORARY_GLOB, check_openable, exists, is_url, join, local_copy,
                              read_json as _read_json)

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
HISTORY = "history.csv"
METRICS = "metrics.json"
BEST_WEIGHTS = "best.weights.h5"
POSTPROCESS = "postprocess.json"
LAST_WEIGHTS = "last.weights.h5"        # in checkpoints/, beside its own BEST_WEIGHTS
BACKUP = "backup"                       # in checkpoints/
EVAL = "eval"
EVAL_REPORT = "report.json"             # in eval/ (and eval-<split>/), with report.md beside it
EVAL_REPORT_MD = "report.md"
FOLDS = "folds.json"                    # at the top of a fold folder
ENSEMBLE = "ensemble.json"              # at the top of an ensemble folder (bin/evaluate --out)
TOP = "top"                             # the best epochs' weights, train.keep_best of them
TOP_FILE = "epoch-{:03d}.weights.h5"    # in top/, the 1-based epoch
# What a run directory holds at its top (eval-<split>/ and temporary files besides): what
# --overwrite may delete.
RUN_NAMES = frozenset({CONFIG, CHECKPOINTS, LOGS, HISTORY, METRICS, BEST_WEIGHTS, POSTPROCESS,
                       EVAL, TOP})


class RunDirError(UserError):
    """A run directory that is missing or incomplete."""


def load_run_config(run_dir) -> Config:
    check_openable(run_dir, "--model")
    if not exists(run_dir):
        raise RunDirError(f"{run_dir}: no such run directory")
    if not exists(join(run_dir, CONFIG)):
        raise RunDirError(f"{run_dir}: not a training run directory (no {CONFIG})")
    try:
        raw = read_config_file(join(run_dir, CONFIG))
        if not raw:
            raise ConfigError("it is empty")
        return config_from_dict(raw)
    except ConfigError as exc:
        raise RunDirError(f"{run_dir}: its {CONFIG} does not load: {exc}") from None


def load_model(run_dir, config: Config, weights_file: str = BEST_WEIGHTS):
    """Rebuild the run's model from ``config`` (its config.yaml) and load its best weights (or
    another weights file of RUN_DIR, such as ``top/epoch-003.weights.h5``)."""
    from keras_ptx.model.encoders import load_network
    from keras_ptx.model.unetpp import build_model_to_load

    weights = join(run_dir, weights_file)
    if weights_file != BEST_WEIGHTS and not exists(weights):
        raise RunDirError(f"{run_dir}: no {weights_file}")
    if not exists(weights):
        if exists(join(run_dir, CHECKPOINTS, BEST_WEIGHTS)):
            raise RunDirError(f"{run_dir}: training has not finished (its best weights so far "
                              f"are in {CHECKPOINTS}/); run bin/train again with the same "
                              f"arguments to finish it")
        raise RunDirError(f"{run_dir}: no {BEST_WEIGHTS}; training has not finished an epoch")
    with local_copy(weights) as local:         # h5py opens local files only
        return load_network(lambda: build_model_to_load(config), local, join(run_dir, CONFIG),
                            shown=weights)


def remove_run(run_dir) -> None:
    """Delete the run directory ``run_dir`` (``--overwrite``), RunDirError unless it is one:
    a keras_ptx config.yaml (by its keys: a config that no longer validates is still a run's),
    nothing but what a run holds, and (locally) no symbolic link, as itself or inside."""
    from keras_ptx.tf_setup import tf

    run = str(run_dir)
    names = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(run))
    foreign = [name for name in names if name not in RUN_NAMES and not name.startswith(EVAL + "-")
               and not fnmatch.fnmatch(name, TEMPORARY_GLOB)]
    if foreign:
        raise RunDirError(f"--out {run}: not a run directory: it holds {', '.join(foreign[:3])}"
                          f"{' and more' if len(foreign) > 3 else ''}, which a run does not; "
                          f"refusing to delete it (move them, or choose another --out)")
    if not _is_run_config(join(run, CONFIG)):
        raise RunDirError(f"--out {run}: not a run directory (no keras_ptx {CONFIG}); refusing "
                          f"to delete it (choose another --out)")
    if is_url(run):
        tf.io.gfile.rmtree(run)
        return
    link = _first_link(run)
    if link is not None:
        where = "it" if link == run else f"its {os.path.relpath(link, run)}"
        raise RunDirError(f"--out {run}: {where} is a symbolic link (to {os.readlink(link)}); "
                          f"refusing to delete it (remove the link, or choose another --out)")
    shutil.rmtree(run)


def _first_link(folder: str) -> str | None:
    """The first symbolic link in the local ``folder``, the folder itself included (None)."""
    if os.path.islink(folder):
        return folder
    for parent, folders, files in os.walk(folder):
        for name in sorted(folders + files):
            if os.path.islink(os.path.join(parent, name)):
                return os.path.join(parent, name)
    return None


def _is_run_config(path: str) -> bool:
    """Whether ``path`` is a YAML mapping of keras_ptx's config sections, each holding only
    keras_ptx keys of that section (read, not validated: a run's config that no longer
    validates is still a run's)."""
    try:
        raw = read_config_file(path)
    except ConfigError:
        return False
    return bool(raw) and _only_keys_of(Config, raw)


def _only_keys_of(section: type, raw) -> bool:
    """Whether ``raw`` is a mapping of the fields of the config dataclass ``section``, its
    subsections mappings of theirs (or empty), whatever the values."""
    if raw is None:
        return True
    if not isinstance(raw, dict):
        return False
    hints = typing.get_type_hints(section)
    fields = {field.name: hints[field.name] for field in dataclasses.fields(section)}
    return all(key in fields and (not dataclasses.is_dataclass(fields[key])
                                  or _only_keys_of(fields[key], value))
               for key, value in raw.items())


def eval_dir(run_dir, split: str) -> str:
    """Where evaluate reports on ``split``: RUN_DIR/eval for val, RUN_DIR/eval-<split> else."""
    return join(run_dir, EVAL if split == "val" else f"{EVAL}-{split}")


def fold_dir(out, fold: int) -> str:
    """The RUN_DIR of ``fold`` in the fold folder ``out``."""
    return join(out, f"fold-{fold}")


def read_json(run_dir, name):
    """RUN_DIR's JSON file ``name`` (None when there is none; RunDirError when it is not
    JSON)."""
    try:
        return _read_json(join(run_dir, name))
    except ValueError as exc:
        raise RunDirError(f"{join(run_dir, name)}: not valid JSON ({exc})") from None
