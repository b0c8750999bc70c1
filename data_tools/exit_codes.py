"""The exit codes every arrowtrain command shares, at the bottom of the one-way imports
(data_tools -> pretrain -> launch -> arrowtrain) so that data_tools' own CLI can name them too.

Everything above data_tools imports them, with the trainer's own (75: resume me) and
`describe_exit`, from `pretrain.exit_codes`; the numbers are written only here."""

from __future__ import annotations

EXIT_OK = 0  # done: the result is on stdout (or in the named output), a run reached its end
EXIT_FAILED = 1  # anything else (a traceback, a non-finite loss, ...)
EXIT_CONFIG = 2  # bad input: config, command line, data or checkpoint; one message, nothing started
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (128 + SIGINT, what a shell reports)
