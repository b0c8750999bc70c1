"""Finding input files and reading documents from them, one record at a time.

Every reader yields `(record_index, text)` or `(record_index, Skip)` in file order, so a document's
position `(file_index, record_index)` is deterministic and a run can resume from any position.
Bad records become `Skip(reason, where)` instead of exceptions; the caller counts them.

How a file is cut into documents (its *reader*) comes from its extension (`--format auto`),
from `--format`, or from a suffix on the INPUT itself (`notes/:file`); `.txt` files are cut by
`--txt-mode` (one document per non-blank line, per blank-line separated paragraph, or per file).
`auto` decides by content where the extension does not tell (data_tools.walk): a file of unknown
extension that is UTF-8 text is one document, any other is skipped and counted; a `.json` file
is JSON lines when its first line is a whole JSON value, else one JSON value (an object is one
record, an array one record per element).

Pairs (source -> target, for translation): a jsonl/parquet record gives one `Pair` from two
fields (`--source-field`/`--target-field`), and two aligned text files (`--source-file`/
`--target-file`, one sentence per line, line i with line i) are read in lockstep as one
`InputFile` whose reader is "aligned". A pair with a missing or empty side is a Skip.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from data_tools.errors import DataToolsError
from data_tools.walk import COMPRESSIONS, Walk, by_reason

TXT_MODES = ("line", "paragraph", "file")
# the reader of each format name: txt means "as --txt-mode says"
READERS = ("jsonl", "json", "parquet", "file", "line", "paragraph")
FORMATS = ("auto", "jsonl", "json", "txt", "parquet", "file", "line", "paragraph")
EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".ndjson": "jsonl", ".txt": "txt",
              ".text": "txt", ".parquet": "parquet"}
DEFAULT_EXCLUDES = (".*", "__pycache__", "site-packages")
BINARY_SNIFF_BYTES = 8192
JSON_SNIFF_BYTES = 1 << 20  # a .json file's first line is looked for within this
SHOW_KEYS = 8  # keys named when a record lacks its field
PARQUET_BATCH_ROWS = 1024
READER_TEXT = {"jsonl": "one per JSON line (its text field)",
               "json": "one per JSON record: the file's object, or each element of its array "
                       "(its text field)",
               "parquet": "one per row (its text column)", "file": "one per file",
               "line": "one per non-blank line",
               "paragraph": "one per paragraph (blank-line separated)",
               "source": "the source side of aligned pairs, one per line",
               "target": "the target side of aligned pairs, one per line"}
PAIR_READER_TEXT = {"jsonl": "one pair per JSON line (its source and target fields)",
                    "json": "one pair per JSON record (its source and target fields)",
                    "parquet": "one pair per row (its source and target columns)"}
FORMAT_HELP = ("auto: by extension (.jsonl/.ndjson, .json, .txt/.text, each optionally .gz/.zst; "
               ".parquet), other files by content: UTF-8 text is one document per file, "
               "binary files are skipped and counted; jsonl: one JSON object per line; json: "
               "one JSON value per file (an object, or an array of them); parquet; txt: cut as "
               "--txt-mode says; line / paragraph: one document per non-blank line / per "
               "paragraph; file: one document per file. Any INPUT may carry its own, as "
               "INPUT:FORMAT (e.g. notes/:file)")
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
    fmt: str  # the reader: one of READERS, or ALIGNED for two aligned text files
    target: str | None = None  # ALIGNED: the target-side file (`path` is the source side)
    target_size: int = 0

    def entries(self) -> list[dict]:
        """Its `inputs[]` entries of the manifest: one per file."""
        if self.fmt == ALIGNED:
            return [{"path": self.path, "size": self.size, "format": "source"},
                    {"path": self.target, "size": self.target_size, "format": "target"}]
        return [{"path": self.path, "size": self.size, "format": self.fmt}]

    @property
    def total_size(self) -> int:
        return self.size + self.target_size


ALIGNED = "aligned"  # the reader of a --source-file/--target-file pair of text files
PAIR_READERS = ("jsonl", "json", "parquet")  # formats whose records can hold both sides


@dataclass(frozen=True)
class PairFields:
    """Which fields (JSON keys / parquet columns) of a record hold the two sides of a pair."""
    source: str
    target: str


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


def _walk(folder: str, excludes: tuple[str, ...], excluded: list[str]) -> list[str]:
    """Files under `folder`, sorted; names matching `excludes` are appended to `excluded`
    (folders with a trailing /, not walked into)."""
    out = []
    for root, dirs, files in os.walk(folder):
        excluded += sorted([f"{d}/" for d in dirs if _excluded(d, excludes)]
                           + [f for f in files if _excluded(f, excludes)])
        dirs[:] = sorted(d for d in dirs if not _excluded(d, excludes))
        out += [os.path.join(root, f) for f in sorted(files) if not _excluded(f, excludes)]
    return out


def _excluded(name: str, excludes: tuple[str, ...]) -> bool:
    from fnmatch import fnmatch
    return any(fnmatch(name, pat) for pat in excludes)


def _expand_one(item: str, excludes: tuple[str, ...], excluded: list[str]
                ) -> tuple[list[str], bool]:
    """(files, explicit) for one INPUT: a file, a folder (walked, sorted) or a glob (sorted)."""
    if os.path.isdir(item):
        return _walk(item, excludes, excluded), False
    if os.path.exists(item):
        return [item], True
    if glob.has_magic(item):
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            raise DataToolsError(f"input glob {item!r} matches no files")
        files = []
        for m in matches:
            files += _walk(m, excludes, excluded) if os.path.isdir(m) else [m]
        return files, False
    hint = ""
    if ":" in item and os.path.exists(item.rpartition(":")[0]):
        hint = f" (a format suffix is one of {', '.join(FORMATS[1:])})"
    raise DataToolsError(f"input {item!r} does not exist{hint}")


def expand_inputs(items: list[str], fmt: str, excludes=DEFAULT_EXCLUDES,
                  txt_mode: str = "line", walk: Walk | None = None) -> list[InputFile]:
    """Resolve INPUT... (each optionally INPUT:FORMAT) into a deterministic, de-duplicated file
    list with a reader per file; what `auto` decided by content, and the names --exclude left
    out, go into `walk`. Raises before any work if a path does not exist, an explicit file is
    not text, or nothing is left."""
    walk = Walk(tuple(excludes)) if walk is None else walk
    seen, files, problems = set(), [], []
    for item in items:
        path, own_fmt = split_format_suffix(item)
        try:
            paths, explicit = _expand_one(path, tuple(excludes), walk.excluded)
        except DataToolsError as e:
            problems.append(str(e))
            continue
        for p in paths:
            real = os.path.realpath(p)
            if real in seen or not os.path.isfile(real):
                continue
            seen.add(real)
            kind = _reader_for(p, own_fmt or fmt, txt_mode)
            if isinstance(kind, Skip):
                if explicit:
                    problems.append(f"input {p!r} is not UTF-8 text ({kind.reason}: "
                                    f"{kind.detail}); give text files, or INPUT:FORMAT")
                else:
                    walk.skip(kind.reason, p)
                continue
            if kind == AUTO_FILE:
                kind = "file"
                if not explicit:
                    walk.read_by_content(p, item)
            files.append(InputFile(p, os.path.getsize(p), kind))
    if problems:
        raise DataToolsError("; ".join(problems))
    if not files:
        raise DataToolsError(f"no input files found in {' '.join(items)} (format {fmt}"
                             + (f"; skipped: {by_reason(walk.skipped)}" if walk.skipped
                                else "")
                             + "); nothing to do")
    return files


AUTO_FILE = "auto-file"  # _reader_for: "file", chosen by content


def _reader_for(path: str, fmt: str, txt_mode: str) -> str | Skip:
    """The reader of one file: as `fmt` says; for `auto`, by extension, a `.json` file by its
    first line, a file of unknown extension by content (AUTO_FILE, or a Skip when not text)."""
    kind = detect_format(path, fmt, txt_mode)
    if fmt != "auto":
        return kind
    if kind == "json":
        return _json_kind(path)
    return kind if kind is not None else (_not_text(path) or AUTO_FILE)


def _head(path: str, nbytes: int) -> bytes | Skip:
    """The first `nbytes` (decompressed) bytes of a file, or why it cannot be read."""
    try:
        with open_binary(path) as f:
            return f.read(nbytes)
    except Exception as e:
        if not _is_read_error(e):
            raise
        return _read_error(e, path)


def _not_text(path: str) -> Skip | None:
    """None when the first 8 KiB (decompressed) are UTF-8 text without NUL bytes (a character
    cut at the end is fine); else the Skip `--format file` would give it."""
    head = _head(path, BINARY_SNIFF_BYTES)
    if isinstance(head, Skip):
        return head
    if b"\0" in head:
        return Skip("binary", path, "NUL byte")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as e:
        return Skip("invalid_utf8", path, f"byte {e.start}")
    return None


def _json_kind(path: str) -> str:
    """'jsonl' when the file's first non-blank line is a whole JSON value (JSON lines), else
    'json' (one value over many lines: a pretty-printed object, or an array)."""
    head = _head(path, JSON_SNIFF_BYTES)
    body = b"" if isinstance(head, Skip) else head.lstrip()
    if body[:1] == b"[":
        return "json"
    line, newline, _ = body.partition(b"\n")
    if body[:1] != b"{" or not newline:  # not an object, or one line: JSON lines all the same
        return "jsonl"
    try:
        json.loads(line)
    except ValueError:
        return "json"
    return "jsonl"


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


def _parse_object(raw: bytes, where: str) -> dict | Skip:
    """One JSON object from its bytes (a JSON line)."""
    try:
        obj = json.loads(raw)
    except UnicodeDecodeError as e:
        return Skip("invalid_utf8", where, str(e.reason))
    except json.JSONDecodeError as e:
        return Skip("invalid_json", where, f"column {e.colno}: {e.msg}")
    return _object_or_skip(obj, where)


def _object_or_skip(obj, where: str) -> dict | Skip:
    return obj if isinstance(obj, dict) else \
        Skip("not_object", where, f"a JSON {type(obj).__name__}")


def names_there(names: list[str], what: str = "keys") -> str:
    """"its keys: 'content', 'title'" for a record that lacks the field asked for."""
    if not names:
        return f"it has no {what}"
    shown = ", ".join(repr(n) for n in names[:SHOW_KEYS])
    return f"its {what}: {shown}" + (f", ... ({len(names)} in all)"
                                     if len(names) > SHOW_KEYS else "")


def _field_text(obj: dict, field: str, where: str) -> str | Skip:
    """The string at `field` of a record; a missing field names the keys that are there."""
    if field not in obj:
        return Skip("missing_field", where, f"no key {field!r}; {names_there(list(obj))}")
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


def _iter_lines(path: str, parse=_decode) -> Iterator[tuple[int, str, str | dict | Skip]]:
    """(index, where, parse(line)) for each non-blank line, line end removed: a document
    (line) or an object (jsonl). A read error (truncated or corrupt compression, I/O error)
    ends the file with one Skip."""
    lines_read = 0
    try:
        with open_binary(path) as f:
            for line in f:
                lines_read += 1
                body = line.rstrip(b"\r\n")
                if body.strip():
                    where = f"{path}:{lines_read}"
                    yield lines_read - 1, where, parse(body, where)
    except Exception as e:
        if not _is_read_error(e):
            raise
        where = f"{path}:{lines_read + 1}"
        yield lines_read, where, _read_error(e, where)


def _iter_json_value(path: str, max_bytes: int) -> Iterator[tuple[int, str, dict | Skip]]:
    """json: the whole file is one JSON value (at most max_bytes): an object is record 0, an
    array's elements are records 0, 1, ... (where: path[i])."""
    raw = _head(path, max_bytes + 1)
    if isinstance(raw, Skip) or len(raw) > max_bytes:
        yield 0, path, raw if isinstance(raw, Skip) else Skip(
            "too_large", path, f"a JSON file is read whole: over --max-doc-bytes {max_bytes}; "
            "write it as JSON lines (one object per line, .jsonl) or raise --max-doc-bytes")
        return
    try:
        value = json.loads(raw)
    except UnicodeDecodeError as e:
        yield 0, path, Skip("invalid_utf8", path, str(e.reason))
        return
    except json.JSONDecodeError as e:
        yield 0, path, Skip("invalid_json", f"{path}:{e.lineno}", f"column {e.colno}: {e.msg}")
        return
    if not isinstance(value, list):
        yield 0, path, _object_or_skip(value, path)
        return
    for i, obj in enumerate(value):
        yield i, f"{path}[{i}]", _object_or_skip(obj, f"{path}[{i}]")


def _iter_objects(inp: InputFile, max_bytes: int) -> Iterator[tuple[int, str, dict | Skip]]:
    """(index, where, object) of a jsonl or json file."""
    if inp.fmt == "json":
        return _iter_json_value(inp.path, max_bytes)
    return _iter_lines(inp.path, _parse_object)


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


def _iter_parquet(path: str, field: str | tuple[str, str]
                  ) -> Iterator[tuple[int, str | tuple[str, str] | Skip]]:
    """The `field` column of each row; with two fields (a pair), a tuple of both."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    fields = [field] if isinstance(field, str) else list(field)
    try:
        pf = pq.ParquetFile(path)
        for f in fields:
            if f not in pf.schema_arrow.names:
                yield 0, Skip("missing_field", path, f"no column {f!r}; "
                              + names_there(pf.schema_arrow.names, "columns"))
                return
            col_type = pf.schema_arrow.field(f).type
            if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
                yield 0, Skip("non_string_field", path, f"column {f!r} is {col_type}")
                return
        row = 0
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=fields):
            for values in zip(*(c.to_pylist() for c in batch.columns)):
                if None in values:
                    yield row, Skip("missing_field", f"{path}:row {row}",
                                    f"{fields[values.index(None)]!r} is null")
                else:
                    yield row, values[0] if isinstance(field, str) else values
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

    @property
    def texts(self) -> tuple[str]:
        """What is tokenized: one text."""
        return (self.text,)

    @property
    def key(self) -> bytes:
        """The bytes its split hash is computed from."""
        return self.utf8

    @property
    def nbytes(self) -> int:
        return len(self.utf8)


class Pair(NamedTuple):
    source: str
    target: str
    source_utf8: bytes
    target_utf8: bytes

    @property
    def texts(self) -> tuple[str, str]:
        """What is tokenized: the source, then the target."""
        return (self.source, self.target)

    @property
    def key(self) -> bytes:
        """Both sides, unambiguously (the source's length first)."""
        return len(self.source_utf8).to_bytes(8, "little") + self.source_utf8 + self.target_utf8

    @property
    def nbytes(self) -> int:
        return len(self.source_utf8) + len(self.target_utf8)


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


def _encode_side(text: str, side: str, where: str, max_doc_bytes: int) -> bytes | Skip:
    if not text.strip():
        return Skip(f"empty_{side}", where)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:
        return Skip("invalid_utf8", where, f"{side}: {e.reason}")
    if len(data) > max_doc_bytes:
        return Skip("too_large", where, f"{side} {len(data)} bytes > --max-doc-bytes "
                                        f"{max_doc_bytes}")
    return data


def _to_pair(texts: tuple[str, str], where: str, max_doc_bytes: int) -> Pair | Skip:
    """Both sides checked like documents; the first bad side names the reason."""
    encoded = [_encode_side(t, side, where, max_doc_bytes)
               for t, side in zip(texts, ("source", "target"))]
    bad = next((e for e in encoded if isinstance(e, Skip)), None)
    return bad or Pair(texts[0], texts[1], encoded[0], encoded[1])


def _json_pair(obj: dict | Skip, where: str, fields: PairFields) -> tuple[str, str] | Skip:
    if isinstance(obj, Skip):
        return obj
    sides = [_field_text(obj, f, where) for f in (fields.source, fields.target)]
    return next((x for x in sides if isinstance(x, Skip)), None) or tuple(sides)


def _iter_aligned(inp: InputFile) -> Iterator[tuple[int, tuple | Skip]]:
    """Line i of the source file with line i of the target file (line ends removed; a blank
    line is an empty side). The line counts were compared before any work (count_lines)."""
    import itertools
    n = 0
    try:
        with open_binary(inp.path) as fs, open_binary(inp.target) as ft:
            for n, (a, b) in enumerate(itertools.zip_longest(fs, ft)):
                where = f"{inp.path}:{n + 1}"
                if a is None or b is None:
                    yield n, Skip("unaligned", where, f"{inp.path if a is None else inp.target}"
                                  " has no such line")
                    continue
                sides = [_decode(x.rstrip(b"\r\n"), where) for x in (a, b)]
                bad = next((x for x in sides if isinstance(x, Skip)), None)
                yield n, bad or tuple(sides)
    except Exception as e:
        if not _is_read_error(e):
            raise
        yield n + 1, _read_error(e, f"{inp.path}:{n + 2} / {inp.target}:{n + 2}")


def split_lines(text: str) -> list[str]:
    """The lines of `text` as every command means "a line" (`data shard --source-file`, txt
    input, `arrowtrain translate`): split at "\n" only, a "\r" before it belonging to the line
    end; U+2028, U+0085, form feeds and other characters str.splitlines() also splits at stay
    inside their line. A last line without a line end counts (count_lines agrees)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the text ended with a line end (or was empty)
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def decode_lines(raw: bytes, name: str) -> list[str]:
    """split_lines of UTF-8 `raw`; DataToolsError naming `name` and the line (and byte) that is
    not UTF-8."""
    try:
        return split_lines(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataToolsError(f"{name}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at "
                             f"byte {column} of the line)") from None


def count_lines(path: str) -> int:
    """Lines as `for line in file` yields them (a last line without a line end counts)."""
    n, last = 0, b"\n"
    try:
        with open_binary(path) as f:
            while chunk := f.read(1 << 20):
                n += chunk.count(b"\n")
                last = chunk[-1:]
    except Exception as e:
        if not _is_read_error(e):
            raise
        raise DataToolsError(f"{path}: cannot read: {_read_error(e, path).detail}") from None
    return n + (last != b"\n")


def aligned_inputs(sources: list[str], targets: list[str]) -> list[InputFile]:
    """--source-file/--target-file, zipped in order; every pair of files exists and has the
    same number of lines (else one DataToolsError naming each mismatch)."""
    problems = []
    if len(sources) != len(targets):
        problems.append(f"{len(sources)} --source-file but {len(targets)} --target-file: give "
                        "them in aligned pairs")
    files = []
    for a, b in zip(sources, targets):
        missing = [p for p in (a, b) if not os.path.isfile(p)]
        if missing:
            problems += [f"input {p!r} does not exist or is not a file" for p in missing]
            continue
        la, lb = count_lines(a), count_lines(b)
        if la != lb:
            problems.append(f"{a} has {la} lines but {b} has {lb}: aligned files need one "
                            "sentence per line, line i of one translating line i of the other")
            continue
        files.append(InputFile(a, os.path.getsize(a), ALIGNED, b, os.path.getsize(b)))
    if problems:
        raise DataToolsError("; ".join(problems))
    return files


def iter_pairs(inp: InputFile, fields: PairFields | None, max_doc_bytes: int
               ) -> Iterator[tuple[int, Pair | Skip]]:
    """Yield (record_index, Pair | Skip) for one input: jsonl/parquet records (`fields`) or two
    aligned text files."""
    if inp.fmt in ("jsonl", "json"):
        records = ((i, w, _json_pair(obj, w, fields))
                   for i, w, obj in _iter_objects(inp, max_doc_bytes))
    else:
        records = ((i, f"{inp.path}:row {i}" if inp.fmt == "parquet" else f"{inp.path}:{i + 1}",
                    rec) for i, rec in (_iter_aligned(inp) if inp.fmt == ALIGNED else
                                        _iter_parquet(inp.path, (fields.source, fields.target))))
    for index, where, rec in records:
        yield index, _to_pair(rec, where, max_doc_bytes) if isinstance(rec, tuple) else rec


def iter_units(inp: InputFile, text_field: str, max_doc_bytes: int,
               pairs: PairFields | None = None, pair_mode: bool = False
               ) -> Iterator[tuple[int, Doc | Pair | Skip]]:
    """Documents, or pairs when `pair_mode` (fields from `pairs`, or aligned files)."""
    if pair_mode:
        return iter_pairs(inp, pairs, max_doc_bytes)
    return iter_records(inp, text_field, max_doc_bytes)


def iter_records(inp: InputFile, text_field: str, max_doc_bytes: int
                 ) -> Iterator[tuple[int, Doc | Skip]]:
    """Yield (record_index, Doc | Skip) for one input file; empty, too large and non-UTF-8
    documents become Skips here, so every format follows the same rules."""
    if inp.fmt in ("jsonl", "json"):
        records = ((i, w, obj if isinstance(obj, Skip) else _field_text(obj, text_field, w))
                   for i, w, obj in _iter_objects(inp, max_doc_bytes))
    elif inp.fmt == "line":
        records = _iter_lines(inp.path)
    else:
        if inp.fmt == "file":
            numbered = iter([(0, _read_whole_file(inp.path, max_doc_bytes))])
        elif inp.fmt == "parquet":
            numbered = _iter_parquet(inp.path, text_field)
        else:
            numbered = _iter_paragraphs(inp.path, max_doc_bytes)
        records = ((i, inp.path if inp.fmt == "file" else f"{inp.path}:{i + 1}", rec)
                   for i, rec in numbered)
    for index, where, rec in records:
        yield index, _to_doc(rec, where, max_doc_bytes) if isinstance(rec, str) else rec


# ---- command-line options shared by train-tokenizer and shard -----------------------------

def add_input_arguments(p) -> None:
    """What to read and how to cut it into documents: the same options for train-tokenizer and
    shard (INPUT..., --format, --txt-mode, --text-field, --max-doc-bytes, --exclude)."""
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="files, folders and globs, mixed; INPUT:FORMAT sets that input's format")
    g = p.add_argument_group("input")
    g.add_argument("--format", default="auto", choices=FORMATS, help=FORMAT_HELP)
    g.add_argument("--txt-mode", default="line", choices=TXT_MODES, help=TXT_MODE_HELP)
    g.add_argument("--text-field", default="text", metavar="NAME",
                   help="JSON key / parquet column with the text")
    g.add_argument("--max-doc-bytes", default="64MB", metavar="SIZE",
                   help="skip documents larger than this")
    g.add_argument("--exclude", action="append", default=None, metavar="GLOB",
                   help=f"file/folder names to skip when walking folders; repeatable; replaces "
                        f"the default ({' '.join(DEFAULT_EXCLUDES)})")


def add_pair_arguments(p) -> None:
    g = p.add_argument_group("pairs (source -> target, for translation / data.objective seq2seq)")
    g.add_argument("--source-field", metavar="NAME",
                   help="JSON key / parquet column of the source side; with --target-field, "
                        "each jsonl/parquet record is one pair")
    g.add_argument("--target-field", metavar="NAME", help="JSON key / parquet column of the "
                   "target side")
    g.add_argument("--source-file", action="append", metavar="FILE",
                   help="a text file, one source sentence per line (.gz/.zst too); repeatable, "
                        "each with its --target-file in the same order")
    g.add_argument("--target-file", action="append", metavar="FILE",
                   help="the aligned target text file: line i translates line i of its "
                        "--source-file")


@dataclass(frozen=True)
class Inputs:
    files: list[InputFile]
    pairs: PairFields | None  # the fields of jsonl/parquet pairs (None: none or aligned only)
    pair_mode: bool  # records are pairs (the folder is a pair folder)
    walk: Walk  # what --format auto decided by content, what --exclude left out


def excludes_of(args) -> tuple[str, ...]:
    """--exclude as given, else DEFAULT_EXCLUDES."""
    return tuple(args.exclude or DEFAULT_EXCLUDES)


def resolve_inputs(args) -> Inputs:
    """The input files of train-tokenizer / shard (add_input_arguments, add_pair_arguments),
    documents or pairs, checked before any work; every problem in one DataToolsError."""
    excludes = excludes_of(args)
    fields = (args.source_field, args.target_field)
    sources, targets = args.source_file or [], args.target_file or []
    pair_mode = any(fields) or bool(sources or targets)
    problems = []
    if any(fields) and not all(fields):
        problems.append("--source-field and --target-field go together: give both")
    if pair_mode and args.text_field != "text":
        problems.append("--text-field has no meaning for pairs (use --source-field and "
                        "--target-field)")
    if pair_mode and args.inputs and not all(fields):
        problems.append("INPUT files hold pairs only with --source-field and --target-field "
                        "(or give aligned text files with --source-file/--target-file alone)")
    if not args.inputs and not sources:
        problems.append("no input: give INPUT... (files, folders, globs)"
                        + (" or --source-file/--target-file" if pair_mode else ""))
    files: list[InputFile] = []
    walk = Walk(excludes)
    try:
        files += aligned_inputs(sources, targets) if pair_mode else []
    except DataToolsError as e:
        problems.append(str(e))
    if args.inputs:
        try:
            found = expand_inputs(args.inputs, args.format, excludes, args.txt_mode, walk)
            bad = [f"{f.path} ({f.fmt})" for f in found if f.fmt not in PAIR_READERS]
            if pair_mode and bad:
                problems.append(f"pairs come from jsonl or parquet records, not {bad[0]}"
                                + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
                                + "; two aligned text files go in --source-file/--target-file")
            files = found + files
        except DataToolsError as e:
            problems.append(str(e))
    if problems:
        raise DataToolsError("; ".join(problems))
    walk.log(logging.getLogger("data_tools"))
    return Inputs(files, PairFields(*fields) if all(fields) else None, pair_mode, walk)
