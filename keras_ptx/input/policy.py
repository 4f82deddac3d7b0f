"""The training augmentation policy (albumentations 2.x), free of TensorFlow.

:func:`build_policy` turns an :class:`~keras_ptx.config.AugmentConfig` into an
``albumentations.Compose`` that works on uint8 gray images and 0/1 masks of ``size`` x
``size``; every geometric transform moves the mask with the image (nearest-neighbour for
masks). :func:`augment_batch` runs a policy over a batch, one seed per example; the tf.data
bridge (:mod:`keras_ptx.input.augment`) calls it in its own threads or in worker processes
(:mod:`keras_ptx.input.workers`), which import this module without TensorFlow.

Seeding: albumentations 2.0.8's ``Compose(seed=s)`` / ``set_random_seed(s)`` gives *every*
transform its own generator started from the same ``s``, so their "apply?" draws coincide
(with p = 0.5 / 0.4 / 0.3 / 0.25 a crop would always come with a distortion, intensity change
and flip). :func:`reseed` instead hands the whole policy one shared stream, so the transforms
draw independently and the same seed still gives the same result.
"""
from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np

from keras_ptx.config import AugmentConfig
from keras_ptx.input.border import Border, border_weights


def build_policy(config: AugmentConfig, size: int, seed: int | None = None,
                 train_crop: int = 0) -> A.Compose:
    """The paper's policy with every probability and parameter taken from ``config`` (none of
    it when ``config.enabled`` is false); with ``train_crop``, a last crop of that side that
    holds mask pixels whenever the image has some (``CropNonEmptyMaskIfExists``)."""
    intensity, distortion, crop = config.intensity, config.distortion, config.random_sized_crop
    nearest = {"mask_interpolation": cv2.INTER_NEAREST}
    crop_range = (max(1, int(crop.min_fraction * size)),
                  max(1, min(size, int(crop.max_fraction * size))))
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


def augment_batch(policy: A.BaseCompose, images: np.ndarray, masks: np.ndarray, seeds,
                  out_images: np.ndarray, out_masks: np.ndarray, border: Border | None = None,
                  out_weights: np.ndarray | None = None) -> None:
    """Augment uint8 [B, S, S, 1] ``images`` and ``masks`` into ``out_images``/``out_masks``
    ([B, T, T, 1]), restarting the policy's stream from each example's seed, so an example's
    result depends neither on the thread or process, nor on the rest of its batch. With
    ``border``, also each augmented mask's border weights into float32 ``out_weights``."""
    for i, (image, mask, seed) in enumerate(zip(images, masks, seeds)):
        reseed(policy, seed)
        out = policy(image=image[..., 0], mask=mask[..., 0])
        out_images[i, ..., 0] = out["image"]
        out_masks[i, ..., 0] = out["mask"]
        if border is not None:
            out_weights[i, ..., 0] = border_weights(out["mask"], border)
