"""XLA and mixed-precision switches: ``auto`` turns each on only when a GPU is visible.

On this kind of CPU, XLA makes training 2-4x slower and float16 brings nothing (DESIGN.md).
"""
from __future__ import annotations

import contextlib

from keras_ptx.tf_setup import tf


def gpu_available() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def _resolve(value, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() == "auto":
        return gpu_available()
    raise ValueError(f"{key}: expected true, false or auto, got {value!r}")


def resolve_jit_compile(value) -> bool:
    """``train.jit_compile``: True, False, or 'auto' (True iff a GPU is visible)."""
    return _resolve(value, "train.jit_compile")


def resolve_mixed_precision(value) -> bool:
    """``train.mixed_precision``: True, False, or 'auto' (True iff a GPU is visible)."""
    return _resolve(value, "train.mixed_precision")


@contextlib.contextmanager
def dtype_policy(mixed: bool):
    """Build layers under mixed_float16 (or float32), restoring the global policy afterwards."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
