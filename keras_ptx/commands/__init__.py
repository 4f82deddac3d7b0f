"""One module per command-line command, each exposing ``command`` (declared with
:func:`keras_ptx.cli.command`)."""
