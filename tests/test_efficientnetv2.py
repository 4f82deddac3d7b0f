"""EfficientNetV2 (tf.keras.applications) through the encoder registry: each variant's UNet++
taps its features at strides 2 to 32; its weights come from a local file or the download
cache, with the clear offline error; and configs/efficientnetv2-test.yaml trains a run whose
export serves the masks bin/predict writes (0..255 input: the normalisation the run records)."""
import csv

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from keras_ptx import rundir
from keras_ptx.cli import main
from keras_ptx.config import ConfigError, load_config
from keras_ptx.data import rle
from keras_ptx.data.dicom import read_dicom
from keras_ptx.data.geometry import image_to_square
from keras_ptx.inference.ensemble import Ensemble
from keras_ptx.inference.postprocess import PostProcess
from keras_ptx.inference.trained import TrainedRun
from keras_ptx.model import build_model, feature_layer_names
from keras_ptx.model.encoders import REGISTRY, STRIDES, WeightsError, build_encoder
from keras_ptx.serving import SERVING_DEFAULT
from keras_ptx.serving.export import export_run, read_metadata
from keras_ptx.synthetic.dicom_writer import write_dicom
from keras_ptx.tf_setup import tf
from test_evaluate_predict import _radiograph
from test_train import REPO, write_records

V2_CONFIG = REPO / "configs" / "efficientnetv2-test.yaml"
SIZE = 64
SHAPES = [(64, 64), (64, 48), (48, 64)]     # on the grid as they are, or padded only


def _config(*overrides):
    return load_config(V2_CONFIG, overrides)


@pytest.mark.parametrize("encoder", [
    "efficientnetv2b0", *(pytest.param(name, marks=pytest.mark.slow) for name in
                          ("efficientnetv2b1", "efficientnetv2b2", "efficientnetv2b3",
                           "efficientnetv2s"))])
def test_each_v2_unetpp_taps_its_encoder_at_strides_2_to_32(encoder):
    model = build_model(_config(f"model.encoder={encoder}"))
    taps = feature_layer_names(model, encoder)
    assert [model.get_layer(name).output.shape[1] for name in taps] == \
        [SIZE // stride for stride in STRIDES]
    # each tap is the encoder's last layer at its stride (the deepest features there)
    encoder = tf.keras.Model(model.input, model.get_layer(taps[-1]).output)
    last = {SIZE // layer.output.shape[1]: layer.name for layer in encoder.layers
            if len(layer.output.shape) == 4 and layer.output.shape[1] > 1}
    assert tuple(last[stride] for stride in STRIDES) == taps
    assert model.output_names == ["mask", "label"]
    assert [tuple(o.shape) for o in model(np.full((1, SIZE, SIZE, 3), 128.0, np.float32))] == \
        [(1, SIZE, SIZE, 1), (1, 1)]


def test_a_v2_config_with_the_imagenet_normalisation_is_refused():
    with pytest.raises(ConfigError, match="efficientnetv2b0 takes 'pixels' input, got "
                                          "'imagenet'; set model.normalization: pixels"):
        build_model(_config("model.normalization=imagenet"))


def test_v2_weights_load_from_a_file_or_the_download_cache_and_say_how_offline(
        monkeypatch, tmp_path):
    source = build_encoder("efficientnetv2b0", SIZE, "none").model
    path = tmp_path / "v2.h5"
    source.save_weights(str(path))
    requests = []
    monkeypatch.setattr(tf.keras.utils, "get_file",
                        lambda *args, **kwargs: requests.append((args, kwargs)) or str(path))
    for weights in (str(path), "imagenet"):
        loaded = build_encoder("efficientnetv2b0", SIZE, weights).model
        for name in ("stem_conv", "block6h_project_conv", "top_conv"):
            np.testing.assert_array_equal(loaded.get_layer(name).get_weights()[0],
                                          source.get_layer(name).get_weights()[0])
    (args, kwargs), = requests
    weights = REGISTRY["efficientnetv2b0"].weights
    assert args == (weights.file_name, weights.url) and weights.file_name == \
        "efficientnetv2-b0_notop.h5"
    assert kwargs == {"cache_subdir": "models", "file_hash": weights.file_hash}

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tf.keras.utils, "get_file", offline)
    with pytest.raises(WeightsError) as error:
        build_encoder("efficientnetv2s", SIZE, "imagenet")
    message = str(error.value)
    assert "could not download the ImageNet weights of efficientnetv2s" in message
    assert REGISTRY["efficientnetv2s"].weights.url in message
    assert "~/.keras/models/efficientnetv2-s_notop.h5" in message
    assert "model.weights: /path/to/efficientnetv2-s_notop.h5" in message


@pytest.fixture(scope="module")
def v2_run(tmp_path_factory):
    """configs/efficientnetv2-test.yaml trained on tiny records, with a rule cut to its maps."""
    root = tmp_path_factory.mktemp("v2")
    data = write_records(root / "records", "train", 16, seed=1, shards=2)
    write_records(data, "val", 6, seed=2)
    result = CliRunner().invoke(main, ["train", "--config", str(V2_CONFIG), "--data", str(data),
                                       "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.mark.slow
def test_the_v2_config_trains_and_records_its_normalisation(v2_run):
    assert rundir.load_run_config(v2_run).model.normalization == "pixels"
    with open(v2_run / rundir.HISTORY, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and all(np.isfinite(float(row["loss"])) for row in rows)
    assert (v2_run / rundir.BEST_WEIGHTS).is_file()


@pytest.mark.slow
def test_the_v2_export_serves_the_masks_bin_predict_writes(v2_run, tmp_path):
    rng = np.random.default_rng(3)
    images = [_radiograph(rng, shape) for shape in SHAPES]
    for k, image in enumerate(images):
        write_dicom(tmp_path / "dicoms" / f"{k}.dcm", image, image_id=f"1.2.5.{k}",
                    study_uid="1.2.5", series_uid="1.2.5.9", patient_id=f"p{k}",
                    patient_name="X")
    pixels = [read_dicom(tmp_path / "dicoms" / f"{k}.dcm").pixels for k in range(len(images))]
    squares = np.stack([image_to_square(p, SIZE) for p in pixels])
    maps, _ = Ensemble(str(v2_run)).predictor("none").from_gray(squares)
    # the network as trained, fed the gray levels as they are (its normalisation is inside)
    direct = TrainedRun(str(v2_run)).model(np.repeat(squares[..., None], 3, -1).astype(np.float32))
    np.testing.assert_allclose(maps, direct[0].numpy()[..., 0], atol=1e-4)
    post = PostProcess(threshold=float(np.quantile(maps, 0.7)))          # ~30% of pixels
    post.save(v2_run / rundir.POSTPROCESS)

    result = CliRunner().invoke(main, ["predict", "--model", str(v2_run), "--dicom-dir",
                                       str(tmp_path / "dicoms"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out" / "submission.csv", newline="") as handle:
        predicted = {row[0]: row[1].strip() for row in list(csv.reader(handle))[1:]}

    export = export_run(str(v2_run), str(tmp_path / "export"))
    assert read_metadata(export)["normalization"] == "pixels"
    serve = tf.saved_model.load(export).signatures[SERVING_DEFAULT]
    served = serve(image_bytes=tf.constant([cv2.imencode(".png", p)[1].tobytes()
                                            for p in pixels]))
    np.testing.assert_allclose(served["probabilities"].numpy(), maps, atol=1e-5)
    area = 0
    for k, (p, rle_text) in enumerate(zip(pixels, served["rle"].numpy())):
        mask = rle.decode(predicted[f"1.2.5.{k}"], *p.shape)
        np.testing.assert_array_equal(served["mask"].numpy()[k, :p.shape[0], :p.shape[1]], mask)
        assert rle_text.decode() == predicted[f"1.2.5.{k}"]
        area += int(mask.sum())
    assert 0 < area < sum(h * w for h, w in SHAPES)         # masks, not all or none
