"""The encoders: one registry entry each, tapped by layer name at strides 2 to 32.

:data:`REGISTRY` maps each ``model.encoder`` name to an :class:`EncoderSpec`: its builder (input
shape -> backbone with random weights), the layers whose outputs are its features at
:data:`STRIDES`, where its ImageNet weights come from (:class:`WeightsSource`), and the input
normalisation those weights expect (a name of :mod:`keras_ptx.input.normalize`; a run records
its own as ``model.normalization``, which must agree). The anchors are segmentation-models'
``Backbones`` table (builders and feature layers by name) and TF Model Garden's
``register_backbone_builder``. Code outside this table names no encoder family.

Families: EfficientNet B0..B7 from segmentation-models (the efficientnet package; ImageNet
mean/std input) and EfficientNetV2 B0..B3 and S from ``tf.keras.applications`` (0..255 input:
their preprocessing is inside the network). ``build_encoder(name, image_size, weights,
any_size)`` returns the backbone and its features. Weights: ``"imagenet"`` (the entry's file,
downloaded once into ~/.keras/models), ``"none"`` (random initialisation) or the path of a
local .h5 file holding the encoder's weights (such as that same file, fetched elsewhere).
"""
from __future__ import annotations

import contextlib
import functools
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from keras_ptx.config import (ConfigError, DeepestFeature, ModelConfig, Normalization,
                              SkipFeatures, check_image_size, choices, weights_file)
from keras_ptx.errors import UserError
from keras_ptx.tf_setup import tf

with contextlib.redirect_stdout(io.StringIO()):     # it announces its framework on stdout
    import segmentation_models as sm
import efficientnet.model as efficientnet_model

STRIDES = (2, 4, 8, 16, 32)
# The stride-32 feature (model.deepest_feature): ``top``, the tap's (the top's 1x1 convolution
# to 1280 channels at B0, as segmentation-models taps it), or ``block``, what that convolution
# takes (the last block's output, 320 channels at B0, as segmentation_models_pytorch taps it).
DEEPEST_FEATURES = choices(DeepestFeature)
TOP_CONV = "top_conv"               # the top's 1x1 convolution, so named in both families
BLOCK_FEATURES = "block_features"   # the identity layer naming the last block's output
# The features at strides 2 to 16 (model.skip_features): ``expand``, the entry's taps (the
# expansion activations ahead of each downsampling block, as segmentation-models taps them),
# or ``block``, the last block's output at each stride (as timm's features_only, which
# segmentation_models_pytorch's encoders use, takes them): :func:`block_ends`.
SKIP_FEATURES = choices(SkipFeatures)
BLOCK_LAYER = re.compile(r"(block\d+[a-z]+)_")   # a block's layers, e.g. block2b_add


class WeightsError(UserError):
    """Encoder weights that cannot be found, downloaded or loaded."""


@dataclass(frozen=True)
class WeightsSource:
    """An encoder's ImageNet weights without the classifier: file name, URL and hash (sha256,
    or md5 when 32 hex digits, as ``tf.keras.utils.get_file`` takes it)."""
    file_name: str
    url: str
    file_hash: str


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    builder: Callable[[tuple], tf.keras.Model]     # input shape -> backbone, random weights
    taps: tuple[str, ...]                           # layer names at STRIDES, shallowest first
    weights: WeightsSource
    normalization: Normalization                    # the input its ImageNet weights expect


@dataclass(frozen=True)
class Encoder:
    name: str
    model: tf.keras.Model                   # the backbone; its layers are shared with the network
    features: tuple                         # tensors at STRIDES, shallowest first


def _sm_backbone(name: str, input_shape: tuple) -> tf.keras.Model:
    return sm.Backbones.get_backbone(
        name, input_shape=input_shape, weights=None, include_top=False,
        backend=tf.keras.backend, layers=tf.keras.layers, models=tf.keras.models,
        utils=tf.keras.utils)


def _efficientnet(i: int) -> EncoderSpec:
    """segmentation-models' EfficientNet-B``i``: its feature layers (the same for B0..B7) and
    the efficientnet package's weights."""
    name, package_name = f"efficientnetb{i}", f"efficientnet-b{i}"
    file_name = f"{package_name}_weights_tf_dim_ordering_tf_kernels_autoaugment_notop.h5"
    return EncoderSpec(
        name, functools.partial(_sm_backbone, name),
        ("block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
         "block6a_expand_activation", "top_activation"),
        WeightsSource(file_name, efficientnet_model.BASE_WEIGHTS_PATH + file_name,
                      efficientnet_model.WEIGHTS_HASHES[package_name][1]),
        "imagenet")


def _keras_application(application: str, input_shape: tuple) -> tf.keras.Model:
    return getattr(tf.keras.applications, application)(
        include_top=False, weights=None, input_shape=input_shape, include_preprocessing=True)


KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"


def _efficientnet_v2(variant: str, application: str, stride_2: str, stride_4: str,
                     md5: str) -> EncoderSpec:
    """``tf.keras.applications``' EfficientNetV2-``variant``: the last layer at strides 2 and
    4 (the end of the first two stages, whose depth varies), then the expansion ahead of the
    next downsampling at 8 and 16, and the top at 32; the notop file tf-keras downloads."""
    file_name = f"efficientnetv2-{variant}_notop.h5"
    return EncoderSpec(
        f"efficientnetv2{variant}", functools.partial(_keras_application, application),
        (stride_2, stride_4, "block4a_expand_activation", "block6a_expand_activation",
         "top_activation"),
        WeightsSource(file_name, KERAS_APPLICATIONS + "efficientnet_v2/" + file_name, md5),
        "pixels")


REGISTRY: dict[str, EncoderSpec] = {spec.name: spec for spec in (
    *(_efficientnet(i) for i in range(8)),
    _efficientnet_v2("b0", "EfficientNetV2B0", "block1a_project_activation", "block2b_add",
                     "893217f2bb855e2983157299931e43ff"),
    _efficientnet_v2("b1", "EfficientNetV2B1", "block1b_add", "block2c_add",
                     "0e80663031ca32d657f9caa404b6ec37"),
    _efficientnet_v2("b2", "EfficientNetV2B2", "block1b_add", "block2c_add",
                     "1dfe2e7a5d45b6632553a8961ea609eb"),
    _efficientnet_v2("b3", "EfficientNetV2B3", "block1b_add", "block2c_add",
                     "f6abf7b5849ac99a89b50dd3fd532856"),
    _efficientnet_v2("s", "EfficientNetV2S", "block1b_add", "block2d_add",
                     "af0682fb74e8c54910f2d4393339c070"),
)}
ENCODERS = tuple(REGISTRY)


def encoder_spec(name: str) -> EncoderSpec:
    """The registry entry of ``name`` (ConfigError for a name it lacks)."""
    if name not in REGISTRY:
        raise ConfigError(f"model.encoder: {name!r} is not in the encoder registry; known: "
                          f"{', '.join(REGISTRY)}")
    return REGISTRY[name]


def check_normalization(model: ModelConfig) -> None:
    """ConfigError unless ``model.normalization`` is the input its encoder expects."""
    expected = encoder_spec(model.encoder).normalization
    if model.normalization != expected:
        raise ConfigError(f"model.normalization: {model.encoder} takes {expected!r} input, "
                          f"got {model.normalization!r}; set model.normalization: {expected}")


def block_ends(layers) -> dict[int, str]:
    """stride -> the name of the last layer of the last block (layers named ``block<n><x>_*``
    in both families) whose output is at that stride, from ``layers`` in topological order (a
    backbone's or a network's): each convolution with strides 2 doubles the stride, and a
    downsampling block's output is at the stride after it."""
    blocks: dict[str, tuple[int, str]] = {}         # block -> (its output's stride, last layer)
    stride = 1
    for layer in layers:
        if tuple(getattr(layer, "strides", ())) == (2, 2):
            stride *= 2
        block = BLOCK_LAYER.match(layer.name)
        if block:
            blocks[block.group(1)] = (stride, layer.name)
    return {stride: name for stride, name in blocks.values()}


def feature_layer_names(model: tf.keras.Model, name: str, deepest: DeepestFeature = "top",
                        skips: SkipFeatures = "expand") -> tuple[str, ...]:
    """Names of the layers of ``model`` (the backbone of encoder ``name``, or a network on it)
    whose outputs are the features at STRIDES (shallowest first), the ones at strides 2 to 16
    being ``skips``' (:data:`SKIP_FEATURES`) and the stride-32 one ``deepest``'s
    (:data:`DEEPEST_FEATURES`)."""
    taps = encoder_spec(name).taps
    if skips == "block":
        ends = block_ends(model.layers)
        shallow = tuple(ends[stride] for stride in STRIDES[:-1])
    else:
        shallow = taps[:-1]
    return shallow + ((taps[-1],) if deepest == "top" else (BLOCK_FEATURES,))


def encoder_layers(model: tf.keras.Model, name: str) -> list:
    """The layers with weights of ``model`` (a network of
    :func:`~keras_ptx.model.unetpp.build_model` on encoder ``name``) that belong to its
    encoder: those between its input and the encoder features it uses (a pruned network uses
    the shallower ones only; one whose deepest feature is the block has no top)."""
    present = {layer.name for layer in model.layers}
    candidates = {*encoder_spec(name).taps, *block_ends(model.layers).values(), BLOCK_FEATURES}
    taps = [model.get_layer(layer).output for layer in sorted(candidates & present)]
    return [layer for layer in tf.keras.Model(model.inputs, taps).layers if layer.weights]


def resolve_weights(name: str, weights: str) -> str | None:
    """The local weights file for ``weights`` (downloading ImageNet weights once), or None."""
    file = weights_file(weights)
    source = encoder_spec(name).weights
    if file is None and weights != "imagenet":
        return None
    if weights == "imagenet":
        try:
            return tf.keras.utils.get_file(source.file_name, source.url, cache_subdir="models",
                                           file_hash=source.file_hash)
        except Exception as exc:  # get_file raises a bare Exception for network failures
            raise WeightsError(
                f"could not download the ImageNet weights of {name} ({exc}). Without network "
                f"access, fetch {source.url} on another machine, then either copy it to "
                f"~/.keras/models/{source.file_name} or set model.weights: "
                f"/path/to/{source.file_name} (or use model.weights: none to start from random "
                f"weights)") from None
    path = Path(file)
    if not path.is_file():
        raise WeightsError(
            f"model.weights: {weights!r} is not a file; use imagenet, none, or the path of an "
            f".h5 file with {name}'s weights (the official one is {source.url})")
    return str(path)


def build_encoder(name: str, image_size: int, weights: str = "none",
                  any_size: bool = False, deepest: DeepestFeature = "top",
                  skips: SkipFeatures = "expand") -> Encoder:
    """Build ``name`` for square ``image_size`` inputs (a multiple of 32), or with
    ``any_size`` for inputs of any multiple-of-32 height and width, and load its weights;
    its features at strides 2 to 16 are ``skips``' (:data:`SKIP_FEATURES`), its stride-32
    one ``deepest``'s (:data:`DEEPEST_FEATURES`)."""
    check_image_size(image_size)
    for key, value, known in (("deepest_feature", deepest, DEEPEST_FEATURES),
                              ("skip_features", skips, SKIP_FEATURES)):
        if value not in known:
            raise ConfigError(f"model.{key}: expected one of {', '.join(known)}, got {value!r}")
    spec = encoder_spec(name)
    weights_file = resolve_weights(name, weights)
    backbone = spec.builder((None, None, 3) if any_size else (image_size, image_size, 3))
    if weights_file is not None:
        try:
            backbone.load_weights(weights_file)
        except (ValueError, OSError) as exc:
            raise WeightsError(f"model.weights: {weights_file} does not hold {name}'s encoder "
                               f"weights: {exc}") from None
    names = feature_layer_names(backbone, name, "top", skips)
    features = tuple(backbone.get_layer(layer).output for layer in names)
    if deepest == "block":
        block = tf.keras.layers.Activation("linear", name=BLOCK_FEATURES)(
            backbone.get_layer(TOP_CONV).input)
        features = features[:-1] + (block,)
    return Encoder(name=name, model=backbone, features=features)


def load_network(build: Callable[[], tf.keras.Model], path: str, config_file: str,
                 shown: str | None = None) -> tf.keras.Model:
    """The network ``build`` makes (from ``config_file``) with the weights of the local
    ``.weights.h5`` file ``path`` (``save_weights``' layout: a group per layer, named after its
    class). WeightsError naming the file (``shown``: a URL it was copied from) when h5py
    cannot read it (checked before the build), or naming the first layer whose weights differ
    when it holds another network."""
    import h5py

    shown = shown or path
    try:
        with h5py.File(path, "r") as f:
            saved = _saved_shapes(f)
    except (OSError, KeyError, ValueError) as exc:
        raise WeightsError(f"{shown}: not a readable weights file ({_h5_reason(exc)})") from None
    model = build()
    expected = _layer_shapes(model)
    for key in [*expected, *(key for key in saved if key not in expected)]:
        name, shapes = expected.get(key, (key, None))
        if saved.get(key) != shapes:
            raise WeightsError(
                f"{shown} does not fit the network of {config_file}: layer {name} has weights "
                f"{_shapes(shapes)} there, {_shapes(saved.get(key))} in the file")
    try:
        model.load_weights(path)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{shown}: its weights do not load ({_h5_reason(exc)})") from None
    return model


def _layer_shapes(model) -> dict:
    """The file's group of each layer with weights -> (layer name, weight shapes), as
    ``save_weights`` names them: the class in snake case, numbered from its second layer."""
    from tf_keras.src.utils.generic_utils import to_snake_case

    seen: dict[str, int] = {}
    shapes = {}
    for layer in model.layers:
        kind = to_snake_case(type(layer).__name__)
        seen[kind] = seen.get(kind, -1) + 1
        key = f"{kind}_{seen[kind]}" if seen[kind] else kind
        weights = layer.trainable_weights + layer.non_trainable_weights
        if weights:
            shapes[key] = (layer.name, [tuple(w.shape) for w in weights])
    return shapes


def _saved_shapes(f) -> dict:
    """The weights file's group of each layer with weights -> its weight shapes, in order."""
    saved = {}
    for key, group in f["layers"].items():
        variables = group.get("vars")
        if variables is not None and len(variables):
            saved[key] = [tuple(variables[str(i)].shape) for i in range(len(variables))]
    return saved


def _shapes(shapes) -> str:
    return "none" if shapes is None else " ".join("x".join(map(str, s)) or "scalar" for s in shapes)


def _h5_reason(exc: Exception) -> str:
    """The gist of an h5py error: 'Unable to ... (truncated file: eof = 8, ...)' -> 'truncated
    file'."""
    text = str(exc).strip("'\"")
    inner = text[text.find("(") + 1:].split(":")[0].split(")")[0] if "(" in text else text
    return inner.strip()[:120] or type(exc).__name__
