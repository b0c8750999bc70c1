"""Shard benchmark (issue 2): tokens/s of `python -m data_tools shard --workers 1` on one core
versus `Tokenizer.encode_batch` on the same documents in the same run (goal: ratio >= 0.9), and
the speed-up of `--workers 2`. Every measurement runs in a fresh subprocess with
RAYON_NUM_THREADS=1 set before Python starts; rounds alternate the three and the best of each
is kept (the machine may be shared). The corpus is Python stdlib source (site-packages excluded).

    python benchmarks/shard_throughput.py [--size-mb 8] [--rounds 2] [--vocab-size 8192]
    python benchmarks/shard_throughput.py --profile [--size-mb 13] [--workers 16]
    python benchmarks/shard_throughput.py --scaling DIR --size-mb 200 --workers 1   # then 16

--profile: CPU seconds of each part of the single parent process (read/parse/hash, pickling,
in-order reassembly, the shard write) against tokenizing, plus worker start-up, and the
speed-up Amdahl's law allows --workers N from them. --scaling: one `shard --workers N` run on
a corpus kept in DIR (stdlib repeated up to --size-mb), the speed-up over DIR's 1-worker run.

Prints the figures with the CPU named; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's data_tools (not an installed one) and benchmarks

from benchmarks.common import cpu_model  # noqa: E402

BASELINE = """
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
tok.encode_special_tokens = True
texts = [json.loads(line)["text"] for line in open(sys.argv[2], encoding="utf-8")]
fn = getattr(tok, sys.argv[3])
t0, c0 = time.perf_counter(), time.process_time()
encs = fn(texts, add_special_tokens=False)
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"tokens": sum(len(e) for e in encs), "seconds": dt, "cpu_s": cpu}))
"""




def one_core_env() -> dict:
    return {**os.environ, "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "true",
            "PYTHONPATH": str(REPO)}


def stdlib_texts() -> list[str]:
    """stdlib .py files (sorted, site-packages and tests excluded), non-empty, as text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py")
                   if "site-packages" not in p.parts and "test" not in p.parts)
    texts = []
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            texts.append(text)
    return texts


def make_corpus(path: Path, size_mb: float) -> int:
    """stdlib .py files as jsonl up to size_mb; beyond the stdlib's ~13 MB it repeats them,
    each copy headed `# copy K` so that every document is distinct (own split hash)."""
    texts, total, n = stdlib_texts(), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        for copy in range(10**6):
            for text in texts:
                text = f"# copy {copy}\n{text}" if copy else text
                f.write(json.dumps({"text": text}) + "\n")
                total, n = total + len(text.encode()), n + 1
                if total >= size_mb * 1e6:
                    return n
    return n


def run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, cwd=REPO, env=one_core_env(), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"benchmark step failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return r.stdout


def baseline_tps(tok: Path, corpus: Path, method: str) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second) of the encode call alone."""
    out = json.loads(run([sys.executable, "-c", BASELINE, str(tok), str(corpus), method]))
    return out["tokens"] / out["seconds"], out["tokens"] / out["cpu_s"]


def shard_tps(tok: Path, corpus: Path, out: Path, workers: int) -> tuple[float, float]:
    """The same, as the shard command measures itself (read, tokenize, hash, write, manifest;
    CPU time includes the worker processes)."""
    run([sys.executable, "-m", "data_tools", "shard", str(corpus), "--tokenizer", str(tok),
         "--out", str(out), "--workers", str(workers), "--overwrite"])
    m = json.loads((out / "manifest.json").read_text())
    tokens = sum(s["tokens"] for s in m["splits"].values())
    return tokens / m["timing"]["wall_s"], tokens / m["timing"]["cpu_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=8.0, help="corpus size (MB of text)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; best kept")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--profile", action="store_true",
                    help="instead: CPU seconds of each serial part of shard vs tokenizing")
    ap.add_argument("--scaling", metavar="DIR",
                    help="instead: one `shard --workers N` run on a corpus kept in DIR (made "
                         "on first use); reports the speed-up over DIR's --workers 1 run")
    ap.add_argument("--workers", type=int, default=16,
                    help="--scaling: the run's workers; --profile: the Amdahl projection's")
    args = ap.parse_args()
    if args.profile:
        return profile_main(args.size_mb, args.vocab_size, args.workers)
    if args.scaling:
        return scaling_main(Path(args.scaling), args.size_mb, args.vocab_size, args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        docs = make_corpus(tmp / "corpus.jsonl", args.size_mb)
        run([sys.executable, "-m", "data_tools", "train-tokenizer", str(tmp / "corpus.jsonl"),
             "--vocab-size", str(args.vocab_size), "--out", str(tmp / "tok")])
        tok = tmp / "tok" / "tokenizer.json"
        keys = ("encode_batch", "encode_batch_fast", "shard_w1", "shard_w2")
        best, best_cpu = dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 0.0)
        for r in range(args.rounds):
            for key in keys:
                if key.startswith("shard"):
                    tps, cps = shard_tps(tok, tmp / "corpus.jsonl", tmp / key, int(key[-1]))
                else:
                    tps, cps = baseline_tps(tok, tmp / "corpus.jsonl", key)
                best[key], best_cpu[key] = max(best[key], tps), max(best_cpu[key], cps)
                print(f"round {r + 1}: {key:18s} {tps:12,.0f} tokens/s wall, "
                      f"{cps:12,.0f} tokens/CPU-s", flush=True)
    report(best, best_cpu, docs, args)


def scaling_main(folder: Path, size_mb: float, vocab: int, workers: int) -> None:
    """`shard --workers N` on DIR/corpus.jsonl (size_mb, made once; the tokenizer is trained
    on its first 8 MB), RAYON_NUM_THREADS=1 per process, output DIR/wN."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus, tok = folder / "corpus.jsonl", folder / "tok" / "tokenizer.json"
    if not corpus.is_file():
        make_corpus(folder / "corpus.tmp", size_mb)
        os.replace(folder / "corpus.tmp", corpus)
    if not tok.is_file():
        make_corpus(folder / "tok_corpus.jsonl", min(size_mb, 8.0))
        run([sys.executable, "-m", "data_tools", "train-tokenizer",
             str(folder / "tok_corpus.jsonl"), "--vocab-size", str(vocab),
             "--out", str(folder / "tok")])
    tps, cps = shard_tps(tok, corpus, folder / f"w{workers}", workers)
    m = json.loads((folder / f"w{workers}" / "manifest.json").read_text())
    out = {"workers": workers, "corpus_mb": round(corpus.stat().st_size / 1e6, 1),
           "tokens": sum(s["tokens"] for s in m["splits"].values()),
           "wall_s": m["timing"]["wall_s"], "tokens_per_sec": round(tps),
           "tokens_per_cpu_sec": round(cps), "cpu": cpu_model(), "cores": usable_cores()}
    one = folder / "w1" / "manifest.json"
    if workers != 1 and one.is_file():
        m1 = json.loads(one.read_text())
        out["speedup_vs_1_worker"] = round(m1["timing"]["wall_s"] / m["timing"]["wall_s"], 2)
        out["same_bytes_as_1_worker"] = m1["fingerprint"] == m["fingerprint"]
    print(f"shard --workers {workers}: {out['tokens']:,} tokens in {out['wall_s']:.1f} s, "
          f"{tps:,.0f} tokens/s ({out['corpus_mb']} MB corpus, {out['cores']} usable cores, "
          f"{out['cpu']})" + (f"; speed-up over 1 worker {out['speedup_vs_1_worker']}x"
                              if "speedup_vs_1_worker" in out else ""))
    print(json.dumps(out))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def report(best: dict, best_cpu: dict, docs: int, args) -> None:
    ratio = best["shard_w1"] / best["encode_batch"]
    ratio_cpu = best_cpu["shard_w1"] / best_cpu["encode_batch"]
    speedup = best["shard_w2"] / best["shard_w1"]
    cpu, cores, load = cpu_model(), os.cpu_count(), os.getloadavg()[0]
    print(f"\nCPU: {cpu}, {cores} cores visible, load average {load:.1f} at the end "
          f"(GPU: not used, data_tools is CPU-only)")
    print(f"corpus: {docs} stdlib files, {args.size_mb} MB; vocab {args.vocab_size}; "
          f"best of {args.rounds} rounds")
    print(f"Tokenizer.encode_batch, 1 core:      {best['encode_batch']:12,.0f} tokens/s")
    print(f"Tokenizer.encode_batch_fast, 1 core: {best['encode_batch_fast']:12,.0f} tokens/s")
    print(f"shard --workers 1, 1 core:           {best['shard_w1']:12,.0f} tokens/s "
          f"(ratio vs encode_batch {ratio:.2f}, goal >= 0.9; "
          f"vs encode_batch_fast {best['shard_w1'] / best['encode_batch_fast']:.2f})")
    print(f"shard --workers 2:                   {best['shard_w2']:12,.0f} tokens/s "
          f"(speed-up {speedup:.2f}x over 1 worker)")
    print(f"per CPU-second (robust to other load): encode_batch {best_cpu['encode_batch']:,.0f}, "
          f"shard w1 {best_cpu['shard_w1']:,.0f} (ratio {ratio_cpu:.2f}), "
          f"shard w2 {best_cpu['shard_w2']:,.0f} tokens/CPU-s (all processes)")
    if load > 1.5:
        print(f"note: load average {load:.1f} on {cores} cores: other processes shared the CPU, "
              "so the wall-clock figures (the 2-worker speed-up most) are depressed")
    print(json.dumps({"tokens_per_sec": round(best["shard_w1"]),
                      "ratio_vs_encode_batch": round(ratio, 3),
                      "ratio_vs_encode_batch_fast": round(best["shard_w1"] / best["encode_batch_fast"], 3),
                      "encode_batch_tokens_per_sec": round(best["encode_batch"]),
                      "tokens_per_sec_2_workers": round(best["shard_w2"]),
                      "speedup_2_workers": round(speedup, 3),
                      "ratio_vs_encode_batch_cpu_time": round(ratio_cpu, 3),
                      "tokens_per_cpu_sec_2_workers": round(best_cpu["shard_w2"]),
                      "cpu": cpu, "cores": cores,
                      "load_avg_end": round(load, 2)}))


# ---- where the single parent spends its time (issue 9, item 6) ----------------------------

def _parent_side(batches, results, dtype: str) -> dict:
    """CPU seconds of the parent's share of the work around tokenizing."""
    import pickle

    from data_tools.writer import ShardWriter

    cpu = time.process_time
    back = [pickle.dumps(r, pickle.HIGHEST_PROTOCOL) for r in results]  # the workers' side
    t = cpu()
    for b in batches:
        pickle.dumps(b.texts, pickle.HIGHEST_PROTOCOL)  # texts out ...
    for data in back:
        pickle.loads(data)  # ... results back
    pickle_s = cpu() - t
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("train", "val"):
            (Path(tmp) / split).mkdir()
        writer = ShardWriter(Path(tmp), dtype, 1 << 62)
        t = cpu()
        for b, (flat, lengths) in zip(batches, results):  # shard.write_all's in-order loop
            start = 0
            docs = [what for _fi, _ri, what in b.items if isinstance(what, tuple)]  # no Skips
            for (split, nbytes), n in zip(docs, lengths):
                writer.add(split, flat[start:start + int(n)], nbytes)
                start += int(n)
        reassemble_s = cpu() - t
        t, w0 = cpu(), time.perf_counter()
        for split in ("train", "val"):
            writer.flush(split)
        write_s, write_wall_s = cpu() - t, time.perf_counter() - w0
    return {"pickle_parent_cpu_s": pickle_s, "reassemble_cpu_s": reassemble_s,
            "write_cpu_s": write_s, "write_wall_s": write_wall_s}


def _worker_start_s(tok: Path, dtype: str) -> float:
    """Wall seconds until one spawned worker (imports + tokenizer load) returns a result."""
    import multiprocessing as mp

    from data_tools.encode import encode_in_worker, init_worker

    t = time.perf_counter()
    with mp.get_context("spawn").Pool(1, initializer=init_worker,
                                      initargs=(str(tok), dtype)) as pool:
        pool.apply(encode_in_worker, (["warm up"],))
    return time.perf_counter() - t


def serial_profile(corpus: Path, tok: Path, workers: int) -> dict:
    """CPU seconds of each part of `shard` measured alone in this process (RAYON_NUM_THREADS=1
    must be set before Python starts): the parent's parts (read + parse + split hash, pickling
    texts out and results back, in-order reassembly, the final shard write) against the
    parallel part (tokenizing), plus wall-clock worker start-up. The Amdahl projection for
    `workers` counts all parent work as serial (an upper bound on it: reading overlaps with
    the workers in a real run)."""
    from argparse import Namespace

    from data_tools import shard as sh
    from data_tools.encode import Encoder

    args = Namespace(inputs=[str(corpus)], tokenizer=str(tok), format="auto", text_field="text",
                     workers=1, val_fraction=0.005, shard_size="256MB", max_doc_bytes="64MB",
                     exclude=None, strict=False, overwrite=True)
    run = sh.plan(args)
    t = time.process_time()
    batches = list(sh.read_batches(run, (0, 0)))
    read_s = time.process_time() - t
    enc = Encoder(str(tok), run.dtype)
    t = time.process_time()
    results = [enc.encode(b.texts) for b in batches]
    tokenize_s = time.process_time() - t
    parent = _parent_side(batches, results, run.dtype)
    start_s = _worker_start_s(tok, run.dtype)
    serial = (read_s + parent["pickle_parent_cpu_s"] + parent["reassemble_cpu_s"]
              + parent["write_wall_s"])
    return {"tokens": int(sum(len(f) for f, _ in results)), "batches": len(batches),
            "read_parse_hash_cpu_s": read_s, "tokenize_cpu_s": tokenize_s, **parent,
            "worker_start_wall_s": start_s, "serial_fraction": serial / (serial + tokenize_s),
            f"amdahl_speedup_{workers}": (serial + tokenize_s) /
            (serial + tokenize_s / workers + start_s),
            "pandas_imported": "pandas" in sys.modules}


def profile_main(size_mb: float, vocab: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        docs = make_corpus(tmp / "corpus.jsonl", size_mb)
        run([sys.executable, "-m", "data_tools", "train-tokenizer", str(tmp / "corpus.jsonl"),
             "--vocab-size", str(vocab), "--out", str(tmp / "tok")])
        out = run([sys.executable, __file__, "--_profile-child", str(tmp / "corpus.jsonl"),
                   str(tmp / "tok" / "tokenizer.json"), str(workers)])
    prof = json.loads(out.splitlines()[-1])
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores visible, load average "
          f"{os.getloadavg()[0]:.1f}; corpus {docs} stdlib files, {size_mb} MB")
    for k, v in prof.items():
        print(f"  {k:28s} {v:.3f}" if isinstance(v, float) else f"  {k:28s} {v}")
    print(json.dumps({"serial_profile": prof, "cpu": cpu_model()}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_profile-child":
        print(json.dumps(serial_profile(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))))
    else:
        main()
