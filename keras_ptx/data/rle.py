"""SIIM-ACR run-length encoding of binary masks (vectorised numpy).

Pixels are numbered column-major (down each column, then across) in the DICOM pixel array's
orientation, 0-based. A run is ``start length``. Under the competition's *relative* form the
first start is the absolute index of the first foreground pixel and every later start counts
the background pixels since the previous run ended; under the *absolute* form every start is
an index. An empty mask is ``-1``. Unlike the competition's reference encoder, a run that ends
on the last pixel is kept.
"""
from __future__ import annotations

import numpy as np

EMPTY = "-1"
_SHOWN = 20                         # characters of a bad token a message quotes


def parse_runs(rle: str) -> tuple[np.ndarray, np.ndarray]:
    """Check the size-independent rules and return (starts, lengths) as written; ValueError if broken."""
    values = _parse(rle)
    starts, lengths = values[0::2], values[1::2]
    bad = np.flatnonzero(lengths <= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"RLE run {i} (token {2 * i + 1}) has non-positive length {lengths[i]}")
    bad = np.flatnonzero(starts < 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"RLE run {i} (token {2 * i}) has negative start {starts[i]}")
    return starts, lengths


def _parse(rle: str) -> np.ndarray:
    tokens = rle.split()
    values = np.empty(len(tokens), dtype=np.int64)
    for i, token in enumerate(tokens):
        try:
            values[i] = int(token)
        except ValueError:
            raise ValueError(f"RLE token {i} ({token[:_SHOWN]!r}) is not an integer") from None
        except OverflowError:       # past int64: past any image
            raise ValueError(f"RLE token {i} ({token[:_SHOWN]!r}...) is too large for any "
                             "image") from None
    if len(values) % 2:
        raise ValueError(f"RLE has an odd number of tokens ({len(values)}): "
                         "expected start/length pairs")
    return values


def is_empty(rle: str) -> bool:
    """True for the competition's empty-mask markers: '-1', ' -1' or an empty string."""
    text = rle.strip()
    return text in ("", EMPTY)


def runs(rle: str, height: int, width: int, relative: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Absolute (starts, ends) of a valid RLE on a ``height`` x ``width`` grid, or ValueError.

    Every rule of :func:`decode` without painting the mask (the build checks labels this way).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"mask size must be positive, got {height}x{width}")
    if is_empty(rle):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts, lengths = parse_runs(rle)
    n = height * width
    # A start or length past the image is past it whatever the form; refusing it first also
    # keeps the sums below from overflowing int64 (and wrapping around into the image).
    huge = np.flatnonzero((starts > n) | (lengths > n))
    if huge.size:
        i = int(huge[0])
        raise ValueError(f"RLE run {i} (token {2 * i}) starts or runs past the {height}x{width} "
                         f"image ({n} pixels)")
    if relative:
        ends = np.cumsum(starts + lengths)
        starts = ends - lengths
        written = np.arange(starts.size)          # each run's place in the string
    else:
        written = np.argsort(starts, kind="stable")
        starts, lengths = starts[written], lengths[written]
        ends = starts + lengths
        overlap = np.flatnonzero(starts[1:] < ends[:-1])
        if overlap.size:
            i = int(written[overlap[0] + 1])
            raise ValueError(f"RLE run {i} (token {2 * i}) overlaps an earlier run")
    past = np.flatnonzero(ends > n)
    if past.size:
        j = past[np.argmin(written[past])]      # the first such run as written
        i = int(written[j])
        raise ValueError(f"RLE run {i} (token {2 * i}) ends at pixel {ends[j]}, past the "
                         f"{height}x{width} image ({n} pixels)")
    return starts, ends


def decode(rle: str, height: int, width: int, relative: bool = True) -> np.ndarray:
    """Decode one RLE string into a uint8 {0,1} mask of shape (height, width)."""
    starts, ends = runs(rle, height, width, relative)
    n = height * width
    edges = np.zeros(n + 1, dtype=np.int32)
    np.add.at(edges, starts, 1)
    np.add.at(edges, ends, -1)
    flat = (np.cumsum(edges[:-1]) > 0).astype(np.uint8)
    return flat.reshape(width, height).T.copy()


def encode(mask: np.ndarray, relative: bool = True) -> str:
    """Encode a 2-D {0,1} (or bool) mask; the exact inverse of :func:`decode`."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise ValueError("mask values must be 0 or 1")
    flat = mask.T.reshape(-1).astype(bool)
    padded = np.concatenate(([False], flat, [False]))
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    if changes.size == 0:
        return EMPTY
    starts, ends = changes[0::2], changes[1::2]
    lengths = ends - starts
    if relative:
        starts = starts - np.concatenate(([0], ends[:-1]))
    pairs = np.stack([starts, lengths], axis=1).reshape(-1)
    return " ".join(map(str, pairs.tolist()))
