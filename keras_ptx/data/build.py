"""DICOM folder + RLE label CSV -> sharded TFRecords, a manifest, and nothing lost on the way.

A build runs in two phases, each mapping its per-image work over a :data:`WorkerMap` (one
pool of worker processes, :func:`process_map`):

1. *Plan* (cheap): read every DICOM header, match files to label rows by SOPInstanceUID,
   reject what cannot be used (with a reason), check that each positive's RLE rows fit its
   image, split train/val (and folds) by patient and label, and fix every shard's contents.
2. *Write*: decode the images in the workers (in order), write each shard under a temporary
   name and rename it when complete, recording its sha256 in ``OUT/build-state.json``.

An interrupted build (even ``kill -9``) resumes: shards whose file matches the recorded sha256
for the same plan are kept, partial temporaries are discarded, and the result is byte for byte
the one an uninterrupted run gives. The state file is removed once ``manifest.json`` exists.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import multiprocessing
import os
import random
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

from tqdm import tqdm

from keras_ptx.config import check_image_size
from keras_ptx.data import convert, geometry, records
from keras_ptx.data.annotations import IMAGE_ID, Annotations, load_annotations
from keras_ptx.data.dicom import DICOM_SUFFIXES, find_dicom_files, max_pixels
from keras_ptx.data.manifest import FORMAT, Rejection, read_manifest, sha256, to_json
from keras_ptx.data.split import assign_bins
from keras_ptx.errors import UserError
from keras_ptx.fileio import (TEMPORARY_GLOB, check_openable, is_url, join, read_json, replace,
                              temporary_name, write_atomic)
from keras_ptx.tf_setup import tf

STATE = "build-state.json"
# Rejection reasons besides the workers' (convert.UNREADABLE, convert.MALFORMED_LABEL).
DUPLICATE_ID = "duplicate-image-id"
INVALID_ID = "invalid-image-id"
NO_LABEL = "image-without-label"
NO_IMAGE = "label-without-image"
# Label-file problems that leave an image out (duplicate rows are kept once: a warning).
LABEL_REJECTIONS = {"malformed": convert.MALFORMED_LABEL, "conflict": "conflicting-labels"}
_UNSAFE = "is not a safe file name (characters [0-9A-Za-z._-], not starting with '.')"


class BuildError(UserError):
    """A build that cannot start or continue (bad options, no DICOM files, an unusable OUT)."""


@dataclass(frozen=True)
class Options:
    dicom_dir: str
    out: str
    labels: str | None = None
    image_size: int = 256
    val_fraction: float = 0.1
    folds: int = 0
    seed: int = 42
    shard_size: int | None = None      # examples per shard; None = ~150 MB shards
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)

    def recorded(self) -> dict:
        """The options that determine the output (``workers`` does not), as in the manifest."""
        return {"dicom_dir": os.path.abspath(self.dicom_dir),
                "labels": os.path.abspath(self.labels) if self.labels else None,
                "image_size": self.image_size, "val_fraction": self.val_fraction,
                "folds": self.folds, "seed": self.seed,
                "shard_size": self.shard_size or default_shard_size(self.image_size),
                "geometry": geometry.RULE}


def default_shard_size(image_size: int) -> int:
    """Examples per shard for shards of roughly 100-200 MB: a radiograph's PNG shrinks more
    slowly than its pixel count (the sizes behind the exponent: BENCHMARKS.md)."""
    return round(300 * (1024 / image_size) ** 1.6)


@dataclass(frozen=True)
class Item:
    path: str                       # relative to the DICOM folder, '/'-separated
    image_id: str
    rles: tuple[str, ...] | None    # None: unlabeled (test split)
    fold: int = -1


@dataclass(frozen=True)
class Shard:
    split: str
    index: int
    count: int
    items: tuple[Item, ...]

    @property
    def file(self) -> str:
        return records.SHARD_PATTERN.format(split=self.split, index=self.index, count=self.count)


@dataclass(frozen=True)
class Plan:
    options: dict
    label_layout: str | None
    inputs: int
    shards: tuple[Shard, ...]
    rejected: tuple[Rejection, ...]
    warnings: tuple[str, ...]       # label rows that were used but look wrong (duplicates)

    @property
    def digest(self) -> str:
        return hashlib.sha256(to_json(asdict(self))).hexdigest()


# How the phases run their per-image work: ``worker_map(fn, tasks, desc)`` yields ``fn(task)``
# for each task, in order (``desc`` labels the progress). ``fn`` is a picklable function of
# :mod:`~keras_ptx.data.convert`. Another executor is another function of this shape.
WorkerMap = Callable[[Callable, list, str], Iterator]


@contextlib.contextmanager
def process_map(workers: int) -> Iterator[WorkerMap]:
    """A :data:`WorkerMap` over ``workers`` processes, dropped at once (not drained) if the
    build fails; BuildError when one of them dies."""
    # spawn: the parent has TensorFlow loaded, which is not fork-safe; convert.py is TF-free.
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=convert.init_worker)
    try:
        yield functools.partial(_imap, pool, workers)
    except BaseException as exc:
        pool.shutdown(wait=False, cancel_futures=True)
        if isinstance(exc, concurrent.futures.process.BrokenProcessPool):
            raise BuildError(f"a worker process died ({exc}); the finished shards are kept: run "
                             "the same command again to resume") from None
        raise
    pool.shutdown()


def _imap(pool, workers: int, fn, tasks: list, desc: str):
    """``map(fn, tasks)`` over the pool, in order, with a progress bar and only a few chunks in
    flight (so decoded images never pile up in memory behind a slow writer)."""
    size = max(1, min(16, len(tasks) // (8 * workers)))
    flight = deque()
    with tqdm(total=len(tasks), desc=desc, unit="img", disable=None, smoothing=0.1) as bar:
        def drain(keep: int):
            while len(flight) > keep:
                results = flight.popleft().result()
                bar.update(len(results))
                yield from results
        for start in range(0, len(tasks), size):
            flight.append(pool.submit(convert.run_chunk, fn, tasks[start:start + size]))
            yield from drain(4 * workers)
        yield from drain(0)


def read_inputs(options: Options) -> tuple[list[str], Annotations | None]:
    """The label file (None without ``--labels``) and the DICOM files (relative paths) of a
    build; refuses (:class:`~keras_ptx.data.annotations.AnnotationError`, :class:`BuildError`)
    an unreadable label file or a DICOM folder without DICOM files."""
    labels = load_annotations(options.labels) if options.labels else None
    paths, _ = find_dicom_files(options.dicom_dir)
    if not paths:
        raise BuildError(f"--dicom-dir {options.dicom_dir}: no DICOM files "
                         f"({', '.join(DICOM_SUFFIXES)}) found")
    return paths, labels


def make_plan(options: Options, paths: list[str], labels: Annotations | None,
              worker_map: WorkerMap) -> Plan:
    """Phase 1: read headers, match labels, reject, split and fix every shard's contents."""
    rejected: list[Rejection] = []
    absolute = [join(options.dicom_dir, p) for p in paths]
    headers = list(worker_map(convert.header, absolute, "reading headers"))
    by_id = defaultdict(list)
    with_files = set()              # every SOPInstanceUID some file has: its labels are used up
    for path, header in zip(paths, headers):
        if isinstance(header, convert.Failure):
            rejected.append(Rejection(path, "", header.reason, header.detail))
            continue
        with_files.add(header.image_id)
        if not IMAGE_ID.fullmatch(header.image_id):
            rejected.append(Rejection(path, header.image_id, INVALID_ID, f"SOPInstanceUID {_UNSAFE}"))
        else:
            by_id[header.image_id].append((path, header))
    usable = {}
    for image_id, files in by_id.items():
        if len(files) > 1:
            names = ", ".join(path for path, _ in files)
            rejected += [Rejection(path, image_id, DUPLICATE_ID, f"{len(files)} files share this "
                                   f"SOPInstanceUID ({names}); they cannot be told apart")
                         for path, _ in files]
        else:
            usable[image_id] = files[0]
    if labels is None:
        splits = {"test": [Item(path, i, None) for i, (path, _) in usable.items()]}
        return _shard(options, None, len(paths), rejected, (), splits)
    labeled, label_inputs = _match_labels(options, labels, usable, with_files, rejected,
                                          worker_map)
    warnings = tuple(f"{os.path.basename(options.labels)} line {p.line} ({p.image_id}): {p.message}"
                     for p in labels.report if p.kind not in LABEL_REJECTIONS)
    return _shard(options, labels.layout, len(paths) + label_inputs, rejected, warnings,
                  _split(options, labeled))



def _match_labels(options: Options, labels, usable: dict, with_files: set[str],
                  rejected: list[Rejection], worker_map: WorkerMap) -> tuple[dict, int]:
    """image id -> (path, rles, header) of the usable labeled images, and the number of label
    entries that match no file (each is an input of its own, and rejected)."""
    csv_name = os.path.basename(options.labels)
    problems = {}
    for p in labels.report:
        if p.kind in LABEL_REJECTIONS:
            problems.setdefault(p.image_id or f"line {p.line}", p)
    labeled = {}
    for image_id, (path, header) in usable.items():
        if image_id in problems:
            p = problems[image_id]
            rejected.append(Rejection(path, image_id, LABEL_REJECTIONS[p.kind],
                                      f"{csv_name} line {p.line}: {p.message}"))
        elif image_id not in labels:
            rejected.append(Rejection(path, image_id, NO_LABEL, f"no row in {csv_name}"))
        else:
            labeled[image_id] = (path, labels[image_id], header)
    orphans = sorted((set(labels) | set(problems)) - with_files)
    for key in orphans:
        p = problems.get(key)
        if p is not None and not p.image_id:
            rejected.append(Rejection(f"{csv_name} {key}", "", LABEL_REJECTIONS[p.kind], p.message))
        elif not IMAGE_ID.fullmatch(key):
            rejected.append(Rejection(f"{csv_name} ImageId {key}", key, INVALID_ID, f"ImageId {_UNSAFE}"))
        else:
            rejected.append(Rejection(f"{csv_name} ImageId {key}", key, NO_IMAGE,
                                      "no readable DICOM under --dicom-dir has this SOPInstanceUID"))
    # A run past the image's end shows only once the image size is known.
    positives = sorted(i for i, (_, rles, h) in labeled.items() if rles and h.rows and h.columns)
    tasks = [(labeled[i][1], labeled[i][2].rows, labeled[i][2].columns) for i in positives]
    checks = list(worker_map(convert.check_label, tasks, "checking masks"))
    for image_id, check in zip(positives, checks):
        if check is not None:
            k, failure = check
            rejected.append(Rejection(labeled.pop(image_id)[0], image_id, failure.reason,
                                      f"{csv_name} line {labels.lines(image_id)[k]}: "
                                      f"{failure.detail}"))
    return labeled, len(orphans)


def _split(options: Options, labeled: dict) -> dict[str, list[Item]]:
    images = {i: (bool(rles), header.patient_hash) for i, (_, rles, header) in labeled.items()}
    side = assign_bins(images, (1 - options.val_fraction, options.val_fraction), options.seed)
    folds = assign_bins(images, [1] * options.folds, options.seed + 1) if options.folds else {}
    splits = {"train": [], "val": []}
    for image_id, (path, rles, _) in labeled.items():
        splits[("train", "val")[side[image_id]]].append(Item(path, image_id, rles, folds.get(image_id, -1)))
    return splits


def _shard(options: Options, layout, inputs: int, rejected: list[Rejection], warnings: tuple,
           splits: dict[str, list[Item]]) -> Plan:
    """Each split in a seeded random order (so every shard is a fair sample), cut into shards."""
    recorded = options.recorded()
    size = recorded["shard_size"]
    shards = []
    for split in records.SPLITS:
        items = sorted(splits.get(split, ()), key=lambda item: item.image_id)
        random.Random(f"{options.seed}:{split}").shuffle(items)
        count = -(-len(items) // size)
        shards += [Shard(split, k, count, tuple(items[k * size:(k + 1) * size])) for k in range(count)]
    return Plan(recorded, layout, inputs, tuple(shards), tuple(sorted(rejected)), warnings)


def _write_shards(options: Options, out: str, pending: list[Shard], worker_map: WorkerMap,
                  state: dict) -> None:
    """Phase 2: convert the pending shards' images in the workers and write the shards."""
    tasks = [(join(options.dicom_dir, item.path), item.image_id, item.rles,
              options.image_size) for shard in pending for item in shard.items]
    with contextlib.closing(worker_map(convert.convert, tasks, "writing")) as results:
        for shard in pending:
            state["shards"][shard.file] = _write_shard(join(out, shard.file), shard, results,
                                                       options.image_size)
            write_atomic(join(out, STATE), to_json(state))


def _write_shard(final: str, shard: Shard, results, size: int) -> dict:
    """Write one shard from the next results (under a hidden temporary name beside it, renamed
    when complete); its state entry: counts, sha256 and the images that failed to convert."""
    tmp = join(os.path.dirname(final), temporary_name(final))
    entry = {"examples": 0, "positives": 0, "annotations": 0, "rejected": []}
    with tf.io.TFRecordWriter(tmp) as writer:
        for item, content in zip(shard.items, results):
            if isinstance(content, convert.Failure):
                entry["rejected"].append(asdict(Rejection(item.path, item.image_id,
                                                          content.reason, content.detail)))
                continue
            writer.write(records.serialize(records.Record(
                **content, size=size, fold=item.fold, labeled=int(item.rles is not None))))
            entry["examples"] += 1
            entry["positives"] += content["has_pneumothorax"]
            entry["annotations"] += content["n_annotations"]
    entry["sha256"] = sha256(tmp)
    replace(tmp, final)
    return entry


def _manifest(plan: Plan, done: dict[str, dict]) -> dict:
    rejected = [asdict(r) for r in plan.rejected]
    splits = {}
    for split in records.SPLITS:
        entries = [(s.file, done[s.file]) for s in plan.shards if s.split == split]
        rejected += [r for _, e in entries for r in e["rejected"]]
        splits[split] = {key: sum(e[key] for _, e in entries) for key in ("positives", "annotations")}
        splits[split]["images"] = sum(e["examples"] for _, e in entries)
        splits[split]["shards"] = [{"file": f, "examples": e["examples"], "sha256": e["sha256"]}
                                   for f, e in entries]
    rejected.sort(key=lambda r: (r["input"], r["reason"]))
    totals = {split: splits[split]["images"] for split in records.SPLITS}
    totals.update(rejected=len(rejected), inputs=plan.inputs)
    return {"format": FORMAT, "options": plan.options, "label_layout": plan.label_layout,
            "plan_sha256": plan.digest, "splits": splits, "rejected": rejected,
            "label_warnings": list(plan.warnings), "totals": totals}


def _changes(old: dict, new: dict) -> str:
    """What differs between a build's recorded options and these, for a refusal."""
    changed = [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted({*old, *new})
               if old.get(key) != new.get(key)]
    return ", ".join(changed) or "same options, other DICOM files or labels"


def check_options(options: Options) -> None:
    """Refuse (:class:`~keras_ptx.errors.UserError`) options a build cannot use, writing nothing."""
    if not os.path.isdir(options.dicom_dir):
        raise BuildError(f"--dicom-dir {options.dicom_dir}: no such folder")
    check_openable(options.out, "--out")
    if tf.io.gfile.exists(options.out) and not tf.io.gfile.isdir(options.out):
        raise BuildError(f"--out {options.out}: exists and is not a directory")
    if not is_url(options.out) and not os.path.exists(options.out):
        _check_creatable(options.out)
    check_image_size(options.image_size, "--image-size")
    max_pixels()                    # a bad KERAS_PTX_MAX_PIXELS is refused before any work
    if not 0 <= options.val_fraction < 1:
        raise BuildError(f"--val-fraction must be in [0, 1), got {options.val_fraction}")
    if options.folds == 1 or options.folds < 0:
        raise BuildError(f"--folds must be 0 (no folds) or at least 2, got {options.folds}")
    if options.shard_size is not None and options.shard_size < 1:
        raise BuildError(f"--shard-size must be positive, got {options.shard_size}")
    if options.workers < 1:
        raise BuildError(f"--workers must be at least 1, got {options.workers}")


def build(options: Options, log=print) -> dict:
    """Build (or finish, or confirm) the dataset in ``options.out``; returns the manifest.
    Every refusal (:class:`~keras_ptx.errors.UserError`: options, inputs, an ``out`` holding
    another build) comes before anything is written to ``out``."""
    check_options(options)
    paths, labels = read_inputs(options)
    out = options.out.rstrip("/")
    manifest_path = join(out, records.MANIFEST)
    with process_map(options.workers) as worker_map:
        plan = make_plan(options, paths, labels, worker_map)
        try:
            manifest = read_manifest(out)
        except ValueError as exc:
            raise BuildError(f"{exc}; choose an empty --out") from None
        if manifest is not None:
            if manifest.get("plan_sha256") != plan.digest:
                raise BuildError(f"{out} already holds a build of other inputs or options "
                                 f"({_changes(manifest.get('options', {}), plan.options)}); "
                                 "choose an empty --out")
            log(f"{out}: already built from these inputs and options; nothing to do")
            _remove_leftovers(out)      # of a run killed after writing the manifest
            return manifest
        tf.io.gfile.makedirs(out)
        state, pending = _resume(out, plan, log)
        _write_shards(options, out, pending, worker_map, state)
    manifest = _manifest(plan, state["shards"])
    write_atomic(manifest_path, to_json(manifest))
    _remove_leftovers(out)
    return manifest


def _check_creatable(out: str) -> None:
    """Refuse a new local ``out`` whose nearest existing folder is a file or not writable."""
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise BuildError(f"--out {out}: cannot be created ({parent} is "
                         f"{'not writable' if os.path.isdir(parent) else 'not a directory'})")


def _remove_leftovers(out: str, keep_state: bool = False) -> None:
    """Delete partial temporaries of killed runs (and the state file of a finished build)."""
    leftovers = tf.io.gfile.glob(join(out, TEMPORARY_GLOB))
    if not keep_state:
        leftovers += tf.io.gfile.glob(join(out, STATE))
    for path in leftovers:
        tf.io.gfile.remove(path)


def _resume(out: str, plan: Plan, log) -> tuple[dict, list[Shard]]:
    """The state of an interrupted build of the same plan: finished shards kept (if their
    bytes still match), everything else (including partial temporaries) to do again."""
    state_path = join(out, STATE)
    state = {"plan_sha256": plan.digest, "shards": {}}
    try:
        previous = read_json(state_path)
    except ValueError as exc:
        raise BuildError(f"{state_path}: unreadable ({type(exc).__name__}); remove it or choose "
                         "another --out") from None
    if previous is not None:
        if not isinstance(previous, dict) or previous.get("plan_sha256") != plan.digest or \
                not isinstance(previous.get("shards"), dict):
            raise BuildError(f"{out} holds an unfinished build of other inputs or options; "
                             f"remove it or choose another --out")
        state = previous
    _remove_leftovers(out, keep_state=True)
    done, pending = {}, []
    for shard in plan.shards:
        entry = state["shards"].get(shard.file)
        path = join(out, shard.file)
        if entry and tf.io.gfile.exists(path) and sha256(path) == entry["sha256"]:
            done[shard.file] = entry
        else:
            pending.append(shard)
    state["shards"] = done
    write_atomic(state_path, to_json(state))
    if done:
        log(f"resuming: {len(done)} of {len(plan.shards)} shards already complete")
    return state, pending
