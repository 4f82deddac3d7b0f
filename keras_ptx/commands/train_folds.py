"""``train-folds``: train one run per fold of records built with --folds K, under one folder."""
from __future__ import annotations

import click

from keras_ptx.cli import command as cli_command


@cli_command("train-folds")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="YAML config (configs/seed.yaml, strong.yaml, demo.yaml, ...).")
@click.option("--data", "data_dir", required=True,
              help="Folder of TFRecord shards from build-tfrecords --folds K (local or gs://).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Fold folder: folds.json and a run directory per fold (fold-0/, fold-1/, ...).")
@click.option("--folds", default="all", show_default=True, metavar="all|K,K,...",
              help="The folds to train, e.g. 0,2.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.epochs=5 (repeatable).")
@click.option("--resume", is_flag=True,
              help="Continue each fold's backup even though the config differs (e.g. more "
                   "epochs).")
@click.option("--overwrite", is_flag=True,
              help="Delete the run of each fold named by --folds and train it again.")
def command(config_path, data_dir, out, folds, overrides, resume, overwrite):
    """Train a run per fold: fold k validates on the images of fold k and trains on the
    other folds' (whatever the build's train/val split), into OUT/fold-k/.

    Re-running the same command skips the finished folds and continues the interrupted one
    from its last finished epoch; a table of the folds ends it. evaluate --model OUT then scores
    every image out of fold and chooses the ensemble's post-processing.
    """
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    from keras_ptx.commands.train import config_inputs
    from keras_ptx.config import load_config
    from keras_ptx.fileio import check_output
    from keras_ptx.training.folds import fold_table, train_folds
    config = load_config(config_path, overrides)
    check_output(out, "--out", {"--data": data_dir, **config_inputs(config)})
    try:
        results = train_folds(config, data_dir, out, folds, resume=resume, overwrite=overwrite,
                              echo=click.echo)
    except KeyboardInterrupt:
        click.echo("\ninterrupted; run the same command again to continue", err=True)
        raise SystemExit(130) from None
    click.echo(fold_table(results))
