"""keras_ptx.config: every shipped config loads; typos, wrong types and overrides are handled."""
from pathlib import Path

import pytest

from keras_ptx.config import (Config, ConfigError, config_from_dict, dump_config, load_config)

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
                                         "model:\n  decoder_filters: [64, 32]\n"
                                         "data:\n  positive_share: 0.5\n"))
    assert config.train.batch_size == 4 and config.train.loss.dice == 0.5
    assert config.train.loss.bce == 1.0                    # untouched siblings keep defaults
    assert config.model.decoder_filters == (64, 32)
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
    ("eval:\n  threshold: high\n", "eval.threshold: expected a number"),
    ("model:\n  encoder: 4\n", "model.encoder: expected a string"),
    ("model:\n  decoder_filters: 16\n", "model.decoder_filters: expected a list"),
    ("model:\n  decoder_filters: [16, x]\n", "model.decoder_filters[1]: expected an integer"),
    ("augment:\n  intensity:\n    gamma_limit: [80]\n",
     "augment.intensity.gamma_limit: expected a list of 2 values"),
    ("data:\n  positive_share: lots\n", "data.positive_share: expected a number or null"),
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
    config = load_config(path, ["train.batch_size=12", "model.decoder_filters=[8, 4]",
                                "augment.intensity.p=0.1", "data.positive_share=null",
                                "model.weights=none", "train.jit_compile=true",
                                "eval.tta = hflip"])
    assert config.train.batch_size == 12                  # the override beats the file
    assert config.model.decoder_filters == (8, 4)
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
    assert load_config(None, [f"train.optimizer={tagged}"]).train.optimizer == tagged   # text
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
    config = load_config(None, ["train.batch_size=3", "model.decoder_filters=[32, 16]"])
    dump_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


def test_exponent_without_a_dot_is_a_number():
    # YAML 1.1 (PyYAML) reads 1e-4 as a string; a float field still takes it.
    assert load_config(None, ["train.learning_rate=1e-4"]).train.learning_rate == 1e-4
