"""The tf.distribute strategy of a run, which worker is the chief, and what the chief sends the others.

``train.strategy``: ``default`` (one device), ``mirrored`` (every GPU of this machine),
``multi_worker`` (MultiWorkerMirroredStrategy over the cluster in ``TF_CONFIG``), or ``auto``:
multi_worker when TF_CONFIG names more than one task, mirrored with more than one GPU, else
default. MultiWorkerMirroredStrategy must exist before TensorFlow runs any op, so
:func:`keras_ptx.training.run.train` creates the strategy first (the checks before it only
touch files).

Workers share nothing but the cluster: only the chief reads or writes RUN_DIR, and what the
others need from it (where a resumed run continues, the restored weights, the best weights
after ``fit``) comes from the chief through the strategy's collectives (:func:`from_chief`,
:func:`sync_from_chief`), never through a file.
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


def _multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def broadcast(strategy, values: list) -> list:
    """The chief's ``values`` on every worker: each worker passes tensors of the same shapes
    and dtypes (its own values, or zeros); one all-reduce in which only replica 0 (the chief's)
    contributes. Values travel as float64, exact for float32 and for integers below 2**53.
    ``values`` themselves without other workers."""
    if not _multi_worker(strategy):
        return [tf.convert_to_tensor(v) for v in values]
    @tf.function
    def reduce(tensors):
        def replica(tensors):
            context = tf.distribute.get_replica_context()
            own = tf.equal(context.replica_id_in_sync_group, 0)
            return context.all_reduce(tf.distribute.ReduceOp.SUM, [
                tf.where(own, t, tf.zeros_like(t)) for t in tensors])
        return strategy.run(replica, args=(tensors,))

    results = reduce([tf.cast(v, tf.float64) for v in values])
    return [tf.cast(strategy.experimental_local_results(r)[0], v.dtype)
            for r, v in zip(results, values)]


def from_chief(strategy: tf.distribute.Strategy, value):
    """The chief's ``value`` (anything JSON can hold; other workers pass None) on every
    worker; ``value`` itself without other workers."""
    if not _multi_worker(strategy):
        return value
    data = json.dumps(value).encode() if is_chief(strategy) else b""
    length, = broadcast(strategy, [tf.constant(len(data), tf.int64)])
    padded = data.ljust(int(length), b"\0")
    received, = broadcast(strategy, [tf.constant(list(padded), tf.uint8, [int(length)])])
    return json.loads(received.numpy().tobytes().decode())


def sync_from_chief(strategy: tf.distribute.Strategy, variables, values=None) -> None:
    """Give every worker the chief's ``values`` of ``variables`` (default: the chief's own
    values of them, e.g. after it alone restored a backup; other workers pass None). Without
    other workers, ``values`` (if given) are assigned."""
    variables = list(variables)
    if _multi_worker(strategy):
        own = values if values is not None else [_components(v)[0] for v in variables]
        values = broadcast(strategy, [tf.convert_to_tensor(v) for v in own])
    for variable, value in zip(variables, values or ()):
        for component in _components(variable):
            component.assign(value)


def _components(variable) -> tuple:
    """This worker's copies of a distributed variable: assigned one by one, since assigning the
    variable itself is a collective, and reading a sync-on-read one averages it over workers."""
    return tuple(getattr(variable, "values", None) or (variable,))
