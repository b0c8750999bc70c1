"""Activation memory per rank under Ulysses sequence parallelism (issue 24,
pretrain/train/sequence.py): one forward + backward of a row of 2T tokens on one rank (P=1)
against the same row cut over P ranks of a CPU gloo group (the trainer's own code: its piece,
positions, document mask and all-to-all attention), tensor bytes per rank counted by
pretrain.memory.TensorMemory (`held` = alive after the forward, what backward needs; `peak` =
highest during forward + backward, parameter gradients included).

    python benchmarks/sequence_memory.py                          # llama-tiny, 1 x 2048, P=2
    python benchmarks/sequence_memory.py --config gpt2-124m --seq-len 2048 --doc-masking

Losses must agree: the P ranks' mean loss equals the one rank's (checked). Runs on CPU gloo
ranks only (tensor bytes do not depend on the device; speed is not measured here); the machine
is named; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import device_name, end_rank  # noqa: E402
from pretrain.configlib import load_yaml, validate_section  # noqa: E402
from pretrain.memory import TensorMemory  # noqa: E402
from pretrain.model import ModelConfig, build_model  # noqa: E402
from pretrain.train.distenv import free_port  # noqa: E402
from pretrain.train.sequence import SequenceParallel, apply_sequence_parallel  # noqa: E402


def load_cfg(args) -> ModelConfig:
    data = load_yaml(REPO / "configs" / "model" / f"{args.config}.yaml")
    data["vocab_size"] = data.get("vocab_size") or args.vocab_size
    data["max_seq_len"] = max(args.seq_len, data["max_seq_len"])
    data["dropout"] = 0.0
    data["doc_masking"] = args.doc_masking
    return validate_section(ModelConfig, data, source=args.config)


def row(args, vocab: int) -> dict[str, torch.Tensor]:
    """One clm micro-batch of `args.batch` rows of seq_len tokens; documents of ~seq_len/5."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (args.batch, args.seq_len + 1), generator=g)
    starts = torch.rand(args.batch, args.seq_len, generator=g) < 5 / args.seq_len
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:],
            "doc_ids": starts.cumsum(dim=1).to(torch.int32)}


def rank_main(args) -> None:
    """One rank: its piece's forward + backward under TensorMemory; rank 0 prints the rows."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    cfg = load_cfg(args)
    model = build_model(cfg).train()
    sp = SequenceParallel.create(rank, world, world)
    apply_sequence_parallel(model, sp)
    batch = row(args, cfg.vocab_size)
    piece, weight = (batch, 1.0) if world == 1 else sp.piece(batch, cfg.doc_masking)
    if world == 1 and not cfg.doc_masking:
        piece = {k: v for k, v in batch.items() if k != "doc_ids"}
    with TensorMemory() as mem:
        loss = model(**piece)["loss"] * weight
        held = mem.live_bytes
        loss.backward()
    out = torch.tensor([loss.item(), held, mem.peak_bytes], dtype=torch.float64)
    rows = [torch.zeros_like(out) for _ in range(world)]
    dist.all_gather(rows, out)
    if rank == 0:
        print(json.dumps([r.tolist() for r in rows]))
    dist.destroy_process_group()


def run_ranks(args, world: int) -> list[list[float]]:
    port = str(free_port())
    argv = [sys.executable, __file__, "--rank-main", "--config", args.config, "--batch",
            str(args.batch), "--seq-len", str(args.seq_len), "--vocab-size",
            str(args.vocab_size)] + (["--doc-masking"] if args.doc_masking else [])
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={
        **os.environ, "RANK": str(r), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}) for r in range(world)]
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a rank failed: exit codes {[p.returncode for p in procs]}")
    return json.loads(outs[0].strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="llama-tiny", help="configs/model/NAME.yaml (decoder)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=2048, help="the row's length, 2T")
    p.add_argument("--vocab-size", type=int, default=4096,
                   help="for configs that leave it to the data")
    p.add_argument("-P", "--sequence-parallel", type=int, default=2)
    p.add_argument("--doc-masking", action="store_true", help="dense document mask")
    p.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_main:
        rank_main(args)
        end_rank(0)
    one = run_ranks(args, 1)[0]
    many = run_ranks(args, args.sequence_parallel)
    P = args.sequence_parallel
    loss_many = sum(r[0] for r in many) / P
    held, peak = max(r[1] for r in many), max(r[2] for r in many)
    ratios = {"held_bytes": round(held / one[1], 3), "peak_bytes": round(peak / one[2], 3)}
    hardware = device_name(torch.device("cpu")).replace(f"{torch.get_num_threads()} threads",
                                                        "1 thread per rank")
    cfg = load_cfg(args)
    print(f"device: {hardware}, {os.cpu_count()} cores, no GPU; torch {torch.__version__}; "
          f"{args.config} batch {args.batch} x {args.seq_len}, fp32, vocab {cfg.vocab_size}, "
          f"document masking {'on (dense mask)' if args.doc_masking else 'off'}")
    print(f"P=1, 1 rank:  held for backward {one[1] / 2**20:8.1f} MiB, peak "
          f"{one[2] / 2**20:8.1f} MiB (loss {one[0]:.6f})")
    for r, (_loss, h, pk) in enumerate(many):
        print(f"P={P}, rank {r}: held for backward {h / 2**20:8.1f} MiB, peak "
              f"{pk / 2**20:8.1f} MiB")
    print(f"ratio P={P} per rank vs P=1: {ratios} (mean loss {loss_many:.6f})")
    agree = abs(loss_many - one[0]) <= 1e-5 * abs(one[0])
    print(f"losses agree: {agree}")
    print(json.dumps({"device": hardware, "cores": os.cpu_count(), "config": args.config,
                      "batch": args.batch, "seq_len": args.seq_len, "P": P,
                      "doc_masking": args.doc_masking, "one_rank": one, "ranks": many,
                      "ratios": ratios, "losses_agree": agree}))


if __name__ == "__main__":
    main()
