"""XLA and mixed-precision switches: ``auto`` turns each on only when a GPU is visible.

On a CPU, XLA makes training slower, not faster, and float16 brings nothing; XLA's cost on
this project's CPU is measured by ``bench/bench_model.py --jit both`` (BENCHMARKS.md, "The
model: UNet++ on EfficientNet").
"""
from __future__ import annotations

import contextlib

from keras_ptx.tf_setup import tf


def gpu_available() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def resolve(value: bool | str) -> bool:
    """A true/false/auto setting (``train.jit_compile``, ``train.mixed_precision``): 'auto' is
    True iff a GPU is visible."""
    return value if isinstance(value, bool) else gpu_available()


def resolve_jit_compile(value) -> bool:
    """``train.jit_compile``: True, False, or 'auto' (True iff a GPU is visible)."""
    return resolve(value)


def resolve_mixed_precision(value) -> bool:
    """``train.mixed_precision``: True, False, or 'auto' (True iff a GPU is visible)."""
    return resolve(value)


@contextlib.contextmanager
def dtype_policy(mixed: bool):
    """Build layers under mixed_float16 (or float32), restoring the global policy afterwards."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
