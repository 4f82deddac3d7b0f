"""The one base of every expected failure.

A :class:`UserError` is something the user can fix (a setting, an input file, a run directory,
a records folder) and its message says what and how. The command line prints it as one line
and exits with status 2 (:mod:`keras_ptx.cli`); anything else is a bug and keeps its traceback.
Each stage derives its own error from it (``ConfigError``, ``TrainingError``, ``RunDirError``
and so on) so callers can tell them apart.
"""


class UserError(Exception):
    """An expected failure with a message for the user (printed on one line, exit status 2)."""
