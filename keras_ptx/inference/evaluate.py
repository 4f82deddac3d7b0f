"""``bin/evaluate``: score a trained run on a TFRecord split and choose its post-processing.

One pass runs the model over the split (optionally with flip TTA) and keeps each map only in
the search's compact form (:class:`~keras_ptx.inference.search.MapCache`); the grid search then
finds the best rule of each kind, and the best of those is saved as RUN_DIR/postprocess.json
for predict and export. Scores are computed on the record grid (records hold masks only at
record size; the original-resolution truth would need the RLE), with the competition's
1024 x 1024 pixel counts scaled to it; the report says so. A second, model-free pass reads back
the few images drawn as best/worst-case overlays.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from keras_ptx import rundir
from keras_ptx.data.records_dir import RecordsDir
from keras_ptx.errors import UserError
from keras_ptx.fileio import join, write_atomic
from keras_ptx.inference import plots, report as report_md
from keras_ptx.inference.postprocess import REFERENCE_SIDE
from keras_ptx.inference.runner import Predictor
from keras_ptx.inference.score import classification_metrics, roc_curve
from keras_ptx.inference.search import MapCache, SearchGrid, choose, search
from keras_ptx.inference.trained import TrainedRun
from keras_ptx.input.normalize import gray_from_model_input
from keras_ptx.tf_errors import damaged_records

ROC_PNG = "roc.png"
CASES = "cases"
CASE_SIDE = 512                     # case overlays are enlarged to at least this side


class EvaluateError(UserError):
    """Evaluation cannot run (no run, no records, nothing labeled)."""


@dataclass
class Pass:
    """What one model pass over a split leaves behind."""
    cache: MapCache
    image_ids: list = field(default_factory=list)
    labels: list = field(default_factory=list)          # has_pneumothorax on the original grid
    mask_area: list = field(default_factory=list)       # pixels on the original grid
    unlabeled: int = 0


def evaluate(run_dir, data_dir: str, split: str = "val", tta: str | None = None,
             batch_size: int | None = None, grid: SearchGrid = SearchGrid(), cases: int = 4,
             progress: bool = True, save_postprocess: bool | None = None) -> dict:
    """Evaluate ``run_dir`` on ``split`` of ``data_dir``; write the report to
    :func:`keras_ptx.rundir.eval_dir` and, with ``save_postprocess`` (default: for the val split only, the
    one held out for this purpose), the chosen rule, with the TTA it was tuned with, to
    RUN_DIR/postprocess.json.

    Returns the report (as written to report.json).
    """
    from keras_ptx.input.pipeline import make_eval_dataset
    from keras_ptx.tf_setup import tf

    run_dir = str(run_dir)
    if split == "test":
        raise EvaluateError("the test split holds the images built without labels: nothing to "
                            "score (evaluate val, or train)")
    records = RecordsDir.open(data_dir)
    run = TrainedRun(run_dir)
    config = run.config
    tta = tta or config.eval.tta        # evaluate tunes a rule, so not the saved rule's TTA
    predictor = Predictor(run.model, tta)

    def dataset():
        return make_eval_dataset(config, records, split, batch_size)

    side = config.data.image_size
    listed = records.listed_counts(split)           # for the progress bar's total
    try:
        seen = _run_model(predictor, dataset(), MapCache(grid, side), split, progress,
                          listed.records if listed else None)
    except tf.errors.DataLossError as exc:
        raise EvaluateError(damaged_records(data_dir, exc)) from None
    if len(seen.cache) == 0:
        raise EvaluateError(f"the {split} split of {data_dir} has no labeled images to score "
                            f"({seen.unlabeled} unlabeled)")
    results = search(seen.cache, gated=predictor.has_label_head)
    chosen = choose(results)
    saved = None
    if split == "val" if save_postprocess is None else save_postprocess:
        saved = rundir.path(run_dir, rundir.POSTPROCESS)
        dataclasses.replace(chosen.post, tta=tta).save(saved)

    out = rundir.eval_dir(run_dir, split)
    tf.io.gfile.makedirs(join(out, CASES))
    labels = np.array(seen.labels, dtype=bool)
    image_prob = seen.cache.all_cls_prob()
    truth_empty = seen.cache.truth_sums() == 0
    report = {
        "run_dir": str(run_dir), "data": str(data_dir), "split": split, "tta": tta,
        "images": len(seen.cache), "positives": int(labels.sum()), "unlabeled_skipped": seen.unlabeled,
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
            "source": "label head" if predictor.has_label_head else "maximum pixel probability",
            **classification_metrics(image_prob, labels, 0.5)},
    }
    if chosen.post.cls_threshold is not None:
        report["image_level"]["at_chosen_gate"] = classification_metrics(
            image_prob, labels, chosen.post.cls_threshold)
    report["plots"] = _plot(out, results, image_prob, labels, report["image_level"]["auc"])
    report["cases"] = _draw_cases(seen, chosen, dataset(), join(out, CASES), cases)
    write_atomic(join(out, rundir.EVAL_REPORT), json.dumps(report, indent=2) + "\n")
    write_atomic(join(out, rundir.EVAL_REPORT_MD), report_md.to_markdown(report))
    return report


def _run_model(predictor: Predictor, dataset, cache: MapCache, split: str, progress: bool,
               total: int | None) -> Pass:
    seen = Pass(cache)
    with tqdm(desc=f"evaluate {split}", unit="img", total=total, disable=not progress) as bar:
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
    return seen


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


def _draw_cases(seen: Pass, chosen, dataset, out: str, n: int) -> list[dict]:
    """Overlays of the :func:`case_picks` of the chosen rule."""
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
                plots.save_png(join(out, name), plots.overlay(_gray(image), pred, truth, caption,
                                                                 min_side=CASE_SIDE))
                cases.append({"case": tag, "rank": rank, "image_id": seen.image_ids[i],
                              "dice": float(dice[i]), "file": f"{CASES}/{name}"})
        if not wanted:
            break
    return sorted(cases, key=lambda c: (c["case"], c["rank"]))


def _gray(image: np.ndarray) -> np.ndarray:
    """Undo the encoder normalisation of a record image (all three channels are the same gray)."""
    value = gray_from_model_input(image)[..., 0] * 255.0
    return np.clip(np.rint(value), 0, 255).astype(np.uint8)
