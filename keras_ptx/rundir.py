"""The layout of a training run directory, and loading its best model back.

RUN_DIR/
  config.yaml            resolved config of the run
  checkpoints/           best.weights.h5 (best epoch by train.monitor), last.weights.h5,
                         backup/ (BackupAndRestore's state), swa-epoch-NNN.npz (running weight average)
  logs/                  TensorBoard event files
  history.csv            one row per epoch
  metrics.json           best epoch and its scores
  best.weights.h5        the best model's weights (rebuilt from config.yaml, then loaded)
  postprocess.json       post-processing chosen by `bin/evaluate` on the val split, with the
                         TTA it was tuned with (used by predict and export)
  eval/                  evaluation report, plots, overlays (eval-<split>/ for other splits)
"""
from __future__ import annotations

import json
from pathlib import Path

from keras_ptx.config import Config, ConfigError, load_config
from keras_ptx.fileio import is_url
from keras_ptx.errors import UserError

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


class RunDirError(UserError):
    """A run directory that is missing or incomplete."""


def local_path(path, option: str) -> Path:
    """``path`` as a local Path; RunDirError for a URL (``gs://...``): run directories and
    prediction folders are written with local file access, which would make a local folder
    named after the URL. Records folders and export bases may be URLs."""
    if is_url(path):
        raise RunDirError(f"{option} {path}: a URL; run directories and outputs other than "
                          f"records and exports must be local paths (a bucket mounted with "
                          f"gcsfuse or similar works)")
    return Path(path)


def load_run_config(run_dir) -> Config:
    path = local_path(run_dir, "--model") / CONFIG
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a training run directory (no {CONFIG})")
    try:
        return load_config(path)
    except ConfigError as exc:
        raise RunDirError(f"{run_dir}: its {CONFIG} does not load: {exc}") from None


def load_model(run_dir, config: Config):
    """Rebuild the run's model from ``config`` (its config.yaml) and load its best weights."""
    from keras_ptx.model.unetpp import build_model_to_load

    weights = Path(run_dir) / BEST_WEIGHTS
    if not weights.is_file():
        if (Path(run_dir) / CHECKPOINTS / BEST_WEIGHTS).is_file():
            raise RunDirError(f"{run_dir}: training has not finished (its best weights so far "
                              f"are in {CHECKPOINTS}/); run bin/train again with the same "
                              f"arguments to finish it")
        raise RunDirError(f"{run_dir}: no {BEST_WEIGHTS}; training has not finished an epoch")
    model = build_model_to_load(config)
    model.load_weights(str(weights))
    return model


def eval_dir(run_dir, split: str) -> Path:
    """Where evaluate reports on ``split``: RUN_DIR/eval for val, RUN_DIR/eval-<split> else."""
    return Path(run_dir) / (EVAL if split == "val" else f"{EVAL}-{split}")


def read_json(run_dir, name):
    path = Path(run_dir) / name
    return json.loads(path.read_text()) if path.is_file() else None
