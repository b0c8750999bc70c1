"""`inspect DATADIR [--decode K]`: how the inputs were cut into documents and how the val split
was chosen; per split documents, tokens, bytes per token, document length percentiles and a
length histogram; skipped records; and K decoded documents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_tools.inputs import READER_TEXT
from data_tools.manifest import Manifest, SplitInfo, read_manifest
from data_tools.split import USEFUL_VAL_TOKENS, describe_choice, too_small

PERCENTILES = (0, 10, 50, 90, 99, 100)


def add_arguments(p) -> None:
    p.add_argument("datadir", metavar="DATADIR", help="a folder written by `shard`")
    p.add_argument("--decode", type=int, default=0, metavar="K",
                   help="print the first K documents of the train split, decoded")
    p.add_argument("--max-chars", type=int, default=1500,
                   help="cut each decoded document after this many characters (0: whole)")
    p.add_argument("--json", action="store_true", help="print the statistics as one JSON object")


def open_shard(path: Path) -> pa.Array:
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_file(src).read_all().column("tokens").combine_chunks()


def doc_lengths(datadir: Path, info: SplitInfo) -> np.ndarray:
    """Tokens per document over all shards of a split, from the list offsets only."""
    parts = [np.diff(open_shard(datadir / s.file).offsets.to_numpy()) for s in info.shards]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def split_stats(datadir: Path, info: SplitInfo) -> dict:
    lengths = doc_lengths(datadir, info)
    stats = {"documents": info.documents, "tokens": info.tokens, "text_bytes": info.text_bytes,
             "shards": len(info.shards),
             "bytes_per_token": round(info.text_bytes / info.tokens, 4) if info.tokens else None}
    if len(lengths):
        stats["length_percentiles"] = {f"p{q}": int(np.percentile(lengths, q, method="lower"))
                                       for q in PERCENTILES}
        edges = 2 ** np.arange(0, int(np.log2(max(lengths.max(), 1))) + 2)
        hist, _ = np.histogram(lengths, bins=np.concatenate([[0], edges]))
        stats["length_histogram"] = {f"<{int(e)}": int(h) for e, h in zip(edges, hist) if h}
    return stats


def documents_cut(m: Manifest) -> list[dict]:
    """How the inputs were cut into documents: files per reader, in first-seen order."""
    groups: dict[str, int] = {}
    for inp in m.inputs:
        groups[inp.format or "unrecorded"] = groups.get(inp.format or "unrecorded", 0) + 1
    text = {**READER_TEXT, "unrecorded": "not recorded (shards written before arrowtrain "
            f"recorded it; --format was {m.args.get('format', '?')})"}
    return [{"format": f, "files": n, "documents_are": text.get(f, f)} for f, n in groups.items()]


def val_choice(m: Manifest) -> dict:
    tokens = m.splits["val"].tokens
    return {"chosen_by": describe_choice(m.args), "tokens": tokens,
            "useful_min_tokens": USEFUL_VAL_TOKENS, "too_small": too_small(tokens)}


def decoded(datadir: Path, m: Manifest, k: int) -> list[tuple[int, str]]:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(datadir / m.tokenizer.file))
    out = []
    for _, s in m.shards("train"):
        col = open_shard(datadir / s.file)
        for i in range(min(len(col), k - len(out))):
            ids = col[i].values.to_numpy().tolist()
            out.append((len(ids), tok.decode(ids, skip_special_tokens=False)))
        if len(out) >= k:
            break
    return out


def main(args) -> int:
    datadir = Path(args.datadir)
    m = read_manifest(datadir)
    report = {"datadir": str(datadir), "fingerprint": m.fingerprint, "dtype": m.dtype,
              "vocab_size": m.tokenizer.vocab_size, "skipped": m.skipped,
              "documents_cut": documents_cut(m), "val_split": val_choice(m),
              "splits": {name: split_stats(datadir, info) for name, info in m.splits.items()}}
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    for i, (n, text) in enumerate(decoded(datadir, m, args.decode) if args.decode > 0 else []):
        cut = args.max_chars and len(text) > args.max_chars
        print(f"\n--- train document {i} ({n} tokens, {len(text)} characters) ---")
        print(text[: args.max_chars] + f"\n[... {len(text) - args.max_chars} more characters]"
              if cut else text)
    return 0


def print_report(r: dict) -> None:
    print(f"{r['datadir']}: dtype {r['dtype']}, vocab {r['vocab_size']}, "
          f"fingerprint {r['fingerprint'][:16]}...")
    for g in r["documents_cut"]:
        print(f"documents: {g['files']} input file{'s' * (g['files'] != 1)} ({g['format']}): "
              f"{g['documents_are']}")
    if any(g["format"] == "line" for g in r["documents_cut"]):
        print("  (a .txt file that is one document needs --txt-mode file, or INPUT:file)")
    v = r["val_split"]
    print(f"val split: {v['tokens']:,} tokens, chosen by {v['chosen_by']}"
          + (f" -- fewer than {v['useful_min_tokens']:,} tokens, too few for a stable "
             "validation loss (re-shard with --val-tokens)" if v["too_small"] else ""))
    print("skipped: " + (", ".join(f"{k} {v}" for k, v in r["skipped"].items()) or "none"))
    for name, s in r["splits"].items():
        print(f"{name}: {s['documents']:,} documents, {s['tokens']:,} tokens, "
              f"{s['text_bytes']:,} text bytes, {s['bytes_per_token']} bytes/token, "
              f"{s['shards']} shards")
        if "length_percentiles" in s:
            print("  tokens per document: " + ", ".join(
                f"{k} {v:,}" for k, v in s["length_percentiles"].items()))
            print("  histogram: " + ", ".join(f"{k}: {v}" for k, v in s["length_histogram"].items()))
