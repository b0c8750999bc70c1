"""`make demo-translate`: the 2017 paper's own task, end to end, on a synthetic language pair.

1. a word-by-word dictionary with reordering (arrowtrain/demos/translate_task.py: 6000
   training pairs, 500 held-out test pairs whose sentences never occur in training), a BPE
   tokenizer learnt from both sides and a pair folder, into demo/translate/ (reused when valid);
2. `launch local --config configs/translate-tiny.yaml` (post-LN Transformer, shared embeddings,
   label smoothing 0.1, inverse-sqrt warmup) on every GPU, else on 2 CPU ranks;
3. `arrowtrain translate` (beam 4, length penalty 0.6) on the held-out sentences:
   exact-match sentences and sacreBLEU against the references, a few examples, and
   `arrowtrain attention` maps for one of them.

Re-running resumes the run from its last checkpoint (a finished run only reports)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from arrowtrain.demos.demo import data_tools, default_nproc, run
from launch.common import REPO
from pretrain.exit_codes import EXIT_OK

DEMO_DIR = REPO / "demo" / "translate"
VOCAB_SIZE = 512
TRAIN_PAIRS, TEST_PAIRS = 6000, 500
FIELDS = ["--source-field", "src", "--target-field", "tgt"]


def banner(step: int, text: str, t0: float) -> None:
    print(f"\n=== [demo-translate {step}/3, {time.monotonic() - t0:5.0f} s] {text}", flush=True)


def prepare_data(root: Path, train: int = TRAIN_PAIRS, test: int = TEST_PAIRS) -> Path:
    """Task files, tokenizer and pair folder under root (the folder reused when valid)."""
    from arrowtrain.demos.translate_task import make_task

    data = root / "data"
    if (data / "manifest.json").is_file() and data_tools("validate", str(data), check=False) == 0:
        print(f"{data} is valid: reusing it")
    else:
        paths = make_task(root / "task", train, test)
        data_tools("train-tokenizer", str(paths["pairs"]), *FIELDS, "--vocab-size",
                   str(VOCAB_SIZE), "--out", str(root / "tokenizer"))
        data_tools("shard", str(paths["pairs"]), *FIELDS, "--tokenizer",
                   str(root / "tokenizer" / "tokenizer.json"), "--out", str(data),
                   "--val-fraction", "0.05")
    data_tools("inspect", str(data), "--decode", "2")
    return data


def exact_match(hyps: list[str], refs: list[str]) -> float:
    """Share of sentences translated exactly (whitespace at the ends ignored)."""
    return sum(h.strip() == r.strip() for h, r in zip(hyps, refs)) / max(1, len(refs))


def report(run_dir: Path, task: Path, beam: int) -> dict:
    import sacrebleu

    hyp_file = run_dir / "test.hyp"
    code = run([sys.executable, "-m", "arrowtrain.commands.translate", str(run_dir), "--input",
                str(task / "test.src"), "--output", str(hyp_file), "--beam", str(beam)])
    if code != 0:
        raise SystemExit(f"demo-translate: arrowtrain translate failed with exit code {code}")
    srcs = (task / "test.src").read_text().splitlines()
    refs = (task / "test.tgt").read_text().splitlines()
    hyps = hyp_file.read_text().splitlines()
    result = {"test_pairs": len(refs), "exact_match": exact_match(hyps, refs),
              "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score}
    for s, h, r in list(zip(srcs, hyps, refs))[:3]:
        print(f"  source:    {s}\n  output:    {h}\n  reference: {r}"
              f"  [{'exact' if h.strip() == r.strip() else 'differs'}]\n")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    val = [r for r in rows if "val_loss" in r]
    if val:
        result["val_loss"], result["val_bleu"] = val[-1]["val_loss"], val[-1].get("val_bleu")
    print(f"held-out test ({len(refs)} sentences never seen in training), beam {beam}: "
          f"exact match {result['exact_match']:.1%}, sacreBLEU {result['bleu']:.1f}")
    run([sys.executable, "-m", "arrowtrain.commands.attention", str(run_dir), "--text", srcs[0],
         "--out", str(run_dir / "attention")])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m arrowtrain.demos.translate_demo",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "translate-tiny.yaml"),
                   help="run config (default: configs/translate-tiny.yaml)")
    p.add_argument("--nproc", type=int, default=None,
                   help="ranks (default: all GPUs, else 2 CPU ranks)")
    p.add_argument("--beam", type=int, default=4, help="beam size for the test set (default 4)")
    p.add_argument("--dir", type=Path, default=DEMO_DIR,
                   help="folder for the task, data and run (default: demo/translate)")
    p.add_argument("--train-pairs", type=int, default=TRAIN_PAIRS,
                   help=f"training pairs, val included (default {TRAIN_PAIRS})")
    p.add_argument("--test-pairs", type=int, default=TEST_PAIRS,
                   help=f"held-out test pairs (default {TEST_PAIRS})")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted config overrides, e.g. train.max_steps=300")
    args = p.parse_args(argv)
    from launch.common import validate_or_exit
    from launch.local import run_local
    from pretrain.logs import setup_logging

    setup_logging()
    t0 = time.monotonic()
    banner(1, f"synthetic task ({args.train_pairs} + {args.test_pairs} pairs), tokenizer, pair "
              "folder", t0)
    data = prepare_data(args.dir, args.train_pairs, args.test_pairs)
    overrides = [f"data.path={data}", f"run_dir={args.dir / 'run'}", *args.overrides]
    nproc = args.nproc or default_nproc()
    banner(2, f"training: launch local --config {args.config} --nproc {nproc}", t0)
    t_train = time.monotonic()
    code = run_local(args.config, overrides, nproc)
    if code != EXIT_OK:
        print(f"demo-translate: training stopped with exit code {code}"
              + (" (saved; run it again to resume)" if code == 75 else ""))
        return code
    train_s = time.monotonic() - t_train
    banner(3, "translating the held-out test sentences", t0)
    cfg = validate_or_exit(args.config, overrides, nproc)
    result = report(Path(cfg.run_dir), args.dir / "task", args.beam)
    print(f"\ntraining took {train_s:.0f} s; demo finished in {time.monotonic() - t0:.0f} s\n"
          f"metrics: {cfg.run_dir}/metrics.jsonl  attention maps: {cfg.run_dir}/attention/")
    print(json.dumps({**result, "train_seconds": round(train_s, 1)}))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
