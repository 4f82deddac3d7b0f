"""Grid search of the post-processing rules on cached probability maps.

:class:`MapCache` keeps each map only as its *level* on the search grid (uint8: how many grid
values lie below the pixel's float32 probability, so ``p > grid[k]`` iff ``level > k``, exactly
as :meth:`PostProcess.apply` compares) plus the truth mask, and per-image histograms of the
levels over all pixels and over truth pixels. From the histograms every pixel threshold and
every "N pixels above the top threshold" gate is a suffix sum, for all images at once. Only the
component filter needs the maps: for each bottom threshold the components are labelled once
per image (scipy), and every minimum area is then a sum over component areas.

The score of a rule is the mean over images of ``where(passes gate, Dice of mask, empty Dice)``,
so over a grid it is one tensor contraction of the gate indicators with the Dice table.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from keras_ptx.inference.postprocess import PostProcess, scale_area
from keras_ptx.inference.score import dice_from_counts

_STEPS = tuple(round(0.05 * i, 2) for i in range(1, 20))      # 0.05 ... 0.95
_HIGH = (0.97, 0.99)                # networks trained with a Dice loss are often this sure
# components within one image only: no connectivity along the batch axis
_BATCH_EIGHT_CONNECTED = np.zeros((3, 3, 3), dtype=bool)
_BATCH_EIGHT_CONNECTED[1] = True


@dataclass(frozen=True)
class SearchGrid:
    """Candidate values; pixel counts at 1024 x 1024 as in the competition."""
    threshold: tuple[float, ...] = _STEPS + _HIGH
    top_threshold: tuple[float, ...] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95) + _HIGH
    min_pixels: tuple[int, ...] = (0, 250, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000)
    bottom_threshold: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    min_area: tuple[int, ...] = (0, 250, 500, 1000, 2000, 3000, 4000, 6000)
    cls_threshold: tuple[float, ...] = _STEPS

    def pixel_thresholds(self) -> np.ndarray:
        """The sorted float32 pixel thresholds that the level encoding resolves."""
        values = np.unique(np.array(self.threshold + self.top_threshold + self.bottom_threshold,
                                    dtype=np.float32))
        if len(values) > 255:
            raise ValueError("at most 255 distinct pixel thresholds fit the uint8 level encoding")
        return values


@dataclass
class MapCache:
    """Probability maps of one split on a ``side`` x ``side`` grid, reduced for the search."""
    grid: SearchGrid
    side: int
    levels: list = field(default_factory=list)        # uint8 [B, S, S] per added batch
    truths: list = field(default_factory=list)        # bool [B, S, S]
    cls_prob: list = field(default_factory=list)      # float32 [B]
    hist_all: list = field(default_factory=list)      # int64 [B, K + 1] pixels per level
    hist_truth: list = field(default_factory=list)    # int64 [B, K + 1] truth pixels per level

    def __post_init__(self):
        self.values = self.grid.pixel_thresholds()

    def add(self, prob, truth, cls_prob) -> None:
        """Add a batch: maps and truth ``[B, S, S]`` or ``[B, S, S, 1]``, image probability ``[B]``."""
        prob = np.asarray(prob, dtype=np.float32).reshape(len(prob), self.side, self.side)
        truth = np.asarray(truth).reshape(prob.shape) > 0.5
        level = np.searchsorted(self.values, prob, side="left").astype(np.uint8)
        bins = len(self.values) + 1
        offset = (np.arange(len(prob)) * bins)[:, None, None]
        self.hist_all.append(np.bincount((level + offset).ravel(), minlength=len(prob) * bins)
                             .reshape(len(prob), bins))
        self.hist_truth.append(np.bincount((level + offset)[truth], minlength=len(prob) * bins)
                               .reshape(len(prob), bins))
        self.levels.append(level)
        self.truths.append(truth)
        self.cls_prob.append(np.asarray(cls_prob, dtype=np.float32).reshape(-1))

    def __len__(self) -> int:
        return sum(len(c) for c in self.cls_prob)

    def index(self, threshold: float) -> int:
        """k such that ``p > threshold`` iff ``level > k`` (threshold must be a grid value)."""
        return int(np.searchsorted(self.values, np.float32(threshold)))

    def above(self, thresholds) -> tuple[np.ndarray, np.ndarray]:
        """(pixels, truth pixels) above each threshold per image: two ``[N, len(thresholds)]``."""
        columns = [self.index(t) + 1 for t in thresholds]
        return (_suffix_sums(np.concatenate(self.hist_all))[:, columns],
                _suffix_sums(np.concatenate(self.hist_truth))[:, columns])

    def proxy_map(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(float32 map, truth) of image i: the map sits just above the grid value below each
        pixel, so every grid rule gives on it exactly the mask it gives on the original map."""
        sizes = np.cumsum([len(b) for b in self.levels])
        batch = int(np.searchsorted(sizes, i, side="right"))
        row = i - (sizes[batch - 1] if batch else 0)
        level = self.levels[batch][row]
        floor = np.concatenate(([0.0], np.nextafter(self.values, np.float32(2))))
        return floor[level].astype(np.float32), self.truths[batch][row]

    def truth_sums(self) -> np.ndarray:
        return np.concatenate(self.hist_truth).sum(1)

    def all_cls_prob(self) -> np.ndarray:
        return np.concatenate(self.cls_prob)


@dataclass
class KindResult:
    """The best rule of one kind, its score, per-image Dice and score profiles for plots."""
    post: PostProcess
    score: float
    dice: np.ndarray                                   # [N] per-image Dice of the best rule
    profiles: dict = field(default_factory=dict)       # parameter -> (values, best score at each)


def search(cache: MapCache, gated: bool = True) -> dict[str, KindResult]:
    """Best rule of each kind on the cache: threshold, triplet (and gated-* when ``gated``).

    Ungated kinds see one always-open gate; gated kinds add the ``cls_threshold`` axis.
    """
    if len(cache) == 0:
        raise ValueError("no images to search post-processing on")
    grid = cache.grid
    truth_sum = cache.truth_sums()
    empty = (truth_sum == 0).astype(np.float64)                 # Dice of an empty mask
    pred, inter = cache.above(grid.threshold)
    threshold_gain = dice_from_counts(inter, pred, truth_sum[:, None]) - empty[:, None]   # [N, T]
    count_gate = _count_gate(cache).astype(np.float64)                                   # [N, Top, Mp]
    mask_gain = _component_dice(cache) - empty[:, None, None]                            # [N, Bot, A]
    gates = {"": (np.ones((len(cache), 1)), (None,))}
    if gated:
        cls = cache.all_cls_prob()[:, None] >= np.array(grid.cls_threshold, np.float32)[None, :]
        gates["gated-"] = (cls.astype(np.float64), grid.cls_threshold)
    results = {}
    for prefix, (cls_gate, cls_values) in gates.items():
        scores = np.einsum("ic,it->ct", cls_gate, threshold_gain) / len(cache) + empty.mean()
        results[prefix + "threshold"] = _best(
            "threshold", scores, {"cls_threshold": cls_values, "threshold": grid.threshold},
            lambda ix: cls_gate[:, ix[0]] * threshold_gain[:, ix[1]] + empty)
        scores = np.einsum("ic,itm,iba->ctmba", cls_gate, count_gate, mask_gain,
                           optimize=True) / len(cache) + empty.mean()
        axes = {"cls_threshold": cls_values, "top_threshold": grid.top_threshold,
                "min_pixels": grid.min_pixels, "bottom_threshold": grid.bottom_threshold,
                "min_area": grid.min_area}
        results[prefix + "triplet"] = _best(
            "triplet", scores, axes,
            lambda ix: cls_gate[:, ix[0]] * count_gate[:, ix[1], ix[2]] * mask_gain[:, ix[3], ix[4]] + empty)
    return results


def choose(results: dict[str, KindResult]) -> KindResult:
    """The best kind; on a tie the simpler one (the order of ``results``) wins."""
    best = None
    for result in results.values():
        if best is None or result.score > best.score + 1e-12:
            best = result
    return best


def _best(kind, scores, axes, per_image) -> KindResult:
    """Arg-max of a score grid whose axes are named by ``axes`` (name -> values, in order)."""
    index = np.unravel_index(int(np.argmax(scores)), scores.shape)
    names = list(axes)
    chosen = {name: axes[name][i] for name, i in zip(names, index)}
    profiles = {}
    for k, name in enumerate(names):
        if chosen[name] is None:
            continue
        others = tuple(j for j in range(scores.ndim) if j != k)
        profiles[name] = (list(axes[name]), scores.max(axis=others).tolist())
    post = PostProcess(kind=kind, **{n: v for n, v in chosen.items() if v is not None})
    return KindResult(post=post, score=float(scores[index]), dice=per_image(index), profiles=profiles)


def _suffix_sums(hist: np.ndarray) -> np.ndarray:
    return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]


def _count_gate(cache: MapCache) -> np.ndarray:
    """[N, Top, MinPixels]: enough pixels above the top threshold (counts scaled to the side)."""
    grid = cache.grid
    pixels, _ = cache.above(grid.top_threshold)
    needed = np.array([scale_area(m, cache.side) for m in grid.min_pixels])
    return pixels[:, :, None] >= needed[None, None, :]


def _component_dice(cache: MapCache) -> np.ndarray:
    """[N, Bottom, MinArea]: Dice of ``p > bottom`` minus components under each minimum area.

    Components of a batch are labelled in one call (no connectivity across images); labels
    run in raster order, so image k holds the labels up to the running maximum of images <= k.
    """
    grid = cache.grid
    min_area = [scale_area(a, cache.side) for a in grid.min_area]
    out = []
    for levels, truth in zip(cache.levels, cache.truths):
        n = len(levels)
        truth_sum = truth.reshape(n, -1).sum(1)
        table = np.empty((n, len(grid.bottom_threshold), len(min_area)))
        for b, bottom in enumerate(grid.bottom_threshold):
            labels, count = ndimage.label(levels > cache.index(bottom), structure=_BATCH_EIGHT_CONNECTED)
            area = np.bincount(labels.ravel(), minlength=count + 1)[1:]
            hits = np.bincount(labels[truth], minlength=count + 1)[1:]
            last = np.maximum.accumulate(labels.reshape(n, -1).max(1))
            image = np.searchsorted(last, np.arange(1, count + 1), side="left")
            for a, smallest in enumerate(min_area):
                keep = area >= smallest
                pred = np.bincount(image, weights=area * keep, minlength=n)
                inter = np.bincount(image, weights=hits * keep, minlength=n)
                table[:, b, a] = dice_from_counts(inter, pred, truth_sum)
        out.append(table)
    return np.concatenate(out)
