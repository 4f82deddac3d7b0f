"""keras_ptx.data.geometry and its TensorFlow twin: the padding to a square makes no edge (#21)."""
import cv2
import numpy as np
import pytest

from keras_ptx.data import geometry
from keras_ptx.serving.export import to_square_tf
from keras_ptx.tf_setup import tf

FLAT = 200                          # the gray level of the band along the image's border
BAND = 12                           # its width in original pixels


def _textured(height, width, seed):
    """Smooth random texture over the full 0..255 range, up to the borders."""
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 3)
    return np.round(255 * (gray - gray.min()) / (gray.max() - gray.min())).astype(np.uint8)


def _numpy_rule(gray, size):
    return geometry.image_to_square(gray, size).astype(np.float32)


def _tf_rule(gray, size):
    return to_square_tf(tf.constant(gray[..., None], tf.float32), size).numpy()[..., 0]


def test_edges_are_replicated_and_masks_padded_with_zeros():
    image = _textured(30, 90, 0)
    square = geometry.pad_to_square(image)
    assert square.shape == (90, 90)
    np.testing.assert_array_equal(square[:30], image)
    np.testing.assert_array_equal(square[30:], np.repeat(image[-1:], 60, axis=0))
    mask = np.ones((90, 30), np.float32)
    padded = geometry.pad_to_square(mask, label=True)
    assert padded[:, :30].all() and not padded[:, 30:].any()


@pytest.mark.parametrize("rule", [_numpy_rule, _tf_rule], ids=["numpy", "tf"])
@pytest.mark.parametrize("shape", [(100, 77), (77, 100), (90, 30)])
@pytest.mark.parametrize("size", [64, 160])
def test_an_image_flat_at_its_border_has_no_step_where_the_padding_begins(rule, shape, size):
    height, width = shape
    gray = _textured(height, width, 1)
    gray[-BAND:], gray[:, -BAND:] = FLAT, FLAT
    square = rule(gray, size)
    scale = size / max(shape)
    inner = int(np.floor((height - BAND / 2) * scale)), int(np.floor((width - BAND / 2) * scale))
    # from half the band inside the image to the grid's edge: one gray level, no step
    assert np.abs(square[inner[0]:] - FLAT).max() <= 1
    assert np.abs(square[:, inner[1]:] - FLAT).max() <= 1


@pytest.mark.parametrize("shape", [(64, 64), (200, 200), (100, 77), (333, 200), (40, 30),
                                   (77, 100), (200, 333), (30, 40), (30, 90), (180, 60)])
def test_tf_rule_is_the_numpy_rule_within_one_gray_level(shape):
    gray = _textured(*shape, seed=sum(shape))
    assert np.abs(_tf_rule(gray, 64) - _numpy_rule(gray, 64)).max() <= 1.0
