"""The UNet++ network: outputs, skip taps, pruning, heads, encoder weights, an XLA training step."""
import numpy as np
import pytest

from keras_ptx import rundir
from keras_ptx.config import (ConfigError, EncoderName, Normalization, choices,
                              config_from_dict, dump_config, load_config)
from keras_ptx.input.normalize import NORMALIZATIONS
from keras_ptx.model import (build_model, count_flops, feature_layer_names, make_losses,
                             make_metrics, resolve_jit_compile, resolve_mixed_precision,
                             size_summary)
from keras_ptx.model import precision
from keras_ptx.model.encoders import (REGISTRY, STRIDES, WeightsError, build_encoder,
                                     encoder_layers)
from keras_ptx.tf_setup import tf

B0 = ["model.encoder=efficientnetb0", "model.weights=none", "data.image_size=64"]


def _config(*overrides):
    return load_config(None, B0 + list(overrides))


@pytest.fixture(scope="module")
def saved_encoder(tmp_path_factory):
    """A B0 encoder at 64x64 with random weights, and the .h5 file of its weights."""
    encoder = build_encoder("efficientnetb0", 64, "none").model
    path = tmp_path_factory.mktemp("weights") / "encoder.h5"
    encoder.save_weights(str(path))
    return encoder, path


@pytest.fixture(scope="module")
def full_model():
    """B0 at 64x64 with deep supervision and the image-level head."""
    return build_model(_config("model.deep_supervision=true", "model.classification_head=true"))


def test_outputs_are_named_ordered_shaped_and_float32(full_model):
    assert full_model.output_names == ["mask", "mask_1", "mask_2", "mask_3", "label"]
    outputs = full_model(np.zeros((2, 64, 64, 3), "float32"), training=False)
    assert [tuple(o.shape) for o in outputs] == [(2, 64, 64, 1)] * 4 + [(2, 1)]
    for output in outputs:
        assert output.dtype == tf.float32
        assert np.all((output.numpy() >= 0) & (output.numpy() <= 1))
    # Each supervised column has its own head.
    for column in range(1, 5):
        assert full_model.get_layer(f"head{column}_logits").output.shape[1:] == (64, 64, 1)


def test_size_summary_counts_parameters_and_flops(full_model):
    summary = size_summary(full_model)
    assert summary["parameters"] == full_model.count_params() > summary["trainable_parameters"]
    assert summary["input_shape"] == (64, 64, 3)
    assert summary["outputs"]["mask"] == (64, 64, 1) and summary["outputs"]["label"] == (1,)
    # The first decoder node at stride 2: a 3x3 conv from 32 + 64 channels to 32 on 32x32.
    conv = full_model.get_layer("x01_conv1")
    assert count_flops(tf.keras.Model(conv.input, conv.output)) == 2 * 32 * 32 * 9 * 96 * 32
    # TensorFlow's profiler on the frozen graph agreed within 0.1% without deep supervision
    # (1.07 GFLOPs); the three extra full-resolution heads add about 0.06 each here.
    assert 1.1 < summary["gflops_per_image"] < 1.4


def test_skip_features_are_taken_by_name_at_strides_2_to_32(full_model):
    names = feature_layer_names(full_model, "efficientnetb0")
    assert names[-1] == "top_activation"
    assert [full_model.get_layer(name).output.shape[1] for name in names] == \
        [64 // stride for stride in STRIDES]


@pytest.mark.slow
def test_b4_at_256_has_its_skips_at_the_right_strides():
    config = load_config(None, ["model.encoder=efficientnetb4", "model.weights=none",
                                "data.image_size=256", "model.classification_head=false"])
    model = build_model(config)
    assert model.output_names == ["mask"] and model.output_shape == (None, 256, 256, 1)
    assert [model.get_layer(name).output.shape[1] for name in feature_layer_names(
        model, "efficientnetb4")] == [256 // stride for stride in STRIDES]


def test_the_registry_holds_every_configurable_encoder_with_five_taps_and_a_known_input():
    assert tuple(REGISTRY) == choices(EncoderName)
    assert set(NORMALIZATIONS) == set(choices(Normalization)) == \
        {spec.normalization for spec in REGISTRY.values()}
    assert all(len(spec.taps) == len(STRIDES) for spec in REGISTRY.values())


def test_a_normalisation_other_than_the_encoders_is_refused_before_building():
    with pytest.raises(ConfigError, match="efficientnetb0 takes 'imagenet' input, got 'pixels'; "
                                          "set model.normalization: imagenet"):
        build_model(_config("model.normalization=pixels"))


def test_pruned_network_at_128_builds_only_the_columns_it_needs(full_model, tmp_path):
    model = build_model(load_config(None, [
        "model.encoder=efficientnetb0", "model.weights=none", "data.image_size=128",
        "model.deep_supervision=true", "model.prune_level=2", "model.classification_head=false"]))
    assert model.output_names == ["mask", "mask_1"]
    assert model.output_shape == [(None, 128, 128, 1)] * 2
    names = {layer.name for layer in model.layers}
    assert {"head2_logits", "head1_logits", "x02_conv2", "x20_proj"} <= names
    assert not names & {"head3_logits", "x03_conv1", "x30_proj", "top_activation"}
    # Weights of the full network (any input size) load into the pruned one by layer name.
    full_model.save_weights(str(tmp_path / "full.h5"))
    model.load_weights(str(tmp_path / "full.h5"), by_name=True)
    for name in ("head2_logits", "x02_conv2", "x20_proj", "stem_conv"):
        for pruned, full in zip(model.get_layer(name).get_weights(),
                                full_model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(pruned, full)


def test_single_output_network_returns_a_tensor():
    model = build_model(_config("model.prune_level=1", "model.classification_head=false"))
    assert model.output_names == ["mask"]
    prediction = model(np.zeros((1, 64, 64, 3), "float32"))
    assert isinstance(prediction, tf.Tensor) and prediction.shape == (1, 64, 64, 1)


def test_encoder_weights_load_from_a_local_h5_file(saved_encoder, full_model):
    source, path = saved_encoder
    model = build_model(_config(f"model.weights={path}", "model.prune_level=1"))
    assert not np.allclose(full_model.get_layer("stem_conv").get_weights()[0],
                           source.get_layer("stem_conv").get_weights()[0])
    layers = [layer for layer in source.layers if layer.weights]
    assert len(layers) > 100
    for layer in layers:
        for loaded, saved in zip(model.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(loaded, saved)


def test_missing_or_unreadable_weights_files_raise_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="is not a file.*imagenet, none"):
        build_model(_config(f"model.weights={tmp_path / 'missing.h5'}"))
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not an HDF5 file")
    with pytest.raises(WeightsError, match="does not hold efficientnetb0's encoder weights"):
        build_model(_config(f"model.weights={broken}", "model.prune_level=1",
                            "model.classification_head=false"))


def test_imagenet_download_failure_says_how_to_supply_the_file(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tf.keras.utils, "get_file", offline)
    source = REGISTRY["efficientnetb0"].weights
    assert source.file_name == \
        "efficientnet-b0_weights_tf_dim_ordering_tf_kernels_autoaugment_notop.h5"
    with pytest.raises(WeightsError) as error:
        build_model(_config("model.weights=imagenet"))
    assert source.url in str(error.value)
    assert f"model.weights: /path/to/{source.file_name}" in str(error.value)


def test_imagenet_weights_come_from_the_download_cache(monkeypatch, saved_encoder):
    source, path = saved_encoder
    requests = []
    monkeypatch.setattr(tf.keras.utils, "get_file",
                        lambda *args, **kwargs: requests.append((args, kwargs)) or str(path))
    loaded = build_encoder("efficientnetb0", 64, "imagenet").model
    np.testing.assert_array_equal(loaded.get_layer("top_conv").get_weights()[0],
                                  source.get_layer("top_conv").get_weights()[0])
    (args, kwargs), = requests
    assert kwargs["cache_subdir"] == "models" and kwargs["file_hash"]


def test_jit_and_precision_switches(monkeypatch, tmp_path):
    assert resolve_jit_compile(True) is True and resolve_mixed_precision(False) == "float32"
    assert resolve_mixed_precision(True) == "mixed_float16"
    assert resolve_mixed_precision("mixed_bfloat16") == "mixed_bfloat16"
    monkeypatch.setattr(precision, "gpu_available", lambda: False)
    assert resolve_jit_compile("auto") is False and resolve_mixed_precision("auto") == "float32"
    cpuinfo, real = tmp_path / "cpuinfo", precision.cpu_has_bfloat16
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: real(str(cpuinfo)))
    for flags, best in (("fpu avx2 avx512f", "float32"), ("fpu avx512_bf16 avx2", "mixed_bfloat16"),
                        ("amx_bf16 amx_tile", "mixed_bfloat16")):
        cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
        assert precision.best_inference_precision() == best, flags
    assert real(str(tmp_path / "missing")) is False
    monkeypatch.setattr(precision, "gpu_available", lambda: True)
    assert resolve_jit_compile("auto") is True and resolve_mixed_precision("auto") == "mixed_float16"
    assert precision.best_inference_precision() == "mixed_float16"


@pytest.mark.parametrize("setting, compute", [("true", "float16"),
                                              ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_network_keeps_float32_outputs(setting, compute):
    policy = tf.keras.mixed_precision.global_policy().name
    model = build_model(_config(f"train.mixed_precision={setting}", "model.prune_level=1",
                                "model.classification_head=false"))
    assert tf.keras.mixed_precision.global_policy().name == policy
    assert model.get_layer("x01_conv1").compute_dtype == compute
    assert model.output.dtype == tf.float32


@pytest.mark.slow
def test_xla_training_step_runs_and_a_few_steps_fit_a_tiny_batch():
    # without the label head, whose pooling of the deepest features would take the whole
    # encoder: compiling a pruned network's step takes under half the time
    config = _config("model.deep_supervision=true", "model.prune_level=2",
                     "model.classification_head=false")
    model = build_model(config)
    losses, loss_weights = make_losses(config)
    model.compile(tf.keras.optimizers.Adam(1e-3), loss=losses, loss_weights=loss_weights,
                  metrics=make_metrics(config), jit_compile=True)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 64, 64, 3)).astype("float32")
    mask = np.zeros((2, 64, 64, 1), "float32")
    mask[0, 16:40, 20:44] = 1
    targets = {"mask": mask, "mask_1": mask}
    first = model.train_on_batch(images, targets, return_dict=True)
    assert set(first) >= {"loss", "mask_loss", "mask_1_loss", "mask_score"}
    assert all(np.isfinite(value) for value in first.values())
    for _ in range(5):
        last = model.train_on_batch(images, targets, return_dict=True)
    assert last["loss"] < 0.8 * first["loss"]


def test_the_deepest_feature_is_the_top_or_the_last_block():
    """``block`` taps what the top's 1x1 convolution takes (320 channels at B0, as smp does);
    ``top`` (the default) is the network every run so far was trained as."""
    top, block = (build_model(_config(f"model.deepest_feature={deepest}"))
                  for deepest in ("top", "block"))
    assert top.get_layer("x40_proj").input.shape[-1] == 1280
    assert block.get_layer("x40_proj").input.shape[-1] == 320
    assert block.get_layer(feature_layer_names(block, "efficientnetb0", "block")[-1]
                           ).output.shape[1] == 2
    assert "top_conv" in {layer.name for layer in top.layers}
    assert not {"top_conv", "top_bn", "top_activation"} & {layer.name for layer in block.layers}
    frozen = {layer.name for layer in encoder_layers(block, "efficientnetb0")}
    assert "block7a_project_conv" in frozen and not any(n.startswith("x") for n in frozen)
    # the top's conv and batch norm; 960 fewer inputs to the stride-32 projection and the label
    assert top.count_params() - block.count_params() == 320 * 1280 + 4 * 1280 + 960 * (256 + 1)
    with pytest.raises(ConfigError, match="model.deepest_feature: expected one of top, block"):
        _config("model.deepest_feature=head")


def test_block_skips_take_the_last_block_at_each_stride():
    """``model.skip_features: block`` takes each stride's last block output (16, 24, 40 and
    112 channels at B0, timm's features as smp takes them), with the deepest block the taps
    of smp's UnetPlusPlus; the default (``expand``) is the network of every earlier run."""
    block = build_model(_config("model.skip_features=block", "model.deepest_feature=block"))
    names = feature_layer_names(block, "efficientnetb0", "block", "block")
    assert names == ("block1a_project_bn", "block2b_add", "block3b_add", "block5c_add",
                     "block_features")
    assert [block.get_layer(n).output.shape[1] for n in names] == [64 // s for s in STRIDES]
    assert [block.get_layer(f"x{i}0_proj").input.shape[-1] for i in range(5)] == \
        [16, 24, 40, 112, 320]
    expand = build_model(_config())
    assert [expand.get_layer(f"x{i}0_proj").input.shape[-1] for i in range(4)] == \
        [96, 144, 240, 672]
    assert count_flops(block) < count_flops(expand)       # 1.05 against 1.07 GFLOPs at 64
    frozen = {layer.name for layer in encoder_layers(block, "efficientnetb0")}
    assert "block7a_project_conv" in frozen and not any(n.startswith("x") for n in frozen)
    assert config_from_dict({"model": {"encoder": "efficientnetb0"}}).model.skip_features == \
        "expand"
    with pytest.raises(ConfigError, match="model.skip_features: expected one of expand, block"):
        _config("model.skip_features=top")


def test_inner_nodes_as_wide_as_the_encoder_features_as_smp_builds_them(tmp_path):
    """``model.inner_widths: encoder``: the nodes inside the last diagonal as wide as their
    level's encoder feature, taken without a projection (as smp's UnetPlusPlus); the last
    diagonal keeps decoder_filters' widths, in a pruned network too, so the full network's
    weights load into it by name."""
    smp_like = ("model.skip_features=block", "model.deepest_feature=block",
                "model.inner_widths=encoder")
    full = build_model(_config(*smp_like))
    widths = {layer.name: layer.output_shape[-1] for layer in full.layers
              if layer.name.startswith("x") and layer.name.endswith("_conv2")}
    assert widths == {"x01_conv2": 16, "x02_conv2": 16, "x03_conv2": 16, "x11_conv2": 24,
                      "x12_conv2": 24, "x21_conv2": 40, "x04_conv2": 32, "x13_conv2": 64,
                      "x22_conv2": 128, "x31_conv2": 256}
    assert not any(layer.name.endswith("_proj") for layer in full.layers)
    assert count_flops(full) < 0.6 * count_flops(build_model(_config(*smp_like[:2])))
    pruned = build_model(_config(*smp_like, "model.prune_level=2"))
    full.save_weights(str(tmp_path / "full.h5"))
    pruned.load_weights(str(tmp_path / "full.h5"), by_name=True)
    for pruned_weights, full_weights in zip(pruned.get_layer("x02_conv2").get_weights(),
                                            full.get_layer("x02_conv2").get_weights()):
        np.testing.assert_array_equal(pruned_weights, full_weights)
    assert config_from_dict({"model": {"encoder": "efficientnetb0"}}).model.inner_widths == \
        "level"
    with pytest.raises(ConfigError, match="set model.skip_features: block with it"):
        _config("model.inner_widths=encoder")


def test_a_block_run_reloads_as_a_block_network(tmp_path):
    """A run's config.yaml carries model.deepest_feature, so its weights load into the network
    it was trained as; a config.yaml from before the option reads as ``top``."""
    config = _config("model.deepest_feature=block", "model.prune_level=1")
    dump_config(config, tmp_path / rundir.CONFIG)
    tf.keras.utils.set_random_seed(3)
    trained = build_model(config)
    trained.save_weights(str(tmp_path / rundir.BEST_WEIGHTS))
    loaded = rundir.load_model(tmp_path, rundir.load_run_config(tmp_path))
    assert loaded.get_layer("label_logits").input.shape[-1] == 320       # the head pools it
    images = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    assert np.array_equal(loaded(images)[0], trained(images)[0])
    assert config_from_dict({"model": {"encoder": "efficientnetb0"}}).model.deepest_feature == "top"
