"""THE TFRecord schema: the writer (build.py) and the tf.data parser both use this module;
:func:`write_shards` writes records from arrays (for tests, benches and the doctor).

One ``tf.train.Example`` per radiograph. Images and masks are single-channel PNGs of
``size`` x ``size`` made with :mod:`keras_ptx.data.geometry`; masks hold 0/1 values (the
union of the image's annotations), all 0 when ``has_pneumothorax`` is 0: readers may rely on
that (``parse(negatives_empty=True)``) and ``build-tfrecords --verify`` checks it.
``mask_area``, ``height`` and ``width`` refer to the original DICOM grid. Unknown sex/view
are empty strings, unknown age and fold -1. No patient name or ID is ever stored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2

from keras_ptx.fileio import join
from keras_ptx.tf_setup import tf

SPLITS = ("train", "val", "test")
SHARD_PATTERN = "{split}-{index:05d}-of-{count:05d}.tfrecord"
MANIFEST = "manifest.json"

FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "mask": tf.io.FixedLenFeature([], tf.string),
    "image_id": tf.io.FixedLenFeature([], tf.string),
    "has_pneumothorax": tf.io.FixedLenFeature([], tf.int64),
    "n_annotations": tf.io.FixedLenFeature([], tf.int64),
    "mask_area": tf.io.FixedLenFeature([], tf.int64),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
    "size": tf.io.FixedLenFeature([], tf.int64),
    "fold": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "sex": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "age": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "view": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "labeled": tf.io.FixedLenFeature([], tf.int64, default_value=1),
}


@dataclass
class Record:
    """One example before serialisation (PNG bytes already encoded)."""
    image_png: bytes
    mask_png: bytes
    image_id: str
    has_pneumothorax: int
    n_annotations: int
    mask_area: int
    height: int
    width: int
    size: int
    fold: int = -1
    sex: str = ""
    age: int = -1
    view: str = ""
    labeled: int = 1


def _bytes(value: bytes):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def serialize(record: Record) -> bytes:
    features = {
        "image": _bytes(record.image_png),
        "mask": _bytes(record.mask_png),
        "image_id": _bytes(record.image_id.encode()),
        "has_pneumothorax": _int(record.has_pneumothorax),
        "n_annotations": _int(record.n_annotations),
        "mask_area": _int(record.mask_area),
        "height": _int(record.height),
        "width": _int(record.width),
        "size": _int(record.size),
        "fold": _int(record.fold),
        "sex": _bytes(record.sex.encode()),
        "age": _int(record.age),
        "view": _bytes(record.view.encode()),
        "labeled": _int(record.labeled),
    }
    assert features.keys() == FEATURES.keys()
    # Map fields serialize in a per-process order unless asked not to: the same record must
    # always give the same bytes (resumed builds reproduce shards byte for byte).
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString(deterministic=True)


def parse(serialized, size: int | None = None, keys=None, *, negatives_empty: bool = False):
    """Parse one serialized example in the graph; decode image and mask to uint8 [S, S, 1].

    ``keys`` (default: every feature, which must include image and mask) limits the parse to
    what the caller reads: training needs only image, mask and has_pneumothorax.
    ``negatives_empty`` skips decoding the mask of a record without pneumothorax (zeros
    instead): a build writes those masks empty, ``verify`` checks it, and TensorFlow's PNG
    decoder spends a third of an image's decoding time on an empty 256 px mask.
    """
    if keys is not None and negatives_empty:
        keys = {*keys, "has_pneumothorax"}
    spec = FEATURES if keys is None else {key: FEATURES[key] for key in keys}
    ex = tf.io.parse_single_example(serialized, spec)
    image = tf.io.decode_png(ex["image"], channels=1)
    if negatives_empty:
        mask = tf.cond(ex["has_pneumothorax"] > 0,
                       lambda: tf.io.decode_png(ex["mask"], channels=1),
                       lambda: tf.zeros_like(image))
    else:
        mask = tf.io.decode_png(ex["mask"], channels=1)
    if size is not None:
        image.set_shape([size, size, 1])
        mask.set_shape([size, size, 1])
    ex["image"], ex["mask"] = image, mask
    return ex


def is_positive(serialized):
    """Whether a serialized example has a pneumothorax, parsing nothing else (bool scalar)."""
    label = {"has_pneumothorax": FEATURES["has_pneumothorax"]}
    return tf.io.parse_single_example(serialized, label)["has_pneumothorax"] > 0


def label_counts(files) -> tuple[int, int]:
    """(records, positive records) in ``files``, reading only the label."""
    labels = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE).map(
        lambda s: tf.cast(is_positive(s), tf.int64), num_parallel_calls=tf.data.AUTOTUNE)
    total, positives = labels.batch(4096).reduce(
        (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
        lambda acc, b: (acc[0] + tf.size(b, tf.int64), acc[1] + tf.reduce_sum(b)))
    return int(total), int(positives)


def shard_files(data_dir: str, split: str) -> list[str]:
    """Sorted shard paths of one split (local path or any tf.io.gfile URL)."""
    return sorted(tf.io.gfile.glob(join(data_dir, f"{split}-*-of-*.tfrecord")))


def write_shards(directory, split: str, examples, *, shards: int = 1, original: int = 1024,
                 labeled=None, folds=None) -> list[Record]:
    """Write ``examples``, (image, mask) pairs of uint8 [S, S] arrays (masks 0/1), as the
    ``shards`` shard files of ``split`` in ``directory`` (made if missing): example k in shard
    k % ``shards``, as record ``{split}-{k:03d}``.

    A record is positive when its mask has a pixel set; its height, width and ``mask_area`` are
    those of an ``original`` x ``original`` DICOM; it is labeled unless ``labeled[k]`` is false;
    its fold is ``folds[k]`` (-1 without ``folds``). Returns the records in the order written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(str(directory / SHARD_PATTERN.format(
        split=split, index=i, count=shards))) for i in range(shards)]
    written = []
    try:
        for k, (image, mask) in enumerate(examples):
            size, positive = image.shape[0], int(mask.any())
            record = Record(
                image_png=cv2.imencode(".png", image)[1].tobytes(),
                mask_png=cv2.imencode(".png", mask)[1].tobytes(), image_id=f"{split}-{k:03d}",
                has_pneumothorax=positive, n_annotations=positive,
                mask_area=int(mask.sum()) * (original // size) ** 2, height=original,
                width=original, size=size, labeled=1 if labeled is None else int(labeled[k]),
                fold=-1 if folds is None else int(folds[k]))
            writers[k % shards].write(serialize(record))
            written.append(record)
    finally:
        for writer in writers:
            writer.close()
    return written
