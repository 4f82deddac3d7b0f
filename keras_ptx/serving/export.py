"""Export a training run as a SavedModel that TF Serving loads as it is.

``EXPORT_BASE/<version>/`` follows TF Serving's model-base-path layout: ``saved_model.pb``,
``variables/`` and ``assets.extra/`` (the warm-up records and ``keras_ptx_export.json``, which
records the run, the grid size and the post-processing baked in). Tag ``serve``. The version is
written under a dot-prefixed temporary name and renamed when complete, so a server polling the
base path never loads half an export (it ignores names that are not integers).

Everything between the request and the answer is TensorFlow ops (no py_function), so the
model server needs no Python, keras_ptx or segmentation-models. The signatures are described
in :mod:`keras_ptx.serving`. Each image is decoded, converted to gray, put on the model's square
grid by :mod:`keras_ptx.data.geometry`'s rule (:func:`to_square_tf`), normalised by
:func:`keras_ptx.input.normalize.to_model_input`, and run through the model as
:class:`keras_ptx.inference.runner.Predictor` runs it (same image-level probability, optional
hflip TTA). Post-processing (the run's rule, as ``bin/predict`` loads it) runs on the model's
grid (``side = S``) and the binary mask is then mapped back to each input's grid
(:func:`from_square_tf`, kept where >= 0.5): :func:`~keras_ptx.inference.postprocess.apply_tf`
needs a static side, and its component filter, each of whose rounds passes over every pixel,
costs many times more at a radiograph's 1024 px than at 256. ``bin/predict`` post-processes at
the original size instead, so mask borders can differ by a pixel or so between the two.
"""
from __future__ import annotations

import json

import keras_ptx
from keras_ptx.config import Precision
from keras_ptx.errors import UserError
from keras_ptx.fileio import check_openable, publish_folder, staging_folder
from keras_ptx.inference.postprocess import PostProcess, apply_tf
from keras_ptx.inference.runner import Predictor
from keras_ptx.inference.trained import TrainedRun
from keras_ptx.input.normalize import to_model_input
from keras_ptx.serving import (BYTES_INPUT, IMAGE_INPUT, PREDICT_IMAGE, SERVING_DEFAULT,
                               WARMUP_FILE)
from keras_ptx.serving.warmup import write_warmup
from keras_ptx.tf_setup import tf

METADATA_FILE = "assets.extra/keras_ptx_export.json"


class ExportError(UserError):
    """An export that cannot be written (the version exists or is not a positive integer)."""


def to_square_tf(gray, size: int):
    """:func:`geometry.image_to_square` in TF ops: float ``[H, W, 1]`` 0..255 -> ``[S, S, 1]``.

    Pads bottom/right to a square by repeating the last row and column (indices clamped to the
    image, which fills pads of any width), then resizes (area when shrinking, bilinear when
    growing) and rounds to whole gray levels as the uint8 records hold; within one gray level
    of OpenCV.
    """
    shape = tf.shape(gray)
    side = tf.maximum(shape[0], shape[1])
    rows = tf.minimum(tf.range(side), shape[0] - 1)
    cols = tf.minimum(tf.range(side), shape[1] - 1)
    square = tf.gather(tf.gather(gray, rows, axis=0), cols, axis=1)
    resized = tf.cond(side > size,
                      lambda: tf.image.resize(square, [size, size], method="area"),
                      lambda: tf.image.resize(square, [size, size], method="bilinear"))
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def from_square_tf(array, height, width):
    """:func:`geometry.from_square` in TF ops: float ``[S, S, C]`` -> ``[height, width, C]``."""
    side = tf.maximum(height, width)
    return tf.image.resize(array, [side, side], method="bilinear")[:height, :width]


def decode_gray_tf(data):
    """Encoded image bytes (PNG, JPEG, GIF, BMP) -> float32 ``[H, W, 1]`` whole gray levels."""
    rgb = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    return tf.round(tf.image.rgb_to_grayscale(tf.cast(rgb, tf.float32)))


def serving_functions(predictor: Predictor, post: PostProcess) -> dict:
    """The two signature functions (``tf.function`` with input signatures) around a model."""
    size = predictor.size
    spec = tf.TensorSpec([size, size, 1], tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32)])
    def infer(squares):  # one trace of the network, shared by both signatures
        prob, image_prob = predictor.run_tf(to_model_input(squares))
        return prob, apply_tf(post, prob[..., None], image_prob, side=size)[..., 0], image_prob

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    def serve(image_bytes):
        def load(data):
            gray = decode_gray_tf(data)
            shape = tf.shape(gray)
            return to_square_tf(gray, size), shape[0], shape[1]

        squares, heights, widths = tf.map_fn(
            load, image_bytes, fn_output_signature=(spec, tf.int32, tf.int32))
        prob, mask, image_prob = infer(squares)
        max_h = tf.reduce_max(tf.concat([heights, [0]], 0))
        max_w = tf.reduce_max(tf.concat([widths, [0]], 0))

        def back(args):
            square_mask, height, width = args
            grid = from_square_tf(tf.cast(square_mask[..., None], tf.float32), height, width)
            padded = tf.image.pad_to_bounding_box(tf.cast(grid >= 0.5, tf.uint8), 0, 0,
                                                  max_h, max_w)
            return padded[..., 0]

        masks = tf.map_fn(back, (mask, heights, widths),
                          fn_output_signature=tf.TensorSpec([None, None], tf.uint8))
        return {"probabilities": prob, "mask": masks, "height": heights,
                "width": widths, "pneumothorax_probability": image_prob,
                "has_pneumothorax": tf.reduce_any(masks > 0, axis=[1, 2])}

    @tf.function(input_signature=[
        tf.TensorSpec([None, size, size, 1], tf.float32, name=IMAGE_INPUT)])
    def predict_image(images):
        prob, mask, image_prob = infer(images)
        return {"probabilities": prob, "mask": mask, "pneumothorax_probability": image_prob,
                "has_pneumothorax": tf.reduce_any(mask > 0, axis=[1, 2])}

    return {SERVING_DEFAULT: serve, PREDICT_IMAGE: predict_image}


def version_dirs(export_base) -> list[int]:
    """The integer version directories under ``export_base`` (none when it does not exist)."""
    if not tf.io.gfile.isdir(str(export_base)):
        if tf.io.gfile.exists(str(export_base)):
            raise ExportError(f"--out {export_base}: exists and is not a directory")
        return []
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(str(export_base)))
    return sorted(int(name) for name in names if name.isdigit())


def next_version(export_base) -> int:
    versions = version_dirs(export_base)
    return versions[-1] + 1 if versions else 1


def _version_path(export_base, version: int) -> str:
    return tf.io.gfile.join(str(export_base), str(version))


def check_version_free(export_base, version: int) -> None:
    if version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    path = _version_path(export_base, version)
    if tf.io.gfile.exists(path):
        raise ExportError(f"{path} already exists; TF Serving versions are immutable, "
                          f"choose another --version or omit it (next free: "
                          f"{next_version(export_base)})")


def export_model(predictor: Predictor, post: PostProcess, export_base,
                 version: int | None = None, warmup_requests: int = 2,
                 metadata: dict | None = None) -> str:
    """Write ``predictor``'s model, its TTA and ``post`` as ``export_base/<version>/``; returns
    that path. ``version`` defaults to the next free integer; an existing version is never
    overwritten."""
    size = predictor.size
    version = next_version(export_base) if version is None else version
    check_version_free(export_base, version)
    final = _version_path(export_base, version)
    staging = staging_folder(final)
    root = tf.Module()
    root.model_variables = list(predictor.model.variables)  # the checkpoint; no Keras objects
    functions = serving_functions(predictor, post)
    for name, function in functions.items():
        setattr(root, name, function)
    try:
        tf.saved_model.save(root, staging, signatures=functions)
        tf.io.gfile.makedirs(tf.io.gfile.join(staging, "assets.extra"))
        write_warmup(tf.io.gfile.join(staging, WARMUP_FILE), size, warmup_requests)
        with tf.io.gfile.GFile(tf.io.gfile.join(staging, METADATA_FILE), "w") as f:
            json.dump({"keras_ptx": keras_ptx.__version__, "version": version, "image_size": size,
                       "tta": predictor.tta, "postprocess": post.to_dict(),
                       "postprocess_rule": post.describe(),
                       "signatures": sorted(functions), **(metadata or {})}, f, indent=2)
        check_version_free(export_base, version)
        publish_folder(staging, final, last="saved_model.pb")
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    return final


def read_metadata(export_dir) -> dict:
    """The ``keras_ptx_export.json`` of an export: run, grid size, post-processing, signatures."""
    with tf.io.gfile.GFile(tf.io.gfile.join(str(export_dir), METADATA_FILE)) as f:
        return json.load(f)


def export_run(run_dir, export_base, version: int | None = None, tta: str | None = None,
               precision: Precision = "float32") -> str:
    """Export the best model of a training run directory; returns the version path.

    The post-processing and the test-time augmentation are those ``bin/predict`` would use:
    RUN_DIR/postprocess.json (else ``eval.threshold``) and ``tta`` (else the rule's, else
    ``eval.tta``). The graph computes in ``precision``, whatever the run trained in and
    whatever this host has: float32 unless mixed_float16 is asked for.
    """
    check_openable(export_base, "--out")
    version = next_version(export_base) if version is None else version
    check_version_free(export_base, version)        # before the model is built
    run = TrainedRun(run_dir, precision)
    post = run.post                                 # a bad rule is refused before the build
    return export_model(run.predictor(run.tta(tta)), post, export_base, version,
                        run.config.export.warmup_requests,
                        metadata={"run_dir": str(run_dir), "postprocess_source": run.post_source,
                                  "precision": precision})
