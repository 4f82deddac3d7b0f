"""train.loss.border_bce: U-Net's border weights against the formula, the loss term against a
hand computation, and a short training run with the term on."""
import numpy as np
import pytest

from keras_ptx.config import load_config
from keras_ptx.data.records_dir import RecordsDir
from keras_ptx.input.pipeline import make_dataset
from keras_ptx.input.border import Border, border_for, border_weights
from keras_ptx.model.losses import border_bce, mask_loss
from keras_ptx.tf_setup import tf

from test_train import SLIM, TEST_CONFIG, _history, write_records

def _expected(objects: list[np.ndarray], shape, border: Border) -> np.ndarray:
    """The formula by brute force: every pixel's distance to every pixel of each object."""
    rows, cols = np.indices(shape)
    pixels = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(float)
    distances = np.stack([
        np.sqrt(((pixels[:, None] - np.argwhere(obj)[None].astype(float)) ** 2).sum(-1)).min(1)
        for obj in objects], axis=1)
    distances.sort(axis=1)
    d1 = distances[:, 0]
    d2 = distances[:, 1] if len(objects) > 1 else d1
    inside = np.any(objects, axis=0).ravel()
    weights = np.where(inside, 1.0, 1.0 + border.w0 * np.exp(-(d1 + d2) ** 2
                                                              / (2 * border.sigma ** 2)))
    return weights.reshape(shape)


@pytest.mark.parametrize("sigma", [1.0, 3.0])     # at 1, each lesion's window is a part of the grid
def test_border_weights_follow_the_formula_for_two_objects_one_and_none(sigma):
    border = Border(w0=10.0, sigma=sigma)
    shape = (14, 18)
    first, second = np.zeros(shape, bool), np.zeros(shape, bool)
    first[2:6, 2:5] = True
    second[8:12, 9:16] = True
    second[7, 16] = True                        # diagonal neighbour: the same 8-connected object
    mask = (first | second).astype(np.uint8)
    got = border_weights(mask, border)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _expected([first, second], shape, border), rtol=1e-5)
    assert got[6, 6] > got[1, 4] >= 1.0 and got[3, 3] == 1.0    # most between the lesions
    np.testing.assert_allclose(border_weights(first.astype(np.uint8), border),
                               _expected([first], shape, border), rtol=1e-5)
    np.testing.assert_array_equal(border_weights(np.zeros(shape, np.uint8), border),
                                  np.ones(shape, np.float32))


def test_sigma_is_in_pixels_at_1024_scaled_to_the_grid_and_the_term_is_off_by_default():
    assert border_for(load_config(TEST_CONFIG)) is None
    config = load_config(TEST_CONFIG, ["train.loss.border_bce=0.5", "train.loss.border_w0=4",
                                       "train.loss.border_sigma=8"])
    assert border_for(config) == Border(w0=4.0, sigma=0.5)          # 8 px at 1024 -> 64 px grid


def test_the_border_term_is_weighted_bce_by_hand():
    gt = np.array([[1, 0], [0, 1]], np.float32).reshape(1, 2, 2, 1)
    weights = np.array([[1, 3], [2, 1]], np.float32).reshape(1, 2, 2, 1)
    pr = np.array([[0.8, 0.4], [0.3, 0.6]], np.float32).reshape(1, 2, 2, 1)
    by_hand = np.mean(-weights * (gt * np.log(pr) + (1 - gt) * np.log(1 - pr)))
    np.testing.assert_allclose(border_bce(tf.constant(gt), tf.constant(weights), tf.constant(pr)),
                               by_hand, rtol=1e-5)
    # in the mask loss the weights come as the truth's second channel, beside the other terms
    config = load_config(TEST_CONFIG, ["train.loss.bce=0.5", "train.loss.dice=0",
                                       "train.loss.border_bce=2"]).train.loss
    plain_bce = np.mean(-(gt * np.log(pr) + (1 - gt) * np.log(1 - pr)))
    truth = tf.constant(np.concatenate([gt, weights], axis=-1))
    np.testing.assert_allclose(mask_loss(config)(truth, tf.constant(pr)),
                               0.5 * plain_bce + 2 * by_hand, rtol=1e-5)


def test_training_and_validation_batches_carry_the_weights_of_their_masks(tmp_path):
    data = write_records(tmp_path / "records", "train", 8, seed=1)
    write_records(data, "val", 4, seed=2)
    records = RecordsDir.open(str(data))
    plain = load_config(TEST_CONFIG)
    assert make_dataset(plain, records, "train").element_spec[1]["mask"].shape[-1] == 1
    config = load_config(TEST_CONFIG, ["train.loss.border_bce=1", "train.loss.border_sigma=60",
                                       "augment.enabled=true"])
    border = border_for(config)
    for split in ("train", "val"):
        _, targets = next(iter(make_dataset(config, records, split)))
        truth = targets["mask"].numpy()
        assert truth.shape[-1] == 2 and truth[..., 1].max() > 1.0
        for mask, weights in zip(truth[..., 0], truth[..., 1]):
            np.testing.assert_allclose(weights, border_weights(mask.astype(np.uint8), border),
                                       rtol=1e-6)      # numpy's exp may round a last bit apart


@pytest.mark.slow
def test_a_short_run_trains_with_the_border_term(tmp_path):
    from keras_ptx.training.run import train

    data = write_records(tmp_path / "records", "train", 8, seed=1)
    write_records(data, "val", 4, seed=2)
    config = load_config(TEST_CONFIG, [*SLIM, "train.epochs=1", "train.steps_per_epoch=1",
                                       "train.tensorboard_images=0", "train.loss.border_bce=1",
                                       "train.loss.border_sigma=40"])
    train(config, str(data), tmp_path / "run", echo=lambda line: None)
    row, = _history(tmp_path / "run")
    assert np.isfinite(float(row["loss"])) and np.isfinite(float(row["val_loss"]))
    assert 0.0 <= float(row["val_score"]) <= 1.0
