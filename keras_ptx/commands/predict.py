"""``predict``: DICOMs -> submission.csv, per-image predictions, optional overlays and DICOM
result objects."""
from __future__ import annotations

import click

from keras_ptx.cli import command as cli_command
from keras_ptx.commands.options import batch_size_option, engine_option, ensemble_options
from keras_ptx.config import Tta, choices
from keras_ptx.results import DEFAULT_KINDS, DESCRIPTION, KINDS


def _kinds(value: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(k.strip().lower() for k in value.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise click.BadParameter(f"{value!r}: give one or more of {', '.join(KINDS)}, "
                                 f"comma-separated")
    return kinds


@cli_command("predict")
@ensemble_options
@click.option("--dicom-dir", required=True, type=click.Path(file_okay=False),
              help="Folder searched recursively for DICOM files (.dcm, .dicom).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--format", "layout", type=click.Choice(["stage1", "stage2"]), default="stage1",
              show_default=True, help="submission.csv layout of the competition's stage 1 or 2.")
@click.option("--overlays", is_flag=True, help="Also write OUT/overlays/<ImageId>.png.")
@click.option("--tta", type=click.Choice(choices(Tta)), default=None,
              help="Test-time augmentation [default: the one the run's postprocess.json was "
                   "tuned with, else its eval.tta].")
@batch_size_option
@engine_option(exports=True)
@click.option("--dicom-out", type=click.Path(file_okay=False), default=None,
              help="Also write DICOM result objects here: <ImageId>.seg.dcm, .sr.dcm, .sc.dcm.")
@click.option("--dicom-objects", default=",".join(DEFAULT_KINDS), show_default=True,
              callback=lambda ctx, param, value: _kinds(value),
              help=f"Comma-separated objects for --dicom-out, of: {', '.join(KINDS)} "
                   f"(Segmentation, Structured Report, Secondary Capture with the result "
                   f"burned in).")
@click.option("--dicom-description", default=DESCRIPTION, show_default=True,
              help="Series description of the DICOM objects (at most 64 characters).")
@click.option("--any-image", is_flag=True,
              help="Research: also predict images that are not one frontal chest radiograph "
                   "(lateral views, other body parts, other modalities); every output marks "
                   "them as outside the intended use.")
def command(run_dir, checkpoints, dicom_dir, out, layout, overlays, tta, batch_size, engine,
            dicom_out, dicom_objects, dicom_description, any_image):
    """Predict a pneumothorax mask for every DICOM below DICOM_DIR at its original size.

    Writes OUT/submission.csv (one row per image, relative RLE, -1 for none), predictions.csv
    (probability and mask area per image) and errors.csv (files that could not be read, with
    the reason; those whose header still names the image get a -1 row, as a competition
    submission must list every image). Applies the run's saved post-processing (bin/evaluate),
    else its eval.threshold. Only frontal chest radiographs (CR, DX, Secondary Capture; PA or
    AP; one frame) are predicted: others get a reason in errors.csv. With --dicom-out, a DICOM
    Segmentation and Structured Report per image (negatives included), for a PACS.
    """
    from keras_ptx.fileio import join
    from keras_ptx.results.predict import predict

    summary = predict(run_dir, dicom_dir, out, layout=layout, overlays=overlays, tta=tta,
                      checkpoints=checkpoints, batch_size=batch_size,
                      log=lambda m: click.echo(m, err=True), dicom_out=dicom_out,
                      dicom_objects=dicom_objects, dicom_description=dicom_description,
                      any_image=any_image, engine=engine)
    rate = summary.images / summary.seconds if summary.seconds else 0.0
    click.echo(f"{summary.images} images predicted ({summary.positives} with pneumothorax); "
               f"{summary.seconds:.1f} s, {rate:.1f} images/s")
    if summary.errors:
        click.echo(f"{summary.errors} unreadable or duplicate, {summary.filled} of them "
                   f"submitted as -1: see {join(summary.out, 'errors.csv')}", err=True)
    click.echo(f"submission: {join(summary.out, 'submission.csv')}")
