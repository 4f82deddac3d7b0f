"""XLA and precision switches: ``auto`` turns each on only when a GPU is visible.

On a CPU, XLA makes training slower, not faster, and float16 brings nothing; XLA's cost on
this project's CPU is measured by ``bench/bench_model.py --jit both`` (BENCHMARKS.md, "The
model: UNet++ on EfficientNet"). ``mixed_bfloat16`` pays off on CPUs with native bfloat16
(AVX512_BF16, AMX): chosen explicitly (``train.mixed_precision: mixed_bfloat16``,
``bin/export --precision mixed_bfloat16``), or by ``bin/export --precision auto``
(:func:`best_inference_precision`); measured in BENCHMARKS.md ("Serving latency against the peer").
"""
from __future__ import annotations

import contextlib

from keras_ptx.tf_setup import tf

# /proc/cpuinfo flags of CPUs that compute bfloat16 natively
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def gpu_available() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this machine's CPU computes bfloat16 natively (Linux; False elsewhere)."""
    try:
        with open(cpuinfo) as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve(value: bool | str) -> bool:
    """A true/false/auto setting (``train.jit_compile``): 'auto' is True iff a GPU is visible."""
    return value if isinstance(value, bool) else gpu_available()


def resolve_jit_compile(value) -> bool:
    """``train.jit_compile``: True, False, or 'auto' (True iff a GPU is visible)."""
    return resolve(value)


def resolve_mixed_precision(value) -> str:
    """``train.mixed_precision`` as a Keras dtype policy name: True is mixed_float16, False
    float32, 'auto' mixed_float16 iff a GPU is visible, a policy name itself."""
    if value == "auto" or isinstance(value, bool):
        return "mixed_float16" if resolve(value) else "float32"
    return value


def best_inference_precision() -> str:
    """``--precision auto`` of an export: mixed_float16 with a GPU, mixed_bfloat16 on a CPU
    with native bfloat16, else float32 (this host's best; say it when the server differs)."""
    if gpu_available():
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bfloat16() else "float32"


@contextlib.contextmanager
def dtype_policy(policy: str):
    """Build layers under the dtype ``policy``, restoring the global policy afterwards."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
