"""What `--format auto` decided from a file's content rather than its extension, and what a
folder walk left out: the report `train-tokenizer`, `shard` and `inspect` give, so that no
input is dropped silently.

- Files of unknown extension (`.md`, `.py`, `README`, `changelog.Debian.gz`, ...) that are
  UTF-8 text are read as one document each; they are counted by extension, and the report
  names the INPUT:FORMAT that cuts them otherwise.
- Files of unknown extension that are not UTF-8 text (a NUL byte, or invalid UTF-8, in their
  first 8 KiB, decompressed) are skipped and counted by reason (`binary`, `invalid_utf8`, the
  reasons `--format file` uses for the same files) and extension; the manifest records both
  (`skipped`, `skipped_files`).
- Names matching `--exclude` are listed (folders are not walked into).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

NO_EXTENSION = "(no extension)"
COMPRESSIONS = (".gz", ".zst")
SHOW_EXCLUDED = 8  # names listed before "and N more"


def extension(path: str) -> str:
    """'a/changelog.Debian.gz' -> '.debian.gz', 'x.PNG' -> '.png', 'README' -> '(no extension)'."""
    stem, ext = os.path.splitext(os.path.basename(path))
    if ext.lower() in COMPRESSIONS:
        ext = os.path.splitext(stem)[1] + ext
    return ext.lower() or NO_EXTENSION


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def by_extension(counts: dict[str, int]) -> str:
    """'.md 2, .py 1' (sorted by extension)."""
    return ", ".join(f"{ext} {n}" for ext, n in sorted(counts.items()))


def by_reason(skipped: dict[str, dict[str, int]]) -> str:
    """'binary 3 (.bin 1, .png 2), invalid_utf8 1 (.csv 1)'."""
    return ", ".join(f"{reason} {sum(exts.values())} ({by_extension(exts)})"
                     for reason, exts in sorted(skipped.items()))


@dataclass
class Walk:
    """The decisions of one resolution of INPUT... (data_tools.inputs.expand_inputs)."""

    excludes: tuple[str, ...] = ()
    by_content: dict[str, int] = field(default_factory=dict)  # extension -> files read whole
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # reason -> ext -> files
    excluded: list[str] = field(default_factory=list)  # names matching --exclude ("dir/")
    content_inputs: list[str] = field(default_factory=list)  # INPUTs holding by_content files

    def read_by_content(self, path: str, item: str) -> None:
        ext = extension(path)
        self.by_content[ext] = self.by_content.get(ext, 0) + 1
        if item not in self.content_inputs:
            self.content_inputs.append(item)

    def skip(self, reason: str, path: str) -> None:
        exts = self.skipped.setdefault(reason, {})
        exts[extension(path)] = exts.get(extension(path), 0) + 1

    def counts(self) -> dict[str, int]:
        """Skipped files by reason (added to the manifest's `skipped` record counts)."""
        return {reason: sum(exts.values()) for reason, exts in self.skipped.items()}

    def skipped_files(self) -> dict[str, dict[str, int]] | None:
        """The manifest's `skipped_files` (None: nothing skipped by content)."""
        return {r: dict(sorted(e.items())) for r, e in sorted(self.skipped.items())} or None

    def messages(self) -> list[tuple[int, str]]:
        """(log level, line) for each thing worth telling; none when nothing was decided."""
        out = []
        if self.excluded:
            more = len(self.excluded) - SHOW_EXCLUDED
            out.append((logging.INFO, f"not read: {plural(len(self.excluded), 'name')} "
                        "matching --exclude "
                        f"({' '.join(self.excludes)}): {', '.join(self.excluded[:SHOW_EXCLUDED])}"
                        + (f" and {more} more" if more > 0 else "")
                        + " (any --exclude replaces that list)"))
        if self.by_content:
            item = self.content_inputs[0].rstrip("/") or "/"
            out.append((logging.INFO, f"{plural(sum(self.by_content.values()), 'file')} of "
                        f"unknown extension read as one document each ({by_extension(self.by_content)})"
                        f"; INPUT:FORMAT sets how a folder is cut: {item}:file (every file one "
                        f"document, .txt too), {item}:paragraph or {item}:line; --exclude "
                        "GLOB leaves files out"))
        if self.skipped:
            out.append((logging.WARNING, f"skipped {plural(sum(self.counts().values()), 'file')}"
                        f" that are not UTF-8 text: {by_reason(self.skipped)}; text in another encoding "
                        "needs converting first (e.g. iconv -f latin1 -t utf-8)"))
        return out

    def log(self, logger: logging.Logger) -> None:
        for level, line in self.messages():
            logger.log(level, "%s", line)
