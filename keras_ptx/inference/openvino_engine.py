"""The OpenVINO engine: a :class:`~keras_ptx.inference.runner.Predictor`'s graph converted to an
OpenVINO network and run by OpenVINO's CPU plugin behind the predictor's own call interface.

What is converted is :meth:`Predictor.run_gray_tf`, the graph every TF consumer runs: the
members with their batch norms folded and their weights frozen, the input normalisation, the
TTA, the ensemble average and the image-level probability. Its input is :data:`INPUT`, float32
gray ``[B, S, S, 1]`` 0..255 on the square grid; its outputs are :data:`OUTPUTS`, the maps
``[B, S, S]`` and the image-level probabilities ``[B]`` (named as the SavedModel's
``predict_image`` names them before post-processing). Reading images, the square grid, the
mapping back and the post-processing stay the project's own, so only the network changes
engine.

The precision is chosen when the network is compiled, not stored in it: the network is
converted from the float32 graph (OpenVINO's TensorFlow frontend cannot convert a
mixed_bfloat16 graph's casts to bfloat16) and compiled with OpenVINO's inference precision hint
(:func:`inference_precision`): bf16 for mixed_bfloat16, else f32. OpenVINO's CPU default is
bf16 wherever the CPU computes it, so f32 is asked for, never left to the default.

A folder written by :func:`save` holds :data:`NETWORK` (OpenVINO IR: ``network.xml`` and
``network.bin``, float32 weights) and :data:`METADATA` (what :class:`OpenVinoPredictor` needs:
grid size, TTA, normalisation, label head, precision, plus what the writer adds); the IR loads
in a process with nothing but openvino.

openvino is the optional extra :data:`EXTRA`; :func:`import_openvino` refuses without it. It is
imported with its telemetry package blocked: OpenVINO's converter otherwise reports usage over
the network unless the user opted out, which a hospital's inference server should not do
unasked (its converter falls back to its own stub).
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

import keras_ptx
from keras_ptx.config import Normalization, Tta
from keras_ptx.errors import UserError
from keras_ptx.fileio import join, read_bytes, read_json
from keras_ptx.inference.runner import Predictor
from keras_ptx.input.normalize import gray_from_model_input
from keras_ptx.tf_setup import tf

EXTRA = "keras_ptx[openvino]"
NETWORK = "network.xml"                 # and network.bin beside it
METADATA = "keras_ptx_openvino.json"
INPUT = "images"
OUTPUTS = ("probabilities", "pneumothorax_probability")


class OpenVinoMissing(UserError):
    """The OpenVINO engine was asked for without the openvino package."""


class OpenVinoError(UserError):
    """A folder that holds no network of :func:`save`."""


def import_openvino():
    """The openvino module, its telemetry blocked; OpenVinoMissing without the extra."""
    sys.modules.setdefault("openvino_telemetry", None)     # its users fall back to a stub
    try:
        import openvino
    except ImportError as exc:
        raise OpenVinoMissing(f"the OpenVINO engine needs the openvino package ({exc}): "
                              f"pip install '{EXTRA}'") from None
    return openvino


def inference_precision(precision: str) -> str:
    """OpenVINO's inference precision hint for a Keras dtype policy: bf16 for mixed_bfloat16,
    f32 otherwise (mixed_float16 included: OpenVINO's CPU plugin computes float16 only on
    CPUs with AMX-FP16, and float32 is what a float16 run's TF CPU path computes too)."""
    return "bf16" if precision == "mixed_bfloat16" else "f32"


def convert(predictor: Predictor):
    """``predictor``'s :meth:`~Predictor.run_gray_tf` as an ``openvino.Model`` (its own copy of
    the weights). The predictor must compute in float32 (see the module's docstring)."""
    ov = import_openvino()
    policies = {model.dtype_policy.name for model in predictor.models}
    if policies != {"float32"}:
        raise ValueError(f"convert a float32 predictor (got {sorted(policies)}); the precision "
                         f"is chosen when the network is compiled")
    size = predictor.size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32, name=INPUT)])
    def network(images):
        return dict(zip(OUTPUTS, predictor.run_gray_tf(images)))

    return ov.convert_model(network.get_concrete_function(), share_weights=False)


def save(predictor: Predictor, folder: str, precision: str, metadata: dict | None = None) -> None:
    """Write ``predictor``'s network to the local ``folder`` (created) as :data:`NETWORK` and
    :data:`METADATA` (the network's facts, ``precision`` and ``metadata``)."""
    ov = import_openvino()
    os.makedirs(folder, exist_ok=True)
    ov.save_model(convert(predictor), join(folder, NETWORK), compress_to_fp16=False)
    with open(join(folder, METADATA), "w") as f:
        json.dump({"keras_ptx": keras_ptx.__version__, "openvino": ov.get_version(),
                   "network": NETWORK, "input": INPUT, "outputs": list(OUTPUTS),
                   "image_size": predictor.size, "tta": predictor.tta,
                   "normalization": predictor.normalization,
                   "has_label_head": predictor.has_label_head, "precision": precision,
                   **(metadata or {})}, f, indent=2)


def read_metadata(folder) -> dict:
    """The :data:`METADATA` of a folder :func:`save` wrote; OpenVinoError otherwise."""
    try:
        metadata = read_json(join(str(folder), METADATA))
    except ValueError as exc:
        raise OpenVinoError(f"{join(str(folder), METADATA)}: {exc}") from None
    if not isinstance(metadata, dict):
        raise OpenVinoError(f"{folder}: no {METADATA} (not an OpenVINO export of keras_ptx)")
    return metadata


class OpenVinoPredictor:
    """A predictor's network compiled by OpenVINO for the CPU, answering as
    :class:`~keras_ptx.inference.runner.Predictor` does: ``size``, ``tta``, ``normalization``,
    ``has_label_head``, :meth:`__call__` and :meth:`from_gray`."""

    def __init__(self, network, size: int, tta: Tta, normalization: Normalization,
                 has_label_head: bool, precision: str):
        """``network``: an ``openvino.Model`` of :func:`convert`; ``precision``: the Keras
        dtype policy it computes as (:func:`inference_precision`)."""
        ov = import_openvino()
        self.size, self.tta, self.normalization = size, tta, normalization
        self.has_label_head, self.precision = has_label_head, precision
        hint = ov.properties.hint.inference_precision
        self._compiled = ov.Core().compile_model(
            network, "CPU", {hint: inference_precision(precision)})

    @classmethod
    def from_predictor(cls, predictor: Predictor, precision: str) -> OpenVinoPredictor:
        """``predictor`` (float32) converted in memory, computing as ``precision``."""
        return cls(convert(predictor), predictor.size, predictor.tta, predictor.normalization,
                   predictor.has_label_head, precision)

    @classmethod
    def load(cls, folder, precision: str | None = None) -> OpenVinoPredictor:
        """The network :func:`save` wrote to ``folder`` (a local path or a URL), computing as
        ``precision`` (None: the one it was saved for)."""
        ov = import_openvino()
        metadata = read_metadata(folder)
        xml = join(str(folder), NETWORK)
        weights = np.frombuffer(read_bytes(xml.removesuffix(".xml") + ".bin"), np.uint8)
        network = ov.Core().read_model(read_bytes(xml).decode(), ov.Tensor(weights))
        return cls(network, metadata["image_size"], metadata["tta"], metadata["normalization"],
                   metadata["has_label_head"], precision or metadata["precision"])

    def __call__(self, images) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 ``[B, S, S, 3]`` -> (maps float32 ``[B, S, S]``, image prob
        ``[B]``), as :meth:`Predictor.__call__`."""
        gray = gray_from_model_input(np.asarray(images, np.float32), self.normalization)
        return self._run(gray * np.float32(255.0))

    def from_gray(self, squares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``[B, S, S]`` gray squares (the record grid) -> as :meth:`__call__`."""
        return self._run(squares[..., None].astype(np.float32))

    def _run(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        answer = self._compiled({INPUT: gray})
        return tuple(answer[name] for name in OUTPUTS)
