"""keras_ptx.data.rle: SIIM's run-length encoding, checked by hand and against a loop oracle."""
import numpy as np
import pytest

from keras_ptx.data import rle


def oracle_decode(text, height, width):
    """The competition's reading, one run at a time: relative starts, column-major pixels."""
    flat = np.zeros(height * width, dtype=np.uint8)
    values = [int(t) for t in text.split()]
    position = 0
    for start, length in zip(values[0::2], values[1::2]):
        position += start
        flat[position:position + length] = 1
        position += length
    return flat.reshape(width, height).T


def random_mask(rng, height, width, density):
    return (rng.random((height, width)) < density).astype(np.uint8)


# ---------------------------------------------------------------- hand-made cases, every rule

def test_pixels_are_counted_down_each_column_first():
    mask = rle.decode("1 1", 3, 4)                     # relative == absolute for one run
    assert mask.shape == (3, 4) and mask.dtype == np.uint8
    assert mask[1, 0] == 1 and mask.sum() == 1
    assert rle.decode("3 1", 3, 4)[0, 1] == 1          # index 3 = row 0 of column 1
    assert rle.decode("2 2", 3, 4)[2, 0] == 1 and rle.decode("2 2", 3, 4)[0, 1] == 1


def test_relative_later_starts_count_background_since_previous_run():
    # run 1: pixels 1-2; then skip 3 (pixels 3,4,5); run 2: pixels 6-9
    mask = rle.decode("1 2 3 4", 4, 4)
    assert np.flatnonzero(mask.T.reshape(-1)).tolist() == [1, 2, 6, 7, 8, 9]
    assert rle.encode(mask) == "1 2 3 4"


def test_absolute_starts_are_indices():
    mask = rle.decode("1 2 6 4", 4, 4, relative=False)
    assert np.flatnonzero(mask.T.reshape(-1)).tolist() == [1, 2, 6, 7, 8, 9]
    assert rle.encode(mask, relative=False) == "1 2 6 4"


def test_absolute_runs_may_come_in_any_order():
    assert np.array_equal(rle.decode("6 4 1 2", 4, 4, relative=False),
                          rle.decode("1 2 6 4", 4, 4, relative=False))


def test_non_square_orientation_matches_the_pixel_array():
    mask = np.zeros((2, 5), dtype=np.uint8)
    mask[1, 3] = 1                                     # column 3 starts at index 3 * 2
    assert rle.encode(mask) == "7 1"
    assert np.array_equal(rle.decode("7 1", 2, 5), mask)
    assert not np.array_equal(rle.decode("7 1", 5, 2), mask.T)   # height/width not swappable


@pytest.mark.parametrize("text", ["-1", " -1", "", "  ", "-1 "])
def test_empty_markers_decode_to_an_empty_mask(text):
    mask = rle.decode(text, 3, 2)
    assert mask.shape == (3, 2) and not mask.any()
    assert rle.is_empty(text)


def test_empty_mask_encodes_as_minus_one():
    assert rle.encode(np.zeros((4, 3), dtype=np.uint8)) == "-1"
    assert rle.encode(np.zeros((4, 3), dtype=bool), relative=False) == "-1"


def test_run_ending_on_the_last_pixel_is_kept():
    mask = np.zeros((4, 3), dtype=np.uint8)
    mask[-2:, -1] = 1                                  # the last two pixels in column-major order
    assert rle.encode(mask) == "10 2"
    assert np.array_equal(rle.decode("10 2", 4, 3), mask)
    full = np.ones((4, 3), dtype=np.uint8)
    assert rle.encode(full) == "0 12"
    assert np.array_equal(rle.decode("0 12", 4, 3), full)


def test_runs_crossing_a_column_boundary():
    mask = rle.decode("2 3", 3, 3)                     # pixels 2,3,4: (2,0), (0,1), (1,1)
    assert mask[2, 0] and mask[0, 1] and mask[1, 1] and mask.sum() == 3


def test_bool_and_uint8_masks_encode_the_same():
    mask = np.array([[1, 0], [1, 1]], dtype=np.uint8)
    assert rle.encode(mask) == rle.encode(mask.astype(bool)) == "0 2 1 1"


def test_decode_returns_a_fresh_contiguous_array():
    mask = rle.decode("0 2", 2, 3)
    assert mask.flags.c_contiguous and mask.flags.writeable


# ---------------------------------------------------------------- malformed input

@pytest.mark.parametrize("text, relative, words", [
    ("1 2 3", True, ["odd", "3"]),                      # odd token count
    ("1 x", True, ["token 1", "'x'", "integer"]),        # non-integer
    ("1.5 2", True, ["token 0", "integer"]),
    ("1 2 4 0", True, ["run 1", "token 3", "non-positive length"]),   # zero-length run
    ("1 -2", True, ["run 0", "token 1", "non-positive length"]),      # negative length
    ("-3 2", True, ["run 0", "token 0", "negative start"]),
    ("1 2 -1 2", True, ["run 1", "token 2", "negative start"]),
    ("10 3", True, ["run 0", "past", "3x4"]),           # runs past the end of the image
    ("1 2 8 3", True, ["run 1", "past", "12 pixels"]),
    ("11 2", False, ["run 0", "past"]),
    ("10 3 0 2", False, ["run 0 (token 0)", "ends at pixel 13", "past"]),  # named as written
    ("0 5 3 2", False, ["run 1", "token 2", "overlaps"]),   # overlapping absolute runs
    ("6 2 0 7", False, ["run 0", "token 0", "overlaps"]),
])
def test_malformed_rle_raises_naming_the_problem_and_where(text, relative, words):
    with pytest.raises(ValueError) as info:
        rle.decode(text, 3, 4, relative=relative)
    for word in words:
        assert word in str(info.value)


def test_a_run_exactly_reaching_the_end_is_not_past_it():
    assert rle.decode("1 2 8 1", 3, 4).sum() == 3      # last pixel 11 of 12
    assert rle.decode("11 1", 3, 4, relative=False)[2, 3] == 1


@pytest.mark.parametrize("height, width", [(0, 4), (4, 0), (-1, 3)])
def test_bad_mask_size_is_rejected(height, width):
    with pytest.raises(ValueError, match="positive"):
        rle.decode("-1", height, width)


@pytest.mark.parametrize("mask, match", [
    (np.zeros(5, dtype=np.uint8), "2-D"),
    (np.zeros((2, 2, 1), dtype=np.uint8), "2-D"),
    (np.array([[0, 2]]), "0 or 1"),
    (np.array([[0.5, 1.0]]), "0 or 1"),
])
def test_encode_rejects_what_is_not_a_binary_2d_mask(mask, match):
    with pytest.raises(ValueError, match=match):
        rle.encode(mask)


# ---------------------------------------------------------------- round trips and agreement

@pytest.mark.parametrize("seed", range(6))
def test_random_round_trips_both_forms(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 40, size=2)
    mask = random_mask(rng, height, width, density=rng.choice([0.02, 0.3, 0.9]))
    for relative in (True, False):
        text = rle.encode(mask, relative=relative)
        assert np.array_equal(rle.decode(text, height, width, relative=relative), mask)


@pytest.mark.parametrize("seed", range(4))
def test_relative_agrees_with_the_loop_oracle(seed):
    rng = np.random.default_rng(100 + seed)
    mask = random_mask(rng, 32, 24, density=0.15)
    mask[-1, -1] = 1                                   # include the last pixel every time
    text = rle.encode(mask)
    assert np.array_equal(oracle_decode(text, 32, 24), mask)
    assert np.array_equal(rle.decode(text, 32, 24), oracle_decode(text, 32, 24))


@pytest.mark.parametrize("seed", range(4))
def test_absolute_and_relative_agree(seed):
    rng = np.random.default_rng(200 + seed)
    mask = random_mask(rng, 20, 30, density=0.2)
    relative = np.array(rle.encode(mask).split(), dtype=np.int64).reshape(-1, 2)
    absolute = np.array(rle.encode(mask, relative=False).split(), dtype=np.int64).reshape(-1, 2)
    assert np.array_equal(relative[:, 1], absolute[:, 1])
    ends = np.cumsum(relative.sum(axis=1))
    assert np.array_equal(ends - relative[:, 1], absolute[:, 0])
    assert np.array_equal(rle.decode(rle.encode(mask), 20, 30),
                          rle.decode(rle.encode(mask, relative=False), 20, 30, relative=False))


def test_realistic_siim_sized_mask_round_trips():
    yy, xx = np.mgrid[:1024, :1024]
    mask = (((yy - 300) / 120.0) ** 2 + ((xx - 700) / 60.0) ** 2 < 1).astype(np.uint8)
    mask[1000:, 1020:] = 1                             # touches the last pixel
    text = rle.encode(mask)
    assert np.array_equal(rle.decode(text, 1024, 1024), mask)
    assert text.endswith(" 24")                        # the final run (rows 1000-1023) is kept
