"""The run directory across runs: start it, continue it after a crash, or refuse.

Re-running the same command after a crash (even ``kill -9``, at any instant) continues from the
last epoch whose backup is complete: Keras' ``BackupAndRestore`` keeps the model, optimizer and
epoch counter in ``checkpoints/backup/`` and ``fit`` resumes from there. The backup alone
decides where training continues. It is written last at an epoch's end, after every other file
of that epoch, and kept after ``fit`` until metrics.json is written (a crash while finishing
resumes with no epoch left to train, and finishes again). What the backup does not hold comes
from ``history.csv`` (:class:`ResumePoint`): the best ``train.monitor`` value so far (so the
best checkpoint is replaced only by a better epoch), early stopping's patience count and the
rows a plateau schedule replays. History rows of epochs after the backup (written just before
a crash) are dropped, so the history continues instead of repeating; with no backup at all,
every row is dropped and training starts again at epoch 1, saying so. A resumed run may change
its config, but not what picks the best epoch.

States of an existing RUN_DIR with the same config: a backup -> continue; a finished run
(``metrics.json`` says so, no backup left) -> nothing to do; no backup -> start again. A
different config is refused unless ``--resume`` (continue the backup under the new config,
e.g. more epochs) or ``--overwrite`` (delete the run and start again).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from typing import Any

from keras_ptx import rundir
from keras_ptx.config import Config, ConfigError, ModelConfig, dump_config, load_config
from keras_ptx.fileio import join, utf8_text, write_atomic
from keras_ptx.model.unetpp import output_names
from keras_ptx.tf_setup import tf
from keras_ptx.training import TrainingError

# BackupAndRestore writes its checkpoint under <backup_dir>/chief with this variable in it.
_BACKUP_SUBDIR = "chief"
_SAVED_EPOCH_KEY = "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"


# Settings that decide which epoch is best: a resumed run must keep them (Change.key names).
BEST_EPOCH_KEYS = ("train.monitor", "train.metric_threshold")


@dataclass(frozen=True)
class Monitor:
    """What picks the best epoch: a history.csv column and whether higher ('max') or lower
    ('min') is better."""
    key: str
    mode: str = "max"

    def better(self, value: float, than: float) -> bool:
        return value > than if self.mode == "max" else value < than

    @classmethod
    def of(cls, config: Config) -> "Monitor":
        """What picks the best epoch, early stopping and plateau decay (``train.monitor``)."""
        if config.train.monitor == "loss":
            return cls("val_loss", "min")
        return cls("val_" + score_key(config.model), "max")


def score_key(model: ModelConfig) -> str:
    """Keras' name of the competition-score metric: prefixed by 'mask_' with several outputs."""
    return "score" if len(output_names(model)) == 1 else "mask_score"


@dataclass(frozen=True)
class ResumePoint:
    """Where a run continues: its first epoch (0-based) and what the earlier epochs reached."""
    epoch: int = 0
    best_score: float | None = None
    best_epoch: int | None = None       # 0-based, as in history.csv
    wait: int = 0                       # epochs since the best one
    history: tuple[dict, ...] = ()      # the rows of the epochs before ``epoch``

    def stopped_early(self, patience: int) -> bool:
        """Whether early stopping with ``patience`` ended the run at its last epoch (as Keras'
        ``EarlyStopping`` decides: ``patience`` epochs without improvement, after epoch 0)."""
        return bool(patience) and self.epoch > 1 and self.wait >= patience

    def stopped(self, patience: int) -> bool:
        """Whether the run's last epoch ended training: early stopping, or a NaN loss
        (``TerminateOnNaN``)."""
        return self.stopped_early(patience) or (
            bool(self.history) and math.isnan(self.history[-1].get("loss", 0.0)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "ResumePoint":
        return cls(**{**raw, "history": tuple(raw["history"])})


def backup_dir(run_dir) -> str:
    return join(run_dir, rundir.CHECKPOINTS, rundir.BACKUP)


def delete_backup(run_dir) -> None:
    """Remove the backup, its index first: from then on no reader sees a backup, so a crash
    while the other files are deleted never leaves half of one to continue from (a folder
    rename, the alternative, is not atomic on object stores and does not move a ram://
    folder's files)."""
    index = join(backup_dir(run_dir), _BACKUP_SUBDIR, "checkpoint")
    if tf.io.gfile.exists(index):
        tf.io.gfile.remove(index)
    if tf.io.gfile.exists(backup_dir(run_dir)):
        tf.io.gfile.rmtree(backup_dir(run_dir))


def backup_epoch(run_dir) -> int | None:
    """The last epoch (0-based) whose end BackupAndRestore saved, or None without a backup."""
    latest = tf.train.latest_checkpoint(join(backup_dir(run_dir), _BACKUP_SUBDIR))
    if latest is None:
        return None
    try:
        reader = tf.train.load_checkpoint(latest)
    except tf.errors.OpError as exc:
        raise TrainingError(f"{latest}: a backup that does not read ({exc.message}); remove "
                            f"{backup_dir(run_dir)} or use --overwrite") from None
    if not reader.has_tensor(_SAVED_EPOCH_KEY):
        raise TrainingError(f"{latest}: a backup without its epoch counter; remove "
                            f"{backup_dir(run_dir)} or use --overwrite")
    epoch = int(reader.get_tensor(_SAVED_EPOCH_KEY))
    return epoch if epoch >= 0 else None


def read_history(run_dir) -> list[dict]:
    """history.csv as a list of {column: float}, 'epoch' as int (0-based)."""
    header, rows = _history_table(str(run_dir))
    return [{key: int(value) if key == "epoch" else float(value or "nan")
             for key, value in zip(header, row)} for row in rows]


def _history_table(run: str) -> tuple[list[str], list[list[str]]]:
    """history.csv's header and rows as text (none without the file), a short row padded with
    empty values; TrainingError naming it unless it is UTF-8 text, a CSV with an 'epoch' column
    and rows of numbers (the epoch an integer) no longer than the header."""
    path = join(run, rundir.HISTORY)
    if not tf.io.gfile.exists(path):
        return [], []
    with tf.io.gfile.GFile(path, "rb") as f:
        text = utf8_text(f.read(), path, "training history", TrainingError)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, [])
        rows = [row for row in reader if row]
    except csv.Error as exc:
        raise TrainingError(f"{path} line {reader.line_num}: not a CSV ({exc}); use --overwrite "
                            f"to train again") from None
    if rows and "epoch" not in header:
        raise TrainingError(f"{path}: no epoch column in its header, so not a training history; "
                            f"use --overwrite to train again")
    for line, row in enumerate(rows, start=2):
        row += [""] * (len(header) - len(row))      # a row cut short by a kill: values missing
        if len(row) != len(header) or not _numbers(dict(zip(header, row))):
            raise TrainingError(f"{path} line {line}: not a row of numbers under its header, so "
                                f"the history cannot be continued; use --overwrite to train again")
    return header, rows


def _numbers(row: dict) -> bool:
    """Whether a history row holds an integer epoch and numbers (or nothing) elsewhere."""
    try:
        int(row["epoch"])
        for value in row.values():
            float(value or "nan")
    except ValueError:
        return False
    return True


def best_row(history: list[dict], monitor: Monitor) -> dict | None:
    """The first row with the best ``monitor`` value (NaN rows never win), as
    ``ModelCheckpoint(save_best_only=True)`` chooses."""
    best = None
    for row in history:
        value = row.get(monitor.key, math.nan)
        if not math.isnan(value) and (best is None or monitor.better(value, best[monitor.key])):
            best = row
    return best


def resume_point(run_dir, monitor: Monitor) -> ResumePoint:
    """Where training continues in ``run_dir`` (epoch 0 without a backup)."""
    saved = backup_epoch(run_dir)
    if saved is None:
        return ResumePoint()
    epoch = saved + 1
    history = [row for row in read_history(run_dir) if row["epoch"] < epoch]
    best = best_row(history, monitor)
    if best is None:
        return ResumePoint(epoch=epoch, history=tuple(history))
    return ResumePoint(epoch=epoch, best_score=best[monitor.key], best_epoch=best["epoch"],
                       wait=saved - best["epoch"], history=tuple(history))


@dataclass(frozen=True)
class Change:
    """A setting that differs between two configs; ``key`` as an override names it
    (``train.epochs``), None for a value one side lacks."""
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


def config_changes(old: Config, new: Config) -> list[Change]:
    """Every setting that differs, by key."""
    before, after = _flatten(old.to_dict()), _flatten(new.to_dict())
    return [Change(key, before.get(key), after.get(key))
            for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]


def is_finished(run_dir, config: Config) -> bool:
    """Whether ``run_dir`` holds a finished run of exactly ``config``."""
    run = str(run_dir)
    if not tf.io.gfile.exists(join(run, rundir.CONFIG)) or backup_epoch(run) is not None:
        return False
    metrics = rundir.read_json(run, rundir.METRICS) or {}
    return bool(metrics.get("completed")) and not config_changes(_saved_config(run), config)


def prepare_run_dir(run_dir, config: Config, *, resume: bool = False,
                    overwrite: bool = False) -> str | None:
    """Make ``run_dir`` ready to train ``config`` (the chief does this, before training).

    Returns a line for the log when it dropped epochs that no backup holds (a crash before the
    first backup was complete: training starts again at epoch 1). Raises
    :class:`TrainingError` for a directory it must not touch or a run it cannot continue.
    """
    run = str(run_dir)
    gfile = tf.io.gfile
    if gfile.exists(run) and not gfile.isdir(run):
        raise TrainingError(f"--out {run}: exists and is not a directory")
    if overwrite and gfile.exists(run):
        rundir.remove_run(run)
    if not gfile.exists(run) or not gfile.listdir(run):
        return _start(run, config)
    _require_run_dir(run, "use it")
    if _never_trained(run):             # a start that failed before its first epoch
        rundir.remove_run(run)
        return _start(run, config)
    changes = config_changes(_saved_config(run), config)
    if changes and not resume:
        raise TrainingError(
            f"--out {run}: holds a run of a different config ({_listed(changes)}); use --resume "
            f"to continue it with the new config, --overwrite to start again, or another --out")
    fixed = [c for c in changes if c.key in BEST_EPOCH_KEYS]
    if fixed:
        raise TrainingError(
            f"--out {run}: its best checkpoint was chosen by the old setting, so a resumed run "
            f"cannot change it ({_listed(fixed)}); use --overwrite to start again")
    saved = backup_epoch(run)
    if saved is None:
        if is_finished(run, config):
            return None
        if (rundir.read_json(run, rundir.METRICS) or {}).get("completed"):
            raise TrainingError(f"--out {run}: that run has finished, so there is no backup to "
                                f"continue with the new config; use --overwrite to train again")
        dropped = len(read_history(run))
        if dropped > 1:     # more than the first epoch: its backup was lost, not unwritten
            raise TrainingError(
                f"--out {run}: has {dropped} trained epochs but neither a backup to continue "
                f"from nor a finished result ({rundir.METRICS}); use --overwrite to train again")
        gfile.rmtree(run)
        _start(run, config)
        if dropped:
            return (f"{run}: no backup to continue from (the last run ended before its first "
                    f"backup was complete), so epoch 1's row in {rundir.HISTORY} was dropped; "
                    f"training starts again at epoch 1")
        return None
    dump_config(config, join(run, rundir.CONFIG))
    _truncate_history(run, saved + 1)
    return None


def _listed(changes: list[Change], most: int = 3) -> str:
    """The first ``most`` changes on one line, and how many more."""
    more = len(changes) - most
    return "; ".join(map(str, changes[:most])) + (f"; and {more} more" if more > 0 else "")


def _start(run: str, config: Config) -> None:
    tf.io.gfile.makedirs(join(run, rundir.CHECKPOINTS))
    dump_config(config, join(run, rundir.CONFIG))


def _names(folder: str) -> set[str]:
    return {name.rstrip("/") for name in tf.io.gfile.listdir(folder)}


def _never_trained(run: str) -> bool:
    """Whether ``run`` holds only what :func:`_start` writes: nothing to keep or continue."""
    checkpoints = join(run, rundir.CHECKPOINTS)
    return (_names(run) <= {rundir.CONFIG, rundir.CHECKPOINTS}
            and (not tf.io.gfile.exists(checkpoints) or not _names(checkpoints)))


def _require_run_dir(run: str, action: str) -> None:
    if _names(run) and not tf.io.gfile.exists(join(run, rundir.CONFIG)):
        raise TrainingError(f"--out {run}: not empty and not a run directory (no "
                            f"{rundir.CONFIG}); refusing to {action}")


def _saved_config(run: str) -> Config:
    try:
        return load_config(join(run, rundir.CONFIG))
    except ConfigError as exc:
        raise TrainingError(f"--out {run}: its {rundir.CONFIG} no longer loads ({exc}); "
                            f"use --overwrite or another --out") from None


def _truncate_history(run: str, epoch: int) -> None:
    """Keep the history rows of epochs before ``epoch`` (the ones the backup includes)."""
    header, rows = _history_table(run)
    if "epoch" not in header:
        return
    column = header.index("epoch")
    text = io.StringIO()
    csv.writer(text).writerows([header, *(row for row in rows if int(row[column]) < epoch)])
    write_atomic(join(run, rundir.HISTORY), text.getvalue())


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
