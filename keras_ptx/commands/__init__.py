"""One module per command-line command, each exposing ``command`` (a click command)."""

# Every command's context, however it is reached (the keras-ptx group, a bin/ script, a test
# invoking it directly): click keeps the first help option it makes for a command.
CONTEXT = {"help_option_names": ["-h", "--help"]}
