"""`inspect DATADIR [--decode K]`: documents, tokens, bytes per token, document length
percentiles and a length histogram per split, skipped records, and K decoded documents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_tools.manifest import read_manifest

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


def doc_lengths(datadir: Path, shards: list[dict]) -> np.ndarray:
    """Tokens per document over all shards of a split, from the list offsets only."""
    parts = [np.diff(open_shard(datadir / s["file"]).offsets.to_numpy()) for s in shards]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def split_stats(datadir: Path, info: dict) -> dict:
    lengths = doc_lengths(datadir, info["shards"])
    stats = {"documents": info["documents"], "tokens": info["tokens"],
             "text_bytes": info["text_bytes"], "shards": len(info["shards"]),
             "bytes_per_token": round(info["text_bytes"] / info["tokens"], 4) if info["tokens"] else None}
    if len(lengths):
        stats["length_percentiles"] = {f"p{q}": int(np.percentile(lengths, q, method="lower"))
                                       for q in PERCENTILES}
        edges = 2 ** np.arange(0, int(np.log2(max(lengths.max(), 1))) + 2)
        hist, _ = np.histogram(lengths, bins=np.concatenate([[0], edges]))
        stats["length_histogram"] = {f"<{int(e)}": int(h) for e, h in zip(edges, hist) if h}
    return stats


def decoded(datadir: Path, m: dict, k: int) -> list[tuple[int, str]]:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(datadir / m["tokenizer"]["file"]))
    out = []
    for s in m["splits"]["train"]["shards"]:
        col = open_shard(datadir / s["file"])
        for i in range(min(len(col), k - len(out))):
            ids = col[i].values.to_numpy().tolist()
            out.append((len(ids), tok.decode(ids, skip_special_tokens=False)))
        if len(out) >= k:
            break
    return out


def main(args) -> int:
    datadir = Path(args.datadir)
    m = read_manifest(datadir)
    report = {"datadir": str(datadir), "fingerprint": m["fingerprint"], "dtype": m["dtype"],
              "vocab_size": m["tokenizer"]["vocab_size"], "skipped": m["skipped"],
              "splits": {name: split_stats(datadir, info) for name, info in m["splits"].items()}}
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
    print("skipped: " + (", ".join(f"{k} {v}" for k, v in r["skipped"].items()) or "none"))
    for name, s in r["splits"].items():
        print(f"{name}: {s['documents']:,} documents, {s['tokens']:,} tokens, "
              f"{s['text_bytes']:,} text bytes, {s['bytes_per_token']} bytes/token, "
              f"{s['shards']} shards")
        if "length_percentiles" in s:
            print("  tokens per document: " + ", ".join(
                f"{k} {v:,}" for k, v in s["length_percentiles"].items()))
            print("  histogram: " + ", ".join(f"{k}: {v}" for k, v in s["length_histogram"].items()))
