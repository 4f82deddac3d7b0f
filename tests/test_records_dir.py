"""keras_ptx.data.records_dir: a records folder is read once and answers files, counts and size."""
import json

import numpy as np
import pytest

from keras_ptx.data import geometry, records
from keras_ptx.data.records import write_shards
from keras_ptx.data.records_dir import RecordsDir, RecordsError, SplitCounts


SIZE = 32


def _examples(n, positives):
    rng = np.random.default_rng(0)
    for k in range(n):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        if k < positives:
            mask[4:9, 4:9] = 1
        yield rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8), mask


def _manifest(folder, claims=None, **options):
    """A manifest shaped as a build writes it for the shards in ``folder``: each split's
    (images, positives) from ``claims`` where given, else counted, spread over its shards."""
    splits = {}
    for split in records.SPLITS:
        files = records.shard_files(str(folder), split)
        images, positives = (claims or {}).get(split) or (
            records.label_counts(files) if files else (0, 0))
        examples = [images // len(files) + (k < images % len(files)) for k in range(len(files))]
        splits[split] = {"images": images, "positives": positives, "annotations": positives,
                         "shards": [{"file": f.rsplit("/", 1)[1], "examples": e, "sha256": ""}
                                    for f, e in zip(files, examples)]}
    return json.dumps({"format": 1, "options": {"image_size": SIZE, **options},
                       "splits": splits, "rejected": [],
                       "totals": {"inputs": sum(s["images"] for s in splits.values())}})


@pytest.fixture
def folder(tmp_path):
    write_shards(tmp_path, "train", _examples(10, 3), shards=2)
    write_shards(tmp_path, "val", _examples(4, 1))
    return tmp_path


def test_files_counts_and_size_without_a_manifest(folder):
    data = RecordsDir.open(str(folder))
    assert [f.rsplit("/", 1)[1] for f in data.files("train")] == [
        records.SHARD_PATTERN.format(split="train", index=i, count=2) for i in range(2)]
    assert data.counts("train") == SplitCounts(10, 3)        # counted from the labels
    assert data.counts("val") == SplitCounts(4, 1)
    assert data.listed_counts("train") is None and data.manifest is None
    assert data.image_size("val") == SIZE
    assert data.checked_files("train", SIZE) == data.files("train")
    assert data.files("test") == []


def test_the_manifest_is_read_once_and_its_counts_win(folder, monkeypatch):
    (folder / records.MANIFEST).write_text(_manifest(folder, {"train": (12, 5)}))
    data = RecordsDir(str(folder))
    reads = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda text: reads.append(1) or real(text))
    assert data.counts("train") == SplitCounts(12, 5)
    assert data.listed_counts("train") == SplitCounts(12, 5)
    assert data.counts("val") == SplitCounts(4, 1)
    assert len(reads) == 1


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "absent", "no such directory"),
    (lambda p: (p / "file").write_text("x") and p / "file", "not a directory"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "the directory is empty"),
])
def test_open_refuses_what_is_not_a_records_folder(tmp_path, make, message):
    with pytest.raises(RecordsError, match=message):
        RecordsDir.open(str(make(tmp_path)))


def test_checked_files_names_the_problem(folder, tmp_path):
    data = RecordsDir(str(folder))
    with pytest.raises(RecordsError, match=r"are 32x32 but data.image_size is 64; rebuild"):
        data.checked_files("train", 64)
    with pytest.raises(RecordsError, match="no test shards in"):
        data.checked_files("test", SIZE)
    empty = tmp_path / "hollow"
    write_shards(empty, "train", [])
    with pytest.raises(RecordsError, match="the train shards in .* hold no records"):
        RecordsDir(str(empty)).checked_files("train", SIZE)


def test_unreadable_shards_are_a_records_error(tmp_path):
    (tmp_path / records.SHARD_PATTERN.format(split="train", index=0, count=1)).write_bytes(
        b"not a tfrecord file at all")
    data = RecordsDir(str(tmp_path))
    for ask in (lambda: data.image_size("train"), lambda: data.counts("train"),
                lambda: data.fold_counts()):
        with pytest.raises(RecordsError, match=r"a record shard is damaged \(corrupted record at "
                                               r"0 .*\); find it with bin/build-tfrecords --verify"):
            ask()


def test_folds_are_the_manifests_else_counted_from_the_records(folder):
    data = RecordsDir(str(folder))
    assert data.folds == 0 and data.fold_counts() == {-1: SplitCounts(14, 4)}     # no folds
    (folder / records.MANIFEST).write_text(_manifest(folder, folds=5))
    assert RecordsDir(str(folder)).folds == 5


def test_records_of_another_geometry_rule_are_refused(folder):
    data = RecordsDir(str(folder))
    (folder / records.MANIFEST).write_text(_manifest(folder))
    assert data.checked_files("train", SIZE) == data.files("train")      # names no rule
    (folder / records.MANIFEST).write_text(_manifest(folder, geometry="zero-pad"))
    with pytest.raises(RecordsError, match=rf"records in {folder} were made with the geometry "
                                           rf"rule 'zero-pad', but .*'{geometry.RULE}'.*rebuild"):
        RecordsDir(str(folder)).checked_files("val", SIZE)
