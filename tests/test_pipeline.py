"""The tf.data input pipeline on small real TFRecord shards written with the shared schema."""
import hashlib
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from keras_ptx.config import load_config
from keras_ptx.data import manifest, records
from keras_ptx.data.records import write_shards
from keras_ptx.data.records_dir import RecordsDir, RecordsError
from keras_ptx.fileio import write_atomic
from keras_ptx.input import cache
from keras_ptx.input.normalize import (NORMALIZATIONS, fused_to_model_input,
                                      gray_from_model_input, to_model_input)
from keras_ptx.input.pipeline import (epoch_steps, make_dataset, make_eval_dataset,
                                      positive_share_for_epoch)
from keras_ptx.tf_setup import tf


SIZE = 64


def _example(rng, positive):
    """A smooth random 'radiograph' and its mask: for positives, a bright blob drawn in both."""
    image = cv2.GaussianBlur(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8), (7, 7), 0)
    image = cv2.add(image, rng.integers(0, 40, (SIZE, SIZE), dtype=np.uint8))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if positive:
        y, x = rng.integers(8, SIZE - 8, 2)
        cv2.circle(mask, (int(x), int(y)), 6, 1, -1)
        image[mask > 0] = 240
    return image, mask


def _write_split(directory, split, n, positives, shards, seed):
    """``n`` examples (``positives`` of them positive) in a random order; returns (record,
    image) pairs in that order (with one shard: the file's order)."""
    rng = np.random.default_rng(seed)
    examples = [_example(rng, i < positives) for i in range(n)]
    examples = [examples[i] for i in rng.permutation(n)]
    written = write_shards(directory, split, examples, shards=shards)
    return [(record, image) for record, (image, _) in zip(written, examples)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """train: 40 records (10 positive) in 4 shards; val: 9 in 1 shard; test: 11 in 3 shards."""
    directory = tmp_path_factory.mktemp("records")
    splits = {"train": _write_split(directory, "train", 40, 10, 4, 1),
              "val": _write_split(directory, "val", 9, 3, 1, 2),
              "test": _write_split(directory, "test", 11, 4, 3, 3)}
    return directory, splits


def _config(*overrides):
    return load_config(None, (f"data.image_size={SIZE}", "train.batch_size=8", *overrides))


def _records(path):
    return RecordsDir(str(path))


def _digest(array):
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.mark.parametrize("cache", [False, True])
def test_training_batches_have_model_shapes_and_dtypes(data_dir, cache):
    directory, _ = data_dir
    ds = make_dataset(_config(), _records(directory), "train", cached=cache)
    spec_image, spec_targets = ds.element_spec
    assert spec_image.shape.as_list() == [8, SIZE, SIZE, 3]
    assert spec_targets["mask"].shape.as_list() == [8, SIZE, SIZE, 1]
    assert spec_targets["label"].shape.as_list() == [8, 1]
    batches = list(ds)
    assert len(batches) == 40 // 8                       # one pass, remainder dropped
    image, targets = batches[0]
    assert image.dtype == tf.float32 and targets["mask"].dtype == tf.float32
    assert targets["label"].dtype == tf.float32
    assert set(np.unique(targets["mask"].numpy())) <= {0.0, 1.0}
    assert np.all(targets["label"].numpy() == (targets["mask"].numpy().max(axis=(1, 2, 3)) > 0)[:, None])
    assert -2.2 < float(tf.reduce_min(image)) and float(tf.reduce_max(image)) < 2.7


def test_a_positive_cropped_clear_of_its_lesion_is_labelled_negative(data_dir):
    directory, _ = data_dir
    config = _config("augment.random_sized_crop.p=1.0", "augment.random_sized_crop.min_fraction=0.3",
                     "augment.random_sized_crop.max_fraction=0.35", "data.positive_share=0.5")
    labels, present = [], []
    for _, targets in make_dataset(config, _records(directory), "train").take(6):
        labels += targets["label"].numpy()[:, 0].tolist()
        present += (targets["mask"].numpy().max(axis=(1, 2, 3)) > 0).tolist()
    assert labels == [float(p) for p in present]
    assert 0 < sum(present) < len(present) / 2          # half were positive, most crops missed


@pytest.mark.parametrize("augment", [True, False])
def test_training_crops_hold_the_lesion_of_a_positive(data_dir, augment):
    directory, _ = data_dir
    config = _config("data.train_crop=32", f"augment.enabled={augment}", "data.positive_share=0.5")
    ds = make_dataset(config, _records(directory), "train")
    assert ds.element_spec[0].shape.as_list() == [8, 32, 32, 3]
    for _, targets in ds.take(4):
        present = targets["mask"].numpy().max(axis=(1, 2, 3)) > 0
        np.testing.assert_array_equal(targets["label"].numpy()[:, 0], present)
        assert targets["mask"].shape[1:] == (32, 32, 1)
    assert make_dataset(config, _records(directory), "val").element_spec[0].shape[1] == SIZE
    only_positives = _config("data.train_crop=32", "augment.enabled=false", "data.positive_share=1.0")
    for _, targets in make_dataset(only_positives, _records(directory), "train").take(3):
        assert targets["mask"].numpy().max(axis=(1, 2, 3)).all()    # every crop holds its lesion


def test_to_model_input_matches_the_encoder_preprocessing():
    import segmentation_models as sm
    gray = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    expected = sm.get_preprocessing("efficientnetb0")(np.repeat(gray, 3, axis=-1).astype(np.float32))
    np.testing.assert_allclose(to_model_input(gray).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_model_input(gray.astype(np.float32)).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(fused_to_model_input(gray).numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one gray channel"):
        to_model_input(np.zeros((8, 8, 3), np.uint8))
    # encoders that normalise inside the network take the gray levels as they are
    rgb = np.repeat(gray, 3, axis=-1).astype(np.float32)
    np.testing.assert_array_equal(to_model_input(gray, "pixels").numpy(), rgb)
    np.testing.assert_array_equal(fused_to_model_input(gray, "pixels").numpy(), rgb)
    for normalization in NORMALIZATIONS:
        np.testing.assert_allclose(
            gray_from_model_input(to_model_input(gray, normalization).numpy(), normalization),
            gray / 255.0, atol=1e-6)


@pytest.mark.parametrize("cache", [False, True])
def test_validation_is_not_augmented_and_keeps_record_order(data_dir, cache):
    directory, splits = data_dir
    config = _config("augment.horizontal_flip.p=1.0", "augment.random_sized_crop.p=1.0")
    images = np.concatenate([b[0].numpy() for b in make_dataset(config, _records(directory), "val",
                                                                cached=cache)])
    expected = to_model_input(np.stack([image for _, image in splits["val"]])[..., None]).numpy()
    np.testing.assert_array_equal(images, expected)
    ids = [i.decode() for b in make_eval_dataset(config, _records(directory), "val")
           for i in b["image_id"].numpy()]
    assert ids == [record.image_id for record, _ in splits["val"]]


def test_validation_is_the_evaluation_pipeline_in_fits_form(data_dir):
    """Training validates on make_eval_dataset's batches: the same images (in the run's
    normalisation), masks and labels, batched by train.batch_size."""
    directory, _ = data_dir
    config = _config("model.encoder=efficientnetv2b0", "model.normalization=pixels")
    validation = list(make_dataset(config, _records(directory), "val"))
    evaluation = list(make_eval_dataset(config, _records(directory), "val", batch_size=8))
    assert [len(image) for image, _ in validation] == [8, 1]
    for (image, targets), batch in zip(validation, evaluation):
        np.testing.assert_array_equal(image.numpy(), batch["image"].numpy())
        np.testing.assert_array_equal(targets["mask"].numpy(), batch["mask"].numpy())
        np.testing.assert_array_equal(targets["label"].numpy(), batch["label"].numpy())
    assert validation[0][0].numpy().max() > 1.0         # 0..255 gray levels, as the encoder takes


def test_one_evaluation_epoch_yields_every_example_once(data_dir):
    directory, splits = data_dir
    batches = list(make_eval_dataset(_config(), _records(directory), "test", batch_size=4))
    assert [len(b["image_id"]) for b in batches] == [4, 4, 3]
    ids = [i.decode() for b in batches for i in b["image_id"].numpy()]
    assert sorted(ids) == sorted(r.image_id for r, _ in splits["test"])
    first = batches[0]
    assert first["image"].shape == (4, SIZE, SIZE, 3) and first["mask"].dtype == tf.float32
    assert first["height"].dtype == tf.int64 and set(first["labeled"].numpy()) == {1}
    by_id = {r.image_id: r for r, _ in splits["test"]}
    for b in batches:
        for i, area, label in zip(b["image_id"].numpy(), b["mask_area"].numpy(), b["label"].numpy()):
            assert area == by_id[i.decode()].mask_area and label[0] == by_id[i.decode()].has_pneumothorax
    # make_dataset over the same split in evaluation mode keeps the short last batch too
    assert sum(len(b[0]) for b in make_dataset(_config(), _records(directory), "test")) == 11


def _positive_shares(ds, batches_per_epoch, epochs):
    labels = np.concatenate([t["label"].numpy()[:, 0] for _, t in ds.take(batches_per_epoch * epochs)])
    return labels.reshape(epochs, -1).mean(axis=1)


def test_fixed_positive_share_is_sampled(data_dir):
    directory, _ = data_dir
    config = _config("data.positive_share=0.6", "augment.enabled=false", "data.shuffle_buffer=16")
    assert epoch_steps(config.train, _records(directory)) == 40 // 8
    shares = _positive_shares(make_dataset(config, _records(directory), "train"), 50, 1)
    assert abs(shares[0] - 0.6) < 0.08                   # natural share is 0.25


def test_scheduled_positive_share_changes_per_epoch(data_dir):
    directory, _ = data_dir
    config = _config("data.positive_share=0.8", "data.positive_share_end=0.2", "train.epochs=3",
                     "train.steps_per_epoch=40", "augment.enabled=false", "data.shuffle_buffer=16")
    assert [positive_share_for_epoch(config, e, 3) for e in range(4)] == pytest.approx([0.8, 0.5, 0.2, 0.2])
    shares = _positive_shares(make_dataset(config, _records(directory), "train"), 40, 3)
    np.testing.assert_allclose(shares, [0.8, 0.5, 0.2], atol=0.08)
    resumed = _positive_shares(make_dataset(config, _records(directory), "train", epoch=2), 40, 1)
    assert abs(resumed[0] - 0.2) < 0.08


def test_a_positive_share_the_records_cannot_give_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    write_shards(tmp_path, "train", [_example(rng, False) for _ in range(8)])
    with pytest.raises(RecordsError, match=r"data.positive_share asks for positive examples but "
                                           r"the train shards in .* have none \(0 of 8"):
        make_dataset(_config("data.positive_share=0.5"), _records(tmp_path), "train")


def _batches(config, directory, n=3):
    """The first ``n`` training batches (all of an epoch with -1)."""
    return [(image.numpy(), targets["mask"].numpy(), targets["label"].numpy())
            for image, targets in make_dataset(config, _records(directory), "train").take(n)]


def _assert_same_batches(first, second):
    assert len(first) == len(second)
    for batch_a, batch_b in zip(first, second):
        for a, b in zip(batch_a, batch_b):
            np.testing.assert_array_equal(a, b)


def test_same_seed_in_deterministic_mode_gives_identical_batches(data_dir):
    directory, _ = data_dir
    settings = ("data.deterministic=true", "data.num_parallel_calls=2", "data.positive_share=0.5",
                "augment.distortion.p=0.9", "augment.random_sized_crop.p=0.5", "augment.intensity.p=0.9")
    first, second = _batches(_config(*settings), directory), _batches(_config(*settings), directory)
    other = _batches(_config(*settings, "data.seed=7"), directory)
    in_threads = _batches(_config(*settings, "data.augment_processes=false"), directory)
    for run in (second, in_threads):
        _assert_same_batches(first, run)
    assert not np.array_equal(first[0][0], other[0][0])


def test_batches_per_call_changes_no_batch(data_dir):
    """Across group boundaries (3 and 2 batches per call over 7 batches), labels included."""
    settings = ("data.deterministic=true", "data.positive_share=0.5", "augment.distortion.p=0.9",
                "augment.random_sized_crop.p=0.5")
    one = _batches(_config(*settings, "data.batches_per_call=1"), data_dir[0], 7)
    for per_call in (2, 3):
        _assert_same_batches(one, _batches(_config(*settings, f"data.batches_per_call={per_call}"),
                                           data_dir[0], 7))


@pytest.mark.parametrize("batch, per_call, full", [(8, 3, 5), (6, 4, 6), (6, 7, 6)])
def test_an_epoch_keeps_every_full_batch_whatever_the_batches_per_call(data_dir, batch, per_call,
                                                                        full):
    """40 records: batch 8 as groups of 3 + 2 batches; batch 6 (4 left over) as groups of
    24 + 16 images, the last cut to 2 batches, or as one group of 40 cut to 6."""
    def epoch(per_call):
        config = _config("data.deterministic=true", f"train.batch_size={batch}",
                         f"data.batches_per_call={per_call}")
        return _batches(config, data_dir[0], n=-1)

    one, grouped = epoch(1), epoch(per_call)
    assert len(one) == full
    assert all(image.shape == (batch, SIZE, SIZE, 3) for image, _, _ in grouped)
    _assert_same_batches(one, grouped)


LIVE_ITERATOR_AT_EXIT = textwrap.dedent("""
    import sys
    from keras_ptx.config import load_config
    from keras_ptx.data.records_dir import RecordsDir
    from keras_ptx.input.pipeline import make_dataset
    config = load_config(None, ("data.image_size=%d", "train.batch_size=4",
                                "data.num_parallel_calls=2", "data.augment_processes=" + sys.argv[2],
                                "data.batches_per_call=1"))
    batches = iter(make_dataset(config, RecordsDir(sys.argv[1]), "train", cached=True,
                                steps_per_epoch=1))
    next(batches)
""") % SIZE


@pytest.mark.parametrize("processes", [True, False])
def test_a_script_ending_with_a_live_training_iterator_exits(data_dir, processes):
    """Augmentation calls still pending when the interpreter finalises used to hang the exit
    (in most runs without the exit handler of keras_ptx.input.augment; small calls, one batch
    each, keep calls pending more often)."""
    result = subprocess.run([sys.executable, "-c", LIVE_ITERATOR_AT_EXIT, str(data_dir[0]),
                             str(processes)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_augmentation_changes_training_images(data_dir):
    directory, splits = data_dir
    config = _config("augment.intensity.p=1.0", "data.deterministic=true")
    originals = {_digest(image) for image in fused_to_model_input(
        np.stack([image for _, image in splits["train"]])[..., None]).numpy()}
    seen = [_digest(image) for batch, _, _ in _batches(config, directory, n=2) for image in batch]
    assert not originals.intersection(seen)


@pytest.mark.parametrize("split", ["train", "val"])   # 4 files: shard files; 1 file: shard records
def test_two_workers_get_disjoint_shards_covering_the_split(data_dir, split):
    directory, splits = data_dir
    config = _config()
    everything = {_digest(image) for image in to_model_input(
        np.stack([image for _, image in splits[split]])[..., None]).numpy()}
    parts = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker,
                                             num_replicas_in_sync=2)
        batches = list(make_dataset(config, _records(directory), split, training=False, input_context=context))
        assert batches[0][0].shape[0] == 4                # per-replica share of the global 8
        parts.append([_digest(image) for batch, _ in batches for image in batch.numpy()])
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(everything)


def test_two_workers_draw_their_own_augmentations(data_dir):
    """Each worker's k-th example gets its own flip draw, not the other worker's (in
    deterministic mode: otherwise the order of the groups alone may tell them apart)."""
    directory, splits = data_dir
    config = _config("augment.intensity.p=0", "augment.distortion.p=0",
                     "augment.random_sized_crop.p=0", "augment.horizontal_flip.p=0.5",
                     "data.deterministic=true")
    gray = np.stack([image for _, image in splits["train"]])[..., None]
    plain = {_digest(image) for image in fused_to_model_input(gray).numpy()}
    flipped = {_digest(image) for image in fused_to_model_input(gray[:, :, ::-1]).numpy()}
    patterns = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker,
                                             num_replicas_in_sync=2)
        ds = make_dataset(config, _records(directory), "train", input_context=context)
        digests = [_digest(image) for batch, _ in ds.take(4) for image in batch.numpy()]
        assert all((d in plain) != (d in flipped) for d in digests)
        patterns.append([d in flipped for d in digests])
    assert 0 < sum(patterns[0]) < len(patterns[0])
    assert patterns[0] != patterns[1]       # same by chance: 1 in 2**16


def test_training_with_input_context_uses_the_per_replica_batch(data_dir):
    directory, _ = data_dir
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=4)
    ds = make_dataset(_config("data.positive_share=0.5", "train.steps_per_epoch=3"), _records(directory),
                      "train", input_context=context)
    assert ds.element_spec[0].shape.as_list() == [2, SIZE, SIZE, 3]


def test_size_mismatch_is_a_clear_error(data_dir):
    directory, _ = data_dir
    with pytest.raises(RecordsError, match=r"are 64x64 but data.image_size is 128"):
        make_dataset(load_config(None, ("data.image_size=128",)), _records(directory), "train")


def test_missing_shards_are_a_clear_error(tmp_path):
    with pytest.raises(RecordsError, match="no train shards in"):
        make_dataset(_config(), _records(tmp_path), "train")
    with pytest.raises(RecordsError, match="no val shards in"):
        make_eval_dataset(_config(), _records(tmp_path), "val")


def test_cache_auto_keeps_a_split_in_memory_only_when_it_fits(data_dir, tmp_path, monkeypatch):
    directory, _ = data_dir
    need = 40 * SIZE * SIZE * 2                         # train: 40 decoded images and masks
    data = _config().data
    assert data.cache == "auto"
    for free, fits in ((4 * need, True), (4 * need - 1, False)):
        monkeypatch.setattr(cache, "available_memory", lambda free=free: free)
        plan = cache.plan(data, _records(directory), "train")       # no manifest: records counted
        assert plan.cache is fits, plan.reason
    assert "more than 25% of it" in plan.reason
    for forced in (True, False):
        plan = cache.plan(_config(f"data.cache={forced}").data, _records(directory), "train")
        assert plan.cache is forced

    # a build's manifest is trusted for the count (here one that claims far more records)
    built = tmp_path / "built"
    built.mkdir()
    shard = records.SHARD_PATTERN.format(split="train", index=0, count=1)
    (built / shard).write_bytes(b"")            # listed, so the manifest agrees; never read
    split = lambda shards: {"images": sum(e for _, e in shards), "positives": 0,  # noqa: E731
                            "annotations": 0, "shards": [{"file": f, "examples": e, "sha256": ""}
                                                         for f, e in shards]}
    write_atomic(built / records.MANIFEST, manifest.to_json({
        "format": manifest.FORMAT, "options": {"image_size": SIZE}, "rejected": [],
        "totals": {"inputs": 10_000},
        "splits": {"train": split([(shard, 10_000)]), "val": split([]), "test": split([])}}))
    assert cache.plan(data, _records(built), "train").reason.startswith(
        f"auto: {10_000 * need / 40 / 1e9:.2f} GB decoded")


def test_available_memory_respects_a_container_limit(monkeypatch):
    files = {"/sys/fs/cgroup/memory.max": 8 << 30, "/sys/fs/cgroup/memory.current": 6 << 30}
    monkeypatch.setattr(cache, "_meminfo_available", lambda: 20 << 30)
    monkeypatch.setattr(cache, "_read_int", files.get)
    assert cache.available_memory() == 2 << 30
    monkeypatch.setattr(cache, "_read_int", lambda path: None)   # no limit ('max') or no cgroup
    assert cache.available_memory() == 20 << 30
