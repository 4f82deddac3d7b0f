"""keras_ptx.config: every shipped config loads; typos, wrong types and overrides are handled."""
from pathlib import Path

import pytest

from keras_ptx.config import (Config, ConfigError, EncoderName, Tta, choices, config_from_dict,
                              dump_config, load_config)

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert isinstance(config, Config)
    assert config_from_dict(config.to_dict()) == config


def test_defaults():
    config = load_config()
    assert config == Config()
    assert (config.data.image_size, config.train.batch_size, config.train.epochs) == (256, 12, 33)
    assert config.model.encoder == "efficientnetb4" and config.eval.threshold == 0.75
    assert config.model.decoder_filters == (256, 128, 64, 32, 16)
    assert load_config(None, ()) == load_config(overrides=[])


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()


def test_file_values_are_applied(tmp_path):
    config = load_config(write(tmp_path, "train:\n  batch_size: 4\n  loss: {dice: 0.5}\n"
                                         "model:\n  decoder_filters: [64, 32, 16, 8, 4]\n"
                                         "data:\n  positive_share: 0.5\n"))
    assert config.train.batch_size == 4 and config.train.loss.dice == 0.5
    assert config.train.loss.bce == 1.0                    # untouched siblings keep defaults
    assert config.model.decoder_filters == (64, 32, 16, 8, 4)
    assert config.data.positive_share == 0.5


def test_typo_names_the_key_and_suggests_the_right_one(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "train:\n  batchsize: 12\n"))
    assert str(info.value) == "train.batchsize: unknown key; did you mean train.batch_size?"


def test_unknown_nested_and_top_level_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"^train\.loss\.dicee: unknown key; did you mean "
                                          r"train\.loss\.dice\?$"):
        load_config(write(tmp_path, "train:\n  loss:\n    dicee: 1\n"))
    with pytest.raises(ConfigError, match=r"^zzz: unknown key; known keys: data, augment"):
        load_config(write(tmp_path, "zzz: 1\n"))


@pytest.mark.parametrize("text, message", [
    ("train:\n  batch_size: twelve\n", "train.batch_size: expected an integer, got 'twelve'"),
    ("train:\n  batch_size: 12.5\n", "train.batch_size: expected an integer"),
    ("train:\n  epochs: true\n", "train.epochs: expected an integer, got True"),
    ("augment:\n  enabled: 1\n", "augment.enabled: expected true/false"),
    ("eval:\n  threshold: high\n", "eval.threshold: expected a finite number"),
    ("model:\n  encoder: 4\n", "model.encoder: expected one of efficientnetb0, "),
    ("model:\n  weights: 4\n", "model.weights: expected a string"),
    ("model:\n  decoder_filters: 16\n", "model.decoder_filters: expected a list"),
    ("model:\n  decoder_filters: [16, x]\n", "model.decoder_filters[1]: expected an integer"),
    ("augment:\n  intensity:\n    gamma_limit: [80]\n",
     "augment.intensity.gamma_limit: expected a list of 2 values"),
    ("data:\n  positive_share: lots\n", "data.positive_share: expected a finite number or null"),
    ("train: 5\n", "train: expected a mapping"),
])
def test_wrong_type_names_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value).startswith(message)


def test_ints_are_accepted_for_floats_and_unions(tmp_path):
    config = load_config(write(tmp_path, "train:\n  learning_rate: 1\n  jit_compile: false\n"
                                         "  mixed_precision: auto\n"))
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.train.jit_compile is False and config.train.mixed_precision == "auto"


def test_set_style_overrides(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: 4\n")
    config = load_config(path, ["train.batch_size=12", "model.decoder_filters=[8, 4, 4, 4, 4]",
                                "augment.intensity.p=0.1", "data.positive_share=null",
                                "model.weights=none", "train.jit_compile=true",
                                "eval.tta = hflip"])
    assert config.train.batch_size == 12                  # the override beats the file
    assert config.model.decoder_filters == (8, 4, 4, 4, 4)
    assert config.augment.intensity.p == 0.1
    assert config.data.positive_share is None
    assert config.model.weights == "none"                 # a string, not YAML null
    assert config.train.jit_compile is True
    assert config.eval.tta == "hflip"


def test_override_below_a_value_is_rejected():
    with pytest.raises(ConfigError, match=r"^train\.batch_size\.x: batch_size is not a section$"):
        load_config(None, ["train.batch_size=3", "train.batch_size.x=3"])


def test_later_override_wins():
    assert load_config(None, ["train.epochs=3", "train.epochs=5"]).train.epochs == 5


@pytest.mark.parametrize("override, message", [
    ("train.batchsize=12", "train.batchsize: unknown key; did you mean train.batch_size?"),
    ("train.batch_size=big", "train.batch_size: expected an integer"),
    ("train.batch_size", "expected key=value"),
    ("=3", "expected key=value"),
    ("train.batch_size.x=3", "train.batch_size: expected an integer"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_only_safe_yaml_is_accepted(tmp_path):
    marker = tmp_path / "ran"
    text = f"train: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, text))
    tagged = f"!!python/object/apply:os.system ['touch {marker}']"
    assert load_config(None, [f"model.weights={tagged}"]).model.weights == tagged   # text
    assert not marker.exists()


@pytest.mark.parametrize("text, message", [("- a\n- b\n", "top level must be a mapping"),
                                           ("train: [1\n", "not valid YAML")])
def test_bad_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")


def test_dump_then_load_round_trips(tmp_path):
    config = load_config(None, ["train.batch_size=3", "model.decoder_filters=[32, 16, 8, 8, 8]"])
    dump_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


def test_exponent_without_a_dot_is_a_number():
    # YAML 1.1 (PyYAML) reads 1e-4 as a string; a float field still takes it.
    assert load_config(None, ["train.learning_rate=1e-4"]).train.learning_rate == 1e-4


@pytest.mark.parametrize("override, message", [
    # choices are Literal types: only their values load
    ("eval.tta=flip", "eval.tta: expected one of none, hflip, got 'flip'"),
    ("model.encoder=efficientnetb9", "model.encoder: expected one of efficientnetb0, "),
    ("train.optimizer=rmsprop", "train.optimizer: expected one of adam, adamw, sgd"),
    ("train.lr_schedule=step", "train.lr_schedule: expected one of cosine, plateau, constant"),
    ("train.monitor=dice", "train.monitor: expected one of score, loss"),
    ("train.strategy=tpu", "train.strategy: expected one of auto, default, mirrored, multi_worker"),
    ("train.jit_compile=yes please", "train.jit_compile: expected true/false or auto"),
    ("data.cache=sometimes", "data.cache: expected true/false or auto"),
    # each section's validate()
    ("data.image_size=100", "data.image_size: 100 is not a positive multiple of 32"),
    ("data.image_size=16", "data.image_size: 16 is not a positive multiple of 32"),
    ("data.train_crop=48", "data.train_crop: 48 must be a multiple of 32"),
    ("data.train_crop=512", "up to data.image_size (256)"),
    ("data.batches_per_call=0", "data.batches_per_call: must be at least 1, got 0"),
    ("data.num_parallel_calls=-1", "data.num_parallel_calls: must be at least 0"),
    ("data.positive_share=1.5", r"data.positive_share: must lie in [0, 1], got 1.5"),
    ("data.positive_share_end=0.3", "data.positive_share_end needs data.positive_share"),
    ("augment.horizontal_flip.p=2", "augment.horizontal_flip.p: must lie in [0, 1]"),
    ("augment.random_sized_crop.min_fraction=0.9",
     "augment.random_sized_crop: min_fraction 0.9 is above max_fraction 0.8"),
    ("augment.intensity.gamma_limit=[120, 80]", "augment.intensity.gamma_limit: expected 0 < low"),
    ("augment.intensity.gamma_limit=[0, 80]", "augment.intensity.gamma_limit: expected 0 < low"),
    ("augment.intensity.brightness_limit=-0.1", "augment.intensity.brightness_limit: must be"),
    ("augment.distortion.elastic_sigma=0.5", "augment.distortion.elastic_sigma: must be at least 1"),
    ("augment.distortion.elastic_alpha=-1", "augment.distortion.elastic_alpha: must be at least 0"),
    ("augment.distortion.grid_num_steps=0", "augment.distortion.grid_num_steps: must be at least 1"),
    ("augment.distortion.grid_distort_limit=1.5", "augment.distortion.grid_distort_limit: must lie"),
    ("augment.distortion.optical_distort_limit=-1", "augment.distortion.optical_distort_limit:"),
    ("model.decoder_filters=[64, 32, 16]", "model.decoder_filters: expected 5 positive widths"),
    ("model.decoder_filters=[64, 32, 16, 0, 8]", "model.decoder_filters: expected 5 positive"),
    ("model.prune_level=5", "model.prune_level: expected 1 to 4, got 5"),
    ("model.dropout=1.0", "model.dropout: expected a rate in [0, 1)"),
    ("train.epochs=0", "train.epochs: must be at least 1, got 0"),
    ("train.batch_size=0", "train.batch_size: must be at least 1"),
    ("train.steps_per_epoch=0", "train.steps_per_epoch: must be at least 1"),
    ("train.swa_epochs=-1", "train.swa_epochs: must be at least 0"),
    ("train.learning_rate=-0.1", "train.learning_rate: must be at least 0"),
    ("train.metric_threshold=1.0", "train.metric_threshold: expected one or more pixel thresholds"),
    ("train.metric_threshold=[0.5, 1.2]", "train.metric_threshold: expected one or more"),
    ("train.metric_threshold=[]", "train.metric_threshold: expected one or more"),
    ("train.loss.dice=-1", "train.loss.dice: a weight cannot be negative"),
    ("eval.threshold=1.5", "eval.threshold: must lie in [0, 1]"),
    ("eval.batch_size=0", "eval.batch_size: must be at least 1"),
    ("export.warmup_requests=-1", "export.warmup_requests: must be at least 0"),
])
def test_settings_that_cannot_work_are_refused_at_load(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(message) or message in str(info.value)


def test_no_mask_loss_term_is_refused():
    zero = [f"train.loss.{key}=0" for key in ("bce", "dice", "focal", "lovasz")]
    with pytest.raises(ConfigError, match="every mask term .* has weight 0"):
        load_config(None, zero)
    assert load_config(None, zero[:-1] + ["train.loss.lovasz=0.5"]).train.loss.lovasz == 0.5


def test_a_saved_config_is_validated_when_loaded_back(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match="train.epochs: must be at least 1"):
        load_config(path)
    with pytest.raises(ConfigError, match="train.epochs"):
        config_from_dict({"train": {"epochs": 0}})


def test_choices_are_case_insensitive_and_listed_once():
    assert load_config(None, ["train.jit_compile=AUTO", "eval.tta=HFlip"]).eval.tta == "hflip"
    assert choices(Tta) == ("none", "hflip")
    assert choices(EncoderName)[0] == "efficientnetb0" and len(choices(EncoderName)) == 13


def test_command_line_choices_come_from_the_config_types():
    from keras_ptx import cli
    for name in ("evaluate", "predict", "export"):
        command = cli.main.get_command(None, name)
        tta = next(p for p in command.params if p.name == "tta")
        assert tuple(tta.type.choices) == choices(Tta)


def test_what_the_config_accepts_albumentations_builds():
    """The augmentation settings at the edges of what validate() accepts build a policy (the
    ones just past them are refused at load, above), so no refusal waits for training."""
    from keras_ptx.input.policy import build_policy
    edges = ["augment.intensity.gamma_limit=[1, 1]", "augment.intensity.brightness_limit=0",
             "augment.distortion.elastic_sigma=1", "augment.distortion.elastic_alpha=0",
             "augment.distortion.grid_num_steps=1", "augment.distortion.grid_distort_limit=1",
             "augment.distortion.optical_distort_limit=0", "augment.random_sized_crop.min_fraction=0",
             "augment.random_sized_crop.max_fraction=0"]
    config = load_config(None, edges)
    build_policy(config.augment, config.data.image_size)


def test_a_config_changed_in_python_is_checked_again():
    import dataclasses
    config = load_config()
    wrong = dataclasses.replace(config, train=dataclasses.replace(config.train, optimizer="adamx"))
    with pytest.raises(ConfigError, match="train.optimizer: expected one of adam, adamw, sgd"):
        wrong.validate()
    listed = dataclasses.replace(config, train=dataclasses.replace(
        config.train, metric_threshold=[0.3, 0.5]))
    assert listed.validate() is listed
