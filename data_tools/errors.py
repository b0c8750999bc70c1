"""The one exception the command line turns into a clear one-line message and exit code 2."""

# data_tools' own exit codes (torch-free and independent of pretrain; the same numbers as
# pretrain/exit_codes.py where they mean the same)
EXIT_USAGE = 2          # bad input or a refused operation: one message, nothing half-written
EXIT_INTERRUPTED = 130  # Ctrl-C (shells report SIGINT as 128 + 2); shard and copy resume


class DataToolsError(Exception):
    """Bad input or a refused operation; the message names the file, line or option."""
