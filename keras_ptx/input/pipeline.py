"""tf.data pipelines from TFRecord shards to model batches (training, validation, evaluation).

Training: shard files per worker -> shuffle files -> interleaved parallel reads -> decode
image, mask and label only (:func:`keras_ptx.data.records.parse`) and shuffle (cached: decoded
once, shuffled from memory; else shuffled, then decoded) -> (optional class-balanced sampling
from one such stream per class) -> groups of ``data.batches_per_call`` batches ->
prefetch -> albumentations via one ``tf.numpy_function`` call per group, in worker processes by
default (:mod:`keras_ptx.input.augment`; with ``train.loss.border_bce``, each augmented mask's
border weights too), and labels of lesions cut away set to 0 -> the group
sliced into batches (a tail short of one batch dropped) -> gray-to-RGB normalisation of
``model.normalization`` compiled by XLA (:mod:`keras_ptx.input.normalize`) -> prefetch.
Evaluation (:func:`make_eval_dataset`): the same without shuffling, augmentation or dropped
examples, in a fixed order; training validates on that same pipeline
(``make_dataset(training=False)`` is a view of it), so validation and evaluation cannot differ.
The records come as a :class:`~keras_ptx.data.records_dir.RecordsDir`, which names the shards
a split is read from and, in a fold run (``data.fold``), the filter on the records' fold that
follows the read; whether to keep decoded records in memory comes as an argument, and so do
the steps per epoch, except with a positive share, whose schedule needs them and computes
them (:func:`epoch_steps`, below): this module holds only the tf.data graphs.

Positive share. With ``data.positive_share`` set, training examples are drawn from two endless
per-class streams (filtered on ``has_pneumothorax``) by ``sample_from_datasets``. With
``data.positive_share_end`` as well, the share moves linearly from the first to the second value
over ``num_epochs`` epochs (:func:`positive_share_for_epoch`). The schedule lives inside one
dataset: element ``k`` of this worker's stream belongs to epoch ``epoch + k // per_epoch``, where
``per_epoch`` is this pipeline's share of one epoch of ``steps_per_epoch`` global batches
(:func:`epoch_steps`). So training builds the dataset once, from the epoch it resumes at, and
``fit`` runs it for ``steps_per_epoch`` steps an epoch (:mod:`keras_ptx.training.datasets`).

Reproducibility. A cached split keeps its first pass's file order, so ``data.cache: auto``
(which depends on free memory) should be pinned to true or false for runs that must repeat
exactly. Every random choice (file order, shuffle, class sampling, augmentation) is
seeded from ``data.seed``, ``epoch`` and the input pipeline's id (so workers differ);
augmentation gets one seed per example from ``Dataset.random``, so its result does not depend
on thread scheduling. ``data.deterministic``
additionally fixes the element order (parallel reads and maps keep their order), which makes two
runs yield identical batches; otherwise the order may vary for speed.
"""
from __future__ import annotations

import functools

import numpy as np

from keras_ptx.config import Config, TrainConfig
from keras_ptx.data.records import is_positive, parse
from keras_ptx.data.records_dir import RecordsDir, RecordsError, SplitCounts
from keras_ptx.input.augment import graph_augmenter
from keras_ptx.input.border import Border, batch_border_weights, border_for
from keras_ptx.input.normalize import fused_to_model_input, to_model_input
from keras_ptx.tf_setup import tf

AUTOTUNE = tf.data.AUTOTUNE
READ_CYCLE = 8              # files read at once; fixed so the order does not depend on the host
EVAL_KEYS = ("image_id", "height", "width", "mask_area", "labeled")
TRAIN_KEYS = ("image", "mask", "has_pneumothorax")


def make_dataset(config: Config, records: RecordsDir, split: str, *,
                 training: bool | None = None, cached: bool = False,
                 steps_per_epoch: int | None = None, epoch: int | None = None,
                 num_epochs: int | None = None,
                 input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Batches ``(image [B,S,S,3] float32, {'mask': [B,S,S,1] float32, 'label': [B,1] float32})``
    (in training, S is ``data.train_crop`` when that is set). With ``train.loss.border_bce``,
    the mask is [B,S,S,2]: the mask and its border weights (:mod:`keras_ptx.input.border`),
    computed in the augmentation call from the augmented mask (every training batch then goes
    through one, even without augmentation).

    ``training`` defaults to ``split == 'train'``; without it, the batches are
    :func:`make_eval_dataset`'s (``train.batch_size``), as ``fit`` validates on them.
    ``cached`` keeps the decoded records in memory after the first pass
    (:mod:`keras_ptx.input.cache` decides). In training,
    ``steps_per_epoch`` (global batches) makes the stream endless, an epoch being that many
    batches (without it, one pass that ends itself, unless class-balanced sampling makes it
    endless); ``epoch`` is the first epoch this dataset feeds (for resuming) and ``num_epochs``
    the length of the positive-share schedule (default ``train.epochs``). With
    ``input_context`` (``distribute_datasets_from_function``) the batch is the per-replica share
    of ``train.batch_size`` and this worker reads only its shard.
    """
    training = split == "train" if training is None else training
    batch = _batch_size(config.train.batch_size, input_context)
    border = border_for(config)
    if not training:
        return make_eval_dataset(config, records, split, batch, cached=cached,
                                 input_context=input_context).map(
            functools.partial(_validation_batch, border), num_parallel_calls=AUTOTUNE)
    source = records.source(split, config.data.image_size, config.data.fold)

    first, num_epochs = epoch or 0, num_epochs or config.train.epochs
    seed = _epoch_seed(config.data.seed, first,
                       input_context.input_pipeline_id if input_context is not None else 0)
    deterministic = config.data.deterministic
    if positive_share_for_epoch(config, first, num_epochs) is None:
        serialized = _serialized(source, input_context, seed, deterministic)
        ds = _shuffled_examples(serialized, config, seed, cached)
        if steps_per_epoch:
            ds = ds.repeat()
    else:
        per_epoch = steps_per_epoch or epoch_steps(config.train, records, split, config.data.fold)
        ds = _balanced(config, records.counts(split, config.data.fold),
                       f"the {split} shards in {records}", source, input_context, first,
                       num_epochs, per_epoch, batch, seed, cached)
    if not config.augment.enabled and not config.data.train_crop and border is None:
        return _finish(ds.batch(batch, drop_remainder=True), config, deterministic)
    augment = graph_augmenter(config.augment, config.data.image_size, config.data.train_crop,
                              config.data.augment_processes, config.data.num_parallel_calls or None,
                              border)

    def augmented(pairs, seeds):
        """A group of whole batches, flat, through one augmentation call; returned as
        [k, B, ...] for slicing into its batches."""
        whole = tf.shape(seeds)[0] // batch * batch           # less only in a finite epoch's tail
        images, masks, labels, seeds = (t[:whole] for t in (*pairs, seeds))
        had_lesion = _present(masks)
        images, masks, *weights = augment(images, masks, seeds)
        outputs = (images, masks, labels * _kept(had_lesion, masks), *weights)
        return tuple(tf.reshape(t, [-1, batch, *t.shape[1:]]) for t in outputs)

    # Each call takes several batches (assembled ahead of it in one copy), which shares its fixed
    # cost, the hand-over, among more images. Slicing a group into its batches shares the
    # group's memory, where unbatch would copy it (BENCHMARKS.md, "Splitting a group"); batches
    # are normalised one by one, since a whole group of float images holds more memory and saved
    # no CPU that could be measured (BENCHMARKS.md, "Memory: normalising whole groups against
    # single batches").
    # Every example's augmentation follows its own seed, so batches do not depend on grouping.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    groups = tf.data.Dataset.zip((ds, seeds)).batch(batch * config.data.batches_per_call)
    groups = groups.filter(lambda pairs, seeds: tf.shape(seeds)[0] >= batch)  # as drop_remainder
    groups = groups.prefetch(AUTOTUNE).map(augmented, num_parallel_calls=augment.parallel_calls)
    ds = groups.flat_map(lambda *group: tf.data.Dataset.from_tensor_slices(group))
    return _finish(ds, config, deterministic)


def make_eval_dataset(config: Config, records: RecordsDir, split: str,
                      batch_size: int | None = None, *, cached: bool = False,
                      input_context: tf.distribute.InputContext | None = None
                      ) -> tf.data.Dataset:
    """Every example of ``split`` once, in a fixed order, as batches of dicts
    (``eval.batch_size`` unless ``batch_size``). ``cached`` keeps the decoded records for the
    dataset's later passes (training's validation); ``input_context``: this worker's share.

    Keys: ``image`` (float32 [B,S,S,3], normalised as ``model.normalization`` says), ``mask``
    (float32 [B,S,S,1]), ``label`` (float32 [B,1]), ``image_id`` (string [B]), ``height``,
    ``width`` (original DICOM grid), ``mask_area`` (pixels on that grid) and ``labeled`` (0
    for records without ground truth), all int64 [B].
    """
    source = records.source(split, config.data.image_size, config.data.fold)
    normalization = config.model.normalization

    def to_dict(example):
        image, mask, label = _pair(example)
        return {"image": image, "mask": mask, "label": label,
                **{key: example[key] for key in EVAL_KEYS}}

    def normalise(batch):
        return {**batch, "image": to_model_input(batch["image"], normalization),
                "mask": tf.cast(batch["mask"], tf.float32)}

    ds = _examples(source, config, input_context, cached).map(to_dict,
                                                              num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size or config.eval.batch_size).map(normalise, num_parallel_calls=AUTOTUNE)
    return _with_determinism(ds.prefetch(AUTOTUNE), True)


def positive_share_for_epoch(config: Config, epoch: int, num_epochs: int) -> float | None:
    """The share of positive training images in ``epoch`` (0-based); None = natural share.

    Linear from ``data.positive_share`` at epoch 0 to ``data.positive_share_end`` at the last
    epoch, then held; constant when no end is set.
    """
    start, end = config.data.positive_share, config.data.positive_share_end
    if start is None:
        return None
    if end is None or num_epochs <= 1:
        return start
    progress = min(max(epoch, 0), num_epochs - 1) / (num_epochs - 1)
    return start + (end - start) * progress


def epoch_steps(train: TrainConfig, records: RecordsDir, split: str = "train",
                fold: int | None = None) -> int:
    """Global training steps per epoch: ``train.steps_per_epoch``, else one pass of whole
    batches over ``split`` of ``records`` (of fold run ``fold``) (at least one)."""
    return train.steps_per_epoch or max(1, records.counts(split, fold).records // train.batch_size)


def _batch_size(global_batch: int, input_context) -> int:
    if input_context is None:
        return global_batch
    return input_context.get_per_replica_batch_size(global_batch)


def _epoch_seed(seed: int, epoch: int, pipeline: int) -> int:
    """The seed of one input pipeline's stream from ``epoch`` on: pipelines of a multi-worker
    run draw their own augmentation and sampling (pipeline 0's is a single pipeline's)."""
    return int(np.random.SeedSequence([seed, epoch, *([pipeline] if pipeline else [])])
               .generate_state(1)[0])


def _serialized(source, input_context, shuffle_seed, deterministic) -> tf.data.Dataset:
    """This worker's serialized records of ``source`` (:meth:`RecordsDir.source`: the files and
    the filter picking the split's records from them); files shuffled when ``shuffle_seed`` is
    given.

    Workers split the files when there are at least as many files as workers, else the records
    of one sequential read (a fixed order, so the record shards are disjoint).
    """
    files, keep = source
    workers, worker = ((input_context.num_input_pipelines, input_context.input_pipeline_id)
                       if input_context is not None else (1, 0))
    if len(files) < workers:
        ds = tf.data.TFRecordDataset(files).shard(workers, worker)
    else:
        mine = files[worker::workers]
        ds = tf.data.Dataset.from_tensor_slices(mine)
        if shuffle_seed is not None:
            ds = ds.shuffle(len(mine), seed=shuffle_seed, reshuffle_each_iteration=True)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(mine), READ_CYCLE),
                           num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return ds if keep is None else ds.filter(keep)


def _parse(config: Config, keys=None):
    return functools.partial(parse, size=config.data.image_size, keys=keys,
                             negatives_empty=True)


def _training_pair(config: Config):
    """serialized -> (image, mask, label), parsing only the features training reads."""
    parse = _parse(config, TRAIN_KEYS)
    return lambda serialized: _pair(parse(serialized))


def _examples(source, config: Config, input_context, cached: bool) -> tf.data.Dataset:
    """Decoded examples in a fixed order (evaluation)."""
    ds = _serialized(source, input_context, None, True)
    ds = ds.map(_parse(config), num_parallel_calls=AUTOTUNE)
    return ds.cache() if cached else ds


def _shuffled_examples(serialized, config: Config, seed: int, cached: bool) -> tf.data.Dataset:
    """Decoded (image, mask, label) triples, shuffled (``cached``: kept in memory and
    shuffled from there)."""
    def shuffle(ds):
        if config.data.shuffle_buffer <= 1:
            return ds
        return ds.shuffle(config.data.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    parse = _training_pair(config)
    if cached:
        return shuffle(serialized.map(parse, num_parallel_calls=AUTOTUNE).cache())
    return shuffle(serialized).map(parse, num_parallel_calls=AUTOTUNE)


def _balanced(config: Config, counts: SplitCounts, where: str, source, input_context,
              first_epoch: int, num_epochs: int, steps_per_epoch: int, batch: int, seed: int,
              cached: bool) -> tf.data.Dataset:
    """Endless stream drawing positives at the scheduled share from per-class streams;
    ``counts`` are those of the split's records (``where``, for messages)."""
    shares = [positive_share_for_epoch(config, e, num_epochs)
              for e in range(first_epoch, max(num_epochs, first_epoch + 1))]
    total, positives = counts.records, counts.positives
    for wanted, have, kind in ((max(shares), positives, "positive"),
                               (1 - min(shares), total - positives, "negative")):
        if wanted > 0 and have == 0:
            raise RecordsError(f"data.positive_share asks for {kind} examples but {where} have "
                               f"none ({positives} of {total} positive)")
    streams = []
    for positive in (True, False):
        serialized = _serialized(source, input_context, seed, config.data.deterministic).filter(
            lambda s, positive=positive: tf.equal(is_positive(s), positive))
        streams.append(_shuffled_examples(serialized, config, seed, cached).repeat())

    weights = [[s, 1.0 - s] for s in shares]
    if len(weights) == 1:
        return tf.data.Dataset.sample_from_datasets(streams, weights=weights[0], seed=seed)
    replicas = (input_context.num_replicas_in_sync // input_context.num_input_pipelines
                if input_context is not None else 1)
    per_epoch = steps_per_epoch * batch * replicas
    schedule = tf.data.Dataset.from_tensor_slices(tf.constant(weights)).flat_map(
        lambda w: tf.data.Dataset.from_tensors(w).repeat(per_epoch))
    last = tf.data.Dataset.from_tensors(tf.constant(weights[-1])).repeat()
    schedule = schedule.concatenate(last)
    return tf.data.Dataset.sample_from_datasets(streams, weights=schedule, seed=seed)


def _pair(example):
    """(uint8 image, uint8 mask, float32 [1] label) of a decoded example."""
    label = tf.cast(example["has_pneumothorax"] > 0, tf.float32)[None]
    return example["image"], example["mask"], label


def _present(masks):
    """bool [B]: whether each mask has a lesion pixel."""
    return tf.reduce_max(masks, axis=[1, 2, 3]) > 0


def _kept(had_lesion, new_masks):
    """float32 [B, 1]: 0 where augmentation cut every mask pixel out of the image (a crop or
    a distortion), so the label head is not told to find a lesion that is no longer there."""
    return tf.cast(_present(new_masks) | ~had_lesion, tf.float32)[:, None]


def _validation_batch(border: Border | None, batch: dict):
    """An evaluation batch as ``fit`` validates on it: (image, {'mask', 'label'}); with
    ``border``, the mask target is [B, S, S, 2]: the mask, then its border weights."""
    mask = batch["mask"]
    if border is not None:
        weights = tf.numpy_function(functools.partial(batch_border_weights, border=border),
                                    [mask], tf.float32, stateful=False, name="border_weights")
        mask = tf.concat([mask, tf.ensure_shape(weights, mask.shape)], axis=-1)
    return batch["image"], {"mask": mask, "label": batch["label"]}


def _to_model_batch(normalization, image, mask, label, weights=None):
    """Model batch from uint8 image and mask batches; with border weights, the mask target
    is [B, S, S, 2]: the mask, then its weights (:mod:`keras_ptx.model.losses`)."""
    mask = tf.cast(mask, tf.float32)
    if weights is not None:
        mask = tf.concat([mask, weights], axis=-1)
    return fused_to_model_input(image, normalization), {"mask": mask, "label": label}


def _finish(batches: tf.data.Dataset, config: Config, deterministic: bool) -> tf.data.Dataset:
    ds = batches.map(functools.partial(_to_model_batch, config.model.normalization),
                     num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
    return _with_determinism(ds, deterministic)


def _with_determinism(ds: tf.data.Dataset, deterministic: bool) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options)
