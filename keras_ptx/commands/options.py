"""Click options shared by several commands."""
from __future__ import annotations

import click

from keras_ptx.config import MAX_BATCH, Engine, choices


def batch_size_option(command):
    """``--batch-size``: images per model call of evaluate and predict (the data caps it)."""
    return click.option(
        "--batch-size", type=click.IntRange(1, MAX_BATCH), default=None,
        help="Images per model call [default: the run's eval.batch_size].")(command)


def ensemble_options(command):
    """``--model`` (repeatable: runs, fold folders, ensemble folders) and ``--checkpoints``, the
    models of ``bin/predict`` and ``bin/export`` (:mod:`keras_ptx.inference.ensemble`)."""
    command = click.option(
        "--checkpoints", type=click.IntRange(min=1), default=1, show_default=True,
        help="Checkpoints per run: its N best epochs (RUN_DIR/top/, train.keep_best of at "
             "least N) averaged; 1 = best.weights.h5.")(command)
    return click.option(
        "--model", "run_dir", required=True, multiple=True, metavar="RUN_DIR",
        help="Training run directory, fold folder (train-folds) or ensemble folder (evaluate "
             "--out), a local path or a URL; repeat it for an ensemble (probabilities "
             "averaged; the first one's postprocess.json applies).")(command)


def engine_option(exports: bool):
    """``--engine``: what runs the network (:mod:`keras_ptx.inference.engine`); ``exports``:
    the command also takes an OpenVINO export as its model."""
    also = (" --model may then be a bin/export --format openvino folder, computing as "
            "exported.") if exports else ""
    return click.option(
        "--engine", type=click.Choice(choices(Engine)), default="tf", show_default=True,
        help="What runs the network: TensorFlow, or OpenVINO (pip install "
             "'keras_ptx[openvino]') computing in the run's train.mixed_precision, as TF "
             "does." + also)
