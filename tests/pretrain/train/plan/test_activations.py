"""The activation model against what torch really keeps: pretrain.memory.TensorMemory around a
forward + backward of the tiny models, parameter gradients dropped as they arrive (they are
model states, counted elsewhere). `held` = bytes alive after the forward; `peak` = the highest
during forward + backward."""

import pytest
import torch
from helpers.dist import REPO

from pretrain.configlib import load_yaml, validate_section
from pretrain.memory import TensorMemory
from pretrain.model import build_model
from pretrain.model.config import ModelConfig
from pretrain.model.shapes import parameter_shapes
from pretrain.train.config import ActivationCheckpointing
from pretrain.train.parallelize import apply_activation_checkpointing
from pretrain.train.plan.activations import Numerics, Shape, activations
from pretrain.train.plan.peak import autocast_weight_copies

B, T = 4, 128
POLICIES = {"none": "none", "full": "full", "selective": "selective",
            "selective-every-second": {"mode": "selective", "selective_mm": "every_second"},
            "every-2": {"every_n": 2}}


def model_cfg(name: str, **update) -> ModelConfig:
    data = load_yaml(REPO / "configs" / "model" / f"{name}.yaml")
    data.update(vocab_size=512, max_seq_len=T, **update)
    return validate_section(ModelConfig, data, source=name)


def measure(m: ModelConfig, precision: str, ac: ActivationCheckpointing) -> tuple[int, int]:
    torch.manual_seed(0)
    model = build_model(m).train()
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    apply_activation_checkpointing(model, ac)
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    ids = torch.randint(0, m.vocab_size, (B, T + 1))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16,
                              enabled=precision == "bf16_autocast")
    with TensorMemory() as mem:
        with autocast:
            loss = model(input_ids=ids[:, :-1], targets=ids[:, 1:])["loss"]
        held = mem.live_bytes
        loss.backward()
    return held, mem.peak_bytes


def planned(m: ModelConfig, precision: str, ac: ActivationCheckpointing) -> tuple[int, int]:
    a = activations(m, Numerics.of(precision, "cpu"), Shape(B, T), ac)
    copies = autocast_weight_copies(parameter_shapes(m), m, ac) \
        if precision == "bf16_autocast" else 0
    return a.held + copies, a.peak + copies


CASES = ([("gpt-tiny", {"dropout": 0.0}, prec, pol) for prec in ("fp32", "bf16", "bf16_autocast")
          for pol in POLICIES]
         + [("llama-tiny", {}, prec, pol) for prec in ("fp32", "bf16_autocast")
            for pol in ("none", "full", "selective")]
         + [("gpt-tiny", {"dropout": 0.0, "loss": "chunked", "loss_chunk_rows": 64}, "fp32",
             pol) for pol in ("none", "full")]
         + [("gpt-tiny", {"dropout": 0.1}, "fp32", pol) for pol in ("none", "every-2")]
         + [("gpt-tiny", {"dropout": 0.0, "activation": "relu", "norm_position": "post"},
             "fp32", "none")])


@pytest.mark.parametrize("name,update,precision,policy", CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in u.items())}-{p}-{q}"
                              for n, u, p, q in CASES])
def test_activation_bytes_match_torch(name, update, precision, policy):
    torch.set_num_threads(1)
    m = model_cfg(name, **update)
    ac = ActivationCheckpointing.model_validate(POLICIES[policy])
    held, peak = measure(m, precision, ac)
    held_plan, peak_plan = planned(m, precision, ac)
    assert held_plan == pytest.approx(held, rel=0.03), (held_plan, held)
    assert peak_plan == pytest.approx(peak, rel=0.08), (peak_plan, peak)


def test_a_gpt2_block_holds_16_sbh_elements_in_fp32():
    """shared/notes/plan.md: 16·s·b·h fp32 elements per layer (+ LayerNorm stats and SDPA's
    log-sum-exp), Korthikanti's 34·s·b·h bytes at 2 bytes per element without dropout masks."""
    from pretrain.train.plan.activations import block_bytes

    m = model_cfg("gpt2-124m")
    h, s = m.d_model, 1024
    per_sequence = block_bytes(m, Numerics.of("fp32", "cuda"), s)
    stats = s * (2 * 2 * 4 + m.n_heads * 4)  # two LayerNorms' mean/rstd, SDPA's log-sum-exp
    assert per_sequence == 16 * s * h * 4 + stats


def test_sequence_parallel_divides_activations():
    m = model_cfg("gpt-tiny", dropout=0.0)
    ac = ActivationCheckpointing()
    one = activations(m, Numerics.of("bf16"), Shape(4, 128), ac)
    two = activations(m, Numerics.of("bf16"), Shape(4, 128), ac, sequence_parallel=2)
    assert two.held == pytest.approx(one.held / 2, rel=0.01)
