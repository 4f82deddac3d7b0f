"""One module per command-line command, each exposing ``command`` (a click command)."""
