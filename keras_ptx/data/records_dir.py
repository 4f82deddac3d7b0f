"""A folder of TFRecord shards written by ``build-tfrecords``, opened once and asked many times.

:class:`RecordsDir` answers what training, the input pipeline, the cache plan and evaluate
need to know about a records folder: each split's shard files, its record and positive counts
(from the build's manifest, read once, else counted from the shards' labels), and the size of
its images, checked against the run's ``data.image_size`` by reading one record per split, and
the manifest's geometry rule, checked against this keras_ptx's.
Every answer is computed at most once per object. Paths may be local or any ``tf.io.gfile``
URL.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from keras_ptx.data import records
from keras_ptx.data.manifest import geometry_problem
from keras_ptx.errors import UserError
from keras_ptx.fileio import check_openable
from keras_ptx.tf_errors import damaged_records
from keras_ptx.tf_setup import tf


class RecordsError(UserError):
    """A records folder that is missing, empty, unreadable, of another image size or made with
    another geometry rule."""


@dataclass(frozen=True)
class SplitCounts:
    records: int
    positives: int


class RecordsDir:
    """The records in ``path`` (see the module docstring); :meth:`open` checks it exists."""

    def __init__(self, path: str):
        self.path = str(path).rstrip("/") or "/"
        self._manifest: dict | None = None
        self._manifest_read = False
        self._files: dict[str, list[str]] = {}
        self._counts: dict[str, SplitCounts] = {}
        self._sizes: dict[str, int] = {}

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
        """The build's manifest.json; None when there is none or it does not read."""
        if not self._manifest_read:
            self._manifest_read = True
            path = f"{self.path}/{records.MANIFEST}"
            try:
                with tf.io.gfile.GFile(path, "rb") as f:
                    self._manifest = json.loads(f.read())
            except (ValueError, tf.errors.OpError):
                self._manifest = None
        return self._manifest

    def files(self, split: str) -> list[str]:
        """The split's shard paths, sorted (empty when it has none)."""
        if split not in self._files:
            self._files[split] = records.shard_files(self.path, split)
        return self._files[split]

    def counts(self, split: str) -> SplitCounts:
        """Records and positive records of ``split``: the manifest's when it lists them (the
        build counted them; ``--verify`` checks the shards against it), else counted from the
        shards' labels."""
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
