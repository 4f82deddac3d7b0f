"""UNet++ (Zhou et al., 2018) on a registered encoder, with deep supervision and an image head.

Grid: X(i, 0) is the encoder feature at stride 2**(i+1) (i = 0..4), projected by a 1x1
conv-BN-ReLU to its level's width so that every node of a level has the same width, as in the
paper (the raw EfficientNet taps are 2-5x wider: B0 at 256 would cost ~25 GFLOPs, not 17). Each
decoder node X(i, j), j >= 1, concatenates X(i, 0..j-1) with the bilinearly upsampled
X(i+1, j-1) and applies conv-BN-ReLU twice. ``decoder_filters`` gives the widths of the levels
at strides 16, 8, 4, 2 and of the full-resolution head, as segmentation_models_pytorch's
UnetPlusPlus does (its default 256, 128, 64, 32, 16); the stride-32 projection takes the first.
The stride-32 feature is ``model.deepest_feature``'s
(:data:`keras_ptx.model.encoders.DEEPEST_FEATURES`): EfficientNet's ``top`` (1280 channels at
B0, as segmentation-models taps it; the default, and what every run before the option was
trained with) or its last ``block`` (320 at B0, as segmentation_models_pytorch taps it: the
top's 1x1 convolution, its batch norm and activation are then not built).

``model.skip_features: block`` takes each stride's last block output instead of the expand
activations (:data:`keras_ptx.model.encoders.SKIP_FEATURES`), and ``model.inner_widths:
encoder`` gives the nodes inside the last diagonal (X(i, j), i + j < 4) the width of their
level's encoder feature, which X(i, 0) then is without a projection, as
segmentation_models_pytorch's UnetPlusPlus builds them (B0 at 256 with all three: 8.1 GFLOPs
instead of 17.1).

Heads: X(0, j) -> bilinear x2 -> conv-BN-ReLU twice -> 3x3 conv -> sigmoid, each with its own
weights (layers ``head{j}_*``). ``mask`` comes from X(0, prune_level); with deep supervision
``mask_1`` ... ``mask_{prune_level-1}`` come from the shallower columns; ``label`` is a sigmoid
on the globally pooled stride-32 encoder features. Only the nodes that an output needs are
built, so a pruned network is also a smaller one; the full network's weights load into it by
layer name (``load_weights(h5_path, by_name=True)``). Upsampling is bilinear because XLA has no
gradient kernel for nearest-neighbour resizing. Final layers compute in float32 under
mixed_float16.
"""
from __future__ import annotations

import dataclasses

from keras_ptx.config import DECODER_DEPTH, Config, ModelConfig
from keras_ptx.model.encoders import build_encoder, check_normalization
from keras_ptx.model.precision import dtype_policy, resolve_mixed_precision
from keras_ptx.tf_setup import tf

layers = tf.keras.layers


def output_names(model: ModelConfig) -> list[str]:
    """The network's outputs in order: mask, then deep-supervision masks, then label."""
    names = ["mask"]
    if model.deep_supervision:
        names += [f"mask_{j}" for j in range(1, model.prune_level)]
    if model.classification_head:
        names.append("label")
    return names


def named_outputs(model: tf.keras.Model, outputs) -> dict:
    """A call's outputs (one tensor, a list or a dict) as ``{output name: tensor}``."""
    if isinstance(outputs, dict):
        return outputs
    if isinstance(outputs, (list, tuple)):
        return dict(zip(model.output_names, outputs))
    return {model.output_names[0]: outputs}


def build_model(config: Config, any_size: bool = False) -> tf.keras.Model:
    """The segmentation network of ``config`` (input: float32 [B, S, S, 3] normalised as
    ``model.normalization`` says, :func:`keras_ptx.input.normalize.to_model_input`; S =
    ``data.image_size``; with ``any_size``, any multiple-of-32 height and width, e.g. training
    crops and whole validation images through one model), tapping the encoder's
    ``model.deepest_feature`` at stride 32. ConfigError when ``model.normalization`` is not the
    encoder's."""
    model = config.model
    check_normalization(model)
    with dtype_policy(resolve_mixed_precision(config.train.mixed_precision)):
        encoder = build_encoder(model.encoder, config.data.image_size, model.weights, any_size,
                                model.deepest_feature, model.skip_features)
        columns = model.prune_level
        widths = tuple(reversed(model.decoder_filters[:DECODER_DEPTH])) + (model.decoder_filters[0],)
        raw = model.inner_widths == "encoder"
        nodes = {}
        for i in range(columns + 1):
            nodes[i, 0] = encoder.features[i] if raw else \
                _conv_bn_relu(encoder.features[i], widths[i], 1, f"x{i}0_proj")
        for j in range(1, columns + 1):
            for i in range(columns + 1 - j):
                # inner_widths: encoder widens only the nodes inside the full network's last
                # diagonal (i + j < 4), also in a pruned network, so weights load by name
                width = widths[i] if not raw or i + j == DECODER_DEPTH else \
                    encoder.features[i].shape[-1]
                up = layers.UpSampling2D(2, interpolation="bilinear", name=f"x{i}{j}_up")(
                    nodes[i + 1, j - 1])
                x = layers.Concatenate(name=f"x{i}{j}_concat")(
                    [nodes[i, k] for k in range(j)] + [up])
                x = _conv_bn_relu(x, width, 3, f"x{i}{j}_conv1")
                nodes[i, j] = _conv_bn_relu(x, width, 3, f"x{i}{j}_conv2")

        outputs = [_mask_head(nodes[0, columns], columns, model.decoder_filters[-1], "mask")]
        if model.deep_supervision:
            outputs += [_mask_head(nodes[0, j], j, model.decoder_filters[-1], f"mask_{j}")
                        for j in range(1, columns)]
        if model.classification_head:
            outputs.append(_label_head(encoder.features[-1], model.dropout))
        return tf.keras.Model(encoder.model.input, outputs if len(outputs) > 1 else outputs[0],
                              name=f"unetpp_{model.encoder}")


def build_model_to_load(config: Config) -> tf.keras.Model:
    """The network of ``config`` with random weights, to load a saved run's weights into
    (no ImageNet download or weights file needed)."""
    return build_model(dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                             weights="none")))


def _conv_bn_relu(x, filters, kernel, name):
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=name)(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _mask_head(x, column, filters, name):
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"head{column}_up")(x)
    x = _conv_bn_relu(x, filters, 3, f"head{column}_conv1")
    x = _conv_bn_relu(x, filters, 3, f"head{column}_conv2")
    x = layers.Conv2D(1, 3, padding="same", dtype="float32", name=f"head{column}_logits")(x)
    return layers.Activation("sigmoid", dtype="float32", name=name)(x)


def _label_head(features, dropout):
    x = layers.GlobalAveragePooling2D(name="label_pool")(features)
    if dropout > 0:
        x = layers.Dropout(dropout, name="label_dropout")(x)
    x = layers.Dense(1, dtype="float32", name="label_logits")(x)
    return layers.Activation("sigmoid", dtype="float32", name="label")(x)
