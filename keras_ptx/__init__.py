"""keras_ptx: find and outline pneumothorax on chest radiographs with a Keras UNet++.

The package runs on Keras 2 (tf-keras) under TensorFlow 2.21: Keras 3's ``Model.fit``
cannot train under MultiWorkerMirroredStrategy (keras-team/keras#20585; docs/ARCHITECTURE.md,
"Keras 2"). The switch only works if it is made before TensorFlow is first imported, so it
happens here, at package import.
"""
import os
import sys

__version__ = "0.1.0"

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class KerasVersionError(RuntimeError):
    """TensorFlow was imported with Keras 3 before keras_ptx could select tf-keras."""


def _check_keras_not_preloaded():
    if os.environ.get("TF_USE_LEGACY_KERAS") not in ("1", "true", "True"):
        raise KerasVersionError(
            "TF_USE_LEGACY_KERAS is set to %r; keras_ptx needs tf-keras (Keras 2). "
            "Unset it or set it to 1." % os.environ.get("TF_USE_LEGACY_KERAS"))
    keras = sys.modules.get("keras")
    if "tensorflow" in sys.modules and keras is not None:
        version = getattr(keras, "__version__", "")
        if version.startswith("3"):
            raise KerasVersionError(
                "TensorFlow was imported with Keras %s before keras_ptx; keras_ptx needs "
                "tf-keras (Keras 2). Import keras_ptx before tensorflow, or set "
                "TF_USE_LEGACY_KERAS=1 in the environment." % version)


_check_keras_not_preloaded()
