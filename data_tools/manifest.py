"""manifest.json of a shard folder (format version 1, docs/design.md §8) as a typed model.

`Manifest` is the one reader and writer of that contract: `data_tools shard` builds one, the
loader (`pretrain.data`) and `pretrain.train.stats` read one. Unknown keys, missing keys and
wrong types are refused with one `ManifestError` naming the file and every bad key.
The key names are a contract with `pretrain.data`: do not rename them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)

from data_tools import __version__
from data_tools.atomic import write_json_atomic
from data_tools.errors import DataToolsError

FORMAT = "arrowtrain-shards"
FORMAT_VERSION = 1
ARROWTRAIN_VERSION = __version__
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
DTYPE_LIMITS = {"uint16": 1 << 16, "uint32": 1 << 32}  # ids must be < limit
PAIR_COLUMNS = ("source", "target")

Count = Annotated[int, Field(ge=0)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _inside_folder(path: str) -> str:
    """A file of the shard folder: a relative POSIX path whose every part is a plain name (no
    `..`, `.`, empty part, backslash or control character), so DATADIR / path never leaves
    DATADIR however the manifest was edited (the fingerprint can be recomputed by anyone)."""
    parts = path.split("/")
    if (path.startswith("/") or "\\" in path or any(ord(c) < 32 for c in path)
            or any(p in ("", ".", "..") for p in parts)):
        raise ValueError(f"must name a file inside the shard folder, as a relative path of "
                         f"plain names (like 'train/00000.arrow'), got {path!r}")
    return path


FolderFile = Annotated[str, AfterValidator(_inside_folder)]


class ManifestError(DataToolsError):
    """manifest.json is missing, unreadable, not format version 1 or not well-formed."""


class _Strict(BaseModel):
    """Unknown keys are errors; no silent type coercion ("5" is not 5)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _OmitNone(_Strict):
    """Optional keys added after format version 1 was fixed are left out when unset, so folders
    without them read, and write, exactly as before."""

    _optional: tuple[str, ...] = ()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler):
        out = handler(self)
        for key in self._optional:
            if out.get(key) is None:
                out.pop(key, None)
        return out


class ShardEntry(_OmitNone):
    file: FolderFile  # relative to the shard folder, e.g. "train/00000.arrow"
    documents: Count  # rows: documents, or pairs in a pair folder
    tokens: Count  # all tokens of the file (pairs: source + target)
    text_bytes: Count
    file_bytes: Count
    sha256: Sha256
    # pair folders only: the tokens of each side (source_tokens + target_tokens = tokens)
    source_tokens: Count | None = None
    target_tokens: Count | None = None
    _optional = ("source_tokens", "target_tokens")


class SplitInfo(_OmitNone):
    documents: Count
    tokens: Count
    text_bytes: Count
    shards: list[ShardEntry]
    source_tokens: Count | None = None
    target_tokens: Count | None = None
    _optional = ("source_tokens", "target_tokens")


class TokenizerInfo(_OmitNone):
    file: FolderFile
    sha256: Sha256
    vocab_size: Annotated[int, Field(gt=0)]
    eos_id: Count
    pad_id: Count
    bos_id: Count | None
    sentinel_ids: list[Count]  # <extra_id_0>, <extra_id_1>, ... in that order
    # true: every stored document starts with bos_id (the tokenizer's configuration adds one,
    # or --bos-token; data_tools.specials); absent: documents start with no BOS
    bos_prepended: Literal[True] | None = None
    _optional = ("bos_prepended",)

    @model_validator(mode="after")
    def _ids_below_vocab(self) -> TokenizerInfo:
        if self.bos_prepended and self.bos_id is None:
            raise ValueError("bos_prepended needs a bos_id")
        ids = {"eos_id": self.eos_id, "pad_id": self.pad_id, "bos_id": self.bos_id,
               **{f"sentinel_ids[{i}]": s for i, s in enumerate(self.sentinel_ids)}}
        bad = [f"{k} {v}" for k, v in ids.items() if v is not None and v >= self.vocab_size]
        if bad:
            raise ValueError(f"{', '.join(bad[:3])} not below vocab_size {self.vocab_size}")
        return self


class InputEntry(_OmitNone):
    path: str
    size: Count
    # how documents were cut from this file (data_tools.inputs.READERS; "source" / "target"
    # for the two sides of aligned text files); absent in folders written before it was recorded
    format: str | None = None
    _optional = ("format",)


class Manifest(_OmitNone):
    format: Literal["arrowtrain-shards"]
    format_version: Literal[1]
    arrowtrain_version: str
    dtype: Literal["uint16", "uint32"]
    tokenizer: TokenizerInfo
    splits: dict[Literal["train", "val"], SplitInfo]
    inputs: list[InputEntry]
    skipped: dict[str, Count]  # records (and files) skipped, by reason
    # files `--format auto` left out by content (data_tools.walk), by reason then extension:
    # {"binary": {".png": 2}}; their counts are in `skipped` too. Absent when none.
    skipped_files: dict[str, dict[str, Count]] | None = None
    args: dict[str, Any]  # the shard command's arguments (not --workers, not --overwrite)
    fingerprint: str
    timing: dict[str, Any]  # the only key that may differ between identical runs
    # "documents": one column `tokens` (absent: folders written before pairs existed);
    # "pairs": columns `source` and `target`, one aligned pair per row (data_tools shard
    # --source-field/--target-field or --source-file/--target-file)
    kind: Literal["documents", "pairs"] | None = None
    _optional = ("kind", "skipped_files")

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"missing key {', '.join(f'splits.{s}' for s in missing)}")
        if self.tokenizer.vocab_size > DTYPE_LIMITS[self.dtype]:
            raise ValueError(f"tokenizer.vocab_size {self.tokenizer.vocab_size} does not fit "
                             f"dtype {self.dtype}")
        if self.kind == "documents":
            self.kind = None  # the default, written as before (no key)
        pairs = self.is_pairs
        for where, entry in self._counted():
            if pairs != (entry.source_tokens is not None and entry.target_tokens is not None):
                raise ValueError(f"{where}: keys 'source_tokens' and 'target_tokens' belong to "
                                 "every split and shard of a pair folder (kind 'pairs') and to "
                                 "no other")
        return self

    def _counted(self) -> Iterator[tuple[str, SplitInfo | ShardEntry]]:
        for name, info in self.splits.items():
            yield f"splits.{name}", info
            for i, s in enumerate(info.shards):
                yield f"splits.{name}.shards[{i}]", s

    @property
    def is_pairs(self) -> bool:
        return self.kind == "pairs"

    @property
    def columns(self) -> tuple[str, ...]:
        """The token columns of every shard: ("tokens",) or ("source", "target")."""
        return PAIR_COLUMNS if self.is_pairs else ("tokens",)

    # ---- reading -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, obj: Any, where: str | os.PathLike) -> Manifest:
        """Check and type a parsed manifest; ManifestError names `where` and every bad key."""
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: top level is not a JSON object")
        if obj.get("format") != FORMAT:  # another file entirely: its other keys mean nothing
            raise ManifestError(f"{where}: key 'format' is {obj.get('format')!r}, expected "
                                f"{FORMAT!r} (not a shard folder manifest)")
        if obj.get("format_version") != FORMAT_VERSION:
            raise ManifestError(f"{where}: key 'format_version' is {obj.get('format_version')!r}"
                                f", this code reads {FORMAT_VERSION}")
        try:
            return cls.model_validate(obj)
        except ValidationError as e:
            raise ManifestError(f"{where}: " + "; ".join(_describe(err) for err in e.errors())
                                ) from None

    @classmethod
    def read(cls, datadir: str | os.PathLike) -> Manifest:
        path = Path(datadir) / MANIFEST_NAME
        if not path.is_file():
            hint = " (an interrupted `shard` run? re-run the same command to finish it)" \
                if (Path(datadir) / ".resume").exists() else ""
            raise ManifestError(f"{path}: not found — not a finished shard folder{hint}")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}: line {e.lineno} column {e.colno}: invalid JSON: "
                                f"{e.msg}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ManifestError(f"{path}: cannot read: {e}") from None
        return cls.from_dict(obj, path)

    @classmethod
    def new(cls, *, tokenizer: TokenizerInfo, dtype: str, shards: dict[str, list[ShardEntry]],
            inputs: list, skipped: dict, args: dict, timing: dict,
            pairs: bool = False, skipped_files: dict | None = None) -> Manifest:
        """A manifest for finished shards (split totals summed here; fingerprint on write)."""
        keys = ("documents", "tokens", "text_bytes") + (
            ("source_tokens", "target_tokens") if pairs else ())
        splits = {name: SplitInfo(shards=list(entries),
                                  **{k: sum(getattr(s, k) for s in entries) for k in keys})
                  for name, entries in shards.items()}
        return cls.model_validate({
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "arrowtrain_version": ARROWTRAIN_VERSION, "dtype": dtype, "tokenizer": tokenizer,
            "splits": splits, "inputs": inputs, "skipped": skipped,
            "skipped_files": skipped_files, "args": args, "fingerprint": "", "timing": timing,
            "kind": "pairs" if pairs else None})

    # ---- contents ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def shards(self, split: str | None = None) -> Iterator[tuple[str, ShardEntry]]:
        """(split, entry) of every shard, splits in manifest order."""
        for name, info in self.splits.items():
            if split is None or name == split:
                for entry in info.shards:
                    yield name, entry

    def compute_fingerprint(self) -> str:
        """sha256 of canonical JSON of [format_version, dtype, tokenizer sha256, [[split, file,
        sha256] for every shard, splits in manifest order]]: identifies the token data only."""
        shards = [[split, s.file, s.sha256] for split, s in self.shards()]
        key = [self.format_version, self.dtype, self.tokenizer.sha256, shards]
        return hashlib.sha256(canonical_json(key)).hexdigest()

    def inconsistencies(self) -> list[str]:
        """Keys that disagree with each other: the fingerprint, and per-split sums."""
        problems = []
        if self.fingerprint != self.compute_fingerprint():
            problems.append("key 'fingerprint' does not match its shard list (edited by hand?)")
        keys = ("documents", "tokens", "text_bytes") + (
            ("source_tokens", "target_tokens") if self.is_pairs else ())
        for split, info in self.splits.items():
            for key in keys:
                total = sum(getattr(s, key) for s in info.shards)
                if total != getattr(info, key):
                    problems.append(f"key 'splits.{split}.{key}' is {getattr(info, key)}, its "
                                    f"shards sum to {total}")
        if self.is_pairs:
            problems += [f"key '{where}.tokens' is {e.tokens}, not source_tokens + target_tokens "
                         f"({e.source_tokens} + {e.target_tokens})"
                         for where, e in self._counted()
                         if e.tokens != e.source_tokens + e.target_tokens]
        return problems

    def write(self, datadir: str | os.PathLike) -> Path:
        """Fill in the fingerprint and write DATADIR/manifest.json atomically (the last file)."""
        self.fingerprint = self.compute_fingerprint()
        path = Path(datadir) / MANIFEST_NAME
        write_json_atomic(path, self.to_dict())
        return path


def _describe(err: dict) -> str:
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    if err["type"] == "missing":
        return f"missing key '{key}'"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error":  # from a validator above: the message says it all
        return f"key '{key}': {msg}" if key else msg
    return f"key '{key}': {msg} (got {json.dumps(err['input'], default=str)[:60]})"


def dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65535 else "uint32"


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def fingerprint(manifest: Manifest) -> str:
    return manifest.compute_fingerprint()


def read_manifest(datadir: str | os.PathLike) -> Manifest:
    """Load and check a local DATADIR/manifest.json; ManifestError names the file and every
    problem. (data_tools.folder.read_manifest also reads s3:// folders.)"""
    return Manifest.read(datadir)


def write_manifest(datadir: str | os.PathLike, manifest: Manifest) -> Path:
    return manifest.write(datadir)
