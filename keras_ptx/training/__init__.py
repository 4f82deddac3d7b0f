"""Training: strategy, optimizer schedule, callbacks, weight averaging and the run itself.

Entry point: :func:`keras_ptx.training.run.train`; ``bin/train`` is its command line.
"""
from keras_ptx.errors import UserError


class TrainingError(UserError):
    """A run that cannot start or finish: its run directory, records or result."""
