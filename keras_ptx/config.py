"""Typed run configuration: YAML files under configs/ loaded into dataclasses that check themselves.

``load_config(path, overrides=("train.batch_size=12",))`` returns a validated :class:`Config`.
Unknown keys, wrong types and values outside a setting's choices raise :class:`ConfigError`
naming the key's dotted path (with a "did you mean" hint for typos); then each section's
``validate()`` checks its values (ranges, sizes, settings that exclude each other), as every
command that loads a config (train, evaluate, predict, export, demo) does through this module.
Choices are ``Literal`` types (:data:`Tta`, :data:`EncoderName`, ...): the coercion accepts only
their values, and command-line options take theirs from :func:`choices`.

Whatever a file or an override holds, loading it ends in a Config or a one-line ConfigError:
files are UTF-8 text of at most :data:`MAX_CONFIG_BYTES`, read with PyYAML's safe loader
(:class:`ConfigLoader`: no tags that run code, no duplicate keys, and a document that
aliases cannot expand past :data:`MAX_VALUES` values or nest deeper than :data:`MAX_DEPTH`);
numbers are finite and every integer setting has an upper bound (the ``MAX_*`` constants), so
nothing reaches TensorFlow that it cannot hold.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import reprlib
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import yaml

from keras_ptx.errors import UserError
from keras_ptx.fileio import exists, is_url, read_bytes, utf8_text, write_atomic


class ConfigError(UserError):
    """A configuration file or override that does not fit the schema."""


SIZE_MULTIPLE = 32      # the encoders halve an image five times
DECODER_DEPTH = 4       # UNet++ decoder columns; X(0, 4) is the full network's mask node

# What a config may hold: far beyond any real one, far below what eats a machine.
MAX_CONFIG_BYTES = 1 << 20      # a config file (the repository's are under 2 KB)
MAX_VALUES = 10_000             # values of a YAML document, aliases expanded (a config: ~100)
MAX_DEPTH = 16                  # nesting of a YAML document (a config: 4)
MAX_TEXT = 4096                 # characters of a string setting (a path: Linux's PATH_MAX)
# Upper bounds of the integer settings (TensorFlow holds int64; these are what makes sense).
MAX_IMAGE_SIZE = 4096           # a record's side; SIIM's radiographs are 1024
MAX_BATCH = 4096                # a global batch (the data caps it further: training.datasets)
MAX_EPOCHS = 100_000            # also bounds the epoch counts (patience, averaging, freezing)
MAX_STEPS = 10_000_000          # steps of an epoch or a validation; epochs x steps fit int64
MAX_WORKERS = 256               # augmentation calls at once (processes or threads)
MAX_BATCHES_PER_CALL = 64
MAX_FILTERS = 4096              # a decoder column's width
MAX_GRID_STEPS = 100            # GridDistortion's cells per side
MAX_TENSORBOARD_IMAGES = 64     # validation overlays logged per epoch
MAX_THRESHOLDS = 100            # pixel thresholds train.metric_threshold scores at
MAX_WARMUP_REQUESTS = 1000
MAX_SEED = 2 ** 32 - 1          # NumPy's seeds are 32-bit

Auto = Literal["auto"]
Tta = Literal["none", "hflip"]                      # test-time augmentation
# model.encoders.REGISTRY's names (config cannot import the model layer; a test keeps them equal)
EncoderName = Literal[tuple(f"efficientnetb{i}" for i in range(8)) +
                      tuple(f"efficientnetv2{v}" for v in ("b0", "b1", "b2", "b3", "s"))]
# the encoder input (keras_ptx.input.normalize): imagenet = RGB in [0, 1] minus ImageNet's mean,
# over its std; pixels = RGB 0..255 (the encoder normalises inside)
Normalization = Literal["imagenet", "pixels"]
# the encoder's stride-32 feature (model.encoders): top = EfficientNet's 1x1 top convolution
# (1280 channels at B0), block = the last block's output it takes (320 at B0)
DeepestFeature = Literal["top", "block"]
# the features at strides 2..16 the decoder's skips take (model.encoders): expand = the expansion
# activation ahead of each downsampling block (96-672 channels at B0, as segmentation-models
# taps), block = the last block's output at each stride (16-112 at B0, as smp's timm encoders)
SkipFeatures = Literal["expand", "block"]
# the width of the UNet++ nodes off its last diagonal (model.unetpp): level = the decoder width
# of their level (decoder_filters), encoder = the encoder feature's width at their level, taken
# as it is without a projection (as segmentation_models_pytorch's UnetPlusPlus)
InnerWidths = Literal["level", "encoder"]
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["cosine", "plateau", "constant"]
Monitor = Literal["score", "loss"]
Strategy = Literal["auto", "default", "mirrored", "multi_worker"]
Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]  # Keras dtype policies
Engine = Literal["tf", "openvino"]      # what runs the network in predict, evaluate, the node


def choices(literal) -> tuple[str, ...]:
    """The values of a ``Literal`` type, e.g. ``choices(Tta) == ("none", "hflip")``."""
    return typing.get_args(literal)


def check_image_size(size: int, name: str = "data.image_size") -> None:
    """ConfigError unless ``size`` is a positive multiple of :data:`SIZE_MULTIPLE` up to
    :data:`MAX_IMAGE_SIZE`."""
    if size > MAX_IMAGE_SIZE:
        raise ConfigError(f"{name}: {_shown(size)} is above the largest size, {MAX_IMAGE_SIZE}")
    if size < SIZE_MULTIPLE or size % SIZE_MULTIPLE:
        nearest = max(SIZE_MULTIPLE, size // SIZE_MULTIPLE * SIZE_MULTIPLE)
        raise ConfigError(f"{name}: {size} is not a positive multiple of {SIZE_MULTIPLE} (the "
                          f"encoder halves the size five times); try {nearest}")


def _at_least(section: str, obj, least: int | float, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < least:
            raise ConfigError(f"{section}.{name}: must be at least {least}, got {_shown(value)}")


def _within(section: str, obj, least: int, most: int, *names: str) -> None:
    """ConfigError unless each setting ``names`` of ``obj`` is None or in [least, most]."""
    _at_least(section, obj, least, *names)
    for name in names:
        value = getattr(obj, name)
        if value is not None and value > most:
            raise ConfigError(f"{section}.{name}: must be at most {most}, got {_shown(value)}")


def _in_unit_interval(section: str, obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"{section}.{name}: must lie in [0, 1], got {value}")


@dataclass
class DataConfig:
    image_size: int = 256               # records (and model input, but for train_crop) are S x S
    train_crop: int = 0                 # train on crops of this side (lesion-centred on positives); 0 = whole
    shuffle_buffer: int = 512
    cache: Union[bool, Auto] = "auto"   # keep decoded records in memory; auto = when they fit
    deterministic: bool = False         # fixed order and augmentation stream (reproducible)
    num_parallel_calls: int = 2         # augmenting at once: worker processes or threads (0 = AUTOTUNE)
    batches_per_call: int = 4           # batches each augmentation call augments (shares its fixed cost)
    augment_processes: bool = True      # each call augments in a worker process (no GIL); false = in threads
    positive_share: Optional[float] = None      # share of positive images per epoch; None = natural
    positive_share_end: Optional[float] = None  # if set, share falls linearly to this by the last epoch
    fold: Optional[int] = None          # records built with --folds K: validate on fold k, train on the others
    seed: int = 42

    def validate(self) -> None:
        check_image_size(self.image_size)
        if self.train_crop and (self.train_crop % SIZE_MULTIPLE
                                or not SIZE_MULTIPLE <= self.train_crop <= self.image_size):
            raise ConfigError(f"data.train_crop: {self.train_crop} must be a multiple of "
                              f"{SIZE_MULTIPLE} (the encoder halves it five times) up to "
                              f"data.image_size ({self.image_size}), or 0")
        _within("data", self, 0, MAX_WORKERS, "num_parallel_calls")
        _within("data", self, 0, MAX_STEPS, "shuffle_buffer", "fold")
        _within("data", self, 1, MAX_BATCHES_PER_CALL, "batches_per_call")
        _within("data", self, 0, MAX_SEED, "seed")
        _in_unit_interval("data", self, "positive_share", "positive_share_end")
        if self.positive_share is None and self.positive_share_end is not None:
            raise ConfigError("data.positive_share_end needs data.positive_share (the start)")


@dataclass
class FlipConfig:
    p: float = 0.5

    def validate(self) -> None:
        _in_unit_interval("augment.horizontal_flip", self, "p")


@dataclass
class IntensityConfig:
    """OneOf(RandomBrightnessContrast, RandomGamma)."""
    p: float = 0.4
    brightness_limit: float = 0.2
    contrast_limit: float = 0.2
    gamma_limit: tuple[float, float] = (80.0, 120.0)

    def validate(self) -> None:
        _in_unit_interval("augment.intensity", self, "p")
        _at_least("augment.intensity", self, 0, "brightness_limit", "contrast_limit")
        low, high = self.gamma_limit
        if not 0 < low <= high:
            raise ConfigError(f"augment.intensity.gamma_limit: expected 0 < low <= high (in "
                              f"percent, 100 = unchanged), got {list(self.gamma_limit)}")


@dataclass
class DistortionConfig:
    """OneOf(ElasticTransform, GridDistortion, OpticalDistortion)."""
    p: float = 0.3
    elastic_alpha: float = 120.0       # the Kaggle recipe: alpha 120, sigma 120 * 0.05
    elastic_sigma: float = 6.0
    grid_num_steps: int = 5
    grid_distort_limit: float = 0.3
    optical_distort_limit: float = 0.05

    def validate(self) -> None:
        _in_unit_interval("augment.distortion", self, "p", "grid_distort_limit")
        _at_least("augment.distortion", self, 0, "elastic_alpha", "optical_distort_limit")
        _at_least("augment.distortion", self, 1, "elastic_sigma")
        _within("augment.distortion", self, 1, MAX_GRID_STEPS, "grid_num_steps")


@dataclass
class CropConfig:
    """RandomSizedCrop back to the full size from a square of min..max of the side."""
    p: float = 0.25
    min_fraction: float = 0.6
    max_fraction: float = 0.8

    def validate(self) -> None:
        _in_unit_interval("augment.random_sized_crop", self, "p", "min_fraction", "max_fraction")
        if self.min_fraction > self.max_fraction:
            raise ConfigError(f"augment.random_sized_crop: min_fraction {self.min_fraction} is "
                              f"above max_fraction {self.max_fraction}")


@dataclass
class AugmentConfig:
    enabled: bool = True
    horizontal_flip: FlipConfig = field(default_factory=FlipConfig)
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    distortion: DistortionConfig = field(default_factory=DistortionConfig)
    random_sized_crop: CropConfig = field(default_factory=CropConfig)

    def validate(self) -> None:
        for section in (self.horizontal_flip, self.intensity, self.distortion,
                        self.random_sized_crop):
            section.validate()


def weights_file(weights: str | None) -> str | None:
    """The file a ``model.weights`` value names (``~`` expanded), None for imagenet and none."""
    if weights is None or weights == "imagenet" or weights.lower() == "none":
        return None
    return os.path.expanduser(weights)


@dataclass
class ModelConfig:
    encoder: EncoderName = "efficientnetb4"
    weights: str = "imagenet"           # imagenet | none | path to a local .h5 weights file
    # the encoder's input (model.encoders.REGISTRY says which); imagenet for runs before it
    normalization: Normalization = "imagenet"
    # the encoder's stride-32 feature; top for runs before it (block: as smp's UnetPlusPlus)
    deepest_feature: DeepestFeature = "top"
    # the features at strides 2..16; expand for runs before it (block: as smp's UnetPlusPlus)
    skip_features: SkipFeatures = "expand"
    # the inner nodes' widths; level for runs before it (encoder: as smp's UnetPlusPlus)
    inner_widths: InnerWidths = "level"
    decoder_filters: tuple[int, ...] = (256, 128, 64, 32, 16)  # as segmentation_models_pytorch
    deep_supervision: bool = False
    classification_head: bool = True
    prune_level: int = 4                # inference output from X(0, prune_level); 4 = full net
    dropout: float = 0.0                # dropout before the image-level head

    def validate(self) -> None:
        if (len(self.decoder_filters) != 5
                or not all(1 <= f <= MAX_FILTERS for f in self.decoder_filters)):
            raise ConfigError(f"model.decoder_filters: expected 5 positive widths up to "
                              f"{MAX_FILTERS} (strides 16, 8, 4, 2 and the full-resolution "
                              f"head), got "
                              f"{_shown(list(self.decoder_filters))}")
        if not 1 <= self.prune_level <= DECODER_DEPTH:
            raise ConfigError(f"model.prune_level: expected 1 to {DECODER_DEPTH}, got "
                              f"{self.prune_level}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: expected a rate in [0, 1), got {self.dropout}")
        if self.inner_widths == "encoder" and self.skip_features == "expand":
            raise ConfigError("model.inner_widths: encoder makes the inner nodes as wide as the "
                              "skip features, and skip_features: expand has 96 to 672 "
                              "channels at B0 (4x the default network's FLOPs); set "
                              "model.skip_features: block with it")


@dataclass
class LossConfig:
    """Weights of the mask loss terms (0 disables a term) and of the image-level head."""
    bce: float = 1.0
    dice: float = 1.0
    focal: float = 0.0
    lovasz: float = 0.0
    classifier: float = 0.2
    # U-Net's border-weighted BCE (Ronneberger et al., 2015): pixel weights 1 + border_w0 *
    # exp(-(d1 + d2)^2 / (2 border_sigma^2)) off the lesions, border_sigma in pixels at 1024
    border_bce: float = 0.0
    border_w0: float = 10.0
    border_sigma: float = 5.0

    def validate(self) -> None:
        for key in ("bce", "dice", "focal", "lovasz", "border_bce", "classifier", "border_w0"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.loss.{key}: a weight cannot be negative, "
                                  f"got {getattr(self, key)}")
        if self.border_sigma <= 0:
            raise ConfigError(f"train.loss.border_sigma: must be positive, got "
                              f"{self.border_sigma}")
        if not any((self.bce, self.dice, self.focal, self.lovasz, self.border_bce)):
            raise ConfigError("train.loss: every mask term (bce, dice, focal, lovasz, "
                              "border_bce) has weight 0")


@dataclass
class TrainConfig:
    batch_size: int = 12                # global batch size (split across replicas)
    epochs: int = 33
    steps_per_epoch: Optional[int] = None   # None = one pass over the training split
    validation_steps: Optional[int] = None
    optimizer: Optimizer = "adam"
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-6
    weight_decay: float = 0.0
    lr_schedule: Schedule = "cosine"    # cosine (with warm-up) | plateau | constant
    warmup_epochs: float = 1.0
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    early_stopping_patience: int = 10      # 0 = no early stopping
    monitor: Monitor = "score"          # best epoch by: score (val competition score) | loss (val loss)
    loss: LossConfig = field(default_factory=LossConfig)
    # pixel threshold of the streaming competition metric; a list: the best score over them
    metric_threshold: Union[float, tuple[float, ...]] = 0.5
    jit_compile: Union[bool, Auto] = "auto"     # auto = on with a GPU, off on CPU
    # true = mixed_float16, false = float32, or a policy (mixed_bfloat16: CPUs with AVX512_BF16
    # or AMX, and TPUs/recent GPUs); auto = mixed_float16 with a GPU, else float32
    mixed_precision: Union[bool, Precision, Auto] = "auto"
    strategy: Strategy = "auto"         # auto: multi_worker under TF_CONFIG, mirrored on 2+ GPUs
    swa_epochs: int = 0                 # average weights over the last N epochs (0 = off)
    keep_best: int = 1                  # keep the weights of the N best epochs (ensembles)
    init_from: Optional[str] = None     # a finished RUN_DIR whose best weights start this run
    freeze_encoder_epochs: int = 0      # train only the decoder and heads for the first N epochs
    tensorboard_images: int = 4
    seed: int = 42

    def validate(self) -> None:
        _within("train", self, 1, MAX_EPOCHS, "epochs", "keep_best")
        _within("train", self, 1, MAX_BATCH, "batch_size")
        _within("train", self, 1, MAX_STEPS, "steps_per_epoch", "validation_steps")
        _within("train", self, 0, MAX_EPOCHS, "swa_epochs", "early_stopping_patience",
                "plateau_patience", "freeze_encoder_epochs")
        _within("train", self, 0, MAX_TENSORBOARD_IMAGES, "tensorboard_images")
        _within("train", self, 0, MAX_SEED, "seed")
        _at_least("train", self, 0, "learning_rate", "min_learning_rate", "weight_decay",
                  "warmup_epochs")
        if not 0.0 < self.plateau_factor < 1.0:
            raise ConfigError(f"train.plateau_factor: the plateau schedule multiplies the rate "
                              f"by it, so it must lie in (0, 1), got {self.plateau_factor}")
        if self.swa_epochs and self.epochs - self.swa_epochs < self.freeze_encoder_epochs:
            raise ConfigError(f"train.swa_epochs: the {self.swa_epochs} averaged epochs overlap "
                              f"the {self.freeze_encoder_epochs} with a frozen encoder "
                              f"(train.freeze_encoder_epochs); average only epochs after them")
        values = self.metric_threshold
        values = values if isinstance(values, (list, tuple)) else (values,)
        if not 1 <= len(values) <= MAX_THRESHOLDS or not all(0.0 <= t < 1.0 for t in values):
            raise ConfigError(f"train.metric_threshold: expected one or more pixel thresholds "
                              f"in [0, 1) (at most {MAX_THRESHOLDS}), got "
                              f"{_shown(self.metric_threshold)}")
        self.loss.validate()


@dataclass
class EvalConfig:
    threshold: float = 0.75             # the paper's pixel threshold
    tta: Tta = "none"
    batch_size: int = 8

    def validate(self) -> None:
        _in_unit_interval("eval", self, "threshold")
        _within("eval", self, 1, MAX_BATCH, "batch_size")


@dataclass
class ExportConfig:
    warmup_requests: int = 2

    def validate(self) -> None:
        _within("export", self, 0, MAX_WARMUP_REQUESTS, "warmup_requests")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def validate(self) -> "Config":
        """ConfigError naming the first setting that cannot work; the config itself if none.
        Types and choices are checked again, for configs built or changed in Python."""
        _build(type(self), self.to_dict(), "")
        for section in (self.data, self.augment, self.model, self.train, self.eval, self.export):
            section.validate()
        return self

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses, while composing and so before any value is built,
    a document of more than :data:`MAX_VALUES` values with aliases expanded (an alias bomb),
    nested deeper than :data:`MAX_DEPTH`, with an alias inside its own anchor, or with a key
    twice in one mapping (YAML would keep the last silently); and a scalar its tag cannot hold
    (an integer of thousands of digits) as a YAML error with its line."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict = {}          # node -> its value count, aliases expanded

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if node not in self._sizes:         # its anchor's value is still being composed
                raise RefusedDocument(f"alias *{event.anchor} is inside its own anchor",
                                      event.start_mark)
            return node
        if self._depth >= MAX_DEPTH:
            raise RefusedDocument(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[node] = 1 + sum(self._sizes[child] for child in _children(node))
        if self._sizes[node] > MAX_VALUES:
            raise RefusedDocument(f"more than {MAX_VALUES} values with its aliases expanded (a "
                                  f"config has about 100)", node.start_mark)
        return node

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in seen:
                    raise RefusedDocument(f"key {_shown(key.value)} appears twice", key.start_mark)
                seen.add((key.tag, key.value))
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except ValueError as exc:       # int() and float() of the scalar
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {_shown(node.value)} as {node.tag.rsplit(':', 1)[-1]} "
                f"({str(exc).split(';')[0]})", node.start_mark) from None


class RefusedDocument(yaml.MarkedYAMLError):
    """A YAML document :class:`ConfigLoader` refuses (size, depth, self-reference, duplicates)."""

    def __init__(self, problem: str, mark):
        super().__init__(problem=problem, problem_mark=mark)


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def load_yaml(text: str):
    """The value of the YAML document ``text``, read by :class:`ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line saying where and what a YAML error is (PyYAML's own spans several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character {exc.position + 1} (#x{exc.character:04x}): {exc.reason}"
    return " ".join(str(exc).split())


def _read_at_most(path, limit: int) -> bytes:
    """The first ``limit`` + 1 bytes of a local ``path`` (enough to tell it is longer; a device
    such as /dev/zero never ends), all of a URL's."""
    if is_url(path):
        return read_bytes(path)
    with open(path, "rb") as handle:
        return handle.read(limit + 1)


def read_config_file(path) -> dict:
    """The mapping of sections in the YAML file ``path``; ConfigError naming it otherwise."""
    if not exists(path) or os.path.isdir(path):
        raise ConfigError(f"{path}: no such config file")
    try:
        data = _read_at_most(path, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, so not a config "
                          f"(the repository's are under 2 KB)")
    try:
        raw = load_yaml(utf8_text(data, path, "config", ConfigError))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw or {}, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not "
                          f"{type(raw).__name__}")
    return raw or {}


def load_config(path=None, overrides=()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw = {} if path is None else read_config_file(path)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {_shown(item)}: expected key=value, e.g. "
                              f"train.batch_size=12")
        parts = key.strip().split(".")
        try:
            value = load_yaml(text)
        except RefusedDocument as exc:
            raise ConfigError(f"override {_shown(key)}: {_yaml_problem(exc)}") from None
        except yaml.YAMLError:
            value = text                    # not YAML: the text itself
        if value in (None, {}) and _is_section(parts):
            raise ConfigError(f"override {_shown(item)}: {key} is a section; set its keys "
                              f"instead, e.g. {key}.<key>=<value>")
        _merge(raw, parts, value)
    return config_from_dict(raw)


def _merge(raw: dict, parts: list[str], value: Any) -> None:
    """Set the dotted key ``parts`` of ``raw`` to ``value``; a mapping given for a section
    sets its keys, keeping the section's others."""
    if isinstance(value, dict) and _is_section(parts):
        for name, item in value.items():
            _merge(raw, [*parts, str(name)], item)
    else:
        _set_path(raw, parts, value)


def _is_section(parts: list[str]) -> bool:
    """Whether the dotted key ``parts`` names a section of :class:`Config`."""
    tp = Config
    for part in parts:
        if not dataclasses.is_dataclass(tp):
            return False
        tp = typing.get_type_hints(tp).get(part)
    return dataclasses.is_dataclass(tp)


def config_from_dict(raw: dict) -> Config:
    """Build and validate a Config from a plain dict (as ``Config.to_dict`` returns)."""
    return _build(Config, raw, "").validate()


def dump_config(config: Config, path) -> None:
    write_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def _set_path(raw: dict, parts: list[str], value: Any) -> None:
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts)}: {part} is not a section")
    node[parts[-1]] = value


def _build(cls, raw: Any, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            path = prefix + (key if isinstance(key, str) and len(key) <= 60 else _shown(key))
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{path}: unknown key{hint}")
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(tp, value, path):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path + ".")
    if origin is Literal:
        if isinstance(value, str) and value.lower() in args:
            return value.lower()
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {_shown(value)}")
    if origin is Union:
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            with contextlib.suppress(ConfigError):      # the message below names every option
                return _coerce(option, value, path)
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {_shown(value)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {_shown(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got "
                              f"{_shown(value)}")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = _number(value)
        if number is not None and math.isfinite(number):
            return number
    elif tp is str:
        if isinstance(value, str) and len(value) <= MAX_TEXT and "\0" not in value:
            return value
    raise ConfigError(f"{path}: expected {_describe(tp)}, got {_shown(value)}")


def _number(value) -> float | None:
    """``value`` as a float if it is a number or a number's text (YAML 1.1 reads 1e-4, without
    a dot, as a string), else None; an integer too large for a float is infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf
    except ValueError:
        return None


def _shown(value) -> str:
    """``repr(value)`` cut short (long strings, lists and deep nesting elided), for messages."""
    return _SHORT_REPR.repr(value)


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 60


def _describe(tp) -> str:
    if typing.get_origin(tp) is Literal:
        args = typing.get_args(tp)
        return args[0] if len(args) == 1 else f"one of {', '.join(args)}"
    if typing.get_origin(tp) is Union:
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None)) + \
            (" or null" if type(None) in typing.get_args(tp) else "")
    if typing.get_origin(tp) is tuple:
        return "a list"
    return {bool: "true/false", int: "an integer", float: "a finite number",
            str: f"a string of at most {MAX_TEXT} characters, without NUL"}.get(tp, str(tp))
