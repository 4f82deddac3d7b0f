"""``bin/evaluate``: score a trained run on a TFRecord split and choose its post-processing.

One pass runs the model over the split (optionally with flip TTA) and keeps each map only in
the search's compact form (:class:`~keras_ptx.inference.search.MapCache`); the grid search then
finds the best rule of each kind, and the best of those is saved as RUN_DIR/postprocess.json
for predict and export. Scores are computed on the record grid (records hold masks only at
record size; the original-resolution truth would need the RLE), with the competition's
1024 x 1024 pixel counts scaled to it; the report says so. A second, model-free pass reads back
the few images drawn as best/worst-case overlays.

A fold folder (``train-folds``) is evaluated out of fold: each fold's model runs over the images
of its own fold, the one it validated on and never trained on, into one cache, so every image
is scored exactly once by a model that never saw it; the rule is chosen on these predictions
(the honest version of a search on the split that picked the best epoch) and saved as
OUT/postprocess.json for the ensemble, the report in OUT/eval/ with the images scored per fold.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import os
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from keras_ptx import rundir
from keras_ptx.config import Config, Engine, Precision
from keras_ptx.data.records_dir import RecordsDir
from keras_ptx.errors import UserError
from keras_ptx.fileio import (check_openable, check_output, exists, join, reported_writes,
                              same_path, write_atomic)
from keras_ptx.inference import plots, report as report_md
from keras_ptx.inference.engine import network_precision, on_engine
from keras_ptx.inference.postprocess import REFERENCE_SIDE
from keras_ptx.inference.runner import Predictor
from keras_ptx.inference.score import classification_metrics, roc_curve
from keras_ptx.inference.search import MapCache, SearchGrid, choose, search
from keras_ptx.inference.ensemble import Ensemble, checkpoint_models, run_dirs
from keras_ptx.inference.trained import TrainedRun
from keras_ptx.input.normalize import gray_from_model_input
from keras_ptx.tf_errors import damaged_records

ROC_PNG = "roc.png"
CASES = "cases"
CASE_FILES = ("best-*.png", "worst-*.png")     # in CASES, as _draw_cases names them
OUT_OF_FOLD = "out-of-fold"         # the report's split for a fold folder
CASE_SIDE = 512                     # case overlays are enlarged to at least this side


class EvaluateError(UserError):
    """Evaluation cannot run (no run, no records, nothing labeled)."""


@dataclass
class Pass:
    """What the model passes over a split leave behind."""
    cache: MapCache
    image_ids: list = field(default_factory=list)
    labels: list = field(default_factory=list)          # has_pneumothorax on the original grid
    mask_area: list = field(default_factory=list)       # pixels on the original grid
    unlabeled: int = 0
    scored: dict = field(default_factory=dict)          # data.fold (as text) -> images scored
    label_head: bool = True     # every scorer's image-level probability is its label head's


@dataclass(frozen=True)
class Scorer:
    """Networks that score the images of ``config``'s split (a fold run's: its own fold)."""
    name: str
    models: list
    config: Config


@dataclass(frozen=True)
class Inputs:
    """What one evaluation reads and where it writes."""
    paths: list[str]            # the --model runs or folders
    records: RecordsDir
    folder: str                 # where eval/ (and postprocess.json) go
    ensemble_folder: bool       # the folder was named (--out): it lists its members
    folds: bool                 # a fold folder, evaluated out of fold
    scorers: list[Scorer]

    @property
    def config(self) -> Config:
        return self.scorers[0].config


def evaluate(run_dir, data_dir: str, split: str = "val", tta: str | None = None,
             batch_size: int | None = None, grid: SearchGrid = SearchGrid(), cases: int = 4,
             progress: bool = True, save_postprocess: bool | None = None,
             checkpoints: int = 1, report_to: str | None = None, engine: Engine = "tf") -> dict:
    """Evaluate ``run_dir`` on ``split`` of ``data_dir`` (a fold folder: out of fold, see the
    module docstring; several runs or folders: their ensemble, which ``out`` then names, see
    :mod:`keras_ptx.inference.ensemble`); write the report to
    :func:`keras_ptx.rundir.eval_dir` of ``report_to`` (default: ``run_dir``; given, it becomes
    an ensemble folder: ``--model report_to`` is then these models with this rule) and, with
    ``save_postprocess`` (default: for the val split or out of fold only, the images held out
    for this purpose), the chosen rule, with the TTA it was tuned with, to its
    postprocess.json. ``checkpoints`` above 1 scores each run's ensemble of its best epochs
    (:func:`~keras_ptx.inference.ensemble.checkpoint_models`). ``engine`` runs the networks
    (:mod:`keras_ptx.inference.engine`).

    Returns the report (as written to report.json).
    """
    inputs = resolve_inputs(run_dir, data_dir, split, checkpoints, report_to,
                            network_precision(engine))
    tta = tta or inputs.config.eval.tta     # evaluate tunes a rule, so not the saved rule's TTA
    seen = model_passes(inputs, split, tta, batch_size, grid, progress, engine)
    results = search(seen.cache, gated=seen.label_head)
    chosen = choose(results)
    with reported_writes("--out" if inputs.ensemble_folder else "--model", inputs.folder):
        saved = write_rule(inputs, chosen.post, tta, checkpoints,
                           split == "val" if save_postprocess is None else save_postprocess)
        return write_report(inputs, split, tta, engine, checkpoints, batch_size, seen, results,
                            chosen, saved, cases)


def resolve_inputs(run_dir, data_dir: str, split: str, checkpoints: int,
                   report_to: str | None, precision: Precision | None = None) -> Inputs:
    """The runs, their networks (in ``precision``; None: each run's own) and the records an
    evaluation reads (EvaluateError for what cannot be evaluated)."""
    paths = [str(run_dir)] if isinstance(run_dir, (str, os.PathLike)) else list(map(str, run_dir))
    if split == "test":
        raise EvaluateError("the test split holds the images built without labels: nothing to "
                            "score (evaluate val, or train)")
    if len(paths) > 1 and report_to is None:
        raise EvaluateError("several --model make an ensemble: name the folder that keeps its "
                            "report and rule with --out (then --model OUT predicts and exports "
                            "the ensemble with it)")
    for path in paths:
        check_openable(path, "--model")
    if report_to is None:                   # the run's own eval/, as designed
        check_output(paths[0], "--model")
    else:
        check_output(report_to, "--out", {"--model": paths + [run for path in paths
                                                              for run in run_dirs(path)],
                                          "--data": data_dir})
        check_ensemble_folder(report_to, paths)
    records = RecordsDir.open(data_dir)
    several = len(paths) > 1 or rundir.read_json(paths[0], rundir.ENSEMBLE) is not None
    marker = None if several else rundir.read_json(paths[0], rundir.FOLDS)
    if several:                 # an ensemble (of several, or an ensemble folder's): one scorer
        ensemble = Ensemble(paths, checkpoints, precision)
        scorers = [Scorer(split, ensemble.models, ensemble.config)]
    else:
        scorers = [Scorer(f"fold {run.config.data.fold}" if marker is not None else split,
                          checkpoint_models(run, checkpoints), run.config)
                   for run in _runs(paths[0], marker, records, split, precision)]
    folder = str(report_to) if report_to is not None else paths[0]
    return Inputs(paths, records, folder, report_to is not None, marker is not None, scorers)


def check_ensemble_folder(out, paths: list[str]) -> None:
    """EvaluateError for an ``--out`` that is neither new nor the ensemble folder of ``paths``:
    a run or fold folder, or the folder of another ensemble (--model OUT would silently
    become this one)."""
    for marker in (rundir.CONFIG, rundir.FOLDS):
        if exists(join(out, marker)):
            raise EvaluateError(f"--out {out}: holds {marker}, so it is a run or fold folder, "
                                f"which --model {out} would no longer be; choose another --out")
    known = rundir.read_json(out, rundir.ENSEMBLE)
    if known is not None and not _lists(known, paths):
        raise EvaluateError(f"--out {out}: the ensemble folder of other models (its "
                            f"{rundir.ENSEMBLE}); choose another --out, or give its --model")


def _lists(ensemble, paths: list[str]) -> bool:
    """Whether the ensemble.json value ``ensemble`` lists the folders of ``paths``, no other."""
    listed = ensemble.get("members") if isinstance(ensemble, dict) else None
    return isinstance(listed, list) and all(isinstance(m, str) for m in listed) and \
        all(any(same_path(a, b) for b in paths) for a in listed) and \
        all(any(same_path(a, b) for b in listed) for a in paths)


def model_passes(inputs: Inputs, split: str, tta: str, batch_size: int | None,
                 grid: SearchGrid, progress: bool, engine: Engine = "tf") -> Pass:
    """Each scorer's maps of its images, run by ``engine``, in one :class:`Pass`
    (EvaluateError for damaged records or nothing labeled)."""
    from keras_ptx.tf_setup import tf

    seen = Pass(MapCache(grid, inputs.config.data.image_size))
    try:
        for scorer in inputs.scorers:
            predictor = on_engine(Predictor(scorer.models, tta, scorer.config.model.normalization),
                                  scorer.config, engine)
            seen.label_head = seen.label_head and predictor.has_label_head
            before = len(seen.cache)
            _run_model(predictor, _dataset(scorer.config, inputs.records, split, batch_size),
                       seen, f"evaluate {scorer.name}", progress,
                       _total(inputs.records, scorer.config, split))
            seen.scored[str(scorer.config.data.fold)] = len(seen.cache) - before
    except tf.errors.DataLossError as exc:
        raise EvaluateError(damaged_records(str(inputs.records), exc)) from None
    if len(seen.cache) == 0:
        raise EvaluateError(f"the {split} split of {inputs.records} has no labeled images to "
                            f"score ({seen.unlabeled} unlabeled)")
    return seen


def write_rule(inputs: Inputs, post, tta: str, checkpoints: int, save: bool) -> str | None:
    """An ensemble folder's members file, and with ``save`` the chosen rule with its TTA in
    the folder's postprocess.json (its path; None when not saved)."""
    from keras_ptx.tf_setup import tf

    if inputs.ensemble_folder:
        tf.io.gfile.makedirs(inputs.folder)
        write_atomic(join(inputs.folder, rundir.ENSEMBLE), json.dumps(
            {"members": inputs.paths, "checkpoints": checkpoints}, indent=1) + "\n")
    if not save:
        return None
    saved = join(inputs.folder, rundir.POSTPROCESS)
    dataclasses.replace(post, tta=tta).save(saved)
    return saved


def write_report(inputs: Inputs, split: str, tta: str, engine: Engine, checkpoints: int,
                 batch_size: int | None, seen: Pass, results: dict, chosen, saved: str | None,
                 cases: int) -> dict:
    """report.json, report.md, the plots and the case overlays in the folder's eval dir; the
    report."""
    from keras_ptx.tf_setup import tf

    out = rundir.eval_dir(inputs.folder, split)
    tf.io.gfile.makedirs(join(out, CASES))
    side = inputs.config.data.image_size
    labels = np.array(seen.labels, dtype=bool)
    image_prob = seen.cache.all_cls_prob()
    truth_empty = seen.cache.truth_sums() == 0
    paths = inputs.paths
    report = {
        "run_dir": paths[0] if len(paths) == 1 else paths, "data": str(inputs.records),
        "split": OUT_OF_FOLD if inputs.folds else split,
        "tta": tta, "engine": engine, "checkpoints": checkpoints, "images": len(seen.cache),
        "positives": int(labels.sum()),
        "unlabeled_skipped": seen.unlabeled, "images_per_fold": seen.scored if inputs.folds else None,
        "resolution": {
            "scored_at": f"{side}x{side} record grid",
            "note": (f"Scores are computed on the {side}x{side} record grid (the records hold "
                     f"masks only at that size), not at each image's original resolution; pixel "
                     f"counts defined at {REFERENCE_SIDE}x{REFERENCE_SIDE} are scaled by "
                     f"({side}/{REFERENCE_SIDE})^2."),
            "positives_empty_at_record_size": int((labels & truth_empty).sum()),
        },
        "positive_mask_area_original_px": _area_stats(np.array(seen.mask_area)[labels]),
        "empty_baseline": float(truth_empty.mean()),
        "kinds": {name: {"score": r.score,
                         "dice_positive": float(r.dice[~truth_empty].mean()) if (~truth_empty).any() else None,
                         "rule": r.post.describe(), "postprocess": r.post.to_dict()}
                  for name, r in results.items()},
        "chosen": chosen.post.name,
        "postprocess_file": saved,
        "image_level": {
            "source": "label head" if seen.label_head else "maximum pixel probability",
            **classification_metrics(image_prob, labels, 0.5)},
    }
    if chosen.post.cls_threshold is not None:
        report["image_level"]["at_chosen_gate"] = classification_metrics(
            image_prob, labels, chosen.post.cls_threshold)
    report["plots"] = _plot(out, results, image_prob, labels, report["image_level"]["auc"])
    report["cases"] = _draw_cases(seen, chosen, _case_dataset(inputs, split, batch_size),
                                  join(out, CASES), cases)
    _remove_other_cases(join(out, CASES), report["cases"])
    write_atomic(join(out, rundir.EVAL_REPORT), json.dumps(report, indent=2) + "\n")
    write_atomic(join(out, rundir.EVAL_REPORT_MD), report_md.to_markdown(report))
    return report


def _runs(run_dir: str, marker: dict | None, records: RecordsDir, split: str,
          precision: Precision | None) -> list[TrainedRun]:
    """The runs whose models score the images, in ``precision``: ``run_dir`` itself, or each
    trained fold of the fold folder whose folds.json is ``marker`` (EvaluateError for a split
    other than val, or records of other folds)."""
    if marker is None:
        return [TrainedRun(run_dir, precision)]
    if split != "val":
        raise EvaluateError(f"{run_dir} is a fold folder: it is evaluated out of fold (each "
                            f"image by the fold model that never saw it), not on --split {split}")
    if marker["folds"] != records.folds:
        raise EvaluateError(f"{run_dir} holds runs of {marker['folds']} folds, but the records "
                            f"in {records} have {records.folds or 'no'} folds")
    return [TrainedRun(rundir.fold_dir(run_dir, k), precision) for k in marker["trained"]]


def _dataset(config, records: RecordsDir, split: str, batch_size: int | None):
    """``split``'s images in batches of ``batch_size`` (else ``eval.batch_size``), no larger
    than the split."""
    from keras_ptx.input.pipeline import make_eval_dataset

    size = batch_size or config.eval.batch_size
    total = _total(records, config, split)
    return make_eval_dataset(config, records, split, min(size, total) if total else size)


def _total(records: RecordsDir, config, split: str) -> int | None:
    """The images ``split`` holds for ``config`` (a fold run's, when ``data.fold`` is set),
    for the progress bar and to cap the batch size; None when unknown without reading the
    shards."""
    if config.data.fold is not None:
        return records.counts(split, config.data.fold).records
    listed = records.listed_counts(split)
    return listed.records if listed else None


def _run_model(predictor: Predictor, dataset, seen: Pass, desc: str, progress: bool,
               total: int | None) -> None:
    """Add the model's maps of ``dataset``'s labeled images to ``seen``."""
    cache = seen.cache
    with tqdm(desc=desc, unit="img", total=total, disable=not progress) as bar:
        for batch in dataset:
            maps, image_prob = predictor(batch["image"])
            labeled = batch["labeled"].numpy() > 0
            seen.unlabeled += int((~labeled).sum())
            if labeled.any():
                cache.add(maps[labeled], batch["mask"].numpy()[labeled], image_prob[labeled])
                seen.image_ids += [i.decode() for i in batch["image_id"].numpy()[labeled]]
                seen.labels += (batch["label"].numpy().reshape(-1)[labeled] > 0.5).tolist()
                seen.mask_area += batch["mask_area"].numpy()[labeled].tolist()
            bar.update(len(labeled))


def _plot(out: str, results, image_prob, labels, auc) -> list[str]:
    """Score-against-parameter charts of each kind and the image-level ROC; their file names."""
    names = []
    for name, result in results.items():
        names.append(f"score_{name}.png")
        plots.plot_profiles(join(out, names[-1]), f"{name}: best score at each value",
                            result.profiles)
    fpr, tpr, _ = roc_curve(image_prob, labels)
    plots.plot_roc(join(out, ROC_PNG), fpr, tpr, auc)
    names.append(ROC_PNG)
    return names


def _area_stats(areas: np.ndarray) -> dict | None:
    if areas.size == 0:
        return None
    return {"median": float(np.median(areas)), "p10": float(np.percentile(areas, 10)),
            "max": int(areas.max())}


def case_picks(dice: np.ndarray, positive: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the n best-found lesions (positive images with Dice above 0, best first)
    and of the n worst mistakes (any image with Dice below 1, worst first: missed, partial or
    false lesions); fewer when there are not that many."""
    found = np.flatnonzero(positive & (dice > 0))
    wrong = np.flatnonzero(dice < 1)
    return (found[np.argsort(-dice[found], kind="stable")][:n],
            wrong[np.argsort(dice[wrong], kind="stable")][:n])


def _case_dataset(inputs: Inputs, split: str, batch_size: int | None):
    """The scorers' images again, as uint8 gray ``[B, S, S]`` (each scorer's normalisation
    undone), for the case overlays."""
    from keras_ptx.tf_setup import tf

    def gray(normalization, batch):
        value = gray_from_model_input(batch["image"], normalization)[..., 0] * 255.0
        return {**batch, "image": tf.cast(tf.clip_by_value(tf.round(value), 0, 255), tf.uint8)}

    return functools.reduce(tf.data.Dataset.concatenate, (
        _dataset(scorer.config, inputs.records, split, batch_size).map(
            functools.partial(gray, scorer.config.model.normalization))
        for scorer in inputs.scorers))


def _remove_other_cases(folder: str, cases: list[dict]) -> None:
    """Delete the case overlays in ``folder`` that ``cases`` do not list (an earlier
    evaluation's, with more --cases or other picks)."""
    from keras_ptx.tf_setup import tf

    drawn = {os.path.basename(case["file"]) for case in cases}
    for name in tf.io.gfile.listdir(folder):
        if name not in drawn and any(fnmatch.fnmatch(name, pattern) for pattern in CASE_FILES):
            tf.io.gfile.remove(join(folder, name))


def _draw_cases(seen: Pass, chosen, dataset, out: str, n: int) -> list[dict]:
    """Overlays of the :func:`case_picks` of the chosen rule (``dataset``: batches with uint8
    gray images)."""
    dice = chosen.dice
    best, worst = case_picks(dice, seen.cache.truth_sums() > 0, n)
    wanted = {}
    for tag, picks in (("best", best), ("worst", worst)):
        for rank, i in enumerate(picks, 1):
            wanted.setdefault(seen.image_ids[i], []).append((tag, rank, int(i)))
    if not wanted:
        return []
    cls = seen.cache.all_cls_prob()
    cases = []
    for batch in dataset:
        for image_id, image in zip(batch["image_id"].numpy(), batch["image"].numpy()):
            for tag, rank, i in wanted.pop(image_id.decode(), ()):
                proxy, truth = seen.cache.proxy_map(i)
                pred = chosen.post.apply(proxy, cls[i])
                name = f"{tag}-{rank}-{plots.safe_filename(seen.image_ids[i])}.png"
                caption = f"{tag} {rank}: Dice {dice[i]:.3f}"
                plots.save_png(join(out, name), plots.overlay(image, pred, truth, caption,
                                                                 min_side=CASE_SIDE))
                cases.append({"case": tag, "rank": rank, "image_id": seen.image_ids[i],
                              "dice": float(dice[i]), "file": f"{CASES}/{name}"})
        if not wanted:
            break
    return sorted(cases, key=lambda c: (c["case"], c["rank"]))
