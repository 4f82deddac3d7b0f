"""The tf.distribute strategy of a run, which worker is the chief, and a barrier between workers.

``train.strategy``: ``default`` (one device), ``mirrored`` (every GPU of this machine),
``multi_worker`` (MultiWorkerMirroredStrategy over the cluster in ``TF_CONFIG``), or ``auto``:
multi_worker when TF_CONFIG names more than one task, mirrored with more than one GPU, else
default. MultiWorkerMirroredStrategy must exist before TensorFlow runs any op, so
:func:`keras_ptx.training.run.train` creates the strategy first (the checks before it only
touch files).
"""
from __future__ import annotations

import json
import os

from keras_ptx.tf_setup import tf
from keras_ptx.training import TrainingError

def _tf_config(environ=None) -> dict:
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not text.strip():
        return {}
    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise TrainingError(f"TF_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("cluster", {}), dict):
        raise TrainingError("TF_CONFIG must be an object with a 'cluster' mapping and a 'task'")
    return spec


def cluster_size(environ=None) -> int:
    """Number of training tasks (chief + workers) in TF_CONFIG's cluster; 1 without TF_CONFIG."""
    cluster = _tf_config(environ).get("cluster", {})
    return max(1, sum(len(cluster.get(kind, ())) for kind in ("chief", "worker")))


def resolve_strategy_name(name: str, environ=None) -> str:
    """``train.strategy`` with ``auto`` settled for this cluster and machine."""
    if name != "auto":
        return name
    if cluster_size(environ) > 1:
        return "multi_worker"
    return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "default"


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy ``train.strategy`` asks for (see the module docstring)."""
    resolved = resolve_strategy_name(name)
    if resolved == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if resolved == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    return bool(strategy.extended.should_checkpoint)


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Return only when every worker has got here (one tiny all-reduce); instant on one worker.

    Used after the chief prepares RUN_DIR, so that no worker uses it half made, and after
    ``fit``, so that no worker reads a file the chief is still writing in its last epoch's
    callbacks.
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM, _ones(strategy), axis=None)


@tf.function
def _ones(strategy):
    return strategy.run(lambda: tf.constant(1.0))
