"""Several trained models answering as one: the runs and fold folders named by ``--model``,
each with its ``--checkpoints`` best epochs, as ``bin/predict`` and ``bin/export`` use them.

A ``--model`` is a RUN_DIR, a fold folder (``train-folds``: every trained fold's RUN_DIR) or an
ensemble folder (``bin/evaluate --model A --model B --out OUT``: its members, and its rule).
``--checkpoints 1`` takes each run's best.weights.h5; ``N`` takes the weights of its N best
epochs (RUN_DIR/top/, kept with ``train.keep_best`` of at least N). The members' probability
maps and image-level probabilities are averaged
(:class:`~keras_ptx.inference.runner.Predictor`). The post-processing is that of the first
``--model`` (a fold folder's is tuned on the out-of-fold predictions), else its default
threshold; the members must share one grid size and one input normalisation.
"""
from __future__ import annotations

import functools
from typing import Sequence

from keras_ptx import rundir
from keras_ptx.config import Config, Precision, Tta
from keras_ptx.fileio import check_openable, exists, join, same_path
from keras_ptx.inference.postprocess import PostProcess
from keras_ptx.inference.runner import Predictor
from keras_ptx.inference.trained import TrainedRun


class Ensemble:
    def __init__(self, models: str | Sequence[str], checkpoints: int = 1,
                 precision: Precision | None = None):
        self.paths = [str(models)] if isinstance(models, str) else [str(m) for m in models]
        if not self.paths:
            raise rundir.RunDirError("no --model given")
        if checkpoints < 1:
            raise rundir.RunDirError(f"--checkpoints {checkpoints}: at least 1")
        for path in self.paths:
            check_openable(path, "--model")
        self.runs = [TrainedRun(run, precision) for path in self.paths for run in run_dirs(path)]
        self.weights = [(run, name) for run in self.runs for name in _weights(run, checkpoints)]
        _check_shared(self.runs, "grid sizes", lambda config: config.data.image_size)
        _check_shared(self.runs, "input normalisations (model.normalization)",
                      lambda config: config.model.normalization)
        self.config: Config = self.runs[0].config
        self.post, self.post_source = _saved_rule(self.paths[0], self.config)

    def tta(self, requested: Tta | None = None) -> Tta:
        """``requested``, else the TTA the rule was tuned with, else the first run's
        ``eval.tta``."""
        return requested or self.post.tta or self.config.eval.tta

    @functools.cached_property
    def models(self) -> list:
        return [_load(run, name) for run, name in self.weights]

    def predictor(self, tta: Tta) -> Predictor:
        """One :class:`Predictor` over every member; RunDirError when the rule gates on an
        image-level head the members lack."""
        predictor = Predictor(self.models, tta, self.config.model.normalization)
        if self.post.cls_threshold is not None and not predictor.has_label_head:
            raise rundir.RunDirError(
                f"{self.post_source}: the post-processing ({self.post.describe()}) gates on "
                f"the image-level head, but the model has none")
        return predictor

    def folders(self) -> list[str]:
        """Every folder the ensemble reads: the ``--model`` paths and their runs."""
        return [*self.paths, *(run.path for run in self.runs)]

    def members(self) -> list[dict]:
        """Each member's run and weights file, for an export's metadata."""
        return [{"run_dir": run.path, "weights": name} for run, name in self.weights]

    def describe(self) -> str:
        runs = len(self.runs)
        return (f"{len(self.weights)} model{'s' if len(self.weights) > 1 else ''} "
                f"({runs} run{'s' if runs > 1 else ''} x "
                f"{len(self.weights) // runs} checkpoint{'s' if len(self.weights) > runs else ''})")


def _saved_rule(folder: str, config: Config) -> tuple[PostProcess, str]:
    """``folder``'s postprocess.json (a run's, a fold folder's or an ensemble folder's) and its
    path, else the ``eval.threshold`` pixel threshold and why."""
    path = join(folder, rundir.POSTPROCESS)
    if not exists(path):
        threshold = config.eval.threshold
        return (PostProcess(threshold=threshold),
                f"no {rundir.POSTPROCESS} in {folder} (bin/evaluate has not been run): "
                f"default pixel threshold {threshold:g}")
    return PostProcess.load(path), path


def _check_shared(runs: list[TrainedRun], what: str, setting) -> None:
    """RunDirError unless every run's config has one ``setting`` (config -> value)."""
    if len({setting(run.config) for run in runs}) > 1:
        raise rundir.RunDirError(
            f"the models were trained on different {what} (" +
            ", ".join(f"{run.path}: {setting(run.config)}" for run in runs) +
            "); an ensemble needs one")


def run_dirs(path: str, within: tuple[str, ...] = ()) -> list[str]:
    """The RUN_DIRs of a ``--model``: an ensemble folder's members' (``within``: the ensemble
    folders that led here), a fold folder's trained folds, or the run itself."""
    if any(same_path(path, folder) for folder in within):
        raise rundir.RunDirError(f"{within[0]}: its {rundir.ENSEMBLE} leads back to {path}, an "
                                 f"ensemble holding itself; evaluate its members again with "
                                 f"another --out")
    members = rundir.read_json(path, rundir.ENSEMBLE)
    if members is not None:
        listed = members.get("members") if isinstance(members, dict) else None
        if not isinstance(listed, list) or not all(isinstance(m, str) for m in listed):
            raise rundir.RunDirError(f"{join(path, rundir.ENSEMBLE)}: no list of members")
        return [run for member in listed for run in run_dirs(member, (*within, path))]
    marker = rundir.read_json(path, rundir.FOLDS)
    if marker is None:
        return [path]
    if not marker.get("trained"):
        raise rundir.RunDirError(f"{path}: a fold folder without a trained fold")
    return [rundir.fold_dir(path, k) for k in marker["trained"]]


def checkpoint_models(run: TrainedRun, checkpoints: int) -> list:
    """``run``'s networks for ``--checkpoints``: its best, or its N best epochs."""
    return [_load(run, name) for name in _weights(run, checkpoints)]


def _load(run: TrainedRun, weights_file: str):
    return run.model if weights_file == rundir.BEST_WEIGHTS else run.load(weights_file)


def _weights(run: TrainedRun, checkpoints: int) -> list[str]:
    """The weights files (in RUN_DIR) of ``run``'s ``checkpoints`` best epochs."""
    if checkpoints == 1:
        return [rundir.BEST_WEIGHTS]
    top = (rundir.read_json(run.path, rundir.METRICS) or {}).get("top_epochs", [])
    if len(top) < checkpoints:
        kept = max(1, len(top))
        raise rundir.RunDirError(
            f"{run.path}: --checkpoints {checkpoints}, but the run kept the weights of {kept} "
            f"epoch{'s' if kept > 1 else ''} (train.keep_best: {run.config.train.keep_best}; "
            f"retrain with a larger one)")
    return [f"{rundir.TOP}/{rundir.TOP_FILE.format(epoch)}" for epoch in top[:checkpoints]]
