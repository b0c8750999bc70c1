"""`make demo`: the whole pipeline on this machine (minutes on a 2-core CPU, less on a GPU).

1. a byte-level BPE tokenizer (vocab 8192) and Arrow shards from Python's own standard library
   source (`--format file`: one document per file) into demo/ (skipped when already valid);
2. `launch local --config configs/demo.yaml` on every GPU, else 2 CPU ranks;
3. the final validation loss against the corpus' unigram entropy, a sample (top-k), and where
   the metrics, the plot and the W&B files are.

Re-running resumes the run from its last checkpoint (a finished run only reports).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from launch.common import REPO
from pretrain.exit_codes import EXIT_OK

DEMO_DIR = REPO / "demo"
VOCAB_SIZE = 8192
VAL_FRACTION = 0.02  # ~14 of the ~680 files: a validation loss worth reading
# Parts of the stdlib folder that are not the standard library's own source: installed
# packages, the (huge) regression tests, build files, compiled modules and bundled wheels,
# and two folders that are data tables rather than code (codec maps, pydoc's help text).
EXCLUDES = ["site-packages", "dist-packages", "test", "tests", "idlelib", "config-*",
            "encodings", "pydoc_data",
            "lib-dynload", "ensurepip", "__pycache__", "*.pyc", "*.so", "*.whl", "*.png",
            "*.gif", "*.ico", "*.exe", "*.pickle"]


def banner(step: int, text: str, t0: float) -> None:
    print(f"\n=== [demo {step}/3, {time.monotonic() - t0:5.0f} s] {text}", flush=True)


def run(cmd: list[str], **kw) -> int:
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO, **kw).returncode


def data_tools(*args: str, check: bool = True) -> int:
    code = run([sys.executable, "-m", "data_tools", *args])
    if check and code != 0:
        raise SystemExit(f"demo: `python -m data_tools {args[0]}` failed with exit code {code}")
    return code


def prepare_data(stdlib: Path, tok_dir: Path, data_dir: Path) -> None:
    """Tokenizer + shards, unless the shard folder already validates."""
    excludes = [a for pat in EXCLUDES for a in ("--exclude", pat)]
    if (data_dir / "manifest.json").is_file() and \
            data_tools("validate", str(data_dir), check=False) == 0:
        print(f"{data_dir} is valid: reusing it")
    else:
        if not (tok_dir / "tokenizer.json").is_file():
            data_tools("train-tokenizer", str(stdlib), "--format", "file",
                       "--vocab-size", str(VOCAB_SIZE), "--out", str(tok_dir), *excludes)
        data_tools("shard", str(stdlib), "--format", "file", "--tokenizer",
                   str(tok_dir / "tokenizer.json"), "--out", str(data_dir),
                   "--val-fraction", str(VAL_FRACTION), *excludes)
    data_tools("inspect", str(data_dir), "--decode", "1")


def default_nproc() -> int:
    """Every GPU; two CPU ranks where there is none (to show the distributed path)."""
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch/driver: CPU ranks
        gpus = 0
    return gpus or 2


def report(cfg, data_dir: Path) -> None:
    from pretrain.train.stats import unigram_entropy

    run_dir = Path(cfg.run_dir)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    val = [r for r in rows if "val_loss" in r]
    train = [r for r in rows if "loss" in r]
    ent = unigram_entropy(data_dir, "train")
    print(f"unigram entropy of the training tokens: {ent.nats_per_token:.3f} nats/token "
          f"({ent.tokens:,} tokens) -- a model that learnt only token frequencies scores this")
    if train:
        print(f"first train loss {train[0]['loss']:.3f} (step {train[0]['step']}), "
              f"last {train[-1]['loss']:.3f} (step {train[-1]['step']})")
    if val:
        v = val[-1]["val_loss"]
        verdict = "below" if v < ent.nats_per_token else "NOT below"
        print(f"final validation loss {v:.3f} nats/token at step {val[-1]['step']}: "
              f"{verdict} the unigram entropy ({v - ent.nats_per_token:+.3f})")
    # Greedy decoding of a model this small loops on one token; top-k sampling shows what it learnt.
    print("\nsample (top-k 40, temperature 0.8, prompt 'def '):", flush=True)
    run([sys.executable, "-m", "arrowtrain.commands.sample", str(run_dir), "--prompt", "def ",
         "--temperature", "0.8", "--top-k", "40", "--seed", "0", "--max-new-tokens", "120"])
    run([sys.executable, "-m", "arrowtrain.commands.plot", str(run_dir)])
    print(f"\nmetrics: {run_dir / 'metrics.jsonl'}\nplots:   {run_dir} (*.png)\n"
          f"W&B:     {run_dir / 'wandb'} (offline; `wandb sync` uploads it)\n"
          f"checkpoints: {run_dir / 'checkpoints'}\n"
          f"status:  {sys.executable} -m arrowtrain launch status {run_dir}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog or "python -m arrowtrain.demos.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"),
                   help="run config (default: configs/demo.yaml)")
    p.add_argument("--nproc", type=int, default=None,
                   help="ranks (default: all GPUs, else 2 CPU ranks)")
    p.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"],
                   help="corpus folder (default: this Python's standard library)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted config overrides, e.g. train.max_steps=100")
    args = p.parse_args(argv)
    from launch.common import validate_or_exit
    from launch.local import run_local
    from pretrain.logs import setup_logging

    setup_logging()
    t0 = time.monotonic()
    tok_dir, data_dir = DEMO_DIR / "tokenizer", DEMO_DIR / "data"
    banner(1, f"tokenizer (vocab {VOCAB_SIZE}) + shards from {args.stdlib}", t0)
    prepare_data(Path(args.stdlib), tok_dir, data_dir)
    nproc = args.nproc or default_nproc()
    banner(2, f"pretraining: launch local --config {args.config} --nproc {nproc}", t0)
    code = run_local(args.config, args.overrides, nproc)
    if code != EXIT_OK:
        print(f"demo: training stopped with exit code {code}"
              + (" (saved; run `make demo` again to resume)" if code == 75 else ""))
        return code
    banner(3, "results", t0)
    report(validate_or_exit(args.config, args.overrides, nproc), data_dir)
    print(f"\ndemo finished in {time.monotonic() - t0:.0f} s")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
