"""Rank 0's progress display: data_tools.progress's bar or plain lines, counting steps.

- On a terminal (`logging.progress_bar`, stderr a TTY — or, under `launch local`, the
  launcher's output a TTY: ARROWTRAIN_TTY=1): a tqdm bar, and while it is shown every log line
  goes above it (the root handler writes through `tqdm.write`), never glued to it.
- Elsewhere (a pipe, a SLURM log file): no bar — its redraws would pile up into one giant line
  — but one plain log line every `logging.progress_every_seconds` seconds:
  `progress: step 120/1000 (12.0%), 0.31 s/step, 3.2 steps/s, ETA 5 min`.
"""

from __future__ import annotations

import logging
import os

from data_tools import progress
from pretrain.logs import human_duration

TTY_VAR = "ARROWTRAIN_TTY"  # "1"/"0": whether the rank's output ends up on a terminal


def output_is_tty(environ=os.environ) -> bool:
    """ARROWTRAIN_TTY when a launcher set it (the rank's own stderr is then its pipe), else
    whether stderr is a terminal."""
    value = environ.get(TTY_VAR)
    if value in ("0", "1"):
        return value == "1"
    return progress.stderr_is_tty()


class Progress(progress.Progress):
    """`update(step)` after every step; `close()` at the end. Mode "bar", "lines" or "off"."""

    log = logging.getLogger("pretrain.train")
    redraw_s = 2

    def __init__(self, total: int, initial: int, enabled: bool, every_seconds: float,
                 tty: bool | None = None):
        super().__init__(total, "train", unit="step",
                         tty=output_is_tty() if tty is None else tty,
                         every_seconds=every_seconds, initial=initial, enabled=enabled)

    def line(self, now: float) -> str:
        step, done = self.done, self.done - self.initial
        per_step = (now - self.t0) / done if done else None
        text = f"progress: step {step}/{self.total} ({100 * step / self.total:.1f}%)"
        if per_step:
            eta = human_duration((self.total - step) * per_step)
            text += f", {per_step:.3g} s/step, {1 / per_step:.3g} steps/s, ETA {eta}"
        return text
