"""EfficientNet encoders from segmentation-models' backbone registry, tapped by layer name.

``build_encoder(name, image_size, weights, any_size)`` returns the backbone and its features at
strides 2, 4, 8, 16 and 32. Weights: ``"imagenet"`` (the efficientnet package's own file, downloaded
once into ~/.keras/models), ``"none"`` (random initialisation) or the path of a local .h5 file
holding the encoder's weights (such as that same official file, fetched elsewhere).
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

from keras_ptx.config import EncoderName, check_image_size, choices
from keras_ptx.errors import UserError
from keras_ptx.tf_setup import tf

with contextlib.redirect_stdout(io.StringIO()):     # it announces its framework on stdout
    import segmentation_models as sm
import efficientnet.model as efficientnet_model

ENCODERS = choices(EncoderName)
STRIDES = (2, 4, 8, 16, 32)
DEEPEST_LAYER = "top_activation"    # the efficientnet package's last layer without the top


class WeightsError(UserError):
    """Encoder weights that cannot be found, downloaded or loaded."""


@dataclass(frozen=True)
class Encoder:
    name: str
    model: tf.keras.Model                   # the backbone; its layers are shared with the network
    features: tuple                         # tensors at STRIDES, shallowest first


def feature_layer_names(name: str) -> tuple[str, ...]:
    """Names of the layers whose outputs are the features at STRIDES (shallowest first)."""
    return tuple(reversed(sm.Backbones.get_feature_layers(name, n=4))) + (DEEPEST_LAYER,)


def encoder_layers(model: tf.keras.Model, name: str) -> list:
    """The layers with weights of ``model`` (a network of
    :func:`~keras_ptx.model.unetpp.build_model` on encoder ``name``) that belong to its
    encoder: those between its input and the encoder features it uses (a pruned network uses
    the shallower ones only)."""
    present = {layer.name for layer in model.layers}
    taps = [model.get_layer(layer).output for layer in feature_layer_names(name)
            if layer in present]
    return [layer for layer in tf.keras.Model(model.inputs, taps).layers if layer.weights]


def imagenet_weights_source(name: str) -> tuple[str, str, str]:
    """(file name, URL, sha256) of the efficientnet package's ImageNet weights without the top."""
    model_name = "efficientnet-b" + name[-1]
    file_name = f"{model_name}_weights_tf_dim_ordering_tf_kernels_autoaugment_notop.h5"
    return (file_name, efficientnet_model.BASE_WEIGHTS_PATH + file_name,
            efficientnet_model.WEIGHTS_HASHES[model_name][1])


def resolve_weights(name: str, weights: str) -> str | None:
    """The local weights file for ``weights`` (downloading ImageNet weights once), or None."""
    if weights is None or str(weights).lower() == "none":
        return None
    file_name, url, file_hash = imagenet_weights_source(name)
    if weights == "imagenet":
        try:
            return tf.keras.utils.get_file(file_name, url, cache_subdir="models",
                                           file_hash=file_hash)
        except Exception as exc:  # get_file raises a bare Exception for network failures
            raise WeightsError(
                f"could not download the ImageNet weights of {name} ({exc}). Without network "
                f"access, fetch {url} on another machine, then either copy it to "
                f"~/.keras/models/{file_name} or set model.weights: /path/to/{file_name} "
                f"(or use model.weights: none to start from random weights)") from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"model.weights: {weights!r} is not a file; use imagenet, none, or the path of an "
            f".h5 file with {name}'s weights (the official one is {url})")
    return str(path)


def build_encoder(name: str, image_size: int, weights: str = "none",
                  any_size: bool = False) -> Encoder:
    """Build ``name`` for square ``image_size`` inputs (a multiple of 32), or with
    ``any_size`` for inputs of any multiple-of-32 height and width, and load its weights."""
    check_image_size(image_size)
    weights_file = resolve_weights(name, weights)
    backbone = sm.Backbones.get_backbone(
        name, input_shape=(None, None, 3) if any_size else (image_size, image_size, 3),
        weights=None, include_top=False,
        backend=tf.keras.backend, layers=tf.keras.layers, models=tf.keras.models,
        utils=tf.keras.utils)
    if weights_file is not None:
        try:
            backbone.load_weights(weights_file)
        except (ValueError, OSError) as exc:
            raise WeightsError(f"model.weights: {weights_file} does not hold {name}'s encoder "
                               f"weights: {exc}") from None
    features = tuple(backbone.get_layer(layer).output for layer in feature_layer_names(name))
    return Encoder(name=name, model=backbone, features=features)
