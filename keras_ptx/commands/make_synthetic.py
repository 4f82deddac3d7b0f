"""``make-synthetic``: write a SIIM-ACR-like dataset (DICOMs + RLE labels) to try keras_ptx on."""
from __future__ import annotations

import os

import click

from keras_ptx.cli import command as cli_command


@cli_command("make-synthetic")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n-images", "-n", type=click.IntRange(min=1), required=True,
              help="How many images (train and test together).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="The same seed writes the same bytes.")
@click.option("--size", type=click.IntRange(min=32), default=1024, show_default=True,
              help="Image side in pixels (SIIM: 1024).")
@click.option("--positive-fraction", type=click.FloatRange(0, 1), default=0.22,
              show_default=True, help="Share of images with a pneumothorax.")
@click.option("--stage", type=click.Choice(["1", "2"]), default="1", show_default=True,
              help="Label file layout: 1 = train-rle.csv, 2 = stage_2_train.csv.")
@click.option("--test-fraction", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Share of patients whose images go to dicom-images-test (unlabelled).")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=os.cpu_count() or 1,
              show_default="all cores", help="Parallel worker processes.")
@click.option("--mix-formats", is_flag=True,
              help="Write some MONOCHROME1, 16-bit, uncompressed, RLE and JPEG 2000 files "
                   "among the JPEGs.")
@click.option("--classes", default="cr", show_default=True,
              callback=lambda ctx, param, value: tuple(
                  c.strip().lower() for c in value.split(",") if c.strip()),
              help="Comma-separated DICOM classes the images take in turn: cr (Computed "
                   "Radiography), dx (Digital X-Ray For Presentation), sc (Secondary Capture "
                   "with Modality CR, as SIIM's own files).")
@click.option("--mix-shapes", is_flag=True,
              help="Make one image in five a non-square detector format (portrait or "
                   "landscape; --size is its long side).")
@click.option("--overwrite", is_flag=True, help="Replace a dataset already in OUT.")
def command(out, n_images, seed, size, positive_fraction, stage, test_fraction, workers,
            mix_formats, classes, mix_shapes, overwrite):
    """Write a synthetic SIIM-ACR pneumothorax dataset to OUT.

    OUT gets dicom-images-train/ and dicom-images-test/ (<Study>/<Series>/<SOP>.dcm, JPEG
    Baseline DICOMs of the --classes), the label CSV in the chosen stage's layout, synthetic.json (options,
    counts, per-image statistics) and preview.png (a contact sheet with the masks outlined).
    """
    from keras_ptx.synthetic.dataset import Options, SyntheticError, make_dataset
    options = Options(n_images=n_images, seed=seed, size=size,
                      positive_fraction=positive_fraction, stage=int(stage),
                      test_fraction=test_fraction, mix_formats=mix_formats,
                      mix_shapes=mix_shapes, classes=classes)
    try:
        summary = make_dataset(out, options, workers=workers, overwrite=overwrite)
    except OSError as exc:                          # OUT unwritable, disk full
        raise SyntheticError(f"{out}: {exc.strerror or exc}") from None
    counts = summary["counts"]
    click.echo(f"{out}: {counts['train']} train + {counts['test']} test images "
               f"({counts['positive']} with pneumothorax, {counts['annotations']} annotations, "
               f"{counts['patients']} patients); labels in {summary['label_file']}; "
               "preview.png shows a few")
