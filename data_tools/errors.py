"""The one exception the command line turns into a clear one-line message and exit code 2."""


class DataToolsError(Exception):
    """Bad input or a refused operation; the message names the file, line or option."""
