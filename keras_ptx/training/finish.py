"""The end of a run: the final weights, RUN_DIR/best.weights.h5 and metrics.json.

After ``fit`` the chief loads the best checkpoint and every other worker receives its weights
from the chief (they never read RUN_DIR); all then take the weight average instead when it does
better on the validation split. The chief saves the result, without the optimizer's state, as
RUN_DIR/best.weights.h5 (what evaluate, predict and export load) and, with ``train.keep_best``
above 1, the best epochs' weights in RUN_DIR/top/, writes metrics.json and only then deletes the
backup: a crash before that re-runs the finish. A value that is not finite (the loss of a
diverged epoch) is written as null.
Epochs are 1-based in printed lines and metrics.json, 0-based in history.csv.
"""
from __future__ import annotations

import json
import math
import statistics

from keras_ptx import rundir
from keras_ptx.config import Config
from keras_ptx.fileio import atomic_path, join, local_copy, write_atomic
from keras_ptx.tf_setup import tf
from keras_ptx.model.unetpp import build_model_to_load
from keras_ptx.training import TrainingError
from keras_ptx.training.callbacks import RunCallbacks
from keras_ptx.training.checkpoints import finish_top_epochs
from keras_ptx.training.resume import Monitor, best_row, delete_backup, read_history
from keras_ptx.training.strategy import (from_chief, is_chief, resolve_strategy_name,
                                        sync_from_chief)


def finish(model, config: Config, run: str, monitor: Monitor, val_data, own: RunCallbacks,
           strategy, echo) -> dict:
    """Settle ``model`` on its final weights, save them and (chief) return metrics.json's
    content; other workers return {}."""
    chief = is_chief(strategy)
    best_path = join(run, rundir.CHECKPOINTS, rundir.BEST_WEIGHTS)
    if not from_chief(strategy, tf.io.gfile.exists(best_path) if chief else None):
        raise TrainingError(f"no epoch ended with a finite {monitor.key}, so there is no best "
                            f"checkpoint (see {join(run, rundir.HISTORY)}); lower "
                            f"train.learning_rate and re-run with --overwrite")
    _load_weights(model, best_path, config, strategy)
    final, averaged = "best_epoch", None
    if own.averaging and own.averaging.mean is not None:
        best_weights = model.get_weights()
        model.set_weights(own.averaging.averaged_weights(best_weights))
        scores = model.evaluate(val_data, return_dict=True, verbose=0)
        averaged = {"epochs": [e + 1 for e in own.averaging.epochs],
                    monitor.key: float(scores[monitor.key[len("val_"):]])}
        if monitor.better(averaged[monitor.key], own.best.best):
            final = "swa"
        else:
            model.set_weights(best_weights)
    _save_for_inference(model, config, join(run, rundir.BEST_WEIGHTS), chief)
    if not chief:
        return {}

    history = read_history(run)
    best = best_row(history, monitor)
    stop = None
    if any(math.isnan(row.get("loss", 0.0)) for row in history):
        stop = "nan_loss"
    elif own.early_stopping and own.early_stopping.stopped_epoch:
        stop = "early_stopping"
    speeds = [row["images_per_sec"] for row in history[1:] if "images_per_sec" in row]
    metrics = {
        "completed": True,
        "monitor": monitor.key,
        "best_epoch": best["epoch"] + 1,
        "best": {key: value for key, value in best.items() if key != "epoch"},
        "epochs_trained": len(history),
        "stopped": stop,
        "final_weights": final,
        "weight_averaging": averaged,
        "images_per_sec": statistics.median(speeds) if speeds else None,
        "top_epochs": (finish_top_epochs(run, config, history, monitor)
                       if config.train.keep_best > 1 else [best["epoch"] + 1]),
    }
    write_atomic(join(run, rundir.METRICS),
                 json.dumps(_finite(metrics), indent=1, sort_keys=True, allow_nan=False) + "\n")
    delete_backup(run)                                      # finished: nothing left to resume
    echo(f"best epoch {metrics['best_epoch']} of {len(history)}: "
         f"{monitor.key} {best[monitor.key]:.4f}"
         + (f"; weight average of epochs {averaged['epochs'][0]}-{averaged['epochs'][-1]}: "
            f"{averaged[monitor.key]:.4f}" if averaged else "")
         + f"\nsaved {'the weight average' if final == 'swa' else 'the best epoch'} as "
           f"{join(run, rundir.BEST_WEIGHTS)}")
    return metrics


def _finite(value):
    """``value`` with every NaN or infinite number as None (null): metrics.json stays JSON."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _load_weights(model, path: str, config: Config, strategy) -> None:
    """``model.load_weights`` for a model of any strategy: tf-keras cannot assign values read
    from an h5 file to the sync-on-read variables (BatchNorm statistics) of a distributed
    model, so the chief reads them into a plain twin and every worker gets them from it."""
    if resolve_strategy_name(config.train.strategy) == "default":
        with local_copy(path) as local:         # h5py opens local files only
            model.load_weights(local)
        return
    weights = None
    if is_chief(strategy):
        twin = build_model_to_load(config)
        with local_copy(path) as local:
            twin.load_weights(local)
        weights = twin.get_weights()
    sync_from_chief(strategy, model.weights, weights)


def _save_for_inference(model, config: Config, path: str, chief: bool) -> None:
    """The chief writes ``model``'s weights without the optimizer's state (two thirds of a
    compiled model's file for B0), through an uncompiled twin: what predict, evaluate and
    export load. Every worker reads the weights: that is a collective."""
    weights = model.get_weights()
    if not chief:
        return
    twin = build_model_to_load(config)
    twin.set_weights(weights)
    with atomic_path(path) as tmp:
        twin.save_weights(tmp)
