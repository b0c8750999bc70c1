"""Exit codes shared by `pretrain.train` and the launchers (docs/design.md §5).

Torch-free and dependency-free: the launchers import it before any rank starts, and
`pretrain` never imports `launch`, so this is the one place the numbers live."""

from __future__ import annotations

EXIT_OK = 0  # the run reached its last step
EXIT_FAILED = 1  # anything else (a traceback, a non-finite loss, ...)
EXIT_CONFIG = 2  # bad input: config, command line, data or checkpoint; one message, nothing started
EXIT_RESUME = 75  # stopped after saving a checkpoint: run the same command again to resume

MEANING = {
    EXIT_OK: "finished",
    EXIT_FAILED: "failed",
    EXIT_CONFIG: "config or data error",
    EXIT_RESUME: "stopped after saving a checkpoint (resume me)",
}


def describe_exit(code: int) -> str:
    """A few words for an exit code (shells report a death by signal N as 128 + N)."""
    if code in MEANING:
        return MEANING[code]
    if code > 128:
        return f"killed by signal {code - 128}"
    return "failed"
