"""Typed run configuration: YAML files under configs/ loaded into dataclasses that check themselves.

``load_config(path, overrides=("train.batch_size=12",))`` returns a validated :class:`Config`.
Unknown keys, wrong types and values outside a setting's choices raise :class:`ConfigError`
naming the key's dotted path (with a "did you mean" hint for typos); then each section's
``validate()`` checks its values (ranges, sizes, settings that exclude each other), as every
command that loads a config (train, evaluate, predict, export, demo) does through this module.
Choices are ``Literal`` types (:data:`Tta`, :data:`EncoderName`, ...): the coercion accepts only
their values, and command-line options take theirs from :func:`choices`. Files are read with
``yaml.safe_load`` only.
"""
from __future__ import annotations

import contextlib

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import yaml

from keras_ptx.errors import UserError
from keras_ptx.fileio import exists, read_text, write_atomic


class ConfigError(UserError):
    """A configuration file or override that does not fit the schema."""


SIZE_MULTIPLE = 32      # the encoders halve an image five times
DECODER_DEPTH = 4       # UNet++ decoder columns; X(0, 4) is the full network's mask node

Auto = Literal["auto"]
Tta = Literal["none", "hflip"]                      # test-time augmentation
# model.encoders.REGISTRY's names (config cannot import the model layer; a test keeps them equal)
EncoderName = Literal[tuple(f"efficientnetb{i}" for i in range(8)) +
                      tuple(f"efficientnetv2{v}" for v in ("b0", "b1", "b2", "b3", "s"))]
# the encoder input (keras_ptx.input.normalize): imagenet = RGB in [0, 1] minus ImageNet's mean,
# over its std; pixels = RGB 0..255 (the encoder normalises inside)
Normalization = Literal["imagenet", "pixels"]
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["cosine", "plateau", "constant"]
Monitor = Literal["score", "loss"]
Strategy = Literal["auto", "default", "mirrored", "multi_worker"]
Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]  # Keras dtype policies


def choices(literal) -> tuple[str, ...]:
    """The values of a ``Literal`` type, e.g. ``choices(Tta) == ("none", "hflip")``."""
    return typing.get_args(literal)


def check_image_size(size: int, name: str = "data.image_size") -> None:
    """ConfigError unless ``size`` is a positive multiple of :data:`SIZE_MULTIPLE`."""
    if size < SIZE_MULTIPLE or size % SIZE_MULTIPLE:
        nearest = max(SIZE_MULTIPLE, size // SIZE_MULTIPLE * SIZE_MULTIPLE)
        raise ConfigError(f"{name}: {size} is not a positive multiple of {SIZE_MULTIPLE} (the "
                          f"encoder halves the size five times); try {nearest}")


def _at_least(section: str, obj, least: int | float, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < least:
            raise ConfigError(f"{section}.{name}: must be at least {least}, got {value}")


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
        _at_least("data", self, 0, "train_crop", "shuffle_buffer", "num_parallel_calls", "fold")
        _at_least("data", self, 1, "batches_per_call")
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
        _at_least("augment.distortion", self, 1, "elastic_sigma", "grid_num_steps")


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


@dataclass
class ModelConfig:
    encoder: EncoderName = "efficientnetb4"
    weights: str = "imagenet"           # imagenet | none | path to a local .h5 weights file
    # the encoder's input (model.encoders.REGISTRY says which); imagenet for runs before it
    normalization: Normalization = "imagenet"
    decoder_filters: tuple[int, ...] = (256, 128, 64, 32, 16)  # as segmentation_models_pytorch
    deep_supervision: bool = False
    classification_head: bool = True
    prune_level: int = 4                # inference output from X(0, prune_level); 4 = full net
    dropout: float = 0.0                # dropout before the image-level head

    def validate(self) -> None:
        if len(self.decoder_filters) != 5 or any(f <= 0 for f in self.decoder_filters):
            raise ConfigError(f"model.decoder_filters: expected 5 positive widths (strides 16, "
                              f"8, 4, 2 and the full-resolution head), got "
                              f"{list(self.decoder_filters)}")
        if not 1 <= self.prune_level <= DECODER_DEPTH:
            raise ConfigError(f"model.prune_level: expected 1 to {DECODER_DEPTH}, got "
                              f"{self.prune_level}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: expected a rate in [0, 1), got {self.dropout}")


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
        _at_least("train", self, 1, "epochs", "batch_size", "steps_per_epoch",
                  "validation_steps", "keep_best")
        _at_least("train", self, 0, "swa_epochs", "tensorboard_images", "early_stopping_patience",
                  "learning_rate", "min_learning_rate", "weight_decay", "warmup_epochs",
                  "freeze_encoder_epochs")
        if self.swa_epochs and self.epochs - self.swa_epochs < self.freeze_encoder_epochs:
            raise ConfigError(f"train.swa_epochs: the {self.swa_epochs} averaged epochs overlap "
                              f"the {self.freeze_encoder_epochs} with a frozen encoder "
                              f"(train.freeze_encoder_epochs); average only epochs after them")
        values = self.metric_threshold
        values = values if isinstance(values, (list, tuple)) else (values,)
        if not values or not all(0.0 <= t < 1.0 for t in values):
            raise ConfigError(f"train.metric_threshold: expected one or more pixel thresholds "
                              f"in [0, 1), got {self.metric_threshold!r}")
        self.loss.validate()


@dataclass
class EvalConfig:
    threshold: float = 0.75             # the paper's pixel threshold
    tta: Tta = "none"
    batch_size: int = 8

    def validate(self) -> None:
        _in_unit_interval("eval", self, "threshold")
        _at_least("eval", self, 1, "batch_size")


@dataclass
class ExportConfig:
    warmup_requests: int = 2

    def validate(self) -> None:
        _at_least("export", self, 0, "warmup_requests")


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


def load_config(path=None, overrides=()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict = {}
    if path is not None:
        if not exists(path) or os.path.isdir(path):
            raise ConfigError(f"{path}: no such config file")
        try:
            raw = yaml.safe_load(read_text(path)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.batch_size=12")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        _set_path(raw, key.strip().split("."), value)
    return config_from_dict(raw)


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
            path = f"{prefix}{key}"
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
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is Union:
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            with contextlib.suppress(ConfigError):      # the message below names every option
                return _coerce(option, value, path)
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):      # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")


def _describe(tp) -> str:
    if typing.get_origin(tp) is Literal:
        args = typing.get_args(tp)
        return args[0] if len(args) == 1 else f"one of {', '.join(args)}"
    if typing.get_origin(tp) is Union:
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None)) + \
            (" or null" if type(None) in typing.get_args(tp) else "")
    if typing.get_origin(tp) is tuple:
        return "a list"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))
