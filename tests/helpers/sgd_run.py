"""`python tests/helpers/sgd_run.py --config ... KEY=VALUE...`: one rank of the real trainer
(`python -m pretrain.train`) with plain SGD in place of AdamW (Adam's first step divides the
gradient by its own size: a gradient scaled by 2 moves the weights alike) and the weights saved
to RUNDIR/weights_{init,step1}.pt by rank 0 — gathered from every rank at ZeRO-3 — before the
first step and after it. Set optim.grad_clip=0 and a constant schedule, or clipping and the
warmup hide a wrong gradient scale too."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pretrain.train import engine  # noqa: E402
from pretrain.train.__main__ import exit_now, main  # noqa: E402
from pretrain.train.loop import Trainer  # noqa: E402


def _sgd(groups, cfg):
    return torch.optim.SGD(groups, lr=cfg.optim.lr)


def _dump(trainer: Trainer, name: str) -> None:
    """Every rank calls it (gathering is collective at ZeRO-3); rank 0 writes."""
    params = dict(trainer.engine.module.named_parameters())
    if trainer.cfg.deepspeed.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            weights = {k: v.detach().clone() for k, v in params.items()}
    else:
        weights = {k: v.detach().clone() for k, v in params.items()}
    if trainer.rank0:
        torch.save(weights, trainer.cfg.run_dir / f"weights_{name}.pt")


_run = Trainer.run


def _run_and_dump(self: Trainer, until: int | None = None):
    _dump(self, "init")
    _run(self, until=1)
    _dump(self, "step1")
    return _run(self, until)


if __name__ == "__main__":
    engine.build_optimizer = _sgd
    Trainer.run = _run_and_dump
    exit_now(main())
