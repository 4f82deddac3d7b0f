"""``OUT/manifest.json``: what a build wrote, what it left out and why; and ``--verify``.

The manifest holds the build options (``geometry``: the :mod:`keras_ptx.data.geometry` rule
the images were put on the square grid with), each split's counts (images, positives,
annotations) and shards (file, example count, sha256), every rejected input with its reason,
and the input total (train + val + test + rejected). It has no timestamps and sorted keys, so
the same inputs and options always give the same bytes. Files are read and joined through
:mod:`keras_ptx.fileio` and ``tf.io.gfile`` (local paths and URLs alike).
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from keras_ptx.data import geometry, records
from keras_ptx.fileio import exists, join, read_json
from keras_ptx.tf_setup import tf

FORMAT = 1
_CHUNK = 1 << 22


@dataclass(frozen=True, order=True)
class Rejection:
    """One input that was not written: a DICOM file (path relative to the input folder) or a
    label entry that matches no file."""
    input: str
    image_id: str
    reason: str
    detail: str


def to_json(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def geometry_problem(manifest: dict, folder: str) -> str | None:
    """Why the records in ``folder`` cannot be used with this keras_ptx's geometry rule (a
    model would train or be scored on other squares than predict and export make), or None.
    A manifest that names no rule (not written by a build) is not judged."""
    options = manifest.get("options") if isinstance(manifest, dict) else None
    built = options.get("geometry") if isinstance(options, dict) else None
    if built in (None, geometry.RULE):
        return None
    return (f"the records in {folder} were made with the geometry rule {built!r}, but this "
            f"keras_ptx puts images on the square grid with {geometry.RULE!r} (as predict and "
            f"export do); rebuild them with build-tfrecords into a new --out")


def schema_problems(manifest) -> list[str]:
    """Why ``manifest`` is not shaped as a build writes it, empty when it is: the keys readers
    use, of their types; each split's shards named as a build names them (no path can reach
    outside the folder); each split's images the sum of its shards' examples."""
    if not isinstance(manifest, dict):
        return [f"not a JSON object but {_kind(manifest)}"]
    problems = []
    if manifest.get("format") != FORMAT:
        problems.append(f"format {manifest.get('format')!r}, expected {FORMAT}")
    options, splits = manifest.get("options"), manifest.get("splits")
    if not isinstance(options, dict) or not _count(options.get("image_size"), minimum=1):
        problems.append("options.image_size is missing or not a positive integer")
    if not isinstance(manifest.get("rejected"), list):
        problems.append("rejected is missing or not a list")
    totals = manifest.get("totals")
    if not isinstance(totals, dict) or not _count(totals.get("inputs")):
        problems.append("totals.inputs is missing or not a count")
    if not isinstance(splits, dict):
        return problems + ["splits is missing or not an object"]
    for split in records.SPLITS:
        problems += [f"splits.{split}{where}" for where in _split_problems(split, splits.get(split))]
    return problems


def _split_problems(split: str, entry) -> list[str]:
    if not isinstance(entry, dict):
        return [": missing" if entry is None else f": not an object but {_kind(entry)}"]
    problems = [f".{key} is missing or not a count" for key in ("images", "positives", "annotations")
                if not _count(entry.get(key))]
    shards = entry.get("shards")
    if not isinstance(shards, list):
        return problems + [".shards is missing or not a list"]
    pattern = re.compile(re.escape(split) + r"-\d{5}-of-\d{5}\.tfrecord")
    for k, shard in enumerate(shards):
        if not (isinstance(shard, dict) and isinstance(shard.get("file"), str)
                and pattern.fullmatch(shard["file"]) and _count(shard.get("examples"))
                and isinstance(shard.get("sha256"), str)):
            return problems + [f".shards[{k}] is not a {split} shard's file, examples and sha256"]
    if not problems:
        examples = sum(shard["examples"] for shard in shards)
        if examples != entry["images"]:
            problems.append(f".images is {entry['images']}, its shards' examples add up to "
                            f"{examples}")
        elif entry["positives"] > entry["images"]:
            problems.append(f".positives ({entry['positives']}) exceeds images ({entry['images']})")
    return problems


def _count(value, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def read_manifest(folder: str) -> dict | None:
    """``folder``'s manifest.json, None when there is none; ValueError naming the file and what
    is wrong when it does not read or is not shaped as a build writes it."""
    path = join(folder, records.MANIFEST)
    if not exists(path):
        return None
    try:
        manifest = read_json(path)          # (a file holding null is not "no manifest")
    except (ValueError, OSError, tf.errors.OpError) as exc:
        raise ValueError(f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:120]})") from None
    problems = schema_problems(manifest)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(f"{path}: not a build's manifest: {problems[0]}{more}")
    return manifest


def listing_problem(manifest: dict, split: str, found: list[str]) -> str | None:
    """How the shard files of ``split`` in the folder (``found``, paths) differ from those the
    manifest lists, or None when they are the same."""
    listed = {shard["file"] for shard in manifest["splits"][split]["shards"]}
    present = {file.rsplit("/", 1)[-1] for file in found}
    if listed == present:
        return None
    parts = [f"{what} {', '.join(sorted(names)[:3])}{' ...' if len(names) > 3 else ''}"
             for what, names in (("missing:", listed - present), ("not listed:", present - listed))
             if names]
    return f"the {split} shards differ from the manifest's ({'; '.join(parts)})"


def summary(manifest: dict) -> str:
    """The table the command prints at the end of a build."""
    rows = [("split", "images", "positives", "annotations", "shards")]
    for split in records.SPLITS:
        s = manifest["splits"][split]
        rows.append((split, s["images"], s["positives"], s["annotations"], len(s["shards"])))
    rejected = manifest["rejected"]
    rows.append(("rejected", len(rejected), "", "", ""))
    rows.append(("inputs", manifest["totals"]["inputs"], "", "", ""))
    lines = ["  ".join(f"{c!s:>11}" if i else f"{c!s:<9}" for i, c in enumerate(row))
             for row in rows]
    for reason, n in sorted(Counter(r["reason"] for r in rejected).items()):
        lines.append(f"  rejected {n:>6}  {reason}")
    return "\n".join(lines)


def verify(out: str) -> list[str]:
    """Re-read every shard of the build in ``out``; the list of problems (empty = sound)."""
    try:
        manifest = read_manifest(out)
    except ValueError as exc:
        return [str(exc)]
    if manifest is None:
        return [f"{join(out, records.MANIFEST)}: no manifest (not a finished build)"]
    problem = geometry_problem(manifest, out)
    problems = [problem] if problem else []
    size = manifest["options"]["image_size"]
    seen: set[str] = set()
    for split in records.SPLITS:
        entry = manifest["splits"][split]
        listed = [join(out, s["file"]) for s in entry["shards"]]
        for stray in sorted(set(records.shard_files(out, split)) - set(listed)):
            problems.append(f"{stray}: shard file not in the manifest")
        totals = Counter()
        for shard, file in zip(entry["shards"], listed):
            problems += _verify_shard(file, shard, split, size, seen, totals)
        for key, field in (("images", "examples"), ("positives", "has_pneumothorax"),
                           ("annotations", "n_annotations")):
            if totals[field] != entry[key]:
                problems.append(f"{split}: manifest says {entry[key]} {key}, the shards hold "
                                f"{totals[field]}")
    counted = sum(manifest["splits"][s]["images"] for s in records.SPLITS) + len(manifest["rejected"])
    if counted != manifest["totals"]["inputs"]:
        problems.append(f"manifest: {manifest['totals']['inputs']} inputs, but splits + "
                        f"rejections account for {counted}")
    return problems


def _verify_shard(file: str, shard: dict, split: str, size: int, seen: set[str],
                  totals: Counter) -> list[str]:
    if not tf.io.gfile.exists(file):
        return [f"{file}: missing"]
    digest = sha256(file)
    if digest != shard["sha256"]:
        return [f"{file}: sha256 {digest[:16]}... does not match the manifest's "
                f"{shard['sha256'][:16]}..."]
    problems, n = [], 0
    try:
        for ex in tf.data.TFRecordDataset(file).map(records.parse).as_numpy_iterator():
            n += 1
            image_id = ex["image_id"].decode()
            if image_id in seen:
                problems.append(f"{file}: image {image_id} appears more than once")
            seen.add(image_id)
            if ex["image"].shape != (size, size, 1) or ex["mask"].shape != (size, size, 1):
                problems.append(f"{file}: image {image_id} is {ex['image'].shape[:2]}, "
                                f"mask {ex['mask'].shape[:2]}; expected {size}x{size}")
            if not np.isin(ex["mask"], (0, 1)).all():
                problems.append(f"{file}: mask of {image_id} has values other than 0 and 1")
            if not ex["has_pneumothorax"] and ex["mask"].any():
                problems.append(f"{file}: image {image_id} has no pneumothorax but mask pixels")
            if bool(ex["labeled"]) != (split != "test"):
                problems.append(f"{file}: image {image_id} labeled={ex['labeled']} in {split}")
            totals["has_pneumothorax"] += int(ex["has_pneumothorax"])
            totals["n_annotations"] += int(ex["n_annotations"])
    except tf.errors.OpError as exc:
        return problems + [f"{file}: example {n} cannot be read ({exc.message})"]
    totals["examples"] += n
    if n != shard["examples"]:
        problems.append(f"{file}: {n} examples, the manifest says {shard['examples']}")
    return problems
