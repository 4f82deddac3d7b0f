"""The albumentations policy: configured as asked, masks move with images, seeds reproduce."""
import albumentations as A
import cv2
import numpy as np
import pytest

from keras_ptx.config import AugmentConfig, CropConfig, DistortionConfig, FlipConfig, IntensityConfig
from keras_ptx.input.augment import GraphAugmenter, build_policy, graph_augmenter, reseed
from keras_ptx.tf_setup import tf

SIZE = 64
# strong enough that each transform visibly moves a 64x64 square
STRONG = AugmentConfig(
    horizontal_flip=FlipConfig(p=1.0),
    distortion=DistortionConfig(elastic_alpha=300.0, elastic_sigma=6.0, grid_distort_limit=0.5,
                                optical_distort_limit=0.8),
    random_sized_crop=CropConfig(p=1.0, min_fraction=0.5, max_fraction=0.7))


def _square():
    image = np.full((SIZE, SIZE, 1), 60, np.uint8)
    mask = np.zeros((SIZE, SIZE, 1), np.uint8)
    image[10:34, 8:30] = 250
    mask[10:34, 8:30] = 1
    return image, mask


def _batch(image, mask, n):
    return tf.constant(np.stack([image] * n)), tf.constant(np.stack([mask] * n))


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _geometric(policy):
    flip, _, distortions, crop = policy.transforms
    return [flip, *distortions.transforms, crop]


def test_policy_takes_every_setting_from_the_config():
    config = AugmentConfig(
        horizontal_flip=FlipConfig(p=0.1),
        intensity=IntensityConfig(p=0.2, brightness_limit=0.1, contrast_limit=0.15, gamma_limit=(90, 110)),
        distortion=DistortionConfig(p=0.3, elastic_alpha=2.0, elastic_sigma=40.0, grid_num_steps=7,
                                    grid_distort_limit=0.2, optical_distort_limit=0.07),
        random_sized_crop=CropConfig(p=0.4, min_fraction=0.5, max_fraction=0.75))
    flip, intensity, distortion, crop = build_policy(config, 256).transforms
    assert isinstance(flip, A.HorizontalFlip) and flip.p == 0.1
    brightness, gamma = intensity.transforms
    assert intensity.p == 0.2 and brightness.brightness_limit == pytest.approx((-0.1, 0.1))
    assert brightness.contrast_limit == pytest.approx((-0.15, 0.15)) and tuple(gamma.gamma_limit) == (90, 110)
    elastic, grid, optical = distortion.transforms
    assert distortion.p == 0.3 and (elastic.alpha, elastic.sigma) == (2.0, 40.0)
    assert grid.num_steps == 7 and grid.distort_limit == pytest.approx((-0.2, 0.2))
    assert optical.distort_limit == pytest.approx((-0.07, 0.07))
    assert isinstance(crop, A.RandomSizedCrop) and crop.p == 0.4
    assert tuple(crop.min_max_height) == (128, 192) and tuple(crop.size) == (256, 256)


def test_bad_crop_range_is_a_clear_error():
    with pytest.raises(ValueError, match="min_fraction 0.9 is above max_fraction 0.5"):
        build_policy(AugmentConfig(random_sized_crop=CropConfig(min_fraction=0.9, max_fraction=0.5)), 64)


@pytest.mark.parametrize("index,name", enumerate(
    ["HorizontalFlip", "ElasticTransform", "GridDistortion", "OpticalDistortion", "RandomSizedCrop"]))
def test_mask_moves_with_the_image(index, name):
    transform = _geometric(build_policy(STRONG, SIZE))[index]
    assert type(transform).__name__ == name
    augment = GraphAugmenter(lambda: A.Compose([transform]))
    image, mask = _square()
    seeds = np.arange(4)
    images, masks = (t.numpy() for t in augment(*_batch(image, mask, len(seeds)), seeds))
    assert images.shape == masks.shape == (4, SIZE, SIZE, 1) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}                        # nearest for masks
    moved = []
    for seed, new_image, new_mask in zip(seeds, images, masks):
        bright, labelled = new_image[..., 0] > 155, new_mask[..., 0] > 0
        assert _iou(bright, labelled) > 0.9, (name, seed)
        moved.append(_iou(labelled, mask[..., 0] > 0))
    assert np.mean(moved) < 0.9                                   # the square really moved


def test_same_seed_same_result_different_seed_different_result():
    policy = build_policy(STRONG, SIZE)
    image, mask = _square()
    image = image[..., 0]

    def run(seed):
        reseed(policy, seed)
        return policy(image=image, mask=mask[..., 0])["image"]

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def test_reseeded_transforms_draw_independently():
    # albumentations' Compose(seed=...) starts every transform from the same seed, so two p=0.5
    # transforms would always fire together; reseed must give all four combinations.
    policy = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], save_applied_params=True)
    image = np.zeros((8, 8), np.uint8)
    combos = set()
    for seed in range(64):
        reseed(policy, seed)
        combos.add(tuple(name for name, _ in policy(image=image)["applied_transforms"]))
    assert len(combos) == 4


def test_graph_augmenter_in_a_parallel_map_is_deterministic():
    built = []
    augment = GraphAugmenter(lambda: built.append(1) or build_policy(STRONG, SIZE))
    images, masks = _batch(*_square(), 3)
    ds = tf.data.Dataset.range(24).batch(3).map(lambda s: augment(images, masks, s),
                                                num_parallel_calls=2)
    assert ds.element_spec[0].shape.as_list() == [3, SIZE, SIZE, 1]
    first, second = ([i.numpy() for i, _ in ds] for _ in range(2))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # 16 batches, at most 2 at once: each policy is built once, not once per batch
    assert len(built) <= 2


def test_an_example_comes_out_the_same_whatever_its_batch():
    augment = GraphAugmenter(lambda: build_policy(STRONG, SIZE))
    images, masks = _batch(*_square(), 3)
    together = augment(images, masks, np.array([5, 6, 7]))[0].numpy()
    alone = augment(images[:1], masks[:1], np.array([6]))[0].numpy()
    np.testing.assert_array_equal(together[1], alone[0])
    assert not np.array_equal(together[0], together[1])


def test_graph_augmenter_switches_opencv_threads_off():
    """tf.data runs the calls in parallel; OpenCV's own pool would only compete with them."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        graph_augmenter(AugmentConfig(), SIZE)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
