"""Training: strategy, optimizer schedule, callbacks, weight averaging and the run itself.

Entry point: :func:`keras_ptx.training.trainer.train`; ``bin/train`` is its command line.
"""


class TrainingError(RuntimeError):
    """A run that cannot start or finish: bad data directory, run directory or settings."""
