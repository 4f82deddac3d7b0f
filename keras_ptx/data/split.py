"""Patient-grouped, label-stratified assignment of images to bins (train/val, or K folds).

Images of one patient (same non-empty ``patient_hash``) always land in the same bin. Positive
and negative images are apportioned to the bins separately, so each bin's positive share
matches the whole set's to within one image whenever enough single-image patients remain to
fill the last places (as in SIIM, where most patients have one image). Deterministic in
``seed``; the order of the input does not matter.
"""
from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence


def _apportion(total: int, fractions: Sequence[float]) -> list[int]:
    """Integer targets summing to ``total``, proportional to ``fractions`` (largest remainder)."""
    exact = [total * f / sum(fractions) for f in fractions]
    targets = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda b: (targets[b] - exact[b], b))
    for b in by_remainder[:total - sum(targets)]:
        targets[b] += 1
    return targets


def assign_bins(images: Mapping[str, tuple[bool, str]], fractions: Sequence[float],
                seed: int) -> dict[str, int]:
    """Map each image id to a bin index.

    ``images``: image id -> (positive, patient_hash); an empty hash means a patient of its own.
    ``fractions``: the share of images each bin should get (e.g. ``(0.9, 0.1)``).
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for image_id in sorted(images):
        positive, patient = images[image_id]
        groups[patient or f"image:{image_id}"].append(image_id)
    rng = random.Random(seed)
    keys = sorted(groups)
    rng.shuffle(keys)
    n_pos = sum(1 for positive, _ in images.values() if positive)
    target = {True: _apportion(n_pos, fractions), False: _apportion(len(images) - n_pos, fractions)}
    have = {True: [0] * len(fractions), False: [0] * len(fractions)}
    bins: dict[str, int] = {}

    def put(members: list[str], b: int) -> None:
        for image_id in members:
            bins[image_id] = b
            have[images[image_id][0]][b] += 1

    # Patients with several images first, spread over the bins in proportion to the bins'
    # sizes (each goes to the bin with the most room left, relative to its size) ...
    multi = [groups[k] for k in keys if len(groups[k]) > 1]
    sizes = [target[True][b] + target[False][b] for b in range(len(fractions))]
    for members in multi:
        def room(b: int) -> float:
            return (sizes[b] - have[True][b] - have[False][b]) / max(sizes[b], 1)
        put(members, max(range(len(fractions)), key=lambda b: (room(b), -b)))
    # ... then single images fill each bin's remaining positive and negative places.
    for members in (groups[k] for k in keys if len(groups[k]) == 1):
        label = images[members[0]][0]
        put(members, max(range(len(fractions)),
                         key=lambda b: (target[label][b] - have[label][b], -b)))
    return bins
