"""Export a training run as a SavedModel that TF Serving loads as it is.

``EXPORT_BASE/<version>/`` follows TF Serving's model-base-path layout: ``saved_model.pb``,
``variables/``, ``assets.extra/`` (the warm-up records and ``keras_ptx_export.json``, which
records the run, the grid size, the input normalisation and post-processing baked in and the
batching settings) and ``batching_params.pbtxt``, TF Serving's BatchingParameters for this
model (:data:`BATCHING`; the file name TF Serving reads from a version with
``--enable_batching --enable_per_model_batching_parameters``, or name it with
``--batching_parameters_file``).
Tag ``serve``. The version is written under a dot-prefixed temporary name and renamed when
complete, so a server polling the base path never loads half an export (it ignores names that
are not integers).

Everything between the request and the answer is TensorFlow ops (no py_function), so the
model server needs no Python, keras_ptx or segmentation-models. The signatures are described
in :mod:`keras_ptx.serving`. Each image is decoded, converted to gray, put on the model's square
grid by :mod:`keras_ptx.data.geometry`'s rule (:func:`to_square_tf`), then normalised as the
runs were trained and run through the model as :class:`keras_ptx.inference.runner.Predictor`
runs it (:meth:`~keras_ptx.inference.runner.Predictor.run_gray_tf`: same image-level
probability, optional hflip TTA). Each probability map is then mapped to its image's own size and post-processed
there with the run's rule (:func:`keras_ptx.inference.postprocess.image_mask_tf`), exactly as
``bin/predict`` does it, so both give the same mask and the same RLE (:func:`encode_rle_tf`)
for the same probabilities. ``batching_params.pbtxt`` works with any of the signatures: each
output's first dimension is the batch, and the masks of a batch are zero-padded to its largest
image (the ``height`` and ``width`` outputs say what each image owns).
"""
from __future__ import annotations

import json
import shutil
from typing import Callable

import keras_ptx
from keras_ptx.config import Auto, Engine, Precision
from keras_ptx.data import rle
from keras_ptx.errors import UserError
from keras_ptx.fileio import (check_openable, check_output, join, publish_folder, read_json,
                              remove_stale_partials, reported_writes, staging_folder)
from keras_ptx.inference.postprocess import PostProcess, apply_tf, image_mask_tf
from keras_ptx.inference.runner import Predictor
from keras_ptx.inference.ensemble import Ensemble
from keras_ptx.inference.engine import model_identity
from keras_ptx.model.precision import best_inference_precision
from keras_ptx.serving import (BATCHING_FILE, BYTES_INPUT, IMAGE_INPUT, PREDICT_IMAGE,
                               SERVING_COMPACT, SERVING_DEFAULT, WARMUP_FILE)
from keras_ptx.serving.warmup import write_warmup
from keras_ptx.tf_setup import tf

METADATA_FILE = "assets.extra/keras_ptx_export.json"
# TF Serving's batching, for the image_bytes signatures on a CPU server: a request waits at most
# 2 ms for others to share its batch, far below one 1024 px image's time; 2 batches run at
# once and 8 more may queue (beyond that TF Serving answers UNAVAILABLE rather than letting
# latency grow). No allowed_batch_sizes: padding a batch would run whole copies of an image.
# pad_variable_length_inputs pads inputs that differ beyond the batch dimension; ours never do
# (one string per image, or S x S), and outputs need no padding option: they are batch-major
# and the graph pads the masks itself.
BATCHING = {"max_batch_size": 8, "batch_timeout_micros": 2000, "num_batch_threads": 2,
            "max_enqueued_batches": 8, "pad_variable_length_inputs": True}


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


def decode_gray_tf(data):
    """Encoded image bytes (PNG, JPEG, GIF, BMP) -> float32 ``[H, W, 1]`` whole gray levels."""
    rgb = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    return tf.round(tf.image.rgb_to_grayscale(tf.cast(rgb, tf.float32)))


def encode_rle_tf(mask):
    """:func:`keras_ptx.data.rle.encode` in TF ops: uint8 ``[H, W]`` -> scalar string.

    SIIM's relative, column-major runs (``start length ...``), ``-1`` for an empty mask.
    """
    flat = tf.reshape(tf.transpose(mask), [-1]) > 0
    padded = tf.concat([[False], flat, [False]], 0)
    changes = tf.where(padded[1:] != padded[:-1])[:, 0]        # run starts and ends, alternating
    starts, ends = changes[0::2], changes[1::2]
    gaps = starts - tf.concat([tf.zeros([1], tf.int64), ends[:-1]], 0)
    pairs = tf.reshape(tf.stack([gaps, ends - starts], axis=1), [-1])
    text = tf.strings.reduce_join(tf.strings.as_string(pairs), separator=" ")
    return tf.where(tf.size(changes) > 0, text, rle.EMPTY)


def serving_functions(predictor: Predictor, post: PostProcess) -> dict:
    """The signature functions (``tf.function`` with input signatures) around a model."""
    size = predictor.size
    spec = tf.TensorSpec([size, size, 1], tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32)])
    def infer(squares):  # one trace of the network, shared by every signature
        return predictor.run_gray_tf(squares)

    def answer(image_bytes, with_mask: bool) -> dict:
        def load(data):
            gray = decode_gray_tf(data)
            shape = tf.shape(gray)
            return to_square_tf(gray, size), shape[0], shape[1]

        squares, heights, widths = tf.map_fn(
            load, image_bytes, fn_output_signature=(spec, tf.int32, tf.int32))
        prob, image_prob = infer(squares)
        max_h = tf.reduce_max(tf.concat([heights, [0]], 0))
        max_w = tf.reduce_max(tf.concat([widths, [0]], 0))

        def at_own_size(args):
            square_map, cls, height, width = args
            mask = image_mask_tf(post, square_map, cls, height, width)
            outputs = (encode_rle_tf(mask), tf.reduce_any(mask > 0))
            if with_mask:
                padded = tf.image.pad_to_bounding_box(mask[..., None], 0, 0, max_h, max_w)
                outputs += (padded[..., 0],)
            return outputs

        kinds = (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.bool))
        if with_mask:
            kinds += (tf.TensorSpec([None, None], tf.uint8),)
        rles, flags, *masks = tf.map_fn(at_own_size, (prob, image_prob, heights, widths),
                                        fn_output_signature=kinds)
        outputs = {"rle": rles, "height": heights, "width": widths,
                   "pneumothorax_probability": image_prob, "has_pneumothorax": flags}
        if with_mask:
            outputs.update(probabilities=prob, mask=masks[0])
        return outputs

    bytes_spec = tf.TensorSpec([None], tf.string, name=BYTES_INPUT)

    @tf.function(input_signature=[bytes_spec])
    def serve(image_bytes):
        return answer(image_bytes, with_mask=True)

    @tf.function(input_signature=[bytes_spec])
    def serve_compact(image_bytes):
        return answer(image_bytes, with_mask=False)

    @tf.function(input_signature=[
        tf.TensorSpec([None, size, size, 1], tf.float32, name=IMAGE_INPUT)])
    def predict_image(images):
        prob, image_prob = infer(images)
        mask = apply_tf(post, prob[..., None], image_prob, side=size)[..., 0]
        return {"probabilities": prob, "mask": mask, "pneumothorax_probability": image_prob,
                "has_pneumothorax": tf.reduce_any(mask > 0, axis=[1, 2])}

    return {SERVING_DEFAULT: serve, SERVING_COMPACT: serve_compact, PREDICT_IMAGE: predict_image}


def batching_parameters() -> str:
    """:data:`BATCHING` as TF Serving's BatchingParameters text proto (integers are wrapped
    ``google.protobuf.Int64Value`` fields there, the flag a plain bool)."""
    return "".join(f"{name}: {str(value).lower()}\n" if isinstance(value, bool)
                   else f"{name} {{ value: {value} }}\n" for name, value in BATCHING.items())


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
    return join(str(export_base), str(version))


def check_version_free(export_base, version: int) -> None:
    if version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    path = _version_path(export_base, version)
    if tf.io.gfile.exists(path):
        raise ExportError(f"{path} already exists; a served version is never replaced (TF "
                          f"Serving and OpenVINO Model Server take versions as immutable): "
                          f"choose another --version or omit it (next free: "
                          f"{next_version(export_base)})")


def write_version(export_base, version: int | None, write: Callable[[str, int], None],
                  last: str) -> str:
    """``export_base/<version>/`` (``version`` defaults to the next free integer) as
    ``write(folder, version)`` fills a staging folder, published whole, the file ``last`` last
    (:func:`~keras_ptx.fileio.publish_folder`); returns its path. What killed exports left is
    removed first, an existing version is never overwritten, and a failure to write is one line
    naming the file or --out."""
    with reported_writes("--out", export_base):
        version = next_version(export_base) if version is None else version
        check_version_free(export_base, version)
        final = _version_path(export_base, version)
        remove_stale_partials(str(export_base))
        staging = staging_folder(final)
        try:
            write(staging, version)
            check_version_free(export_base, version)
            publish_folder(staging, final, last=last)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def exported_runs(run_dir, export_base, version: int | None, checkpoints: int,
                  precision: Precision) -> Ensemble:
    """The runs ``--model`` names for an export to ``export_base``, built in ``precision``,
    with every refusal made before a network is built: an --out this TensorFlow cannot open,
    one that is or holds a run, a taken ``version``, a bad rule."""
    check_openable(export_base, "--out")           # before any --model is read
    run = Ensemble(run_dir, checkpoints, precision)
    check_output(export_base, "--out", {"--model": run.folders()})
    if version is not None:
        check_version_free(export_base, version)
    run.post                                        # read now: a bad rule is refused here
    return run


def post_metadata(post: PostProcess) -> dict:
    """What an export's metadata says of its post-processing rule."""
    return {"postprocess": post.to_dict(), "postprocess_rule": post.describe()}


def run_metadata(run: Ensemble, tta: str, engine: Engine, precision: Precision) -> dict:
    """What an export's metadata says of the runs it holds: their paths and weights, the rule
    and where it came from, the precision and the model's identity under ``engine``."""
    return {"run_dir": run.paths[0] if len(run.paths) == 1 else run.paths,
            "members": run.members(), **post_metadata(run.post),
            "postprocess_source": run.post_source, "precision": precision,
            "model_identity": model_identity(run, tta, engine, precision).model}


def export_model(predictor: Predictor, post: PostProcess, export_base,
                 version: int | None = None, warmup_requests: int = 2,
                 metadata: dict | None = None) -> str:
    """Write ``predictor``'s model, its TTA and ``post`` as ``export_base/<version>/``
    (:func:`write_version`); returns that path."""
    size = predictor.size
    root = tf.Module()
    root.model_variables = predictor.variables      # the checkpoint; no Keras objects
    functions = serving_functions(predictor, post)
    for name, function in functions.items():
        setattr(root, name, function)

    def write(staging: str, version: int) -> None:
        tf.saved_model.save(root, staging, signatures=functions)
        tf.io.gfile.makedirs(join(staging, "assets.extra"))
        write_warmup(join(staging, WARMUP_FILE), size, warmup_requests)
        with tf.io.gfile.GFile(join(staging, BATCHING_FILE), "w") as f:
            f.write(batching_parameters())
        with tf.io.gfile.GFile(join(staging, METADATA_FILE), "w") as f:
            json.dump({"keras_ptx": keras_ptx.__version__, "version": version, "image_size": size,
                       "tta": predictor.tta, "normalization": predictor.normalization,
                       **post_metadata(post), "signatures": sorted(functions),
                       "batching": {"file": BATCHING_FILE, **BATCHING},
                       **(metadata or {})}, f, indent=2)

    return write_version(export_base, version, write, last="saved_model.pb")


def read_metadata(export_dir) -> dict:
    """The ``keras_ptx_export.json`` of an export: run, grid size, input normalisation (in the
    graph), post-processing, signatures, the model's identity."""
    metadata = read_json(join(str(export_dir), METADATA_FILE))
    if metadata is None:
        raise ExportError(f"{export_dir}: no {METADATA_FILE} (not an export of bin/export)")
    return metadata


def export_run(run_dir, export_base, version: int | None = None, tta: str | None = None,
               precision: Precision | Auto = "float32", checkpoints: int = 1) -> str:
    """Export the best model of a training run directory (or the ensemble of several runs or
    fold folders, each with its ``checkpoints`` best epochs, in one graph:
    :class:`~keras_ptx.inference.ensemble.Ensemble`); returns the version path.

    The post-processing and the test-time augmentation are those ``bin/predict`` would use:
    RUN_DIR/postprocess.json (else ``eval.threshold``) and ``tta`` (else the rule's, else
    ``eval.tta``). The graph computes in ``precision``, whatever the run trained in and
    whatever this host has: float32 unless another policy is asked for; ``auto`` is this
    host's best (:func:`~keras_ptx.model.precision.best_inference_precision`), for a server
    like it.
    """
    if precision == "auto":
        precision = best_inference_precision()
    run = exported_runs(run_dir, export_base, version, checkpoints, precision)
    predictor = run.predictor(run.tta(tta))        # refuses a run without its weights
    return export_model(predictor, run.post, export_base, version,
                        run.config.export.warmup_requests,
                        metadata=run_metadata(run, predictor.tta, "tf", precision))
