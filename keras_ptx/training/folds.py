"""K-fold training: one run per fold of records built with ``--folds K``, under one fold folder.

OUT/fold-k/ is a plain RUN_DIR of the config with ``data.fold: k`` (validation: the images of
fold k; training: those of the other folds), trained by :func:`keras_ptx.training.run.train`;
OUT/folds.json marks the folder (:mod:`keras_ptx.rundir`). Running the command again skips the
finished folds (their runs have nothing to do) and continues the interrupted one from its
backup. Folds train one after the other in this process, TensorFlow started once and the
Keras session cleared between folds; MultiWorkerMirroredStrategy can be created only once per
process, so a multi-worker cluster trains each fold as its own ``train --set data.fold=k``.
A ``train.init_from`` that is a fold folder warm-starts each fold from the same fold of it (the
winners' uptraining: fold k at 1024 from fold k at 512).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from keras_ptx import rundir
from keras_ptx.config import Config
from keras_ptx.data.records_dir import RecordsDir
from keras_ptx.fileio import check_openable, exists, is_url, join, write_atomic
from keras_ptx.tf_setup import tf
from keras_ptx.training import TrainingError
from keras_ptx.training.run import check_inputs, train
from keras_ptx.training.strategy import resolve_strategy_name


@dataclass
class FoldResult:
    fold: int
    run_dir: str
    train_images: int
    val_images: int
    metrics: dict               # the fold run's metrics.json


def parse_folds(text: str, count: int) -> list[int]:
    """The folds ``--folds`` names, sorted: ``all`` or a comma-separated list such as ``0,2``,
    each below ``count``."""
    if text.strip().lower() == "all":
        return list(range(count))
    try:
        folds = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise TrainingError(f"--folds {text}: expected 'all' or fold numbers such as 0,2") from None
    if any(not 0 <= k < count for k in folds):
        raise TrainingError(f"--folds {text}: the records have {count} folds, 0 to {count - 1}")
    return folds


def train_folds(config: Config, data_dir: str, out: str, folds: str = "all", *,
                resume: bool = False, overwrite: bool = False, echo=print) -> list[FoldResult]:
    """Train (or finish) the ``folds`` of ``config`` on the records in ``data_dir``, each in
    its RUN_DIR under ``out``; the results in fold order (see the module docstring).
    ``resume`` and ``overwrite`` apply to each fold's run as :func:`train`'s do."""
    out = str(out).rstrip("/")
    check_openable(out, "--out")
    if config.data.fold is not None:
        raise TrainingError(f"data.fold={config.data.fold}: train-folds sets each run's fold; "
                            f"leave it unset and name the folds with --folds")
    if resolve_strategy_name(config.train.strategy) == "multi_worker":
        raise TrainingError("train-folds trains the folds in one process, which cannot create "
                            "a multi-worker strategy twice; on a cluster run train --set "
                            "data.fold=k --out OUT/fold-k for each fold")
    records = RecordsDir.open(data_dir)
    if not records.folds:
        raise TrainingError(f"--data {records}: the records have no folds; build them with "
                            f"build-tfrecords --folds K")
    chosen = parse_folds(folds, records.folds)
    for k in chosen:                # every fold's, before OUT is marked
        check_inputs(_fold_config(config, k), records)
    _mark(out, records, chosen)
    results = []
    for k in chosen:
        run = rundir.fold_dir(out, k)
        echo(f"fold {k} of folds 0-{records.folds - 1}: {run}")
        metrics = train(_fold_config(config, k), data_dir, run, resume=resume,
                        overwrite=overwrite, echo=echo).metrics
        tf.keras.backend.clear_session()
        results.append(FoldResult(k, run, records.counts("train", k).records,
                                  records.counts("val", k).records, metrics))
    return results


def _fold_config(config: Config, fold: int) -> Config:
    """The config of fold ``fold``'s run: ``data.fold`` set, ``init_from`` its fold's."""
    return dataclasses.replace(config, data=dataclasses.replace(config.data, fold=fold),
                               train=_fold_init(config.train, fold))


def _fold_init(train, fold: int):
    """``train`` with ``init_from`` a fold folder's run of ``fold`` (any other left as it is)."""
    source = train.init_from
    if source is None or rundir.read_json(source, rundir.FOLDS) is None:
        return train
    return dataclasses.replace(train, init_from=rundir.fold_dir(source, fold))


def _mark(out: str, records: RecordsDir, chosen: list[int]) -> None:
    """Write OUT/folds.json (the folds asked for so far, these among them); refuse an ``out``
    that holds something else or the folds of other records."""
    marker = join(out, rundir.FOLDS)
    known = rundir.read_json(out, rundir.FOLDS)
    if known is None and exists(out) and tf.io.gfile.listdir(out):
        raise TrainingError(f"--out {out}: not a fold folder (no {rundir.FOLDS}) and not empty; "
                            f"choose a new folder")
    if known is not None and known["folds"] != records.folds:
        raise TrainingError(f"--out {out}: holds runs of {known['folds']} folds (records "
                            f"{known['data']}), these records have {records.folds}; choose a "
                            f"new folder")
    trained = sorted({*(known or {}).get("trained", []), *chosen})
    tf.io.gfile.makedirs(out)
    data = records.path if is_url(records.path) else os.path.abspath(records.path)
    write_atomic(marker, json.dumps({"folds": records.folds, "trained": trained, "data": data},
                                    indent=1) + "\n")


def _number(value) -> float:
    """A metrics.json value as a float: NaN for none (null: not finite, or not measured)."""
    return float("nan") if value is None else value


def fold_table(results: list[FoldResult]) -> str:
    """One line per fold (its images, best epoch and that epoch's validation values, the
    ``val_`` prefix dropped) and their mean."""
    keys = sorted({key for r in results for key in r.metrics["best"] if key.startswith("val_")})
    rows = [("fold", "train", "val", "best epoch", "epochs", *(k[len("val_"):] for k in keys))]
    values = [[_number(r.metrics["best"].get(k)) for k in keys] for r in results]
    for r, row in zip(results, values):
        rows.append((str(r.fold), str(r.train_images), str(r.val_images),
                     str(r.metrics["best_epoch"]), str(r.metrics["epochs_trained"]),
                     *(f"{v:.4f}" for v in row)))
    rows.append(("mean", "", "", "", "", *(f"{sum(v) / len(v):.4f}" for v in zip(*values))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    monitors = sorted({r.metrics["monitor"] for r in results})
    return "\n".join(lines + [f"best epoch by {', '.join(monitors)}; values of that epoch on the "
                               f"fold's validation images"])
