"""A finished training run as evaluate and :mod:`~keras_ptx.inference.ensemble` use it.

:class:`TrainedRun` reads RUN_DIR's validated config once and builds, on demand, its model (the
weights-only twin of the trained network, built from the config, computing in the run's
precision or the one asked for) or a network with another of its weights files. The saved
post-processing and the TTA to predict with are the ensemble's (one run is an ensemble of one).
"""
from __future__ import annotations

import dataclasses
import functools

from keras_ptx import rundir
from keras_ptx.config import Config, Precision


class TrainedRun:
    def __init__(self, run_dir, precision: Precision | None = None):
        """``precision``: what :attr:`model` computes in; None = the run's
        ``train.mixed_precision`` (on this host: ``auto`` is mixed_float16 where a GPU is)."""
        self.path = str(run_dir)
        self.config: Config = rundir.load_run_config(run_dir)
        self.precision = precision

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
