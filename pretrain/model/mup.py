"""muP (maximal update parametrization) for the decoders: what changes with width.

With m = d_model / mup_base_width (heads added with width, head dimension fixed):

    | parameters                                   | standard   | mup                      |
    |----------------------------------------------|------------|--------------------------|
    | token/position embeddings, untied output     | σ, lr η    | unchanged                |
    | hidden matrices (q, kv, attn out, up, gate,  | σ, lr η,   | σ/√m (residual outputs   |
    |   down)                                      | decay λ    |   also /√(2L)), lr η/m,  |
    |                                              |            |   decay λ·m (lr·λ fixed) |
    | biases, norm gains                           | lr η       | unchanged (no decay)     |
    | attention logits                             | qk/√d_head | qk·√(base_d_head)/d_head |
    | output logits                                | h·Wᵀ       | (h/m)·Wᵀ                 |

`base_d_head` is model.mup_base_head_dim, by default this model's own head dimension: then the
attention scale is 1/√d_head as in standard (heads added with width: d_head never changes); a
model whose heads widen gets the 1/d_head muP asks for, equal to 1/√d_head at the base. So at
d_model == mup_base_width (and the default base head dim) a muP model computes exactly what the
standard one computes, from the same initial weights.

Torch-free except `param_roles` (which imports torch when called): the resume path and the
pre-flight read the scales without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pretrain.model.config import ModelConfig

if TYPE_CHECKING:
    from torch import nn

EMBEDDING, HIDDEN, VECTOR = "embedding", "hidden", "vector"


def is_mup(cfg: ModelConfig) -> bool:
    return cfg.parametrization == "mup"


def width_mult(cfg: ModelConfig) -> float:
    """m = d_model / mup_base_width (1.0 under standard)."""
    return cfg.d_model / cfg.mup_base_width if is_mup(cfg) else 1.0


def attention_scale(cfg: ModelConfig) -> float | None:
    """The factor of q·k in attention; None for SDPA's own 1/√d_head (standard, and muP at its
    base head dimension: the same bits as standard)."""
    base = cfg.mup_base_head_dim or cfg.head_dim
    if not is_mup(cfg) or base == cfg.head_dim:
        return None
    return math.sqrt(base) / cfg.head_dim


def output_scale(cfg: ModelConfig) -> float:
    """The factor the final hidden states get before the output layer (1/m)."""
    return 1.0 / width_mult(cfg)


def hidden_init_divisor(cfg: ModelConfig) -> float:
    """Hidden matrices are initialised with init_std / this (√m)."""
    return math.sqrt(width_mult(cfg))


@dataclass(frozen=True)
class GroupSpec:
    """One optimizer param group: its name, its lr as a factor of optim.lr, its weight decay,
    and which parameter roles it holds."""

    name: str
    lr_scale: float
    weight_decay: float
    roles: tuple[str, ...]


def group_specs(cfg: ModelConfig, weight_decay: float) -> list[GroupSpec]:
    """The optimizer's param groups, in the order the engine gets them. Group 0 always runs at
    optim.lr (the schedule's lr, as logged). Standard: matrices (decayed), vectors (not).
    muP: embeddings and the untied output (η, λ), hidden matrices (η/m, λ·m), vectors (η)."""
    if not is_mup(cfg):
        return [GroupSpec("decay", 1.0, weight_decay, (EMBEDDING, HIDDEN)),
                GroupSpec("no_decay", 1.0, 0.0, (VECTOR,))]
    m = width_mult(cfg)
    return [GroupSpec("embedding", 1.0, weight_decay, (EMBEDDING,)),
            GroupSpec("hidden", 1.0 / m, weight_decay * m, (HIDDEN,)),
            GroupSpec("vector", 1.0, 0.0, (VECTOR,))]


def param_roles(model: nn.Module) -> dict[str, str]:
    """Each distinct parameter's role (tied weights under their first name): `vector` (biases,
    norm gains: fewer than 2 dims), `embedding` (embedding tables and the output layer, which
    have one width-sized side), `hidden` (every other linear layer: both sides scale with
    width)."""
    from torch import nn

    output = {id(m.weight) for m in model.modules()
              if isinstance(m, nn.Linear) and getattr(m, "is_output", False)}
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    roles = {}
    for name, p in model.named_parameters():
        if p.dim() < 2:
            roles[name] = VECTOR
        elif id(p) in tables or id(p) in output:
            roles[name] = EMBEDDING
        else:
            roles[name] = HIDDEN
    return roles
