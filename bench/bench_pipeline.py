#!/usr/bin/env python
"""Augmented images/s of the tf.data training pipeline, end to end from TFRecord shards.

For each size, writes N chest-like records (smooth anatomy-like shading plus film noise, ~22%
with a pneumothorax-like mask, PNG-encoded through the shared record schema) into 4 shards,
then measures, as medians over a few rounds of N images each (each case alone, the cases in
turn forward then backward):

- pipeline: ``keras_ptx.input.pipeline.make_dataset`` on the train split, the default policy and
  ``data.num_parallel_calls`` of 1 and 2 (``--calls``: worker processes, each serving two
  tf.data calls, or threads), each call augmenting ``--batches-per-call`` batches (read,
  decode, batch, augment, normalise, prefetch), in the steady state of training's endless
  stream;
- no-aug: the same pipeline with ``augment.enabled=false`` (what everything but albumentations
  costs);
- raw loop: the same albumentations policy called in a plain Python loop on the same decoded
  uint8 images (no TensorFlow at all): the ceiling for one worker or thread;
- raw, 2 threads: two such loops in two Python threads, each on half the images: the ceiling
  for two threads, which share one interpreter lock as the pipeline's do;
- raw, 2 processes: two such loops in two processes at once: what two cores give albumentations
  with nothing else to do, the ceiling for two worker processes.

"main CPU" is this process's CPU time per image (all its threads; worker processes not
counted): what two workers on two cores must share with augmentation. "workers CPU" is the CPU
time per image of this process's children (the augmentation workers; Linux only); "cores
busy" is the CPU of both per second of wall time, and "ceiling" the rate at which every core
would be busy with that work per image (cores / (main + workers CPU)): no pipeline doing it on
this machine can go faster. 2 calls can beat 1 call by at most their ceiling / 1 call's rate.

Goals (issue 5): pipeline >= 0.9x raw at 1 call; 2 calls >= 1.6x one call on 2 cores.
``--model`` adds the training demand of a stand-in network (segmentation-models'
Unet-EfficientNetB0, weights none) at the same size and batch, in images/s. Prints Markdown
for BENCHMARKS.md. Run on a quiet machine, once with records decoded every epoch and once
with them cached (set explicitly: ``auto``, the default, depends on free memory):

    .venv/bin/python bench/bench_pipeline.py --sizes 256 512 --images 600 --model \
        --set data.cache=false
    .venv/bin/python bench/bench_pipeline.py --sizes 256 512 --images 600 --set data.cache=true
"""
from __future__ import annotations

import argparse
import concurrent.futures
import gc
import multiprocessing
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from keras_ptx.config import load_config
from keras_ptx.data import records
from keras_ptx.data.records_dir import RecordsDir
from keras_ptx.input import cache
from keras_ptx.input.policy import build_policy
from keras_ptx.input.pipeline import make_dataset
from keras_ptx.tf_setup import tf

SHARDS = 4


def radiograph(rng, size):
    """uint8 (size, size): dark lungs in a brighter body, ribs, a bright spine, film noise."""
    yy, xx = np.mgrid[:size, :size] / size
    image = 170 - 60 * yy + rng.normal(0, 8)
    for side in (-1, 1):
        cx, cy = 0.5 + side * rng.uniform(0.18, 0.24), rng.uniform(0.42, 0.5)
        lung = ((xx - cx) / rng.uniform(0.14, 0.18)) ** 2 + ((yy - cy) / rng.uniform(0.26, 0.32)) ** 2
        image -= 90 * np.clip(1.2 - lung, 0, 1)
    image += 25 * (np.sin(yy * rng.uniform(50, 60) + xx * 8) > 0.6)      # ribs
    image += 60 * np.exp(-((xx - 0.5) / 0.05) ** 2)                        # spine
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), size / 200)
    image += rng.normal(0, 4, image.shape)                                 # film noise
    return np.clip(image, 0, 255).astype(np.uint8)


def example(rng, size):
    """A radiograph and its mask: ~22% hold a pneumothorax-like ellipse."""
    image = radiograph(rng, size)
    mask = np.zeros((size, size), np.uint8)
    if rng.random() < 0.22:
        centre = (int(size * rng.uniform(0.2, 0.35)), int(size * rng.uniform(0.2, 0.5)))
        axes = (int(size * rng.uniform(0.03, 0.08)), int(size * rng.uniform(0.08, 0.2)))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
    return image, mask


def write_shards(directory: Path, size: int, count: int, seed: int = 0) -> int:
    """``count`` training records in :data:`SHARDS` shards; returns their mean size in bytes."""
    rng = np.random.default_rng(seed)
    examples = (example(rng, size) for _ in range(count))
    written = records.write_shards(directory, "train", examples, shards=SHARDS)
    return sum(len(records.serialize(record)) for record in written) // count


def _children_cpu() -> float:
    """CPU seconds used so far by the threads of this process's living children (Linux, to
    the nanosecond from schedstat; 0 elsewhere)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                total += sum(int(task.read_text().split()[0])
                             for task in stat.parent.glob("task/*/schedstat"))
        except (OSError, ValueError):         # ended meanwhile
            continue
    return total / 1e9


def median_rates(cases: dict, passes: int) -> tuple[dict, dict, dict]:
    """Median images/s of each case over 2 x ``passes`` timed rounds, and the median CPU time
    per image, in ms, of this process (all its threads) and of its children (workers).

    A case is a factory returning ``run() -> images``. Each case runs alone: one warm-up
    round (which fills a pipeline's shuffle buffer), its timed rounds, then its iterator is
    dropped, so no background prefetching steals from the next case. The cases run in turn,
    forward then backward, so drifting machine noise hits them alike.
    """
    rates = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    child_cpu = {name: [] for name in cases}
    for order in (list(cases), list(reversed(cases))):
        for name in order:
            run = cases[name]()
            run()
            for _ in range(passes):
                start, start_cpu, start_children = (time.perf_counter(), time.process_time(),
                                                    _children_cpu())
                images = run()
                rates[name].append(images / (time.perf_counter() - start))
                cpu[name].append(1000 * (time.process_time() - start_cpu) / images)
                child_cpu[name].append(1000 * (_children_cpu() - start_children) / images)
            getattr(run, "close", lambda: None)()
            del run
            gc.collect()
    return tuple({name: statistics.median(values) for name, values in measure.items()}
                 for measure in (rates, cpu, child_cpu))


def pipeline_case(config, directory, images):
    """Steady state, as in training: one endless stream (``steps_per_epoch`` set), so the
    shuffle buffer fills once (in the warm-up round), not at every timed round; ``data.cache``
    decided as training decides it."""
    config = load_config(None, config)
    steps = max(1, images // config.train.batch_size)
    folder = RecordsDir(str(directory))
    cached = cache.plan(config.data, folder, "train").cache

    def start():
        batches = iter(make_dataset(config, folder, "train", cached=cached, steps_per_epoch=1))
        return lambda: sum(int(next(batches)[0].shape[0]) for _ in range(steps))

    return start


def _decoded_pairs(config, directory):
    """The (image, mask) uint8 arrays of every record, decoded once for the raw-loop cases."""
    examples = [records.parse(s, config.data.image_size)
                for s in tf.data.TFRecordDataset(records.shard_files(str(directory), "train"))]
    return [(e["image"].numpy()[..., 0], e["mask"].numpy()[..., 0]) for e in examples]


def raw_case(config, pairs, threads=1):
    policies = [build_policy(config.augment, config.data.image_size, seed=i)
                for i in range(threads)]

    def loop(policy, share):
        for image, mask in share:
            policy(image=image, mask=mask)

    def run():
        workers = [threading.Thread(target=loop, args=(policy, pairs[i::threads]))
                   for i, policy in enumerate(policies)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return len(pairs)

    return lambda: run


_process_pairs: list = []
_process_policy = None


def _process_setup(config, pairs):
    global _process_pairs, _process_policy
    cv2.setNumThreads(0)
    _process_pairs = pairs
    _process_policy = build_policy(config.augment, config.data.image_size, seed=os.getpid())


def _process_loop(start, stop):
    for image, mask in _process_pairs[start:stop]:
        _process_policy(image=image, mask=mask)


def raw_processes_case(config, pairs, processes=2, chunk=12):
    """The raw loop in ``processes`` processes at once, taking ``chunk`` images at a time as
    they finish (an even split would leave one waiting for the other's costlier draws): what
    the machine's cores give albumentations with no interpreter lock and no pipeline (the
    processes start once, outside the timing)."""
    context = multiprocessing.get_context("spawn")

    def start():
        pool = concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=context, initializer=_process_setup, initargs=(config, pairs))
        for future in [pool.submit(time.sleep, 0.5) for _ in range(processes)]:
            future.result()         # every process started and set up

        def run():
            chunks = [pool.submit(_process_loop, i, i + chunk) for i in range(0, len(pairs), chunk)]
            for future in chunks:
                future.result()
            return len(pairs)

        run.close = pool.shutdown
        return run

    return start


def model_case(config):
    import segmentation_models as sm
    size, batch = config.data.image_size, config.train.batch_size
    model = sm.Unet("efficientnetb0", encoder_weights=None, input_shape=(size, size, 3))
    model.compile("adam", "binary_crossentropy")
    x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    y = (np.random.default_rng(1).random((batch, size, size, 1)) > 0.9).astype(np.float32)

    def run():
        model.train_on_batch(x, y)
        return batch

    return lambda: run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--augment-in", nargs="+", choices=["processes", "threads"],
                        default=["processes", "threads"], help="where the calls augment "
                        "(data.augment_processes true / false)")
    parser.add_argument("--batches-per-call", type=int, nargs="+", default=[4],
                        help="data.batches_per_call values to compare")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--passes", type=int, default=3, help="timed passes per measurement")
    parser.add_argument("--model", action="store_true", help="also time a training step")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every pipeline case, e.g. data.cache=true")
    args = parser.parse_args()
    cv2.setNumThreads(0)    # as the pipeline's graph_augmenter does: the same for every case

    print(f"# input pipeline, {args.images} images in {SHARDS} shards, batch {args.batch}, "
          f"{platform.processor() or platform.machine()}, tensorflow {tf.__version__}\n")
    header = ("| size | record bytes | augment in | batches / call | calls | pipeline img/s | "
              "vs 1 call | main CPU ms/img | workers CPU ms/img | cores busy | ceiling img/s | "
              "ceiling vs 1 call | no-aug img/s | no-aug main CPU ms/img | raw loop img/s | "
              "pipeline / raw | raw, 2 threads img/s | raw, 2 processes img/s |")
    print(header + (" model train img/s |" if args.model else ""))
    print("|" + "---|" * (header.count("|") - 1 + args.model))
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            record_bytes = write_shards(directory, size, args.images)
            base = (f"data.image_size={size}", f"train.batch_size={args.batch}", *args.overrides)
            config = load_config(None, base)
            pairs = _decoded_pairs(config, directory)
            cases = {"raw": raw_case(config, pairs),
                     "raw2": raw_case(config, pairs, threads=2),
                     "rawp": raw_processes_case(config, pairs),
                     "plain": pipeline_case((*base, "augment.enabled=false"), directory, args.images)}
            runs = [(where, per_call, calls) for where in args.augment_in
                    for per_call in args.batches_per_call for calls in args.calls]
            for where, per_call, calls in runs:
                cases[where, per_call, calls] = pipeline_case(
                    (*base, f"data.num_parallel_calls={calls}", f"data.batches_per_call={per_call}",
                     f"data.augment_processes={where == 'processes'}"), directory, args.images)
            if args.model:
                cases["model"] = model_case(config)
            rates, cpu, child_cpu = median_rates(cases, args.passes)
            for where, per_call, calls in runs:
                case, first = (where, per_call, calls), rates[where, per_call, args.calls[0]]
                rate, per_image = rates[case], (cpu[case] + child_cpu[case]) / 1000
                ceiling = (os.cpu_count() or 1) / per_image
                row = (f"| {size} | {record_bytes:,} | {where} | {per_call} | {calls} | {rate:.0f} | "
                       f"{rate / first:.2f}x | {cpu[case]:.3f} | {child_cpu[case]:.3f} | "
                       f"{rate * per_image:.2f} | {ceiling:.0f} | {ceiling / first:.2f}x | "
                       f"{rates['plain']:.0f} | {cpu['plain']:.3f} | "
                       f"{rates['raw']:.0f} | {rate / rates['raw']:.2f} | {rates['raw2']:.0f} | "
                       f"{rates['rawp']:.0f} |")
                print(row + (f" {rates['model']:.1f} |" if args.model else ""), flush=True)


if __name__ == "__main__":
    main()
