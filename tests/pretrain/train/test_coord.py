"""pretrain/train/coord.py: models at other widths (heads added, kv groups and the d_ff ratio
kept), the verdicts, and the transfer proof: trained in-process on the tiny corpus, muP's best
lr at width 64 is the best (or a neighbouring grid value) at the wider model too. A small lr
sweep runs by default; the full one (7 lrs, widths 64 and 256, both parametrizations) with
--slow."""

from __future__ import annotations

import pytest
import torch
from helpers.dist import REPO

from pretrain.model import ModelConfig
from pretrain.objectives import open_data
from pretrain.train.coord import Proxy, verdicts, width_config, with_model
from pretrain.train.preflight import check_run

LLAMA = dict(family="decoder", vocab_size=64, max_seq_len=16, d_model=64, n_heads=4,
             n_kv_heads=2, d_ff=176, n_layers=2, norm="rmsnorm", position="rope",
             activation="swiglu", bias=False, dropout=0.1)


def test_width_config_adds_heads_and_keeps_the_ratios():
    cfg = width_config(ModelConfig(**LLAMA), 256, "mup")
    assert (cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim) == (256, 16, 8, 16)
    assert cfg.d_ff == 704 and cfg.dropout == 0.0
    assert (cfg.parametrization, cfg.mup_base_width) == ("mup", 64)
    std = width_config(ModelConfig(**{**LLAMA, "mup_base_width": 32}), 128, "standard")
    assert std.parametrization == "standard" and std.mup_base_width == 32
    with pytest.raises(ValueError, match="width 80: not a multiple of head_dim x kv group"):
        width_config(ModelConfig(**LLAMA), 80, "mup")  # 5 heads cannot share 2 kv groups


def test_verdicts_judge_the_steps_after_the_first():
    rows = [{"parametrization": "p", "layer": layer, "step": t, "width": w,
             "mean_abs": v * (w if layer == "grows" and t > 1 else 1)}
            for layer, v in (("flat", 1.0), ("grows", 1.0)) for t in (1, 2, 3)
            for w in (64, 128, 256)]
    got = {v.layer: v for v in verdicts(rows)}
    assert got["flat"].verdict == "flat" and got["flat"].max_over_min == 1.0
    assert got["grows"].verdict == "grows with width"
    assert got["grows"].max_over_min == 4.0 and got["grows"].slope == pytest.approx(1.0)


def lr_sweep(data, widths, lrs, parametrizations, steps) -> dict:
    """{(parametrization, width): [val loss per lr]}: in-process runs on the tiny corpus."""
    torch.set_num_threads(1)
    cfg = check_run(REPO / "configs" / "gpt-tiny.yaml", [
        f"data.path={data}", f"run_dir={data.parent / 'unused'}", "data.seq_len=32", "train.micro_batch_size=8",
        "train.global_batch_size=8", f"train.max_steps={steps}", "eval.max_samples=64"])
    src = open_data(cfg.data, cfg.seed)
    out = {}
    for p in parametrizations:
        for w in widths:
            out[p, w] = []
            for lr in lrs:
                proxy = Proxy(with_model(cfg, width_config(cfg.model, w, p),
                                         optim=cfg.optim.model_copy(update={"lr": lr})), src)
                for _ in range(steps):
                    proxy.step()
                out[p, w].append(proxy.evaluate())
                proxy.close()
    return out


def best(losses: list[float]) -> int:
    return losses.index(min(losses))


def test_mups_best_lr_transfers_small(tiny_data):
    lrs = [2e-3, 4e-3, 8e-3]
    got = lr_sweep(tiny_data, [64, 128], lrs, ["mup"], steps=40)
    assert abs(best(got["mup", 64]) - best(got["mup", 128])) <= 1, got


@pytest.mark.slow
def test_mups_best_lr_transfers_from_64_to_256(tiny_data, capsys):
    lrs = [5e-4 * 2**i for i in range(7)]  # 5e-4 ... 3.2e-2
    got = lr_sweep(tiny_data, [64, 256], lrs, ["standard", "mup"], steps=60)
    with capsys.disabled():
        for (p, w), losses in got.items():
            print(f"\n{p} width {w}: best lr {lrs[best(losses)]:g}; val loss per lr "
                  + " ".join(f"{x:.3f}" for x in losses))
    assert abs(best(got["mup", 64]) - best(got["mup", 256])) <= 1, got
