"""A finished training run as evaluate, predict and export use it.

:class:`TrainedRun` reads RUN_DIR once: its validated config, its saved post-processing
(RUN_DIR/postprocess.json, else the config's ``eval.threshold`` pixel threshold, with where it
came from), the TTA to predict with, and on demand the model (the weights-only twin of the
trained network, built from the config, computing in the run's precision or the one asked
for) and a :class:`~keras_ptx.inference.runner.Predictor` around it. The check that the rule
fits the model (a gated rule needs the image-level head) lives here, once.
"""
from __future__ import annotations

import dataclasses
import functools

from keras_ptx import rundir
from keras_ptx.config import Config, Precision, Tta
from keras_ptx.fileio import exists
from keras_ptx.inference.postprocess import PostProcess
from keras_ptx.inference.runner import Predictor


class TrainedRun:
    def __init__(self, run_dir, precision: Precision | None = None):
        """``precision``: what :attr:`model` computes in; None = the run's
        ``train.mixed_precision`` (on this host: ``auto`` is mixed_float16 where a GPU is)."""
        self.path = str(run_dir)
        self.config: Config = rundir.load_run_config(run_dir)
        self.precision = precision

    @property
    def post(self) -> PostProcess:
        """The saved post-processing rule (read when first asked for)."""
        return self._saved_rule[0]

    @property
    def post_source(self) -> str:
        """The file :attr:`post` came from, or why it is the default."""
        return self._saved_rule[1]

    @functools.cached_property
    def _saved_rule(self) -> tuple[PostProcess, str]:
        return saved_rule(self.path, self.config)

    def tta(self, requested: Tta | None = None) -> Tta:
        """The test-time augmentation to predict with: ``requested``, else the one the saved
        rule was tuned with, else the run's ``eval.tta`` (a rule's thresholds fit the maps it
        was tuned on)."""
        return requested or self.post.tta or self.config.eval.tta

    @functools.cached_property
    def model(self):
        """The trained network with the run's best weights (built once)."""
        return rundir.load_model(self.path, self._config_in_precision())

    def load(self, weights_file: str):
        """A new network with another weights file of RUN_DIR (e.g. one of top/)."""
        return rundir.load_model(self.path, self._config_in_precision(), weights_file)

    def _config_in_precision(self) -> Config:
        if self.precision is None:
            return self.config
        return dataclasses.replace(self.config, train=dataclasses.replace(
            self.config.train, mixed_precision=self.precision))

    def predictor(self, tta: Tta) -> Predictor:
        """A :class:`Predictor` of the model with ``tta`` to apply :attr:`post` to;
        RunDirError when the rule needs an image-level head the model does not have."""
        return checked_predictor(Predictor(self.model, tta), self.post, self.post_source)


def saved_rule(folder: str, config: Config) -> tuple[PostProcess, str]:
    """``folder``'s postprocess.json (a run's, or a fold folder's) and its path, else the
    ``eval.threshold`` pixel threshold and why."""
    path = rundir.path(folder, rundir.POSTPROCESS)
    if not exists(path):
        threshold = config.eval.threshold
        return (PostProcess(threshold=threshold),
                f"no {rundir.POSTPROCESS} in {folder} (bin/evaluate has not been run): "
                f"default pixel threshold {threshold:g}")
    return PostProcess.load(path), path


def checked_predictor(predictor: Predictor, post: PostProcess, source: str) -> Predictor:
    """``predictor``, or RunDirError when ``post`` gates on an image-level head it lacks."""
    if post.cls_threshold is not None and not predictor.has_label_head:
        raise rundir.RunDirError(f"{source}: the post-processing ({post.describe()}) gates on "
                                 f"the image-level head, but the model has none")
    return predictor
