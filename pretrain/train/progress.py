"""Rank 0's progress display: a bar on a terminal, plain lines elsewhere.

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
import sys
import time

from pretrain.logs import human_duration

log = logging.getLogger("pretrain.train")

TTY_VAR = "ARROWTRAIN_TTY"  # "1"/"0": whether the rank's output ends up on a terminal


def output_is_tty(environ=os.environ) -> bool:
    """ARROWTRAIN_TTY when a launcher set it (the rank's own stderr is then its pipe), else
    whether stderr is a terminal."""
    value = environ.get(TTY_VAR)
    if value in ("0", "1"):
        return value == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _AboveTheBar:
    """A stream for logging handlers while a bar is shown: each record is written by
    tqdm.write, which clears the bar, writes the line and redraws the bar below it."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=self.stream, end="")

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """`update(step)` after every step; `close()` at the end. Mode "bar", "lines" or "off"."""

    def __init__(self, total: int, initial: int, enabled: bool, every_seconds: float,
                 tty: bool | None = None):
        tty = output_is_tty() if tty is None else tty
        self.mode = "off" if not enabled else "bar" if tty else "lines"
        self.total, self.every_s = total, every_seconds
        self.bar, self._swapped = None, []
        self.t0 = self.last_line = time.monotonic()
        self.step0 = initial
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step",
                            mininterval=2, file=sys.stderr, dynamic_ncols=True)
            self._redirect_logging()

    def _redirect_logging(self) -> None:
        for handler in logging.getLogger().handlers:
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and stream in (sys.stderr,
                                                                         sys.stdout):
                handler.setStream(_AboveTheBar(stream))
                self._swapped.append((handler, stream))

    def update(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self.last_line >= self.every_s and step < self.total:
                self.last_line = now
                log.info("%s", self.line(step, now))

    def line(self, step: int, now: float) -> str:
        done = step - self.step0
        per_step = (now - self.t0) / done if done else None
        text = f"progress: step {step}/{self.total} ({100 * step / self.total:.1f}%)"
        if per_step:
            eta = human_duration((self.total - step) * per_step)
            text += f", {per_step:.3g} s/step, {1 / per_step:.3g} steps/s, ETA {eta}"
        return text

    def close(self) -> None:
        for handler, stream in self._swapped:
            handler.setStream(stream)
        self._swapped = []
        if self.bar is not None:
            self.bar.close()
            self.bar = None
