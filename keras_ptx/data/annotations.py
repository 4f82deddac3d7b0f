"""SIIM-ACR label CSVs: read either published layout, report bad rows, write the same layouts.

Stage 1 (``train-rle.csv``): header ``ImageId, EncodedPixels``, every value after ``", "``,
negatives `` -1``. Stage 2 (``stage_2_train.csv``): header ``ImageId,EncodedPixels``,
negatives ``-1``. Rows sharing an ImageId are annotations of one image (its mask is their
union). :func:`load_annotations` maps each ImageId to its RLE strings and reports, with line
numbers: ``duplicate`` rows (kept once), ``conflict`` images (both ``-1`` and a mask: left out)
and ``malformed`` rows (bad RLE syntax, empty ImageId, wrong column count: the image is left
out, since its mask would be incomplete).
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_ptx.data import rle
from keras_ptx.errors import UserError
from keras_ptx.fileio import atomic_path, utf8_text

# ImageIds keras_ptx writes (submissions) and builds records of: SIIM's are SOPInstanceUIDs,
# digits and dots; these characters also make safe file names (overlays, evaluation cases).
IMAGE_ID = re.compile(r"[0-9A-Za-z_-][0-9A-Za-z._-]*")
HEADERS = {"stage1": ["ImageId", " EncodedPixels"], "stage2": ["ImageId", "EncodedPixels"]}
_VALUE_PREFIX = {"stage1": " ", "stage2": ""}


class AnnotationError(UserError):
    """A label file that cannot be read at all (missing, unreadable, not UTF-8, wrong header)."""


@dataclass(frozen=True)
class Problem:
    line: int                       # 1-based line in the CSV (the header is line 1)
    image_id: str
    kind: str                       # duplicate | conflict | malformed
    message: str


class Annotations(Mapping[str, tuple[str, ...]]):
    """ImageId -> tuple of that image's RLE strings (empty for a negative), in file order.

    ``layout`` is 'stage1' or 'stage2'; ``report`` lists the :class:`Problem` rows by line;
    :meth:`lines` gives the line each RLE string was read from.
    """

    def __init__(self, images: dict[str, tuple[str, ...]], layout: str, report: list[Problem],
                 lines: dict[str, tuple[int, ...]]):
        self._images = images
        self._lines = lines
        self.layout = layout
        self.report = report

    def lines(self, image_id: str) -> tuple[int, ...]:
        """The CSV line of each of ``image_id``'s RLE strings, in the same order."""
        return self._lines[image_id]

    def __getitem__(self, image_id: str) -> tuple[str, ...]:
        return self._images[image_id]

    def __iter__(self):
        return iter(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def __repr__(self) -> str:
        positives = sum(1 for rles in self._images.values() if rles)
        return (f"Annotations({len(self)} images, {positives} positive, layout={self.layout!r}, "
                f"{len(self.report)} problems)")


def check_rle_syntax(text: str) -> None:
    """Raise ValueError unless ``text`` is '-1'/empty or well-formed start/length pairs
    (the rules of :mod:`rle` that hold whatever the image size)."""
    if rle.is_empty(text):
        return
    rle.parse_runs(text)


def load_annotations(path) -> Annotations:
    """Read a SIIM label CSV (either layout); see the module docstring for the report.
    A file that cannot be read as such a CSV at all (missing, unreadable, not UTF-8 text, a
    wrong header) raises :class:`AnnotationError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: no such label file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    text = utf8_text(data, path, "label CSV", AnnotationError)
    rows: dict[str, list[tuple[int, str]]] = {}
    report: list[Problem] = []
    broken: set[str] = set()
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        layout = next((name for name, want in HEADERS.items() if header == want), None)
        if layout is None:
            raise AnnotationError(
                f"{path}: line 1 is {header!r}; expected the header 'ImageId, EncodedPixels' "
                "(stage 1) or 'ImageId,EncodedPixels' (stage 2)")
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue            # blank line
            image_id = row[0].strip()
            if len(row) != 2 or not image_id:
                why = f"expected 2 columns, got {len(row)}" if len(row) != 2 else "empty ImageId"
                report.append(Problem(line, image_id, "malformed", why))
                broken.add(image_id)
                continue
            value = row[1].strip()
            try:
                check_rle_syntax(value)
            except ValueError as exc:
                report.append(Problem(line, image_id, "malformed", str(exc)))
                broken.add(image_id)
                continue
            rows.setdefault(image_id, []).append((line, rle.EMPTY if rle.is_empty(value) else value))
    except csv.Error as exc:        # e.g. a field past csv's size limit: not a label CSV
        raise AnnotationError(f"{path} line {reader.line_num}: {exc}") from None
    images: dict[str, tuple[str, ...]] = {}
    lines: dict[str, tuple[int, ...]] = {}
    for image_id, entries in rows.items():
        if image_id in broken:
            continue
        kept = _resolve(image_id, entries, report)
        if kept is not None:
            images[image_id] = tuple(kept)
            lines[image_id] = tuple(kept.values())
    for image_id in broken & rows.keys():
        report.append(Problem(rows[image_id][0][0], image_id, "malformed",
                                  "image left out: another of its rows is malformed"))
    report.sort(key=lambda problem: problem.line)
    return Annotations(images, layout, report, lines)


def _resolve(image_id: str, entries: list[tuple[int, str]], report: list[Problem]):
    """One image's rows -> its RLE strings, each with its first line (None for a conflict),
    reporting duplicates."""
    negative = next((line for line, value in entries if value == rle.EMPTY), None)
    mask = next((line for line, value in entries if value != rle.EMPTY), None)
    if negative is not None and mask is not None:
        report.append(Problem(max(negative, mask), image_id, "conflict",
                              f"-1 on line {negative} and a mask on line {mask}; image left out"))
        return None
    first_line: dict[str, int] = {}
    for line, value in entries:
        if value in first_line:
            report.append(Problem(line, image_id, "duplicate",
                                  f"same value as line {first_line[value]}; kept once"))
        else:
            first_line[value] = line
    return {value: line for value, line in first_line.items() if value != rle.EMPTY}


class AnnotationWriter:
    """Rows ``(image_id, rle or '-1')`` in a published layout to an open text ``handle``,
    each checked before it is written (ValueError names the row)."""

    def __init__(self, handle, layout: str = "stage1"):
        if layout not in HEADERS:
            raise ValueError(f"layout must be one of {sorted(HEADERS)}, got {layout!r}")
        self._prefix = _VALUE_PREFIX[layout]
        self._csv = csv.writer(handle, lineterminator="\n")
        self._csv.writerow(HEADERS[layout])
        self._rows = 0

    def row(self, image_id, value) -> None:
        image_id, value = str(image_id).strip(), str(value).strip()
        if not image_id or "," in image_id:
            raise ValueError(f"row {self._rows}: bad ImageId {image_id!r}")
        try:
            check_rle_syntax(value)
        except ValueError as exc:
            raise ValueError(f"row {self._rows} ({image_id}): {exc}") from None
        self._csv.writerow([image_id, self._prefix + (rle.EMPTY if rle.is_empty(value) else value)])
        self._rows += 1


def write_annotations(path, rows: Iterable[tuple[str, str]], layout: str = "stage1"):
    """Write ``(image_id, rle or '-1')`` rows in a published layout to ``path`` (a local path or
    a URL), atomically; returns path."""
    with atomic_path(path) as partial:
        with open(partial, "w", newline="", encoding="utf-8") as handle:
            writer = AnnotationWriter(handle, layout)
            for image_id, value in rows:
                writer.row(image_id, value)
    return path


def union_mask(rles: Iterable[str], height: int, width: int) -> np.ndarray:
    """The uint8 {0,1} union of an image's decoded RLEs (all zeros for none)."""
    mask = rle.decode(rle.EMPTY, height, width)
    for text in rles:
        mask |= rle.decode(text, height, width)
    return mask
