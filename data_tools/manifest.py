"""manifest.json of a shard folder (format version 1, docs/design.md §8).

The key names here are a contract with `pretrain.data`: do not rename them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from data_tools import __version__
from data_tools.errors import DataToolsError

FORMAT = "arrowtrain-shards"
FORMAT_VERSION = 1
ARROWTRAIN_VERSION = __version__
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
REQUIRED_KEYS = ("format", "format_version", "arrowtrain_version", "dtype", "tokenizer", "splits",
                 "inputs", "skipped", "args", "fingerprint", "timing")
TOKENIZER_KEYS = ("file", "sha256", "vocab_size", "eos_id", "pad_id", "bos_id", "sentinel_ids")
SHARD_KEYS = ("file", "documents", "tokens", "text_bytes", "file_bytes", "sha256")


class ManifestError(DataToolsError):
    """manifest.json is missing, unreadable or not format version 1."""


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


def fingerprint(manifest: dict) -> str:
    """sha256 of canonical JSON of [format_version, dtype, tokenizer sha256, [[split, file, sha256]
    for every shard, splits in manifest order]]: identifies the token data, nothing else."""
    shards = [[split, s["file"], s["sha256"]]
              for split, info in manifest["splits"].items() for s in info["shards"]]
    key = [manifest["format_version"], manifest["dtype"], manifest["tokenizer"]["sha256"], shards]
    return hashlib.sha256(canonical_json(key)).hexdigest()


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write JSON to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_manifest(datadir: str | os.PathLike, manifest: dict) -> Path:
    """Fill in the fingerprint and write DATADIR/manifest.json atomically (always the last file)."""
    manifest["fingerprint"] = fingerprint(manifest)
    path = Path(datadir) / MANIFEST_NAME
    write_json_atomic(path, manifest)
    return path


def _structure_problems(m: dict) -> list[str]:
    problems = [f"missing key '{k}'" for k in REQUIRED_KEYS if k not in m]
    if problems:
        return problems
    if m["format"] != FORMAT:
        problems.append(f"format is {m['format']!r}, expected {FORMAT!r}")
    if m["format_version"] != FORMAT_VERSION:
        problems.append(f"format_version is {m['format_version']!r}, this code reads {FORMAT_VERSION}")
    if m["dtype"] not in ("uint16", "uint32"):
        problems.append(f"dtype is {m['dtype']!r}, expected 'uint16' or 'uint32'")
    tok = m["tokenizer"] if isinstance(m["tokenizer"], dict) else {}
    problems += [f"missing key 'tokenizer.{k}'" for k in TOKENIZER_KEYS if k not in tok]
    splits = m["splits"] if isinstance(m["splits"], dict) else {}
    for split, info in splits.items():
        shards = info.get("shards") if isinstance(info, dict) else None
        if not isinstance(shards, list):
            problems.append(f"'splits.{split}.shards' is not a list")
            continue
        for i, shard in enumerate(shards):
            missing = [k for k in SHARD_KEYS if k not in shard]
            if missing:
                problems.append(f"'splits.{split}.shards[{i}]' lacks {', '.join(missing)}")
    if "train" not in splits:
        problems.append("missing key 'splits.train'")
    return problems


def read_manifest(datadir: str | os.PathLike) -> dict:
    """Load and check DATADIR/manifest.json; ManifestError names the file and every problem."""
    path = Path(datadir) / MANIFEST_NAME
    if not path.is_file():
        hint = " (an interrupted `shard` run? re-run the same command to finish it)" \
            if (Path(datadir) / ".resume").exists() else ""
        raise ManifestError(f"{path}: not found — not a finished shard folder{hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: line {e.lineno} column {e.colno}: invalid JSON: {e.msg}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read: {e}") from e
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: top level is not a JSON object")
    problems = _structure_problems(manifest)
    if problems:
        raise ManifestError(f"{path}: " + "; ".join(problems))
    return manifest
