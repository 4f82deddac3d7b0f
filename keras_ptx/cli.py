"""The ``keras-ptx`` command line: one click group, one lazily imported module per command.

Each ``bin/`` script is a thin wrapper that runs one of these commands; they are also console
scripts (``keras-ptx-train`` and so on). Commands live in ``keras_ptx/commands/<name>.py`` as
``command``, declared with :func:`command`; they are imported only when run, so ``--help`` does
not load TensorFlow. Every command handles errors in one place (:class:`Command`): a
:class:`~keras_ptx.errors.UserError` is printed as ``Error: <message>`` with exit status 2;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import importlib
import sys

import click

import keras_ptx
from keras_ptx.errors import UserError

# Every command's context, however it is reached (the keras-ptx group, a bin/ script, a test
# invoking it directly): click keeps the first help option it makes for a command.
CONTEXT = {"help_option_names": ["-h", "--help"]}


class Refused(click.ClickException):
    """A :class:`UserError` on its way out of a command: ``Error: <message>``, exit status 2."""
    exit_code = 2


class Command(click.Command):
    """A click command whose :class:`UserError`, and click's own complaint about its arguments
    (otherwise printed under the usage lines), become :class:`Refused`: one line."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise Refused(exc.format_message()) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise Refused(str(exc)) from None
        except click.UsageError as exc:
            raise Refused(exc.format_message()) from None


def command(name: str | None = None, **settings):
    """``click.command`` with the project's error handling and help options."""
    return click.command(name, cls=Command, context_settings=CONTEXT, **settings)

COMMANDS = {
    "make-synthetic": "keras_ptx.commands.make_synthetic",
    "build-tfrecords": "keras_ptx.commands.build_tfrecords",
    "train": "keras_ptx.commands.train",
    "train-folds": "keras_ptx.commands.train_folds",
    "evaluate": "keras_ptx.commands.evaluate",
    "predict": "keras_ptx.commands.predict",
    "export": "keras_ptx.commands.export",
    "demo": "keras_ptx.commands.demo",
    "doctor": "keras_ptx.commands.doctor",
    "serve-dicom": "keras_ptx.commands.serve_dicom",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        return importlib.import_module(COMMANDS[name]).command


@click.group(cls=LazyGroup, context_settings=CONTEXT)
@click.version_option(keras_ptx.__version__, prog_name="keras-ptx")
def main():
    """Find and outline pneumothorax on chest radiographs (SIIM-ACR) with a Keras UNet++."""


def run_command(name: str, prog_name: str, args=None):
    """Run one sub-command directly, with its usage line naming the script that was called."""
    command = main.get_command(None, name)
    command.main(args=sys.argv[1:] if args is None else args, prog_name=prog_name)


def _runner(name):
    def run():
        run_command(name, f"keras-ptx-{name}")
    run.__name__ = name.replace("-", "_")
    return run


make_synthetic = _runner("make-synthetic")
build_tfrecords = _runner("build-tfrecords")
train = _runner("train")
train_folds = _runner("train-folds")
evaluate = _runner("evaluate")
predict = _runner("predict")
export = _runner("export")
demo = _runner("demo")
doctor = _runner("doctor")
serve_dicom = _runner("serve-dicom")

if __name__ == "__main__":
    main()
