import json

import numpy as np
import pytest

from keras_ptx.data.geometry import from_square
from keras_ptx.inference.postprocess import (PostProcess, PostProcessError, apply_tf, image_map,
                                             image_mask_tf, remove_small_components,
                                             scale_area, scale_area_tf)
from keras_ptx.inference.score import dice_per_image
from keras_ptx.inference.search import MapCache, SearchGrid, choose, search
from keras_ptx.tf_setup import tf


def test_json_round_trip(tmp_path):
    post = PostProcess(kind="triplet", top_threshold=0.8, min_pixels=1500, bottom_threshold=0.35,
                       min_area=700, cls_threshold=0.4)
    post.save(tmp_path / "pp.json")
    assert PostProcess.load(tmp_path / "pp.json") == post
    assert json.loads((tmp_path / "pp.json").read_text())["kind"] == "triplet"
    assert post.name == "gated-triplet"


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"kind": "magic"}', "kind 'magic'"),
    ('{"threshold": 1.5}', "threshold must be"),
    ('{"min_area": -3}', "min_area must be"),
    ('{"min_area": 2.5}', "min_area must be"),
    ('{"treshold": 0.5}', "unknown post-processing keys: treshold"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_files_are_clear_errors(tmp_path, text, message):
    (tmp_path / "pp.json").write_text(text)
    with pytest.raises(PostProcessError, match=message):
        PostProcess.load(tmp_path / "pp.json")


def test_area_scaling_from_1024():
    assert scale_area(1024, 1024) == 1024
    assert scale_area(1024, 256) == 64          # (256/1024)^2 = 1/16
    assert scale_area(1000, 512) == 250
    assert scale_area(1, 64) == 1               # a requirement never vanishes
    assert scale_area(0, 64) == 0


def test_area_scaling_in_tf_is_the_same_for_every_side():
    sides = tf.range(1, 4097)
    for area in (1, 2, 8, 250, 600, 2000, 40000, 1024 ** 2):
        got = tf.vectorized_map(lambda side: scale_area_tf(area, side), sides).numpy()
        np.testing.assert_array_equal(got, [scale_area(area, s) for s in range(1, 4097)])
    assert scale_area(2, 1536) == 4 and scale_area(2, 2560) == 12      # 4.5 and 12.5: to even
    assert scale_area_tf(0, tf.constant(512)).numpy() == 0


def test_threshold_is_strict_and_keeps_shape():
    prob = np.array([[0.74, 0.75, 0.76]], np.float32)
    np.testing.assert_array_equal(PostProcess().apply(prob), [[0, 0, 1]])
    assert PostProcess().apply(prob[..., None]).shape == (1, 3, 1)
    assert PostProcess().apply(prob).dtype == np.uint8


def test_triplet_by_hand():
    prob = np.zeros((32, 32), np.float32)
    prob[2:6, 2:6] = 0.9        # 16 px, strong
    prob[10:12, 10:12] = 0.5    # 4 px, weak: above bottom only
    prob[20, 20] = 0.5          # 1 px island
    # at side 32 the 1024 counts shrink by (32/1024)^2 = 1/1024
    post = PostProcess(kind="triplet", top_threshold=0.8, min_pixels=16 * 1024,
                       bottom_threshold=0.4, min_area=2 * 1024)
    out = post.apply(prob)
    assert out[2:6, 2:6].all() and out[10:12, 10:12].all() and out[20, 20] == 0
    assert out.sum() == 20
    # one pixel short of the gate: empty
    assert PostProcess(kind="triplet", top_threshold=0.8, min_pixels=17 * 1024,
                       bottom_threshold=0.4).apply(prob).sum() == 0
    # on a 1024 grid the same counts are taken literally
    assert post.rule(1024) == (0.8, 16 * 1024, 0.4, 2 * 1024)


def test_components_are_eight_connected():
    mask = np.zeros((5, 5), bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True     # a diagonal: one component of 3
    mask[4, 0] = True
    out = remove_small_components(mask, 2)
    assert out[0, 0] and out[2, 2] and not out[4, 0]


def test_gate_needs_the_image_probability():
    post = PostProcess(cls_threshold=0.5)
    prob = np.full((4, 4), 0.9, np.float32)
    assert post.apply(prob, cls_prob=0.5).sum() == 16
    assert post.apply(prob, cls_prob=np.array([0.49])).sum() == 0
    with pytest.raises(PostProcessError, match="image-level probability"):
        post.apply(prob)


def _blobby_maps(rng, n, size):
    """Smooth random maps with many components of many sizes and shapes, plus a long snake."""
    noise = rng.random((n, size // 4, size // 4)).astype(np.float32)
    maps = np.stack([np.kron(m, np.ones((4, 4), np.float32)) for m in noise])
    maps += rng.normal(0, 0.08, maps.shape).astype(np.float32)
    snake = np.zeros((size, size), np.float32)
    for row in range(0, size, 4):
        snake[row, 1:-1] = 0.95
        snake[row:row + 4, -2 if (row // 4) % 2 == 0 else 1] = 0.95
    maps *= np.linspace(1.0, 0.72, n, dtype=np.float32)[:, None, None]   # fainter maps fail gates
    maps[0] = np.maximum(maps[0] * 0.3, snake)
    return np.clip(maps, 0, 1)


SETTINGS = [
    PostProcess(),
    PostProcess(threshold=0.5),
    PostProcess(kind="triplet", top_threshold=0.75, min_pixels=30000, bottom_threshold=0.4),
    PostProcess(kind="triplet", top_threshold=0.7, min_pixels=60000, bottom_threshold=0.5, min_area=3000),
    PostProcess(kind="triplet", top_threshold=0.6, min_pixels=0, bottom_threshold=0.3, min_area=40000),
    PostProcess(kind="triplet", top_threshold=0.9, min_pixels=500, bottom_threshold=0.6, min_area=800,
                cls_threshold=0.5),
]


@pytest.mark.parametrize("post", SETTINGS, ids=lambda p: p.describe())
def test_apply_tf_matches_apply(post):
    rng = np.random.default_rng(3)
    maps = _blobby_maps(rng, 6, 64)[..., None]
    cls = rng.random(6).astype(np.float32)
    expected = np.stack([post.apply(m, c) for m, c in zip(maps, cls)])
    fn = tf.function(lambda m, c: apply_tf(post, m, c),
                     input_signature=[tf.TensorSpec([None, 64, 64, 1], tf.float32),
                                      tf.TensorSpec([None], tf.float32)])
    got = fn(maps, cls).numpy()
    assert got.dtype == np.uint8 and got.shape == maps.shape
    np.testing.assert_array_equal(got, expected)


def _shapes(size):
    """Masks whose components are hard to label in few rounds: a spiral, a comb, a noise field,
    and a blob whose runs alternate with holes."""
    spiral = np.zeros((size, size), bool)
    top, left, bottom, right = 0, 0, size - 1, size - 1
    while top + 2 <= bottom and left + 2 <= right:
        spiral[top, left:right + 1] = spiral[top:bottom + 1, right] = True
        spiral[bottom, left:right + 1] = spiral[top + 2:bottom + 1, left] = True
        spiral[top + 2, left:left + 3] = True
        top, left, bottom, right = top + 4, left + 4, bottom - 4, right - 4
    comb = np.zeros((size, size), bool)
    comb[:, ::2] = True
    comb[-1] = True
    rng = np.random.default_rng(1)
    noise = rng.random((size, size)) > 0.45
    holes = np.ones((size, size), bool)
    holes[1:-1:2, 1:-1:2] = False
    return {"spiral": spiral, "comb": comb, "noise": noise, "holes": holes}


@pytest.mark.parametrize("size", [(96, 96), (61, 130)])
def test_tf_component_areas_are_exact_on_hard_shapes(size):
    shapes = {name: mask[:size[0], :size[1]] for name, mask in _shapes(max(size)).items()}
    batch = np.stack(list(shapes.values()))[..., None]
    labels = [remove_small_components(m, 1) for m in shapes.values()]     # the masks themselves
    areas = tf.function(lambda m: apply_tf(PostProcess(kind="triplet", bottom_threshold=0.5,
                                                       min_area=1), m, side=1024))
    np.testing.assert_array_equal(areas(batch.astype(np.float32)).numpy()[..., 0], labels)
    for name, mask in shapes.items():
        for min_area in (2, 5, 40):
            post = PostProcess(kind="triplet", bottom_threshold=0.5, min_area=min_area)
            got = apply_tf(post, mask[None, ..., None].astype(np.float32), side=1024).numpy()
            np.testing.assert_array_equal(got[0, ..., 0], post.apply(mask.astype(np.float32),
                                                                     side=1024), err_msg=name)


def test_tf_components_stop_at_the_edges_between_stacked_images():
    """Images are labelled as stacked rows: a run on the last row of one image and one on the
    first row of the next are not neighbours."""
    masks = np.zeros((2, 5, 6, 1), np.float32)
    masks[0, -1] = masks[1, 0] = 1
    post = PostProcess(kind="triplet", bottom_threshold=0.5, min_area=7)
    assert apply_tf(post, masks, side=1024).numpy().sum() == 0
    assert apply_tf(PostProcess(kind="triplet", bottom_threshold=0.5, min_area=6), masks,
                    side=1024).numpy().sum() == 12


def test_tf_component_filter_follows_a_long_snake():
    maps = _blobby_maps(np.random.default_rng(0), 1, 64)[..., None]
    snake = maps[0, ..., 0] >= 0.95
    area = int(snake.sum())
    keep = PostProcess(kind="triplet", bottom_threshold=0.94, min_area=area * 256)  # side 64: /256
    drop = PostProcess(kind="triplet", bottom_threshold=0.94, min_area=(area + 1) * 256)
    assert apply_tf(keep, maps).numpy().sum() == keep.apply(maps[0]).sum() == area
    assert apply_tf(drop, maps).numpy().sum() == 0


def test_image_map_is_the_geometry_rule():
    """bin/predict's map at the image's size is data.geometry.from_square's (OpenCV) rule."""
    rng = np.random.default_rng(2)
    for height, width in [(64, 64), (64, 48), (128, 96), (100, 77), (40, 30), (333, 200)]:
        prob = rng.random((64, 64)).astype(np.float32)
        np.testing.assert_allclose(image_map(prob, height, width),
                                   from_square(prob, height, width), atol=1e-5)


# Each kind, gated and not, with gates and areas that matter on _blobby_maps at image sizes.
IMAGE_RULES = [
    PostProcess(threshold=0.6),
    PostProcess(threshold=0.7, cls_threshold=0.5),
    PostProcess(kind="triplet", top_threshold=0.8, min_pixels=30000, bottom_threshold=0.5),
    PostProcess(kind="triplet", top_threshold=0.7, min_pixels=20000, bottom_threshold=0.45,
                min_area=6000),
    PostProcess(kind="triplet", top_threshold=0.75, min_pixels=500, bottom_threshold=0.55,
                min_area=800, cls_threshold=0.4),
]
# on the grid, larger and smaller, square and not, up to a radiograph's size and beyond
IMAGE_SIZES = [(64, 64), (1024, 1024), (1100, 900), (40, 30), (17, 64)] + [
    tuple(int(v) for v in np.random.default_rng(4).integers(8, 700, 2)) for _ in range(4)]


@pytest.mark.parametrize("post", IMAGE_RULES, ids=lambda p: p.describe())
def test_image_masks_in_tf_are_bin_predicts(post):
    """The SavedModel's mask (image_mask_tf, sizes only known at run time) is the one bin/predict
    computes (PostProcess.apply on image_map) for the same map and size, pixel for pixel."""
    rng = np.random.default_rng(6)
    maps = _blobby_maps(rng, len(IMAGE_SIZES), 64)
    cls = rng.random(len(IMAGE_SIZES)).astype(np.float32)
    scalar = tf.TensorSpec([], tf.int32)
    fn = tf.function(lambda m, c, h, w: image_mask_tf(post, m, c, h, w), input_signature=[
        tf.TensorSpec([64, 64], tf.float32), tf.TensorSpec([], tf.float32), scalar, scalar])
    no_filter = PostProcess(**{**post.to_dict(), "min_area": 0})
    empty, filtered = 0, 0
    for square, c, (height, width) in zip(maps, cls, IMAGE_SIZES):
        own = image_map(square, height, width)
        expected = post.apply(own, c)
        got = fn(square, c, height, width).numpy()
        assert got.dtype == np.uint8 and got.shape == (height, width)
        np.testing.assert_array_equal(got, expected, err_msg=f"{height}x{width}")
        empty += not expected.any()
        filtered += bool((no_filter.apply(own, c) != expected).any())
    gated = post.cls_threshold is not None or post.min_pixels > 0
    assert empty < len(IMAGE_SIZES) and (empty > 0 or not gated), "a gate was never tested"
    assert filtered or not post.min_area, "the component filter removed nothing"


# --- the post-processing search -------------------------------------------------------------

SIDE = 128          # counts at 1024^2 shrink by 64: min_pixels 500 -> 8, 1000 -> 16, 1500 -> 23;
                    # min_area 250 -> 4, 500 -> 8, 1000 -> 16


def _box(prob, truth, top, left, rows, cols, value, label):
    prob[top:top + rows, left:left + cols] = value
    if truth is not None:
        truth[top:top + rows, left:left + cols] = label


def _planted_split():
    """Maps whose unique best triplet is top 0.8, min_pixels 1000, bottom 0.4, min_area 500,
    and whose best image-level gate is 0.6. Each planted detail punishes one neighbour value."""
    maps, truths, cls = [], [], []

    def image(c):
        maps.append(np.full((SIDE, SIDE), 0.02, np.float32))
        truths.append(np.zeros((SIDE, SIDE), np.uint8))
        cls.append(c)
        return maps[-1], truths[-1]

    for k in range(4):                           # positives
        p, t = image(0.62 + 0.02 * k)
        _box(p, t, 10, 10, 10, 10, 0.45, 1)      # lesion fringe: needs bottom <= 0.4
        _box(p, t, 12, 12, 4, 5, 0.82, 1)        # 20-px core above 0.8 only: top <= 0.8, N <= 20
        _box(p, None, 20, 10, 2, 10, 0.35, 0)    # halo joined to the lesion: bottom >= 0.4
        _box(p, t, 60, 60, 3, 4, 0.45, 1)        # 12-px true part: min_area <= 8
        _box(p, None, 100, 100, 1, 5, 0.45, 0)   # 5-px speck: min_area >= 8
    for k in range(3):                           # negatives that would fool a looser gate
        p, _ = image(0.3)
        _box(p, None, 30, 30, 4, 5, 0.77, 0)     # 20 px in (0.75, 0.8]: top >= 0.8
        p, _ = image(0.3)
        _box(p, None, 30, 30, 2, 5, 0.82, 0)     # 10 px above 0.8: N >= 11
    p, _ = image(0.58)                           # a confident false positive only a gate removes
    _box(p, None, 70, 70, 6, 6, 0.95, 0)
    for _ in range(2):
        image(0.1)                               # clean negatives
    return np.stack(maps), np.stack(truths), np.array(cls, np.float32)


# The grid the planted split is designed against (each planted detail punishes one neighbour
# value on it); the default grid is wider.
PLANTED_GRID = SearchGrid(top_threshold=(0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9),
                          min_pixels=(0, 250, 500, 1000, 1500, 2000, 3000, 4000),
                          bottom_threshold=(0.2, 0.3, 0.4, 0.5), min_area=(0, 250, 500, 1000, 2000))


def _cache(maps, truths, cls):
    cache = MapCache(PLANTED_GRID, SIDE)
    for start in range(0, len(maps), 5):          # batches of 5, the last one short
        cache.add(maps[start:start + 5, ..., None], truths[start:start + 5], cls[start:start + 5])
    return cache


def test_search_recovers_the_planted_triplet_and_gate():
    maps, truths, cls = _planted_split()
    results = search(_cache(maps, truths, cls))
    assert list(results) == ["threshold", "triplet", "gated-threshold", "gated-triplet"]
    triplet = results["triplet"].post
    assert (triplet.top_threshold, triplet.min_pixels, triplet.bottom_threshold, triplet.min_area) \
        == (0.8, 1000, 0.4, 500)
    gated = results["gated-triplet"]
    assert gated.post.cls_threshold == 0.6 and gated.score == pytest.approx(1.0)
    assert results["triplet"].score == pytest.approx(1 - 1 / len(maps))   # only the 0.95 FP left
    assert choose(results) is gated
    assert results["threshold"].score < results["triplet"].score
    top_values, top_scores = results["triplet"].profiles["top_threshold"]
    assert top_values[int(np.argmax(top_scores))] == 0.8


@pytest.mark.parametrize("kind", ["threshold", "triplet", "gated-threshold", "gated-triplet"])
def test_search_scores_agree_with_apply(kind):
    """The level encoding and the batched labelling give what apply() gives on float maps."""
    rng = np.random.default_rng(7)
    maps = np.clip(_blobby_maps(rng, 9, SIDE) * 0.9, 0, 1)
    truths = (_blobby_maps(rng, 9, SIDE) > 0.8).astype(np.uint8)
    truths[3:6] = 0
    cls = rng.random(9).astype(np.float32)
    result = search(_cache(maps, truths, cls))[kind]
    expected = dice_per_image(np.stack([result.post.apply(m, c) for m, c in zip(maps, cls)]), truths)
    np.testing.assert_allclose(result.dice, expected)
    assert result.score == pytest.approx(expected.mean())


def test_search_without_gate_and_on_nothing():
    maps, truths, cls = _planted_split()
    assert list(search(_cache(maps, truths, cls), gated=False)) == ["threshold", "triplet"]
    with pytest.raises(ValueError, match="no images"):
        search(MapCache(SearchGrid(), SIDE))


def test_proxy_map_reproduces_every_grid_rule():
    maps, truths, cls = _planted_split()
    cache = _cache(maps, truths, cls)
    for i in (0, 6, len(maps) - 1):
        proxy, truth = cache.proxy_map(i)
        np.testing.assert_array_equal(truth, truths[i] > 0)
        for post in (PostProcess(threshold=0.8), PostProcess(threshold=0.45),
                     PostProcess(kind="triplet", top_threshold=0.8, min_pixels=1000,
                                 bottom_threshold=0.4, min_area=500)):
            np.testing.assert_array_equal(post.apply(proxy), post.apply(maps[i]))
