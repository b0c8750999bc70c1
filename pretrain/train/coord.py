"""Width studies in one process on one rank, for muP's checks: the model at another width, a
proxy trainer, the coordinate check and its verdicts (`arrowtrain coord-check`).

  width_config(model, width, parametrization, base)  the model at `width`: heads added with width
                      (head dimension fixed), kv heads and d_ff in proportion, dropout 0
  Proxy(cfg)          the run's model, param groups (pretrain.model.mup), fused AdamW, lr schedule,
                      grad clipping and loader, without DeepSpeed or a process group: a few
                      hundred steps of a tiny model in seconds on a CPU
  coord_rows(cfg, widths, steps)  mean |activation| of every layer at every step, per width and
                      parametrization (microsoft/mup's coordinate check: a constant lr, no
                      clipping, no warmup; step t is the forward after t - 1 updates)
  verdicts(rows)      per parametrization and layer: the worst max/min across widths after step 1
                      and the log-log slope against width; flat when max/min <= FLAT_RATIO

Under muP every curve is flat in width; under standard parametrization the hidden layers and
logits grow with width once the optimizer has taken a step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pretrain.data import eval_batches, train_batches
from pretrain.model import ModelConfig, build_model
from pretrain.objectives import open_data
from pretrain.train.config import RunConfig
from pretrain.train.engine import build_optimizer, grad_accum_steps, param_groups
from pretrain.train.schedule import build_scheduler

PARAMETRIZATIONS = ("standard", "mup")
FLAT_RATIO = 2.0  # a layer is flat when its max/min across widths stays within this


def width_config(model: ModelConfig, width: int, parametrization: str,
                 base_width: int | None = None) -> ModelConfig:
    """`model` at d_model = width (ValueError naming what does not fit). Heads are added with
    width (head dimension fixed), kv heads keep their group size, d_ff its ratio to d_model;
    dropout is 0. `base_width` (default: model.mup_base_width, else model.d_model) is the muP
    base."""
    hd, group = model.head_dim, model.n_heads // model.kv_heads
    if width % hd or (width // hd) % group:
        raise ValueError(f"width {width}: not a multiple of head_dim x kv group = {hd} x {group} "
                         f"(d_model {model.d_model} / n_heads {model.n_heads}; heads are added "
                         "with width)")
    heads = width // hd
    data = model.model_dump()
    data.update(d_model=width, n_heads=heads, dropout=0.0, parametrization=parametrization,
                mup_base_width=base_width or model.mup_base_width or model.d_model,
                n_kv_heads=heads // group if model.n_kv_heads is not None else None,
                d_ff=round(model.d_ff * width / model.d_model) if model.d_ff else None)
    return ModelConfig.model_validate(data)


def with_model(cfg: RunConfig, model: ModelConfig, **sections) -> RunConfig:
    """`cfg` with another model section (and other sections replaced, e.g. optim=...)."""
    return cfg.model_copy(update={"model": model, **sections})


class Proxy:
    """The run on one rank in this process (no DeepSpeed): the trainer's model, param groups,
    optimizer, schedule and loader; clipping as optim.grad_clip. Seeded by cfg.seed."""

    def __init__(self, cfg: RunConfig, src=None):
        self.cfg = cfg
        self.src = src or open_data(cfg.data, cfg.seed)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model).train()
        self.optimizer = build_optimizer(
            param_groups(self.model, cfg.optim.weight_decay, cfg.model), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.train.max_steps)
        t = cfg.train
        self.gas = grad_accum_steps(cfg, 1)
        self.batches = train_batches(self.src, t.global_batch_size, t.micro_batch_size, 0, 1,
                                     num_workers=0)

    def step(self, logits_path: bool = False) -> float:
        """One optimizer step; its mean training loss. `logits_path`: the model returns logits
        and the loss is taken from them (so hooks on the output layer see the logits)."""
        total = 0.0
        for _ in range(self.gas):
            batch = next(self.batches)
            if logits_path:
                logits = self.model(batch["input_ids"], doc_ids=batch.get("doc_ids"))["logits"]
                loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(),
                                       ignore_index=-100)
            else:
                loss = self.model(**batch)["loss"]
            (loss / self.gas).backward()
            total += loss.item() / self.gas
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return total

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean cross-entropy over the validation samples (eval.max_samples)."""
        self.model.eval()
        nats, tokens = 0.0, 0
        for batch in eval_batches(self.src, self.cfg.train.micro_batch_size, 0, 1,
                                  max_samples=self.cfg.eval.max_samples):
            logits = self.model(batch["input_ids"], doc_ids=batch.get("doc_ids"))["logits"]
            targets = batch["targets"]
            nats += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                    ignore_index=-100, reduction="sum").item()
            tokens += int((targets != -100).sum())
        self.model.train()
        return nats / max(tokens, 1)

    def close(self) -> None:
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()


def watched_layers(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """(name, module) of what the coordinate check records: the embedding output (after
    positions), each block's attention and feed-forward outputs and the block output, the
    logits."""
    yield "embedding", model.drop
    for i, block in enumerate(model.stack.blocks):
        yield f"block{i}.attn", block.self_attn
        yield f"block{i}.ffn", block.ffn
        yield f"block{i}.out", block
    yield "logits", model.lm_head


def _coords_of_run(proxy: Proxy, steps: int) -> list[dict]:
    """mean |output| of every watched layer at steps 1..steps (step t: the forward after t - 1
    updates), one row each."""
    seen: dict[str, float] = {}

    def hook(name):
        def record(_module, _inputs, output):
            if torch.is_tensor(output) and output.dim() >= 2:  # not a loss
                seen[name] = output.detach().abs().mean().item()
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in watched_layers(proxy.model)]
    rows = []
    try:
        for t in range(1, steps + 1):
            seen.clear()
            proxy.step(logits_path=True)
            rows += [{"step": t, "layer": n, "mean_abs": v} for n, v in seen.items()]
    finally:
        for h in handles:
            h.remove()
    return rows


def coord_check_config(cfg: RunConfig, width: int, parametrization: str) -> RunConfig:
    """The run at `width` as the coordinate check trains it: constant lr (no warmup), no
    clipping, one micro-batch per step."""
    t = cfg.train
    return with_model(
        cfg, width_config(cfg.model, width, parametrization),
        optim=cfg.optim.model_copy(update={"grad_clip": 0.0}),
        schedule=cfg.schedule.model_copy(update={"name": "constant", "warmup_steps": 0}),
        train=t.model_copy(update={"global_batch_size": t.micro_batch_size}))


def coord_rows(cfg: RunConfig, widths: Iterable[int], steps: int,
               parametrizations: Iterable[str] = PARAMETRIZATIONS, log=None) -> list[dict]:
    """Rows (parametrization, width, step, layer, mean_abs) of the coordinate check: every
    width trained `steps` steps from the same seed on the same batches."""
    src = open_data(cfg.data, cfg.seed)
    rows = []
    for p in parametrizations:
        for w in widths:
            proxy = Proxy(coord_check_config(cfg, w, p), src)
            try:
                rows += [{"parametrization": p, "width": w, **r}
                         for r in _coords_of_run(proxy, steps)]
            finally:
                proxy.close()
            if log is not None:
                log(f"{p} width {w}: {steps} steps")
    return rows


@dataclass(frozen=True)
class Verdict:
    parametrization: str
    layer: str
    max_over_min: float  # worst step after step 1: max / min of mean |x| across widths
    slope: float  # mean over those steps of d log(mean |x|) / d log(width)
    verdict: str  # flat | grows with width | shrinks with width


def _slope(points: list[tuple[int, float]]) -> float:
    xs = [math.log(w) for w, _ in points]
    ys = [math.log(max(v, 1e-30)) for _, v in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def verdicts(rows: list[dict], flat_ratio: float = FLAT_RATIO) -> list[Verdict]:
    """One verdict per (parametrization, layer), judged on the steps after step 1 (or step 1
    when there is no other)."""
    last = max(r["step"] for r in rows)
    after = [r for r in rows if r["step"] > 1 or last == 1]
    out = []
    keys = dict.fromkeys((r["parametrization"], r["layer"]) for r in after)
    for p, layer in keys:
        ratios, slopes = [], []
        for t in sorted({r["step"] for r in after}):
            pts = sorted((r["width"], r["mean_abs"]) for r in after
                         if (r["parametrization"], r["layer"], r["step"]) == (p, layer, t))
            if len(pts) < 2:
                continue
            vals = [v for _, v in pts]
            ratios.append(max(vals) / max(min(vals), 1e-30))
            slopes.append(_slope(pts))
        worst, slope = max(ratios, default=1.0), sum(slopes) / max(len(slopes), 1)
        word = "flat" if worst <= flat_ratio else (
            "grows with width" if slope > 0 else "shrinks with width")
        out.append(Verdict(p, layer, worst, slope, word))
    return out
