"""A folder of TFRecord shards written by ``build-tfrecords``, opened once and asked many times.

:class:`RecordsDir` answers what training, the input pipeline, the cache plan and evaluate
need to know about a records folder: each split's shard files, its record and positive counts
(from the build's manifest, read once, else counted from the shards' labels), and the size of
its images, checked against the run's ``data.image_size`` by reading one record per split, and
the manifest's geometry rule, checked against this keras_ptx's.
Every answer is computed at most once per object. Paths may be local or any ``tf.io.gfile``
URL.

Folds. A build with ``--folds K`` gives every labeled record a ``fold`` (0 to K-1) whatever its
train/val split; a fold run (``data.fold: k``, :meth:`RecordsDir.source`) validates on the
records of fold k and trains on those of the other folds, drawn from the train and val shards
alike (:func:`in_fold_split`). Its counts come from one pass over those shards reading only the
fold and the label (:meth:`RecordsDir.fold_counts`): the manifest lists no per-fold counts
(builds made before folds could be trained have none either), and the pass is cheap next to an
epoch.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

from keras_ptx.data import records
from keras_ptx.data.manifest import geometry_problem, listing_problem, read_manifest
from keras_ptx.errors import UserError
from keras_ptx.fileio import check_openable
from keras_ptx.tf_errors import damaged_records
from keras_ptx.tf_setup import tf


class RecordsError(UserError):
    """A records folder that is missing, empty, unreadable, of another image size or made with
    another geometry rule."""


FOLD_SPLITS = ("train", "val")     # the labeled splits folds are drawn from


@dataclass(frozen=True)
class SplitCounts:
    records: int
    positives: int


def in_fold_split(record_fold, fold: int, split: str):
    """Whether a record of fold ``record_fold`` (an int, or an int64 tensor in a tf.data graph)
    is in ``split`` of the fold run ``fold``: val is fold ``fold``, train every other fold."""
    if split == "val":
        return record_fold == fold
    return (record_fold >= 0) & (record_fold != fold)


def _fold_and_label(serialized):
    """(fold, has_pneumothorax) of a serialized record, parsing nothing else."""
    ex = tf.io.parse_single_example(serialized, {key: records.FEATURES[key]
                                                 for key in ("fold", "has_pneumothorax")})
    return ex["fold"], ex["has_pneumothorax"]


class RecordsDir:
    """The records in ``path`` (see the module docstring); :meth:`open` checks it exists."""

    def __init__(self, path: str):
        self.path = str(path).rstrip("/") or "/"
        self._manifest: dict | None = None
        self._manifest_read = False
        self._files: dict[str, list[str]] = {}
        self._counts: dict[str, SplitCounts] = {}
        self._sizes: dict[str, int] = {}
        self._fold_counts: dict[int, SplitCounts] | None = None

    @classmethod
    def open(cls, path: str) -> "RecordsDir":
        """RecordsError for a missing, non-directory or empty ``path``."""
        path = str(path)
        check_openable(path, "--data")
        if not tf.io.gfile.isdir(path):
            raise RecordsError(f"--data {path}: " + ("not a directory" if tf.io.gfile.exists(path)
                                                     else "no such directory"))
        if not tf.io.gfile.listdir(path):
            raise RecordsError(f"--data {path}: the directory is empty; build records with "
                               f"build-tfrecords")
        return cls(path)

    def __str__(self) -> str:
        return self.path

    @property
    def manifest(self) -> dict | None:
        """The build's manifest.json; None when there is none; RecordsError when it does not
        read or is not shaped as a build writes it (:func:`~keras_ptx.data.manifest.read_manifest`)."""
        if not self._manifest_read:
            try:
                self._manifest = read_manifest(self.path)
            except ValueError as exc:
                raise RecordsError(f"{exc}; rebuild the records with build-tfrecords") from None
            self._manifest_read = True
        return self._manifest

    def files(self, split: str) -> list[str]:
        """The split's shard paths, sorted (empty when it has none); RecordsError when they
        are not the files the manifest lists."""
        if split not in self._files:
            found = records.shard_files(self.path, split)
            problem = self.manifest and listing_problem(self.manifest, split, found)
            if problem:
                raise RecordsError(f"--data {self.path}: {problem}; check it with "
                                   f"bin/build-tfrecords --verify {self.path}")
            self._files[split] = found
        return self._files[split]

    def counts(self, split: str, fold: int | None = None) -> SplitCounts:
        """Records and positive records of ``split``: the manifest's when it lists them (the
        build counted them; ``--verify`` checks the shards against it), else counted from the
        shards' labels; with ``fold``, those of ``split`` in that fold run (module docstring)."""
        if fold is not None and split in FOLD_SPLITS:
            self.check_fold(fold)
            chosen = [c for f, c in self.fold_counts().items() if in_fold_split(f, fold, split)]
            return SplitCounts(sum(c.records for c in chosen), sum(c.positives for c in chosen))
        if split not in self._counts:
            listed = self.listed_counts(split)
            if listed is None:
                try:
                    listed = SplitCounts(*records.label_counts(self.files(split)))
                except tf.errors.OpError as exc:
                    raise RecordsError(damaged_records(self.path, exc)) from None
            self._counts[split] = listed
        return self._counts[split]

    def listed_counts(self, split: str) -> SplitCounts | None:
        """The manifest's counts of ``split``, without reading any shard; None if unlisted."""
        try:
            entry = self.manifest["splits"][split]
            return SplitCounts(int(entry["images"]), int(entry["positives"]))
        except (KeyError, TypeError, ValueError):
            return None

    def fold_counts(self) -> dict[int, SplitCounts]:
        """Records and positives of each fold in the train and val shards (-1: records without
        a fold), from one pass reading only fold and label."""
        if self._fold_counts is None:
            files = [f for split in FOLD_SPLITS for f in self.files(split)]
            tally = Counter()
            try:
                pairs = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE).map(
                    _fold_and_label, num_parallel_calls=tf.data.AUTOTUNE).batch(4096)
                for folds, positive in pairs.as_numpy_iterator():
                    tally.update(zip(folds.tolist(), (positive > 0).tolist()))
            except tf.errors.OpError as exc:
                raise RecordsError(damaged_records(self.path, exc)) from None
            self._fold_counts = {
                fold: SplitCounts(tally[fold, False] + tally[fold, True], tally[fold, True])
                for fold in sorted({fold for fold, _ in tally})}
        return self._fold_counts

    @property
    def folds(self) -> int:
        """K of a build with ``--folds K`` (the manifest's, else counted from the records'
        folds); 0 when the records have no folds."""
        try:
            return int(self.manifest["options"]["folds"])
        except (KeyError, TypeError, ValueError):
            return max(self.fold_counts(), default=-1) + 1

    def check_fold(self, fold: int) -> None:
        """RecordsError unless the records have folds and ``fold`` is one of them."""
        if not self.folds:
            raise RecordsError(f"data.fold={fold}: the records in {self.path} have no folds; "
                               f"build them with build-tfrecords --folds K")
        if not 0 <= fold < self.folds:
            raise RecordsError(f"data.fold={fold}: the records in {self.path} have {self.folds} "
                               f"folds, 0 to {self.folds - 1}")

    def source(self, split: str, image_size: int, fold: int | None = None
               ) -> tuple[list[str], Callable | None]:
        """The shard files ``split`` is read from (checked as :meth:`checked_files` checks them)
        and the filter of serialized records that picks it out of them: None (every record)
        unless ``fold`` is set, when train and val are drawn from both labeled splits' shards."""
        if fold is None or split not in FOLD_SPLITS:
            return self.checked_files(split, image_size), None
        self.check_fold(fold)
        files = [f for s in FOLD_SPLITS if self.files(s) for f in self.checked_files(s, image_size)]
        return files, lambda serialized: in_fold_split(_fold_and_label(serialized)[0], fold, split)

    def image_size(self, split: str) -> int:
        """The side of ``split``'s square images, read from its first record."""
        if split not in self._sizes:
            files = self.files(split)
            if not files:
                raise RecordsError(
                    f"no {split} shards in {self.path} (expected files like "
                    f"{records.SHARD_PATTERN.format(split=split, index=0, count=1)})")
            try:
                first = next(iter(tf.data.TFRecordDataset(files).take(1)), None)
                if first is None:
                    raise RecordsError(f"the {split} shards in {self.path} hold no records")
                size = tf.io.parse_single_example(first, {"size": records.FEATURES["size"]})
            except tf.errors.OpError as exc:
                raise RecordsError(damaged_records(self.path, exc)) from None
            self._sizes[split] = int(size["size"])
        return self._sizes[split]

    def checked_files(self, split: str, image_size: int) -> list[str]:
        """The split's shards, after checking there are some, that their images are
        ``image_size`` and that the manifest's geometry rule is this keras_ptx's (RecordsError
        naming the problem otherwise)."""
        problem = geometry_problem(self.manifest or {}, self.path)
        if problem:
            raise RecordsError(problem)
        stored = self.image_size(split)
        if stored != image_size:
            raise RecordsError(
                f"records in {self.path} are {stored}x{stored} but data.image_size is "
                f"{image_size}; rebuild them with --image-size {image_size}, or train with "
                f"data.image_size={stored}")
        return self.files(split)
