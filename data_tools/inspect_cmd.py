"""`inspect DATADIR [--decode K]`: how the inputs were cut into documents and how the val split
was chosen; per split documents, tokens, bytes per token, document length percentiles and a
length histogram; skipped records; and K decoded documents. Pair folders: per split the pairs,
each side's tokens and length percentiles and histogram, the target/source length ratio
(overall and percentiles over pairs), and K decoded pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_tools.exit_codes import EXIT_OK
from data_tools.folder import read_manifest
from data_tools.inputs import PAIR_READER_TEXT, READER_TEXT
from data_tools.manifest import Manifest, SplitInfo
from data_tools.split import (
    USEFUL_VAL_TOKENS,
    USEFUL_VAL_WINDOWS,
    describe_choice,
    more_val_hint,
    too_small,
)
from data_tools.walk import by_extension, by_reason, extension

PERCENTILES = (0, 10, 50, 90, 99, 100)


def add_arguments(p) -> None:
    p.add_argument("datadir", metavar="DATADIR",
                   help="a folder written by `shard`, or s3://BUCKET/PREFIX (counts and sizes "
                        "from the manifest and the bucket listing; no length histograms)")
    p.add_argument("--decode", type=int, default=0, metavar="K",
                   help="print the first K documents of the train split, decoded")
    p.add_argument("--max-chars", type=int, default=1500,
                   help="cut each decoded document after this many characters (0: whole)")
    p.add_argument("--json", action="store_true", help="print the statistics as one JSON object")


def open_shard(path: Path, column: str = "tokens") -> pa.Array:
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_file(src).read_all().column(column).combine_chunks()


def doc_lengths(datadir: Path, info: SplitInfo, column: str = "tokens") -> np.ndarray:
    """Tokens per document (or per side of each pair) over all shards of a split, from the
    list offsets only."""
    parts = [np.diff(open_shard(datadir / s.file, column).offsets.to_numpy())
             for s in info.shards]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def length_stats(lengths: np.ndarray) -> dict:
    """Percentiles and a log2 histogram of lengths (nothing when there are none)."""
    if not len(lengths):
        return {}
    edges = 2 ** np.arange(0, int(np.log2(max(lengths.max(), 1))) + 2)
    hist, _ = np.histogram(lengths, bins=np.concatenate([[0], edges]))
    return {"length_percentiles": {f"p{q}": int(np.percentile(lengths, q, method="lower"))
                                   for q in PERCENTILES},
            "length_histogram": {f"<{int(e)}": int(h) for e, h in zip(edges, hist) if h}}


def split_stats(datadir: Path, info: SplitInfo, pairs: bool = False,
                lengths: bool = True) -> dict:
    stats = {"documents": info.documents, "tokens": info.tokens, "text_bytes": info.text_bytes,
             "shards": len(info.shards),
             "bytes_per_token": round(info.text_bytes / info.tokens, 4) if info.tokens else None}
    if not lengths:
        if pairs:
            stats["source"] = {"tokens": info.source_tokens}
            stats["target"] = {"tokens": info.target_tokens}
        return stats
    if not pairs:
        return stats | length_stats(doc_lengths(datadir, info))
    src, tgt = (doc_lengths(datadir, info, c) for c in ("source", "target"))
    stats["source"] = {"tokens": info.source_tokens, **length_stats(src)}
    stats["target"] = {"tokens": info.target_tokens, **length_stats(tgt)}
    if len(src):
        ratio = tgt / np.maximum(src, 1)
        stats["target_source_ratio"] = {
            "overall": round(info.target_tokens / max(info.source_tokens, 1), 4),
            **{f"p{q}": round(float(np.percentile(ratio, q, method="lower")), 4)
               for q in PERCENTILES}}
    return stats


def documents_cut(m: Manifest) -> list[dict]:
    """How the inputs were cut into documents: files per reader (and their extensions), in
    first-seen order."""
    groups: dict[str, dict[str, int]] = {}
    for inp in m.inputs:
        exts = groups.setdefault(inp.format or "unrecorded", {})
        exts[extension(inp.path)] = exts.get(extension(inp.path), 0) + 1
    text = {**READER_TEXT, **(PAIR_READER_TEXT if m.is_pairs else {}),
            "unrecorded": "not recorded (shards written before arrowtrain recorded it; "
                          f"--format was {m.args.get('format', '?')})"}
    return [{"format": f, "files": sum(exts.values()), "documents_are": text.get(f, f),
             "extensions": dict(sorted(exts.items()))} for f, exts in groups.items()]


def val_choice(m: Manifest) -> dict:
    tokens = m.splits["val"].tokens
    if m.is_pairs:  # a pair is one sample: judged by pairs, not by windows of tokens
        pairs = m.splits["val"].documents
        return {"chosen_by": describe_choice(m.args, "pair"), "tokens": tokens, "pairs": pairs,
                "useful_min_pairs": USEFUL_VAL_WINDOWS, "too_small": pairs < USEFUL_VAL_WINDOWS}
    return {"chosen_by": describe_choice(m.args), "tokens": tokens,
            "useful_min_tokens": USEFUL_VAL_TOKENS, "too_small": too_small(tokens)}


def special_tokens(datadir: Path, m: Manifest) -> dict:
    """The end-of-document token the loader adds and the BOS each document starts with (when
    the folder stores one), by id and by name (None when the tokenizer copy cannot be read)."""
    from tokenizers import Tokenizer
    try:
        tok = Tokenizer.from_file(str(datadir / m.tokenizer.file))
    except Exception:  # a missing or corrupt copy: validate names it; ids still tell something
        tok = None
    t = m.tokenizer

    def name(i: int | None) -> str | None:
        return None if i is None or tok is None else tok.id_to_token(i)

    return {"eos_id": t.eos_id, "eos": name(t.eos_id), "bos_id": t.bos_id, "bos": name(t.bos_id),
            "bos_prepended": bool(t.bos_prepended)}


def decoded(datadir: Path, m: Manifest, k: int) -> list[list[tuple[int, str]]]:
    """The first k train rows, each as [(tokens, text)] per column (pairs: source, target)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(datadir / m.tokenizer.file))
    out = []
    for _, s in m.shards("train"):
        cols = [open_shard(datadir / s.file, c) for c in m.columns]
        for i in range(min(len(cols[0]), k - len(out))):
            ids = [c[i].values.to_numpy().tolist() for c in cols]
            out.append([(len(x), tok.decode(x, skip_special_tokens=False)) for x in ids])
        if len(out) >= k:
            break
    return out


def remote_report(url: str) -> tuple[dict, Path | None]:
    """inspect of s3://BUCKET/PREFIX: the manifest's counts and the stored objects' sizes (one
    LIST), without reading any shard."""
    from data_tools.remote import S3Path, shared_remote
    from data_tools.remote_folder import read_remote_manifest

    prefix = S3Path.parse(url)
    m = read_remote_manifest(prefix)
    objects = shared_remote().list(prefix)
    splits = {}
    for name, info in m.splits.items():
        stats = split_stats(Path("."), info, m.is_pairs, lengths=False)
        stored = [objects.get(s.file) for s in info.shards]
        stats["stored_bytes"] = sum(b for b in stored if b is not None)
        stats["manifest_bytes"] = sum(s.file_bytes for s in info.shards)
        stats["missing_shards"] = [s.file for s, b in zip(info.shards, stored) if b is None]
        splits[name] = stats
    return {"datadir": url, "fingerprint": m.fingerprint, "dtype": m.dtype,
            "vocab_size": m.tokenizer.vocab_size, "kind": "pairs" if m.is_pairs else
            "documents", "skipped": m.skipped, "documents_cut": documents_cut(m),
            "val_split": val_choice(m), "splits": splits,
            "objects": len(objects), "object_bytes": sum(objects.values())}, m


def main(args) -> int:
    if args.datadir.startswith("s3://"):
        report, m = remote_report(args.datadir)
        if args.json:
            print(json.dumps(report))
        else:
            print_report(report)
            print(f"stored: {report['objects']} objects, {report['object_bytes']:,} bytes")
        if args.decode > 0:
            print("(--decode: copy the folder locally first: `data copy SRC DIR`)")
        return 0
    datadir = Path(args.datadir)
    m = read_manifest(datadir)
    report = {"datadir": str(datadir), "fingerprint": m.fingerprint, "dtype": m.dtype,
              "vocab_size": m.tokenizer.vocab_size, "kind": "pairs" if m.is_pairs else
              "documents", "special_tokens": special_tokens(datadir, m), "skipped": m.skipped, "skipped_files": m.skipped_files or {},
              "documents_cut": documents_cut(m),
              "val_split": val_choice(m),
              "splits": {name: split_stats(datadir, info, m.is_pairs)
                         for name, info in m.splits.items()}}
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    for i, row in enumerate(decoded(datadir, m, args.decode) if args.decode > 0 else []):
        print_decoded(i, row, args.max_chars)
    return EXIT_OK


def _cut(text: str, max_chars: int) -> str:
    if max_chars and len(text) > max_chars:
        return text[:max_chars] + f"\n[... {len(text) - max_chars} more characters]"
    return text


def print_decoded(i: int, row: list[tuple[int, str]], max_chars: int) -> None:
    if len(row) == 1:
        (n, text), = row
        print(f"\n--- train document {i} ({n} tokens, {len(text)} characters) ---")
        print(_cut(text, max_chars))
        return
    (ns, src), (nt, tgt) = row
    print(f"\n--- train pair {i} ({ns} source tokens, {nt} target tokens) ---")
    print(f"source: {_cut(src, max_chars)}\ntarget: {_cut(tgt, max_chars)}")


def print_report(r: dict) -> None:
    print(f"{r['datadir']}: dtype {r['dtype']}, vocab {r['vocab_size']}, "
          f"fingerprint {r['fingerprint'][:16]}...")
    sp = r["special_tokens"]
    print(f"end of document: {sp['eos']} (id {sp['eos_id']}, added by the loader); "
          + (f"each document starts with {sp['bos']} (id {sp['bos_id']})"
             if sp["bos_prepended"] else "documents start with no BOS"))
    for g in r["documents_cut"]:
        print(f"{r['kind']}: {g['files']} input file{'s' * (g['files'] != 1)} ({g['format']}): "
              f"{g['documents_are']} ({by_extension(g['extensions'])})")
    if any(g["format"] == "line" for g in r["documents_cut"]):
        print("  (a .txt file that is one document needs --txt-mode file, or INPUT:file)")
    v = r["val_split"]
    if "pairs" in v:
        print(f"val split: {v['pairs']:,} pairs, {v['tokens']:,} tokens, chosen by "
              f"{v['chosen_by']}" + (f" -- fewer than {v['useful_min_pairs']} pairs, too few "
                                     "for a stable validation loss or BLEU (re-shard with a "
                                     "larger --val-fraction)" if v["too_small"] else ""))
    else:
        print(f"val split: {v['tokens']:,} tokens, chosen by {v['chosen_by']}"
              + (f" -- fewer than {v['useful_min_tokens']:,} tokens, too few for a stable "
                 f"validation loss; {more_val_hint(v['useful_min_tokens'])}"
                 if v["too_small"] else ""))
    print("skipped: " + (", ".join(f"{k} {v}" for k, v in r["skipped"].items()) or "none"))
    if r["skipped_files"]:
        print(f"files skipped by content: {by_reason(r['skipped_files'])} (not UTF-8 text; "
              "--format auto reads other files of unknown extension as one document each)")
    unit = "pairs" if r["kind"] == "pairs" else "documents"
    for name, s in r["splits"].items():
        print(f"{name}: {s['documents']:,} {unit}, {s['tokens']:,} tokens, "
              f"{s['text_bytes']:,} text bytes, {s['bytes_per_token']} bytes/token, "
              f"{s['shards']} shards")
        if "stored_bytes" in s:
            missing = s["missing_shards"]
            print(f"  stored: {s['stored_bytes']:,} of {s['manifest_bytes']:,} shard bytes"
                  + (f"; MISSING {len(missing)}: {', '.join(missing[:5])}" if missing else ""))
        for side in ("source", "target") if unit == "pairs" else ():
            print(f"  {side}: {s[side]['tokens']:,} tokens")
            _print_lengths(s[side], f"{side} tokens per pair", "    ")
        if "target_source_ratio" in s:
            ratio = s["target_source_ratio"]
            print(f"  target/source length ratio: {ratio['overall']} overall; per pair "
                  + ", ".join(f"{k} {v}" for k, v in ratio.items() if k != "overall"))
        _print_lengths(s, "tokens per document", "  ")


def _print_lengths(s: dict, what: str, indent: str) -> None:
    if "length_percentiles" in s:
        print(f"{indent}{what}: " + ", ".join(
            f"{k} {v:,}" for k, v in s["length_percentiles"].items()))
        print(f"{indent}histogram: " + ", ".join(f"{k}: {v}"
                                                 for k, v in s["length_histogram"].items()))
