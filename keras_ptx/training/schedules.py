"""The optimizer and its learning-rate schedule from ``train``.

``lr_schedule``: ``cosine`` — linear warm-up from ``min_learning_rate`` to ``learning_rate``
over ``warmup_epochs``, then one cosine cycle down to ``min_learning_rate`` by the last step
(Keras' ``CosineDecay`` with ``warmup_target``; the Kaggle recipe ran one cycle from 1e-3);
``plateau`` — a constant rate that ``ReduceLROnPlateau`` (see callbacks) lowers when the
validation score stalls; ``constant``. The schedule is a function of ``optimizer.iterations``,
which the backup restores, so a resumed run continues on the same curve.
"""
from __future__ import annotations

from keras_ptx.config import TrainConfig
from keras_ptx.tf_setup import tf

def learning_rate_schedule(train: TrainConfig, steps_per_epoch: int):
    """A ``LearningRateSchedule`` (cosine) or a float (plateau, constant)."""
    if train.lr_schedule != "cosine":
        return float(train.learning_rate)
    total = max(1, train.epochs * steps_per_epoch)
    warmup = min(int(round(train.warmup_epochs * steps_per_epoch)), total - 1)
    floor = min(train.min_learning_rate, train.learning_rate)
    alpha = floor / train.learning_rate if train.learning_rate > 0 else 0.0
    if warmup <= 0:
        return tf.keras.optimizers.schedules.CosineDecay(train.learning_rate, total, alpha=alpha)
    return tf.keras.optimizers.schedules.CosineDecay(
        floor, total - warmup, alpha=alpha, warmup_target=train.learning_rate,
        warmup_steps=warmup)


def make_optimizer(train: TrainConfig, steps_per_epoch: int) -> tf.keras.optimizers.Optimizer:
    rate = learning_rate_schedule(train, steps_per_epoch)
    decay = train.weight_decay or None
    if train.optimizer == "adam":
        return tf.keras.optimizers.Adam(rate, weight_decay=decay)
    if train.optimizer == "adamw":
        return tf.keras.optimizers.AdamW(rate, weight_decay=train.weight_decay)
    return tf.keras.optimizers.SGD(rate, momentum=0.9, nesterov=True, weight_decay=decay)


def current_learning_rate(optimizer) -> float:
    """The rate of the optimizer's latest step (under a schedule) or its set rate."""
    return float(tf.keras.backend.get_value(optimizer.learning_rate))
