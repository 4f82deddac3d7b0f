"""``doctor``: check what this machine gives a training run and recommend settings."""
from __future__ import annotations

import click

from keras_ptx.cli import command as cli_command


@cli_command("doctor")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config of the run to check [default: the built-in defaults].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.batch_size=16 (repeatable).")
@click.option("--steps", type=click.IntRange(min=1), default=3, show_default=True,
              help="Steady training steps timed per setting (after the first).")
@click.option("--batches", type=click.IntRange(min=1), default=8, show_default=True,
              help="Augmented batches timed per number of augmentation calls.")
def command(config_path, overrides, steps, batches):
    """Check this machine for training: devices and TensorFlow's CUDA/cuDNN build, one
    training step of the configured network with XLA off and on, in float32 and mixed_float16
    (first and steady step times), and the input pipeline's augmented images/s with 1..N
    augmentation calls against what the fastest step consumes. Ends with the settings it
    recommends (train.jit_compile, train.mixed_precision, data.num_parallel_calls).
    """
    from keras_ptx.config import load_config
    from keras_ptx.doctor import report

    report(load_config(config_path, overrides), steps, batches, echo=click.echo)
