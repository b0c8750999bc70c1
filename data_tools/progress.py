"""Progress of train-tokenizer, shard and validate — and of the trainer, whose
pretrain/train/progress.py counts steps with this class: a bar on a terminal, plain lines
elsewhere (issue 18 item 7).

- stderr a terminal: one tqdm bar, and while it is shown every log line goes above it (the
  root handlers write through `tqdm.write`), never glued to it.
- Elsewhere (a pipe, a SLURM log): no bar — its redraws would pile up into one giant line —
  but one plain log line every EVERY_SECONDS: `shard: 1.2 GB of 4.0 GB (30.0%), 25.1 MB/s,
  ETA 2 min`.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("data_tools")
EVERY_SECONDS = 30.0


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} TB"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" \
        if seconds < 5400 else f"{seconds / 3600:.1f} h"


class _AboveTheBar:
    """A stream for logging handlers while a bar is shown: tqdm.write clears the bar, writes
    the line and redraws the bar below it."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        from tqdm import tqdm
        tqdm.write(text, file=self.stream, end="")

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """`update(done)` with the running total (bytes, or `unit`s); `close()` at the end. Mode
    "bar" (a terminal), "lines" (elsewhere) or "off" (not `enabled`: another rank's copy).
    A subclass may change `log` (where the lines go), `redraw_s` (the bar's least redraw
    interval) and `line()` (what a plain line says)."""

    log = log
    redraw_s = 0.1  # tqdm's own default

    def __init__(self, total: int, desc: str, unit: str = "B", tty: bool | None = None,
                 every_seconds: float = EVERY_SECONDS, initial: int = 0, enabled: bool = True):
        tty = stderr_is_tty() if tty is None else tty
        self.mode = "off" if not enabled else "bar" if tty else "lines"
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_seconds
        self.bar, self._swapped, self.postfix = None, [], ""
        self.initial = self.done = initial
        self.t0 = self.last_line = time.monotonic()
        if self.mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                            unit_scale=unit == "B", mininterval=self.redraw_s, file=sys.stderr,
                            dynamic_ncols=True)
            self._redirect_logging()

    def _redirect_logging(self) -> None:
        for handler in logging.getLogger().handlers:
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and stream in (sys.stderr,
                                                                         sys.stdout):
                handler.setStream(_AboveTheBar(stream))
                self._swapped.append((handler, stream))

    def update(self, done: int, postfix: str = "") -> None:
        self.done, self.postfix = done, postfix
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(done - self.bar.n)
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self.last_line >= self.every_s and done < self.total:
                self.last_line = now
                self.log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        """`DESC: DONE of TOTAL (P%), RATE, ETA T` (sizes when counting bytes)."""
        fmt = _size if self.unit == "B" else (lambda n: f"{n:,.0f} {self.unit}")
        pct = 100 * self.done / self.total if self.total else 100.0
        text = f"{self.desc}: {fmt(self.done)} of {fmt(self.total)} ({pct:.1f}%)"
        elapsed = now - self.t0
        if self.done and elapsed > 0:
            rate = self.done / elapsed
            text += f", {fmt(rate)}/s, ETA {_duration((self.total - self.done) / rate)}"
        return text + (f", {self.postfix}" if self.postfix else "")

    def close(self) -> None:
        for handler, stream in self._swapped:
            handler.setStream(stream)
        self._swapped = []
        if self.bar is not None:
            self.bar.close()
            self.bar = None
