"""``build-tfrecords``: DICOM folder + RLE labels -> sharded TFRecords (or ``--verify`` a build)."""
from __future__ import annotations

import os

import click

from keras_ptx.cli import command as cli_command


@cli_command("build-tfrecords")
@click.option("--dicom-dir", type=click.Path(exists=True, file_okay=False),
              help="Folder of DICOM files (SIIM's nested layout or flat).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="RLE label CSV (either SIIM layout). Without it: an unlabeled 'test' split.")
@click.option("--out", help="Output folder: a local path or any tf.io.gfile URL (gs://...).")
@click.option("--image-size", type=int, default=256, show_default=True,
              help="Side of the square records (256, 512 or 1024 usually).")
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Share of labeled images in 'val' (stratified, grouped by patient).")
@click.option("--folds", type=int, default=0, show_default=True,
              help="Also assign each labeled image one of K folds (0 = none).")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--shard-size", type=int, default=None,
              help="Examples per shard [default: ~150 MB shards for the image size].")
@click.option("--workers", type=int, default=os.cpu_count() or 1, show_default="all cores",
              help="Decoding processes.")
@click.option("--strict", is_flag=True, help="Exit non-zero if any input is rejected.")
@click.option("--verify", "verify_dir", metavar="OUT",
              help="Instead of building: re-read the build in OUT and check it against its manifest.")
def command(dicom_dir, labels, out, image_size, val_fraction, folds, seed, shard_size, workers,
            strict, verify_dir):
    """Turn SIIM-style DICOMs and their RLE label CSV into validated, sharded TFRecords.

    Every input ends up in exactly one of train / val / test / rejected (with its reason) in
    OUT/manifest.json. An interrupted build resumes where it stopped when run again.
    """
    if verify_dir:
        if dicom_dir or labels or out:
            raise click.UsageError("--verify OUT takes no other input or output options")
        _verify(verify_dir)
        return
    if not dicom_dir or not out:
        raise click.UsageError("--dicom-dir and --out are required (or --verify OUT)")
    from keras_ptx.data.build import BuildError, Options, build
    from keras_ptx.fileio import check_output
    check_output(out, "--out", {"--dicom-dir": dicom_dir, "--labels": labels})
    from keras_ptx.data.manifest import summary
    options = Options(dicom_dir=dicom_dir, out=out, labels=labels, image_size=image_size,
                      val_fraction=val_fraction, folds=folds, seed=seed, shard_size=shard_size,
                      workers=workers)
    manifest = build(options, log=click.echo)
    click.echo(summary(manifest))
    click.echo(f"manifest: {out.rstrip('/')}/manifest.json")
    if strict and manifest["rejected"]:
        raise BuildError(f"--strict: {len(manifest['rejected'])} input(s) rejected "
                         "(listed in the manifest)")


def _verify(out: str) -> None:
    from keras_ptx.data.build import BuildError
    from keras_ptx.data.manifest import verify
    problems = verify(out)
    for problem in problems:                # the report; the one error line follows
        click.echo(f"FAIL {problem}")
    if problems:
        first = problems[0].replace(out.rstrip("/") + "/", "")    # files named within OUT
        first = first if len(first) <= 200 else first[:200] + "..."
        raise BuildError(f"{out}: {len(problems)} problem(s), the build does not match its "
                         f"manifest; the first: {first}")
    click.echo(f"{out}: every shard matches its manifest (sha256, counts) and every example decodes")
