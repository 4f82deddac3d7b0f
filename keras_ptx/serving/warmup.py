"""TF Serving warm-up records: ``assets.extra/tf_serving_warmup_requests`` in an export.

TF Serving replays these PredictionLog records when it loads a version, before the version
takes traffic, so the first real request does not pay for graph initialisation. The records
cycle through four requests that between them touch every path of the graph: one gray PNG on
the model's grid (``serving_default``), one ready image (``predict_image``), a batch of a
larger colour JPEG and a smaller gray PNG (``serving_default``: both resize directions, colour
conversion and ragged sizes), and the smaller PNG alone (``serving_compact``).
"""
from __future__ import annotations

import numpy as np

from keras_ptx.tf_setup import tf  # before tensorflow_serving, which imports TensorFlow

from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from keras_ptx.serving import (BYTES_INPUT, IMAGE_INPUT, PREDICT_IMAGE, SERVING_COMPACT,
                               SERVING_DEFAULT)


def synthetic_image(height: int, width: int) -> np.ndarray:
    """A deterministic uint8 gray (height, width) picture: a bright frame with two dark ovals."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / max(height - 1, 1), x / max(width - 1, 1)
    image = 0.35 + 0.5 * y
    for cx in (0.3, 0.7):
        image -= 0.3 * np.exp(-(((x - cx) / 0.15) ** 2 + ((y - 0.45) / 0.3) ** 2))
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _request(signature_name: str, input_name: str, tensor) -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(signature_name=signature_name))
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(tensor))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))


def warmup_logs(size: int, count: int) -> list[prediction_log_pb2.PredictionLog]:
    """``count`` warm-up PredictionLogs for a model on a ``size`` x ``size`` grid."""
    gray = synthetic_image(size, size)
    png = tf.io.encode_png(gray[..., None]).numpy()
    big = synthetic_image(size * 3 // 2, size)
    colour = np.stack([big, big // 2 + 64, 255 - big], axis=-1)
    jpeg = tf.io.encode_jpeg(colour, quality=90).numpy()
    small = tf.io.encode_png(synthetic_image(size // 2, size * 3 // 4)[..., None]).numpy()
    variants = [
        lambda: _request(SERVING_DEFAULT, BYTES_INPUT, np.array([png], dtype=object)),
        lambda: _request(PREDICT_IMAGE, IMAGE_INPUT, gray[None, ..., None].astype(np.float32)),
        lambda: _request(SERVING_DEFAULT, BYTES_INPUT, np.array([jpeg, small], dtype=object)),
        lambda: _request(SERVING_COMPACT, BYTES_INPUT, np.array([small], dtype=object)),
    ]
    return [variants[i % len(variants)]() for i in range(count)]


def write_warmup(path, size: int, count: int) -> None:
    """Write ``count`` warm-up records to ``path`` (a TFRecord file; local or gs://)."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in warmup_logs(size, count):
            writer.write(log.SerializeToString())
