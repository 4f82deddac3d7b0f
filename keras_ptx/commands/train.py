"""``train``: train the UNet++ of a config on TFRecords into a run directory."""
from __future__ import annotations

import click

from keras_ptx.cli import command as cli_command


@cli_command("train")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="YAML config (configs/seed.yaml, strong.yaml, demo.yaml, ...).")
@click.option("--data", "data_dir", required=True,
              help="Folder of TFRecord shards from build-tfrecords (local or gs://).")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory: config.yaml, checkpoints/, logs/, history.csv, metrics.json, "
                   "best.weights.h5.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.epochs=5 (repeatable).")
@click.option("--resume", is_flag=True,
              help="Continue the backup in --out even though the config differs (e.g. more epochs).")
@click.option("--overwrite", is_flag=True, help="Delete the run in --out and start again.")
def command(config_path, data_dir, run_dir, overrides, resume, overwrite):
    """Train with checkpoints, LR schedule, early stopping on train.monitor,
    TensorBoard logs and crash-safe resume.

    Re-running the same command after a crash continues from the last finished epoch. Under
    TF_CONFIG (several machines) or with several GPUs, train.strategy: auto distributes the
    training; train.batch_size is the global batch.
    """
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    from keras_ptx.config import load_config
    from keras_ptx.fileio import check_output
    from keras_ptx.training.run import train
    config = load_config(config_path, overrides)
    check_output(run_dir, "--out", {"--data": data_dir, **config_inputs(config)})
    try:
        train(config, data_dir, run_dir, resume=resume, overwrite=overwrite, echo=click.echo)
    except KeyboardInterrupt:
        click.echo("\ninterrupted; run the same command again to continue from the last "
                   "finished epoch", err=True)
        raise SystemExit(130) from None


def config_inputs(config) -> dict:
    """The paths a training of ``config`` reads besides --data (setting -> path), which its
    --out must not be, lie inside or hold: train.init_from, and model.weights when it names a
    file (not imagenet or none)."""
    from keras_ptx.config import weights_file

    inputs = {"train.init_from": config.train.init_from,
              "model.weights": weights_file(config.model.weights)}
    return {name: path for name, path in inputs.items() if path is not None}
