"""Exit codes of `pretrain.train`, the launchers and every command above data_tools
(docs/design.md §5): import them from here.

The codes every command shares (0, 1, 2, 130) are written once, in `data_tools.exit_codes` (the
bottom layer, whose CLI exits with them too); this module adds the trainer's own (75) and
`describe_exit`. Torch-free and dependency-free: the launchers import it before any rank starts,
and `pretrain` never imports `launch`."""

from __future__ import annotations

from data_tools.exit_codes import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_RESUME", "MEANING",
           "describe_exit"]

EXIT_RESUME = 75  # stopped after saving a checkpoint: run the same command again to resume

MEANING = {
    EXIT_OK: "finished",
    EXIT_FAILED: "failed",
    EXIT_CONFIG: "config or data error",
    EXIT_RESUME: "stopped after saving a checkpoint (resume me)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


def describe_exit(code: int) -> str:
    """A few words for an exit code (shells report a death by signal N as 128 + N)."""
    if code in MEANING:
        return MEANING[code]
    if code > 128:
        return f"killed by signal {code - 128}"
    return "failed"
