"""The one place that reads TensorFlow's error text, for the failures a user is told about in
one line: a failure inside a tf.data graph reaches Python as an ``OpError`` whose message holds
the original error's text between graph traces.

It imports nothing of keras_ptx at module level (TensorFlow only once an error is in hand), so
``data`` and ``input`` both use it without depending on each other."""
from __future__ import annotations

import re


class AugmentWorkerError(RuntimeError):
    """An augmentation worker process failed or died (:mod:`keras_ptx.input.workers` raises it;
    defined here, where its name is looked for in TensorFlow's error text)."""


_GRAPH_NOISE = re.compile(r"\{\{function_node [^}]*\}\}|\[\[\{\{node \w+\}\}\]\]|\[Op:\w+\]")
_WORKER_MARKER = f"{AugmentWorkerError.__module__}.{AugmentWorkerError.__name__}: "


def damaged_records(data_dir, error) -> str:
    """What to tell a user whose shards in ``data_dir`` failed to read (an ``OpError``; a
    ``DataLossError`` is a shard truncated or altered after the build, and TensorFlow names
    the record, not the file)."""
    last = [p for p in error.message.split("\n\n") if p.strip()][-1]    # after any graph trace
    detail = " ".join(_GRAPH_NOISE.sub("", last).split())
    if not _is_data_loss(error):
        return f"--data {data_dir}: unreadable records ({detail})"
    return (f"--data {data_dir}: a record shard is damaged ({detail}); find it with "
            f"bin/build-tfrecords --verify {data_dir}, then rebuild")


def _is_data_loss(error) -> bool:
    from keras_ptx.tf_setup import tf

    return isinstance(error, tf.errors.DataLossError)


def augment_worker_failure(error) -> str | None:
    """The augmentation worker's own message in an ``OpError`` raised through the pipeline's
    ``tf.numpy_function``; None when the error is something else."""
    if _WORKER_MARKER not in error.message:
        return None
    return error.message.rsplit(_WORKER_MARKER, 1)[1].split("\n\n\t [[", 1)[0].strip()
