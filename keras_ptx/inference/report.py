"""The evaluation report for people: report.md and the short table the command prints."""
from __future__ import annotations


def _num(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_table(report: dict) -> str:
    """One line per post-processing kind, the empty baseline and the image-level scores."""
    rows = [("kind", "score", "Dice (positives)", "rule")]
    for name, kind in report["kinds"].items():
        mark = " *" if name == report["chosen"] else ""
        rows.append((name + mark, _num(kind["score"]), _num(kind["dice_positive"]), kind["rule"]))
    rows.append(("all empty", _num(report["empty_baseline"]), _num(0.0), "predict nothing"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3]
             for row in rows]
    level = report["image_level"]
    lines.append(f"image level ({level['source']}, >= 0.5): accuracy {_num(level['accuracy'], 3)}, "
                 f"sensitivity {_num(level['sensitivity'], 3)}, specificity "
                 f"{_num(level['specificity'], 3)}, ROC AUC {_num(level['auc'], 3)}")
    lines.append(f"* chosen, {_saved(report)}")
    if _no_better_than_empty(report):
        lines.append(f"! {NO_BETTER}")
    return "\n".join(lines)


def to_markdown(report: dict) -> str:
    level = report["image_level"]
    lines = [
        f"# Evaluation of {report['run_dir']} on {report['split']}",
        "",
        f"{report['images']} labeled images ({report['positives']} with pneumothorax) from "
        f"`{report['data']}`; test-time augmentation: {report['tta']}."
        + (f" Network run by {report['engine']}." if report["engine"] != "tf" else "")
        + (f" Unlabeled records skipped: {report['unlabeled_skipped']}." if report["unlabeled_skipped"] else "")
        + (" Images scored by each fold's model (its own fold): " + ", ".join(
            f"fold {k}: {n}" for k, n in report["images_per_fold"].items()) + "."
           if report.get("images_per_fold") else ""),
        "",
        f"**Resolution.** {report['resolution']['note']}"
        + (f" {report['resolution']['positives_empty_at_record_size']} positive image(s) have no "
           "mask pixel left at record size." if report["resolution"]["positives_empty_at_record_size"] else ""),
        "",
        "## Competition score (mean per-image Dice, 1 when both empty)",
        "",
        "| post-processing | score | Dice on positive images | rule |",
        "|---|---|---|---|",
    ]
    for name, kind in report["kinds"].items():
        mark = " (chosen)" if name == report["chosen"] else ""
        lines.append(f"| {name}{mark} | {_num(kind['score'])} | {_num(kind['dice_positive'])} | "
                     f"{kind['rule']} |")
    lines += [
        f"| all empty (baseline) | {_num(report['empty_baseline'])} | 0.0000 | predict nothing |",
        "",
        f"The chosen rule is {_saved(report, code=True)}.",
        *(["", f"**{NO_BETTER}**"] if _no_better_than_empty(report) else []),
        "",
        f"## Image level: pneumothorax present ({level['source']})",
        "",
        "| threshold | accuracy | sensitivity | specificity | ROC AUC |",
        "|---|---|---|---|---|",
    ]
    for metrics in filter(None, (level, level.get("at_chosen_gate"))):
        lines.append(f"| {metrics['threshold']:g} | {_num(metrics['accuracy'], 3)} | "
                     f"{_num(metrics['sensitivity'], 3)} | {_num(metrics['specificity'], 3)} | "
                     f"{_num(metrics['auc'], 3)} |")
    area = report["positive_mask_area_original_px"]
    if area:
        lines += ["", f"Positive mask area at original resolution: median {area['median']:.0f} px, "
                      f"10th percentile {area['p10']:.0f} px, max {area['max']} px."]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    if report["cases"]:
        lines += ["", "## Best and worst cases (chosen rule; red: prediction, green: truth)", "",
                  "best: the lesions found best (positive images, Dice above 0); worst: the "
                  "largest mistakes (any image with Dice below 1).", ""]
        lines += [f"- {c['case']} {c['rank']}: `{c['image_id']}`, Dice {c['dice']:.3f} "
                  f"![{c['image_id']}]({c['file']})" for c in report["cases"]]
    return "\n".join(lines) + "\n"


def _saved(report: dict, code: bool = False) -> str:
    path = report["postprocess_file"]
    if path is None:
        return (f"not saved (evaluated on {report['split']}; the rule predict and export apply "
                f"comes from the val split, or from --save-postprocess)")
    return f"saved to {f'`{path}`' if code else path}; predict and export apply it"


NO_BETTER = ("No rule beats predicting nothing on this split: the model does not find lesions "
             "yet (train longer, or check the data).")


def _no_better_than_empty(report: dict) -> bool:
    return report["kinds"][report["chosen"]]["score"] <= report["empty_baseline"] + 1e-9
