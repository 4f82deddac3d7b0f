"""The training augmentation policy (albumentations 2.x) and its bridge into tf.data.

:func:`build_policy` turns an :class:`~keras_ptx.config.AugmentConfig` into an
``albumentations.Compose`` that works on uint8 gray images and 0/1 masks of ``size`` x
``size``; every geometric transform moves the mask with the image (nearest-neighbour for
masks). :class:`GraphAugmenter` runs such a policy inside a ``tf.data`` map through
``tf.numpy_function``, one call per batch, each call borrowing a policy of its own from a
free list, seeded per example.

Seeding: albumentations 2.0.8's ``Compose(seed=s)`` / ``set_random_seed(s)`` gives *every*
transform its own generator started from the same ``s``, so their "apply?" draws coincide
(with p = 0.5 / 0.4 / 0.3 / 0.25 a crop would always come with a distortion, intensity change
and flip). :func:`reseed` instead hands the whole policy one shared stream, so the transforms
draw independently and the same seed still gives the same result.
"""
from __future__ import annotations

import random
from typing import Callable

import albumentations as A
import cv2
import numpy as np

from keras_ptx.config import AugmentConfig
from keras_ptx.tf_setup import tf


def build_policy(config: AugmentConfig, size: int, seed: int | None = None,
                 train_crop: int = 0) -> A.Compose:
    """The paper's policy with every probability and parameter taken from ``config`` (none of
    it when ``config.enabled`` is false); with ``train_crop``, a last crop of that side that
    holds mask pixels whenever the image has some (``CropNonEmptyMaskIfExists``)."""
    intensity, distortion, crop = config.intensity, config.distortion, config.random_sized_crop
    nearest = {"mask_interpolation": cv2.INTER_NEAREST}
    crop_range = (max(1, int(crop.min_fraction * size)), min(size, int(crop.max_fraction * size)))
    if crop_range[0] > crop_range[1]:
        raise ValueError(f"augment.random_sized_crop: min_fraction {crop.min_fraction} is above "
                         f"max_fraction {crop.max_fraction}")
    if train_crop and (train_crop % 32 or not 32 <= train_crop <= size):
        raise ValueError(f"data.train_crop: {train_crop} must be a multiple of 32 (the encoder "
                         f"halves it five times) up to data.image_size ({size}), or 0")
    transforms = [
        A.HorizontalFlip(p=config.horizontal_flip.p),
        A.OneOf([
            A.RandomBrightnessContrast(brightness_limit=intensity.brightness_limit,
                                       contrast_limit=intensity.contrast_limit, p=1.0),
            A.RandomGamma(gamma_limit=tuple(intensity.gamma_limit), p=1.0),
        ], p=intensity.p),
        A.OneOf([
            A.ElasticTransform(alpha=distortion.elastic_alpha, sigma=distortion.elastic_sigma,
                               p=1.0, **nearest),
            A.GridDistortion(num_steps=distortion.grid_num_steps,
                             distort_limit=distortion.grid_distort_limit, p=1.0, **nearest),
            A.OpticalDistortion(distort_limit=distortion.optical_distort_limit, p=1.0, **nearest),
        ], p=distortion.p),
        A.RandomSizedCrop(min_max_height=crop_range, size=(size, size), p=crop.p, **nearest),
    ] if config.enabled else []
    if train_crop:
        transforms.append(A.CropNonEmptyMaskIfExists(height=train_crop, width=train_crop))
    policy = A.Compose(transforms)
    if seed is not None:
        reseed(policy, seed)
    return policy


def reseed(policy: A.BaseCompose, seed: int) -> None:
    """Give the whole policy one random stream started from ``seed`` (see module doc)."""
    seed = int(seed) % 2**63
    policy.set_random_state(np.random.default_rng(seed), random.Random(seed))


class GraphAugmenter:
    """Apply an albumentations policy to batches ``(images, masks, seeds)`` in a tf.data map.

    One ``tf.numpy_function`` call per batch (uint8 [B, S, S, 1] images and masks, int64 [B]
    seeds) loops over its examples, so the Python/GIL hand-over is paid once per batch rather
    than once per image. Policies are not thread-safe: each call borrows one from a free list
    and returns it, so there are as many as calls ever ran at once, each built once
    (``threading.local`` would not do: TensorFlow's threads get a fresh Python thread state
    per call, which rebuilt the policy, ~1 ms, for every batch). Each example's policy stream
    is restarted from its own seed, so its result depends neither on the thread, nor on the
    order, nor on the other examples of its batch.
    """

    def __init__(self, make_policy: Callable[[], A.BaseCompose], out_size: int | None = None):
        self._make_policy = make_policy
        self._out_size = out_size             # None: the policy keeps the input size
        self._idle: list[A.BaseCompose] = []  # list.pop/append are atomic under the GIL

    def _borrow(self) -> A.BaseCompose:
        try:
            return self._idle.pop()
        except IndexError:
            return self._make_policy()

    def _apply(self, images: np.ndarray, masks: np.ndarray, seeds) -> tuple[np.ndarray, np.ndarray]:
        policy = self._borrow()
        try:
            outs = []
            for image, mask, seed in zip(images, masks, seeds):
                reseed(policy, seed)
                outs.append(policy(image=image[..., 0], mask=mask[..., 0]))
        finally:
            self._idle.append(policy)
        return tuple(np.stack([out[key] for out in outs])[..., None] for key in ("image", "mask"))

    def __call__(self, images, masks, seeds):
        new_images, new_masks = tf.numpy_function(
            self._apply, [images, masks, seeds], [tf.uint8, tf.uint8], stateful=False,
            name="albumentations")
        side = self._out_size or images.shape[1]
        new_images.set_shape([images.shape[0], side, side, 1])
        new_masks.set_shape([masks.shape[0], side, side, 1])
        return new_images, new_masks


def graph_augmenter(config: AugmentConfig, size: int, train_crop: int = 0) -> GraphAugmenter:
    """The configured policy, ready to map over batches ``(images, masks, seeds)``.

    Switches OpenCV's own thread pool off for the process (``cv2.setNumThreads(0)``, as
    albumentations advises for data loaders): tf.data already runs the calls in parallel, and
    OpenCV's waiting workers took CPU from them (256 px, 2 cores: ~1,000 -> ~1,250 img/s at 2
    calls).
    """
    build_policy(config, size, train_crop=train_crop)  # fail now, not inside a tf.data thread
    cv2.setNumThreads(0)
    return GraphAugmenter(lambda: build_policy(config, size, train_crop=train_crop),
                          train_crop or None)
