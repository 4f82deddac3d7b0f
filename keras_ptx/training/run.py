"""One training run: records, strategy, RUN_DIR, data, model, callbacks, ``fit``, the result.

Order matters under MultiWorkerMirroredStrategy, which must exist before TensorFlow runs an op:
the records folder is opened with plain file access first (the config checked itself when it
was loaded), then the strategy is created, the records are checked, the chief alone looks at
RUN_DIR and prepares it, and sends the others what they need from it (a refusal, "already
finished", or where training continues: :func:`~keras_ptx.training.strategy.from_chief`);
only then are the datasets (:mod:`~keras_ptx.training.datasets`) and the model (inside
``strategy.scope()``) built. Nothing is written to RUN_DIR before every check of the config,
the records, ``model.weights`` and ``train.init_from`` (:mod:`~keras_ptx.training.warm_start`)
has passed.

Callbacks (:class:`~keras_ptx.training.callbacks.RunCallbacks`), in the order Keras calls them
at an epoch's end: epoch statistics (lr, images/s), the encoder's freezing
(``train.freeze_encoder_epochs``: :class:`~keras_ptx.training.callbacks.FreezeEncoder`),
TerminateOnNaN, ModelCheckpoint (best by ``train.monitor``, the validation score or loss; and
last; weights), EarlyStopping on the same,
ReduceLROnPlateau (``lr_schedule: plateau``), weight averaging (``swa_epochs``), TensorBoard
overlays, CSVLogger and TensorBoard scalars (chief), the progress bar, the one-line summary
(chief), and BackupAndRestore last, so that a backup of epoch N means every file of epoch N is
written (the backup alone decides where a re-run continues: :mod:`~keras_ptx.training.resume`).
Workers other than the chief write checkpoints to temporary directories under their own
``--out`` (Keras does this itself) and read nothing there: their backup lives in a local
temporary folder, and a resumed run's weights and optimizer state reach them from the chief
(:class:`~keras_ptx.training.callbacks.SharedBackupAndRestore`). Each worker may have its own
disk; only the records must be readable by all. The end of the run is
:mod:`~keras_ptx.training.finish`'s.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from keras_ptx import rundir
from keras_ptx.config import Config
from keras_ptx.data.records_dir import RecordsDir
from keras_ptx.errors import UserError
from keras_ptx.fileio import check_openable
from keras_ptx.model import (build_model, make_losses, make_metrics, resolve_jit_compile,
                             resolve_mixed_precision)
from keras_ptx.model.encoders import resolve_weights
from keras_ptx.tf_errors import augment_worker_failure, damaged_records
from keras_ptx.tf_setup import tf
from keras_ptx.training import TrainingError
from keras_ptx.training.callbacks import RunCallbacks
from keras_ptx.training.datasets import check_records, run_data
from keras_ptx.training.finish import finish
from keras_ptx.training.resume import (Monitor, ResumePoint, backup_epoch, is_finished,
                                       prepare_run_dir, resume_point)
from keras_ptx.training.schedules import make_optimizer
from keras_ptx.training.strategy import (from_chief, is_chief, make_strategy,
                                        resolve_strategy_name)
from keras_ptx.training.warm_start import InitPlan, load_init_weights, plan_init


@dataclass
class TrainResult:
    metrics: dict                           # as in metrics.json
    model: tf.keras.Model | None = None     # final weights; None if the run was already finished


def train(config: Config, data_dir: str, run_dir, *, resume: bool = False,
          overwrite: bool = False, callbacks=(), echo=print) -> TrainResult:
    """Train ``config`` on the records in ``data_dir`` into ``run_dir`` (see module docstring).

    ``callbacks`` are extra Keras callbacks, called before the run's own.
    """
    run = str(run_dir)
    check_openable(run, "--out")
    config.validate()
    records = RecordsDir.open(data_dir)
    strategy = make_strategy(config.train.strategy)
    check_inputs(config, records)
    chief = is_chief(strategy)
    monitor = Monitor.of(config)
    plan = from_chief(strategy, _plan(run, config, monitor, resume, overwrite, echo)
                      if chief else None)
    if "refused" in plan:
        raise TrainingError(plan["refused"] if chief else
                            f"the chief refused to train: {plan['refused']}")
    if "finished" in plan:
        return TrainResult(plan["finished"])
    start = ResumePoint.from_dict(plan["start"])
    data = run_data(config, records, strategy, start)

    tf.keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        model = build_model(config, any_size=bool(config.data.train_crop))
        losses, loss_weights = make_losses(config)
        model.compile(optimizer=make_optimizer(config.train, data.steps), loss=losses,
                      loss_weights=loss_weights, metrics=make_metrics(config),
                      jit_compile=resolve_jit_compile(config.train.jit_compile))
    if "init" in plan:
        load_init_weights(model, InitPlan.from_dict(plan["init"]), strategy)
    own = RunCallbacks(config, records, run, monitor, start, strategy, echo)
    echo(_opening_line(config, strategy, data.steps, start))
    echo(data.caching)
    # a run whose last epoch ended training (then crashed while finishing) trains no further
    stopped = start.stopped(config.train.early_stopping_patience)
    last = start.epoch if stopped else config.train.epochs
    try:
        model.fit(data.train, validation_data=data.val, initial_epoch=start.epoch, epochs=last,
                  steps_per_epoch=data.steps, callbacks=[*callbacks, *own.callbacks],
                  verbose=1 if sys.stdout.isatty() else 2)
    except tf.errors.DataLossError as exc:
        raise TrainingError(damaged_records(data_dir, exc)) from None
    except tf.errors.OpError as exc:      # keep only the worker's own message
        detail = augment_worker_failure(exc)
        if detail is None:
            raise
        raise TrainingError(f"augmentation stopped training: {detail}") from None
    metrics = finish(model, config, run, monitor, data.val, own, strategy, echo)
    return TrainResult(metrics, model)


def check_inputs(config: Config, records: RecordsDir) -> None:
    """A UserError for records or ``model.weights`` that a run of ``config`` cannot use, before
    anything is written (with ``model.weights: imagenet``, the download happens here)."""
    check_records(config, records)
    resolve_weights(config.model.encoder, config.model.weights)


def _plan(run: str, config: Config, monitor: Monitor, resume: bool, overwrite: bool,
          echo) -> dict:
    """The chief's look at RUN_DIR, for every worker: ``refused`` (why), ``finished`` (its
    metrics.json) or ``start`` (a :class:`ResumePoint` as a dict), after preparing RUN_DIR."""
    try:
        if not overwrite and is_finished(run, config):
            metrics = rundir.read_json(run, rundir.METRICS)
            echo(f"{run} already holds this finished run (best epoch {metrics['best_epoch']}, "
                 f"{metrics['monitor']} {metrics['best'][metrics['monitor']]:.4f}); nothing to "
                 f"do. Use --overwrite to train again.")
            return {"finished": metrics}
        # a run that starts (no backup to continue) from another's weights: checked first
        init = (plan_init(config) if config.train.init_from and
                (overwrite or backup_epoch(run) is None) else None)
        dropped = prepare_run_dir(run, config, resume=resume, overwrite=overwrite)
        if dropped:
            echo(dropped)
        start = resume_point(run, monitor)
        if init is None or start.epoch:
            return {"start": start.to_dict()}
        echo(init.describe())
        return {"start": start.to_dict(), "init": init.to_dict()}
    except UserError as exc:
        return {"refused": str(exc)}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _opening_line(config: Config, strategy, steps: int, start: ResumePoint) -> str:
    train, size, crop = config.train, config.data.image_size, config.data.train_crop
    line = (f"training UNet++ {config.model.encoder} at {size}x{size}"
            f"{f' on {crop}x{crop} crops' if crop else ''}: {_count(train.epochs, 'epoch')} of "
            f"{_count(steps, 'step')}, global batch {train.batch_size} on "
            f"{_count(strategy.num_replicas_in_sync, 'replica')} "
            f"({resolve_strategy_name(train.strategy)} strategy), XLA "
            f"{'on' if resolve_jit_compile(train.jit_compile) else 'off'}, precision "
            f"{resolve_mixed_precision(train.mixed_precision)}")
    if start.epoch:
        line += f"\ncontinuing after epoch {start.epoch} from the backup"
        if start.best_score is not None:
            line += f" (best {start.best_score:.4f} so far, epoch {start.best_epoch + 1})"
    return line
