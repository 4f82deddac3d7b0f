"""`keras-ptx demo`: synthetic data -> TFRecords -> train -> evaluate -> export -> predict.

Each stage runs as its own ``keras-ptx`` sub-command in a fresh process (exactly what a user
would type) and is skipped when its outputs are already complete, so re-running resumes.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import click

from keras_ptx.cli import command as cli_command
from keras_ptx.errors import UserError

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _stage(title: str, done: Path, args: list[str]) -> None:
    if done.exists():
        click.secho(f"[skip] {title}: {done} is complete", fg="yellow")
        return
    click.secho(f"[run ] {title}: keras-ptx {' '.join(args)}", fg="cyan", bold=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "keras_ptx.cli", *args])
    if result.returncode != 0:
        raise UserError(f"stage '{title}' failed (exit {result.returncode}); fix what it "
                        f"said above and run the demo again: finished stages are kept")
    click.secho(f"[done] {title} in {time.perf_counter() - start:.0f} s -> {done}", fg="green")


def summary_rows(report: dict) -> list[tuple[str, str]]:
    """The demo's table: (measure, value) pairs from bin/evaluate's report.json."""
    chosen = report["kinds"][report["chosen"]]
    auc = report["image_level"]["auc"]
    return [
        ("competition score (chosen post-processing)", f"{chosen['score']:.4f}"),
        ("all-empty baseline", f"{report['empty_baseline']:.4f}"),
        ("Dice on positive images", f"{chosen['dice_positive']:.4f}"),
        ("image-level ROC AUC", "n/a" if auc is None else f"{auc:.4f}"),
        ("post-processing", f"{report['chosen']}: {chosen['rule']}"),
    ]


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    click.echo("-" * (width + 14))
    for key, value in rows:
        click.echo(f"{key:<{width}} | {value}")
    click.echo("-" * (width + 14))


def _real_radiograph(folder: Path) -> Path:
    """A folder holding only pydicom-data's real chest CR (RG1_UNCR.dcm, 1955x1841 MONOCHROME1)."""
    from pydicom.data import get_testdata_file

    source = get_testdata_file("RG1_UNCR.dcm")
    if source is None:
        raise UserError("pydicom-data's RG1_UNCR.dcm is missing: pip install pydicom-data")
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "RG1_UNCR.dcm"
    if not link.exists():
        link.symlink_to(source)
    return folder


@cli_command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-run"),
              show_default=True, help="Where every stage writes its outputs.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=REPO_CONFIGS / "demo.yaml", show_default="configs/demo.yaml",
              help="Training config.")
@click.option("--n-images", type=int, default=1500, show_default=True, help="Synthetic training images.")
@click.option("--dicom-size", type=int, default=1024, show_default=True, help="Synthetic DICOM side (SIIM: 1024).")
@click.option("--positive-fraction", type=float, default=0.5, show_default=True,
              help="Share of synthetic images with a pneumothorax (SIIM: 0.22; more teaches faster).")
@click.option("--workers", type=int, default=2, show_default=True,
              help="Processes for the synthetic data and the records.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config overrides for training.")
def command(workdir: Path, config_path: Path, n_images: int, dicom_size: int,
            positive_fraction: float, workers: int, overrides):
    """Run the whole workflow on a synthetic SIIM-like dataset and print how well it learned."""
    from keras_ptx import rundir
    from keras_ptx.config import load_config
    from keras_ptx.fileio import read_json

    from keras_ptx.synthetic.dataset import Options, SyntheticError

    config = load_config(config_path, overrides)
    if workers < 1:
        raise SyntheticError(f"--workers must be at least 1, got {workers}")
    Options(n_images=n_images, size=dicom_size, positive_fraction=positive_fraction)  # refuses
    workdir.mkdir(parents=True, exist_ok=True)
    synth, records, run, export = (workdir / n for n in ("synthetic", "records", "run", "export"))
    sets = [a for o in overrides for a in ("--set", o)]
    _stage("synthetic data", synth / "synthetic.json",
           ["make-synthetic", str(synth), "--n-images", str(n_images), "--size", str(dicom_size),
            "--positive-fraction", str(positive_fraction), "--workers", str(workers),
            "--test-fraction", "0.05", "--mix-shapes"])
    _stage("TFRecords", records / "manifest.json",
           ["build-tfrecords", "--dicom-dir", str(synth / "dicom-images-train"),
            "--labels", str(synth / "train-rle.csv"), "--out", str(records),
            "--image-size", str(config.data.image_size), "--workers", str(workers)])
    _stage("training", run / rundir.METRICS,
           ["train", "--config", str(config_path), "--data", str(records), "--out", str(run), "--resume", *sets])
    report_path = Path(rundir.eval_dir(run, "val")) / rundir.EVAL_REPORT
    _stage("evaluation", report_path,
           ["evaluate", "--model", str(run), "--data", str(records), "--split", "val"])
    _stage("SavedModel export", export / "1" / "saved_model.pb",
           ["export", "--model", str(run), "--out", str(export), "--version", "1"])
    rg1_dir = _real_radiograph(workdir / "rg1")
    _stage("predict on a real chest radiograph (RG1_UNCR.dcm, pydicom-data)",
           workdir / "predict-rg1" / "submission.csv",
           ["predict", "--model", str(run), "--dicom-dir", str(rg1_dir), "--out", str(workdir / "predict-rg1"),
            "--overlays"])
    report = read_json(report_path)
    click.secho("\nSynthetic validation split:", bold=True)
    print_table(summary_rows(report))
    click.echo(f"report:      {report_path.with_name(rundir.EVAL_REPORT_MD)}")
    click.echo(f"SavedModel:  {export / '1'}")
    click.echo(f"TensorBoard: tensorboard --logdir {run / rundir.LOGS}")
