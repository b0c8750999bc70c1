"""Two real rank processes (tests/helpers/dist.py, gloo), each reading its slice through a
DataLoader worker and resuming mid-run: their micro-batches, gathered over gloo, are exactly
the single-process global batches."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from helpers.dist import run_ranks

from pretrain.data import train_batches

RANK_SCRIPT = """
import sys, itertools, numpy as np, torch, torch.distributed as dist
from pretrain.data import DataConfig, train_batches
from pretrain.objectives import open_data
folder, out, consumed, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
src = open_data(DataConfig(path=folder, seq_len=8, num_workers=1), seed=1)
micro = 2
per_step = 8 // (world * micro)
mine = [b["input_ids"] for b in itertools.islice(
    train_batches(src, 8, micro, rank, world, consumed), steps * per_step)]
mine = torch.stack(mine)                                  # (steps * per_step, micro, T)
gathered = [torch.zeros_like(mine) for _ in range(world)]
dist.all_gather(gathered, mine)
if rank == 0:
    np.save(out, torch.stack(gathered).numpy())          # (world, steps * per_step, micro, T)
dist.destroy_process_group()
"""


def test_two_real_ranks_resume_to_the_single_process_batches(clm, folder, tmp_path):
    out = tmp_path / "gathered.npy"
    consumed, steps = 8 * 5, 3
    run_ranks(["-c", RANK_SCRIPT, str(folder), str(out), str(consumed), str(steps)],
              tmp_path / "logs", world_size=2, timeout=120)
    got = np.load(out)                                   # (2, steps * 2, 2, 8)
    per_rank = got.reshape(2, steps, 2 * 2, 8)           # rank, step, rows of that rank, T
    ref = [b["input_ids"] for b in itertools.islice(
        train_batches(clm, 8, 8, 0, 1, consumed, num_workers=0), steps)]
    for s in range(steps):
        assert torch.equal(torch.from_numpy(np.concatenate(per_rank[:, s])), ref[s]), s
