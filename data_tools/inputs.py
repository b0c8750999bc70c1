"""Finding input files and reading documents from them, one record at a time.

Every reader yields `(record_index, text)` or `(record_index, Skip)` in file order, so a document's
position `(file_index, record_index)` is deterministic and a run can resume from any position.
Bad records become `Skip(reason, where)` instead of exceptions; the caller counts them.

How a file is cut into documents (its *reader*) comes from its extension (`--format auto`),
from `--format`, or from a suffix on the INPUT itself (`notes/:file`); `.txt` files are cut by
`--txt-mode` (one document per non-blank line, per blank-line separated paragraph, or per file).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from data_tools.errors import DataToolsError

TXT_MODES = ("line", "paragraph", "file")
# the reader of each format name: txt means "as --txt-mode says"
READERS = ("jsonl", "parquet", "file", "line", "paragraph")
FORMATS = ("auto", "jsonl", "txt", "parquet", "file", "line", "paragraph")
COMPRESSIONS = (".gz", ".zst")
EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".txt": "txt",
              ".text": "txt", ".parquet": "parquet"}
DEFAULT_EXCLUDES = (".*", "__pycache__", "site-packages")
BINARY_SNIFF_BYTES = 8192
PARQUET_BATCH_ROWS = 1024
READER_TEXT = {"jsonl": "one per JSON line (its text field)", "parquet": "one per row (its text "
               "column)", "file": "one per file", "line": "one per non-blank line",
               "paragraph": "one per paragraph (blank-line separated)"}
FORMAT_HELP = ("auto: by extension (.jsonl/.json/.ndjson and .txt/.text, each optionally .gz/.zst; "
               ".parquet); jsonl; parquet; txt: cut as --txt-mode says; line / paragraph: one "
               "document per non-blank line / per paragraph; file: one document per file. "
               "Any INPUT may carry its own, as INPUT:FORMAT (e.g. notes/:file)")
TXT_MODE_HELP = ("how .txt files become documents: line (each non-blank line), paragraph "
                 "(blocks separated by blank lines), file (the whole file)")


@dataclass(frozen=True)
class Skip:
    reason: str  # short key counted in the manifest, e.g. "invalid_json"
    where: str  # "path:line" or "path:row N"
    detail: str = ""

    def message(self) -> str:
        return f"{self.where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class InputFile:
    path: str
    size: int
    fmt: str  # the reader: one of READERS


def parse_size(text: str) -> int:
    """'256MB' -> 268435456 (binary units, K/M/G/T with optional B or iB), '1000' -> 1000."""
    s = text.strip().upper().replace("IB", "").rstrip("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    mult = units.get(s[-1:], 1) if s else 1
    number = s[:-1] if s[-1:] in units else s
    try:
        value = int(float(number) * mult)
    except ValueError:
        raise DataToolsError(f"cannot read size {text!r}: use e.g. 256MB, 1GB or 50000") from None
    if value <= 0:
        raise DataToolsError(f"size {text!r} must be positive")
    return value


def detect_format(path: str, fmt: str, txt_mode: str = "line") -> str | None:
    """The reader for a file: from `fmt`, or from the extension when it is 'auto' (None: an
    unknown extension); 'txt' becomes `txt_mode`."""
    if fmt == "auto":
        stem = path[: -len(ext)] if (ext := os.path.splitext(path)[1]) in COMPRESSIONS else path
        fmt = EXTENSIONS.get(os.path.splitext(stem)[1].lower())
    return txt_mode if fmt == "txt" else fmt


def split_format_suffix(item: str) -> tuple[str, str | None]:
    """'notes/:file' -> ('notes/', 'file'); an existing path or an unknown suffix stays whole."""
    path, sep, suffix = item.rpartition(":")
    if sep and suffix in FORMATS and suffix != "auto" and path and not os.path.exists(item):
        return path, suffix
    return item, None


def _walk(folder: str, excludes: tuple[str, ...]) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _excluded(d, excludes))
        out += [os.path.join(root, f) for f in sorted(files) if not _excluded(f, excludes)]
    return out


def _excluded(name: str, excludes: tuple[str, ...]) -> bool:
    from fnmatch import fnmatch
    return any(fnmatch(name, pat) for pat in excludes)


def _expand_one(item: str, excludes: tuple[str, ...]) -> tuple[list[str], bool]:
    """(files, explicit) for one INPUT: a file, a folder (walked, sorted) or a glob (sorted)."""
    if os.path.isdir(item):
        return _walk(item, excludes), False
    if os.path.exists(item):
        return [item], True
    if glob.has_magic(item):
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            raise DataToolsError(f"input glob {item!r} matches no files")
        files = []
        for m in matches:
            files += _walk(m, excludes) if os.path.isdir(m) else [m]
        return files, False
    hint = ""
    if ":" in item and os.path.exists(item.rpartition(":")[0]):
        hint = f" (a format suffix is one of {', '.join(FORMATS[1:])})"
    raise DataToolsError(f"input {item!r} does not exist{hint}")


def expand_inputs(items: list[str], fmt: str, excludes=DEFAULT_EXCLUDES,
                  txt_mode: str = "line") -> list[InputFile]:
    """Resolve INPUT... (each optionally INPUT:FORMAT) into a deterministic, de-duplicated file
    list with a reader per file. Raises before any work if a path does not exist, an explicit
    file has an unknown format, or nothing is left."""
    seen, files, problems = set(), [], []
    for item in items:
        path, own_fmt = split_format_suffix(item)
        try:
            paths, explicit = _expand_one(path, tuple(excludes))
        except DataToolsError as e:
            problems.append(str(e))
            continue
        for p in paths:
            real = os.path.realpath(p)
            if real in seen or not os.path.isfile(real):
                continue
            kind = detect_format(p, own_fmt or fmt, txt_mode)
            if kind is None:
                if explicit:
                    problems.append(f"input {p!r}: cannot tell its format from the extension; "
                                    f"pass --format FORMAT or write it as {p}:FORMAT "
                                    f"(FORMAT: {', '.join(FORMATS[1:])})")
                continue
            seen.add(real)
            files.append(InputFile(p, os.path.getsize(p), kind))
    if problems:
        raise DataToolsError("; ".join(problems))
    if not files:
        raise DataToolsError(f"no input files found in {' '.join(items)} (format {fmt}); "
                             "nothing to do")
    return files


def open_binary(path: str):
    """Open a file for reading bytes, decompressing .gz and .zst on the fly."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        return io.BufferedReader(_ZstdFile(path), buffer_size=1 << 16)
    return open(path, "rb")  # noqa: SIM115


class _ZstdFile(io.RawIOBase):
    """Decompressed bytes of a (multi-frame) .zst file. Unlike zstandard's stream_reader, a
    file cut inside a frame raises EOFError instead of silently ending early."""

    def __init__(self, path: str):
        import zstandard
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._file, self._dobj, self._buf, self._in_frame = open(path, "rb"), None, b"", False  # noqa: SIM115

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while not self._buf:
            if self._dobj is not None and self._dobj.eof:
                pending, self._dobj, self._in_frame = self._dobj.unused_data, None, False
                if pending:
                    self._dobj, self._in_frame = self._new(), True
                    self._buf = self._dobj.decompress(pending)
                    continue
            chunk = self._file.read(1 << 16)
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd file ended in the middle of a frame (truncated)")
                return
            if self._dobj is None:
                self._dobj, self._in_frame = self._new(), True
            self._buf = self._dobj.decompress(chunk)

    def readinto(self, b) -> int:
        self._fill()
        n = min(len(b), len(self._buf))
        b[:n], self._buf = self._buf[:n], self._buf[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _decode(raw: bytes, where: str) -> str | Skip:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Skip("invalid_utf8", where, f"byte {e.start}")


def _json_text(line: bytes, where: str, field: str) -> str | Skip:
    try:
        obj = json.loads(line)
    except UnicodeDecodeError as e:
        return Skip("invalid_utf8", where, str(e.reason))
    except json.JSONDecodeError as e:
        return Skip("invalid_json", where, f"column {e.colno}: {e.msg}")
    if not isinstance(obj, dict):
        return Skip("not_object", where, f"a JSON {type(obj).__name__}")
    if field not in obj:
        return Skip("missing_field", where, f"no key {field!r}")
    text = obj[field]
    if not isinstance(text, str):
        return Skip("non_string_field", where, f"{field!r} is {type(text).__name__}")
    return text


def _read_error(exc: Exception, where: str) -> Skip:
    if isinstance(exc, EOFError):
        return Skip("truncated", where, str(exc))
    if isinstance(exc, (zlib.error, gzip.BadGzipFile)) or type(exc).__name__ == "ZstdError":
        return Skip("corrupt_compressed", where, str(exc))
    return Skip("unreadable", where, f"{type(exc).__name__}: {exc}")


def _is_read_error(e: Exception) -> bool:
    # zstandard.ZstdError does not derive from OSError
    return isinstance(e, (OSError, EOFError, zlib.error)) or type(e).__name__ == "ZstdError"


def _iter_lines(path: str, jsonl: bool, field: str) -> Iterator[tuple[int, str | Skip]]:
    """line: one document per non-blank line; jsonl: one object per non-blank line. A read
    error (truncated or corrupt compression, I/O error) ends the file with one Skip."""
    lines_read = 0
    try:
        with open_binary(path) as f:
            for line in f:
                lines_read += 1
                body = line.rstrip(b"\r\n")
                if not body.strip():
                    continue
                where = f"{path}:{lines_read}"
                yield lines_read - 1, (_json_text(body, where, field) if jsonl
                                       else _decode(body, where))
    except Exception as e:
        if not _is_read_error(e):
            raise
        yield lines_read, _read_error(e, f"{path}:{lines_read + 1}")


def _paragraph(parts: list[bytes], size: int, where: str, max_doc_bytes: int) -> str | Skip:
    if size > max_doc_bytes:
        return Skip("too_large", where, f"over {max_doc_bytes} bytes (--max-doc-bytes)")
    return _decode(b"".join(parts).rstrip(b"\r\n"), where)


def _iter_paragraphs(path: str, max_doc_bytes: int) -> Iterator[tuple[int, str | Skip]]:
    """paragraph: one document per block of non-blank lines (line ends inside kept, the last
    one removed); the record index is the block's first line. Memory stays <= max_doc_bytes."""
    lines_read, start, parts, size = 0, -1, [], 0
    try:
        with open_binary(path) as f:
            for line in f:
                lines_read += 1
                if not line.strip():
                    if start >= 0:
                        yield start, _paragraph(parts, size, f"{path}:{start + 1}", max_doc_bytes)
                        start, parts, size = -1, [], 0
                    continue
                if start < 0:
                    start = lines_read - 1
                size += len(line)
                if size <= max_doc_bytes:
                    parts.append(line)
        if start >= 0:
            yield start, _paragraph(parts, size, f"{path}:{start + 1}", max_doc_bytes)
    except Exception as e:
        if not _is_read_error(e):
            raise
        yield lines_read, _read_error(e, f"{path}:{lines_read + 1}")


def _iter_parquet(path: str, field: str) -> Iterator[tuple[int, str | Skip]]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
        if field not in pf.schema_arrow.names:
            yield 0, Skip("missing_field", path, f"no column {field!r}")
            return
        col_type = pf.schema_arrow.field(field).type
        if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
            yield 0, Skip("non_string_field", path, f"column {field!r} is {col_type}")
            return
        row = 0
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[field]):
            for text in batch.column(0).to_pylist():
                yield row, text if text is not None else Skip(
                    "missing_field", f"{path}:row {row}", "null")
                row += 1
    except (OSError, pa.ArrowException) as e:
        # after every row index this file could have: the resume position stays increasing
        yield 1 << 62, Skip("unreadable", path, f"{type(e).__name__}: {e}")


def _read_whole_file(path: str, max_doc_bytes: int) -> str | Skip:
    """file: the whole file (decompressed when .gz/.zst) is one document."""
    try:
        compressed = path.endswith(COMPRESSIONS)
        size = os.path.getsize(path)
        if size > max_doc_bytes and not compressed:
            return Skip("too_large", path, f"{size} bytes > --max-doc-bytes {max_doc_bytes}")
        with open_binary(path) as f:
            head = f.read(BINARY_SNIFF_BYTES)
            if b"\0" in head:
                return Skip("binary", path, "NUL byte")
            raw = head + f.read(max(0, max_doc_bytes + 1 - len(head)))
        if len(raw) > max_doc_bytes:
            return Skip("too_large", path, f"over {max_doc_bytes} bytes once decompressed "
                                           "(--max-doc-bytes)")
    except Exception as e:
        if not _is_read_error(e):
            raise
        return _read_error(e, path)
    return _decode(raw, path)


class Doc(NamedTuple):
    text: str
    utf8: bytes  # the exact bytes the text came from (split hash, text_bytes)


def _to_doc(text: str, where: str, max_doc_bytes: int) -> Doc | Skip:
    if not text.strip():
        return Skip("empty", where)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate from a JSON "\\ud800" escape
        return Skip("invalid_utf8", where, e.reason)
    if len(data) > max_doc_bytes:
        return Skip("too_large", where, f"{len(data)} bytes > --max-doc-bytes {max_doc_bytes}")
    return Doc(text, data)


def iter_records(inp: InputFile, text_field: str, max_doc_bytes: int
                 ) -> Iterator[tuple[int, Doc | Skip]]:
    """Yield (record_index, Doc | Skip) for one input file; empty, too large and non-UTF-8
    documents become Skips here, so every format follows the same rules."""
    if inp.fmt == "file":
        records = iter([(0, _read_whole_file(inp.path, max_doc_bytes))])
    elif inp.fmt == "parquet":
        records = _iter_parquet(inp.path, text_field)
    elif inp.fmt == "paragraph":
        records = _iter_paragraphs(inp.path, max_doc_bytes)
    else:
        records = _iter_lines(inp.path, inp.fmt == "jsonl", text_field)
    for index, rec in records:
        if isinstance(rec, str):
            where = inp.path if inp.fmt == "file" else f"{inp.path}:{index + 1}"
            rec = _to_doc(rec, where, max_doc_bytes)
        yield index, rec
