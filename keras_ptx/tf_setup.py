"""Import TensorFlow with tf-keras and check that tf.keras really is Keras 2.

TensorFlow 2.21 logs a few lines through absl while it loads and first looks for devices,
before ``TF_CPP_MIN_LOG_LEVEL`` takes effect (tensorflow/tensorflow#100442): oneDNN and CPU
notices, and on a machine without a GPU "Could not find cuda drivers" and an error-level
"failed call to cuInit" that reads like the real failure of whatever comes next. Those known
lines are dropped; anything else written meanwhile is passed on, and everything if the import
fails.
"""
import os
import re
import sys
import tempfile

import keras_ptx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# The start-up lines dropped (a bytes pattern, searched in each line of standard error).
STARTUP_NOISE = re.compile(
    rb"All log messages before absl::InitializeLog\(\)|oneDNN custom operations are on|"
    rb"Could not find cuda drivers|failed call to cuInit|cpu_feature_guard|"
    rb"rebuild TensorFlow with the appropriate compiler flags")


def _import_tensorflow():
    """``tensorflow``, imported and its devices listed with the start-up lines filtered out of
    this process's standard error (file descriptor 2, where TensorFlow's C++ code writes)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    try:
        os.fstat(2)
    except OSError:                 # no standard error to filter (closed, as by a daemon)
        import tensorflow
        return tensorflow
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            import tensorflow
            tensorflow.config.list_physical_devices()   # the CUDA probe logs now, not later
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured:
                if failed or not STARTUP_NOISE.search(line):
                    os.write(2, line)
    return tensorflow


tf = _import_tensorflow()

if not tf.keras.layers.Layer.__module__.startswith("tf_keras"):
    raise keras_ptx.KerasVersionError(
        "tf.keras is %s, not tf-keras; keras_ptx needs Keras 2 (pip install 'tf-keras~=2.21') "
        "and TF_USE_LEGACY_KERAS=1 before TensorFlow is imported" % tf.keras.layers.Layer.__module__)

__all__ = ["tf"]
