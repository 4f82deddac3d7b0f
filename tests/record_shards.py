"""Record shards in the shared schema (:mod:`keras_ptx.data.records`) from arrays, for tests and
benches: ``from record_shards import write_shards`` (pytest puts tests/ on ``sys.path``; a bench
adds it)."""
from __future__ import annotations

from pathlib import Path

import cv2

from keras_ptx.data import records
from keras_ptx.tf_setup import tf


def write_shards(directory, split: str, examples, *, shards: int = 1, original: int = 1024,
                 labeled=None) -> list[records.Record]:
    """Write ``examples``, (image, mask) pairs of uint8 [S, S] arrays (masks 0/1), as the
    ``shards`` shard files of ``split`` in ``directory`` (made if missing): example k in shard
    k % ``shards``, as record ``{split}-{k:03d}``.

    A record is positive when its mask has a pixel set; its height, width and ``mask_area`` are
    those of an ``original`` x ``original`` DICOM; it is labeled unless ``labeled[k]`` is false.
    Returns the records in the order written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(str(directory / records.SHARD_PATTERN.format(
        split=split, index=i, count=shards))) for i in range(shards)]
    written = []
    try:
        for k, (image, mask) in enumerate(examples):
            size, positive = image.shape[0], int(mask.any())
            record = records.Record(
                image_png=cv2.imencode(".png", image)[1].tobytes(),
                mask_png=cv2.imencode(".png", mask)[1].tobytes(), image_id=f"{split}-{k:03d}",
                has_pneumothorax=positive, n_annotations=positive,
                mask_area=int(mask.sum()) * (original // size) ** 2, height=original,
                width=original, size=size, labeled=1 if labeled is None else int(labeled[k]))
            writers[k % shards].write(records.serialize(record))
            written.append(record)
    finally:
        for writer in writers:
            writer.close()
    return written
