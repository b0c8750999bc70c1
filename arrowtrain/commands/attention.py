"""arrowtrain attention RUNDIR --text SRC [--target TGT] --out DIR

What every attention head of a trained run looks at, for one input. Encoder-decoder runs: SRC is
the source sentence and TGT its target (default: the model's own greedy translation), fed to the
decoder as in training (teacher forcing). Decoder runs: SRC is the text (no --target).

Writes DIR/attention.npz — one float32 array per layer and kind, `encoder.self.L`,
`decoder.self.L`, `decoder.cross.L`, shaped heads × queries × keys, every row summing to 1 —
plus the token strings (`tokens.source`, `tokens.target`; decoder runs: `tokens.target`), and one
PNG grid per layer and kind (DIR/encoder.self.0.png, ...): the heads as panels, queries down,
keys across, tokens as tick labels. Prints DIR (the only line on stdout).

Training never computes these weights: its attention runs fused in F.scaled_dot_product_attention.
This tool records each attention layer's inputs during one ordinary forward (forward hooks) and
recomputes softmax(q k^T / sqrt(d) + mask) explicitly from the same parameters, then checks that
the weights reproduce the layer's own output (the largest difference is logged)."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from arrowtrain.cmdline import command_parser
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK
from pretrain.logs import setup_logging

log = logging.getLogger("arrowtrain.commands.attention")
PANELS_PER_ROW = 4
START_LABEL = "<start>"


def explicit_attention(attn: nn.Module, x: torch.Tensor, memory=None, mask=None, causal=False,
                       rope=None, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """What one Attention layer computes, step by step: (weights (B, h, T, S), output
    (B, T, C)). `mask` is what the layer got: a boolean mask (True = attend), an additive float
    mask (e.g. relative position bias), or None; `causal` hides the future."""
    from pretrain.model.layers import apply_rope

    B, T, C = x.shape
    q = attn._heads(attn.q_proj(x), attn.n_heads)  # (B, h, T, hd)
    k, v = attn.kv_proj(x if memory is None else memory).chunk(2, dim=-1)
    k, v = attn._heads(k, attn.n_kv_heads), attn._heads(v, attn.n_kv_heads)  # (B, kv, S, hd)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    rep = attn.n_heads // attn.n_kv_heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, h, S, hd)
    scores = (q @ k.transpose(-2, -1)).float()  # (B, h, T, S)
    scores = scores / math.sqrt(attn.head_dim) if attn.scale is None else scores * attn.scale
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask.float()
    if causal and mask is None:
        S = scores.shape[-1]
        future = torch.ones(T, S, dtype=torch.bool, device=x.device).triu(S - T + 1)
        scores = scores.masked_fill(future, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, h, T, S)
    y = (weights.to(v.dtype) @ v).transpose(1, 2).reshape(B, T, C)
    return weights, attn.out_proj(y)


def attention_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> Attention module: encoder.self.L, decoder.self.L, decoder.cross.L."""
    if model.cfg.family == "decoder":
        return {f"decoder.self.{i}": b.self_attn for i, b in enumerate(model.stack.blocks)}
    out = {f"encoder.self.{i}": b.self_attn for i, b in enumerate(model.encoder.blocks)}
    for i, b in enumerate(model.decoder.blocks):
        out[f"decoder.self.{i}"] = b.self_attn
        out[f"decoder.cross.{i}"] = b.cross_attn
    return out


@torch.no_grad()
def capture(model: nn.Module, inputs: dict[str, torch.Tensor]
            ) -> tuple[dict[str, np.ndarray], float]:
    """One forward of `model` on `inputs` (batch of 1); returns the explicit weights of every
    layer (heads, queries, keys) and the largest difference between the outputs the explicit
    weights give and the layers' own (SDPA) outputs."""
    weights, worst, hooks = {}, 0.0, []

    def hook_for(name: str):
        def hook(module, args, kwargs, output):
            nonlocal worst
            w, y = explicit_attention(module, *args, **kwargs)
            weights[name] = w[0].cpu().numpy()
            worst = max(worst, float((y - output).abs().max()))
        return hook

    for name, module in attention_layers(model).items():
        hooks.append(module.register_forward_hook(hook_for(name), with_kwargs=True))
    try:
        model.eval()
        model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return weights, worst


def _labels(tok, ids: list[int], eos: int, start: int | None = None) -> list[str]:
    """A readable string per token (byte-level pieces decoded one by one, spaces trimmed)."""
    out = []
    for i, t in enumerate(ids):
        if start is not None and i == 0:
            out.append(START_LABEL)
        elif t == eos:
            out.append("<eos>")
        else:
            text = tok.decode([t], skip_special_tokens=False).replace("\n", "\\n")
            out.append(text.strip() or repr(text))
    return out


def plot_grid(weights: np.ndarray, queries: list[str], keys: list[str], title: str,
              path: Path) -> None:
    """One PNG: a panel per head, queries down, keys across, weights 0..1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = weights.shape[0]
    cols = min(heads, PANELS_PER_ROW)
    rows = math.ceil(heads / cols)
    cell = 0.22  # inches per token
    w = max(2.6, cell * len(keys) + 1.0)
    h = max(2.4, cell * len(queries) + 1.0)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * w + 1.2, rows * h + 0.6),
                             squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        if i >= heads:
            ax.axis("off")
            continue
        im = ax.imshow(weights[i], vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_title(f"head {i}", fontsize=9)
        ax.set_xticks(range(len(keys)), keys, rotation=90, fontsize=7)
        ax.set_yticks(range(len(queries)), queries, fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention weight")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _inputs(model, tok, text: str, target: str | None, eos: int, pad: int, device):
    """The model inputs and the token labels of each side."""
    src = tok.encode(text, add_special_tokens=False).ids
    room = model.cfg.max_seq_len - (model.cfg.family != "decoder")  # encdec: + <eos>
    if len(src) > room:
        log.warning("--text is %d tokens; the model's %d positions hold %d: the maps show the "
                    "first %d tokens only (the rest was cut)", len(src), model.cfg.max_seq_len,
                    room, room)
    if model.cfg.family == "decoder":
        if target is not None:
            raise ValueError("a decoder run reads --text only (--target is for encoder-decoder "
                             "runs)")
        ids = src[: model.cfg.max_seq_len] or [eos]
        return ({"input_ids": torch.tensor([ids], device=device)},
                {"target": _labels(tok, ids, eos)})
    src = src[: model.cfg.max_seq_len - 1] + [eos]
    if target is None:
        from pretrain.model.generate import greedy

        ids = torch.tensor([src], device=device)
        tgt = greedy(model, ids, torch.ones_like(ids, dtype=torch.bool), model.cfg.max_seq_len,
                     pad, eos)[0]
    else:
        tgt = tok.encode(target, add_special_tokens=False).ids
        if len(tgt) + 1 > model.cfg.max_seq_len:
            log.warning("--target is %d tokens; the decoder's %d positions hold %d after the "
                        "start token: the rest was cut", len(tgt), model.cfg.max_seq_len,
                        model.cfg.max_seq_len - 1)
    dec = ([pad] + tgt)[: model.cfg.max_seq_len]
    inputs = {"input_ids": torch.tensor([src], device=device),
              "attention_mask": torch.ones(1, len(src), dtype=torch.bool, device=device),
              "decoder_input_ids": torch.tensor([dec], device=device)}
    return inputs, {"source": _labels(tok, src, eos), "target": _labels(tok, dec, eos, start=pad)}


TITLES = {"encoder.self": "encoder self-attention", "decoder.self": "decoder self-attention",
          "decoder.cross": "decoder cross-attention (target queries, source keys)"}


def write_maps(model, tok_file: Path, text: str, target: str | None, out: Path,
               device: str = "cpu") -> dict[str, np.ndarray]:
    """Compute, check and write DIR/attention.npz and the PNGs; returns the arrays."""
    from data_tools.tokenizer import load_tokenizer, tokenizer_info

    tok = load_tokenizer(tok_file)
    info = tokenizer_info(tok, tok_file)
    model = model.to(device).eval()
    inputs, labels = _inputs(model, tok, text, target, info.eos_id, info.pad_id, device)
    weights, worst = capture(model, inputs)
    log.info("explicit weights reproduce every layer's SDPA output to %.2g (largest absolute "
             "difference)", worst)
    if worst > 1e-3:
        log.warning("the explicit weights differ from the SDPA forward by %.3g", worst)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {**weights, **{f"tokens.{k}": np.array(v) for k, v in labels.items()}}
    np.savez_compressed(out / "attention.npz", **arrays)
    for name, w in weights.items():
        kind, layer = name.rsplit(".", 1)
        queries = labels["target"] if kind.startswith("decoder") else labels["source"]
        keys = labels["source"] if kind in ("encoder.self", "decoder.cross") else queries
        plot_grid(w, queries, keys, f"{TITLES[kind]}, layer {layer}", out / f"{name}.png")
    return arrays


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = command_parser(prog or "python -m arrowtrain.commands.attention", __doc__)
    p.add_argument("run_dir", type=Path, help="the run folder (holds checkpoints/)")
    p.add_argument("--text", required=True, help="the source sentence (decoder runs: the text)")
    p.add_argument("--target", help="the target sentence (encoder-decoder runs; default: the "
                   "model's greedy translation of --text)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--tag", help="checkpoint tag (default: the newest complete one)")
    args = p.parse_args(argv)
    setup_logging()
    from data_tools.atomic import check_output_folder
    from pretrain.interop.export import ExportError, load_trained_model, tokenizer_path

    try:
        check_output_folder(args.out)  # before the model is loaded and run
        model, meta = load_trained_model(args.run_dir, args.tag)
        arrays = write_maps(model, tokenizer_path(meta.config), args.text, args.target,
                            args.out)
    except (ExportError, ValueError, OSError) as e:
        log.error("%s", e)
        return EXIT_CONFIG
    layers = [k for k in arrays if not k.startswith("tokens.")]
    log.info("wrote %s (%d arrays) and %d PNG grids", args.out / "attention.npz", len(layers),
             len(layers))
    print(args.out)  # the result alone on stdout: the folder of maps
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
