"""python -m pretrain.translate RUNDIR [--input FILE] [--beam 4] [--length-penalty 0.6] [--max-len N]

Translates with an encoder-decoder run's newest complete checkpoint (any ZeRO stage): one
source sentence per input line (stdin by default), one translation per output line (stdout),
in input order. Sentences are batched by length; the encoder runs once per batch and the
decoder one token at a time with a key/value cache (self-attention keys and values appended,
cross-attention keys and values of the source computed once).

Beam search as in "Attention is All You Need" (beam 4, length penalty alpha 0.6, at most
source length + 50 tokens, stopping early once no live hypothesis can beat the finished ones):
hypotheses are ranked by log P(Y|X) / lp(Y) with GNMT's lp(Y) = ((5 + |Y|) / 6)^alpha.
--beam 1 is greedy decoding."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pretrain.logs import setup_logging

log = logging.getLogger("pretrain.translate")
EXTRA_TOKENS = 50  # the paper's maximum output length: input length + 50


def length_penalty(length: int | torch.Tensor, alpha: float):
    """GNMT (Wu et al. 2016): ((5 + |Y|) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def _cut(row: list[int], eos_id: int) -> list[int]:
    return row[:row.index(eos_id)] if eos_id in row else row


@torch.no_grad()
def greedy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
           max_len: int, start_id: int, eos_id: int,
           all_done: Callable[[bool], bool] | None = None) -> list[list[int]]:
    """Greedy decoding of a batch: (B, S) source -> B lists of target ids (EOS cut off).
    `all_done(local)` lets several ranks agree when to stop (every rank must run the same
    number of steps when the parameters are sharded, ZeRO-3)."""
    B = input_ids.shape[0]
    memory = model.encode(input_ids, attention_mask)  # (B, S, C)
    state = model.decoding_state(memory, attention_mask, max_len)
    ids = torch.full((B, 1), start_id, dtype=torch.long, device=input_ids.device)
    out = torch.full((B, max_len), eos_id, dtype=torch.long, device=input_ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for t in range(max_len):
        nxt = model.decode_step(ids, state).argmax(dim=-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        out[:, t], ids = nxt, nxt[:, None]
        done |= nxt == eos_id
        local = bool(done.all())
        if (all_done(local) if all_done else local):
            break
    return [_cut(row, eos_id) for row in out.tolist()]


class _Finished:
    """The best `beam` finished hypotheses of one sentence: (score, ids)."""

    def __init__(self, beam: int):
        self.beam, self.items = beam, []

    def add(self, score: float, ids: list[int]) -> None:
        self.items.append((score, ids))
        self.items.sort(key=lambda x: -x[0])
        del self.items[self.beam:]

    def worst(self) -> float:
        return self.items[-1][0] if len(self.items) == self.beam else float("-inf")


@torch.no_grad()
def beam_search(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                beam: int, alpha: float, max_len: int, start_id: int, eos_id: int,
                all_done: Callable[[bool], bool] | None = None) -> list[list[int]]:
    """Beam search over a batch: (B, S) source -> B lists of target ids (EOS cut off).

    Each step expands the B*K live hypotheses, takes the 2K best continuations per sentence,
    finishes those of the first K that end in EOS (score log P / lp(|Y|), |Y| counting EOS) and
    keeps the K best others alive. A sentence is done when it holds K finished hypotheses and
    its best live one, even at the longest length (largest lp), cannot beat the worst of them.
    `all_done` as in greedy()."""
    B, K, dev = input_ids.shape[0], beam, input_ids.device
    memory = model.encode(input_ids, attention_mask)  # (B, S, C)
    state = model.decoding_state(memory.repeat_interleave(K, 0),
                                 attention_mask.repeat_interleave(K, 0), max_len)  # B*K rows
    tokens = torch.full((B * K, 1), start_id, dtype=torch.long, device=dev)  # prefixes
    logp = torch.full((B, K), float("-inf"), device=dev)
    logp[:, 0] = 0.0  # one live hypothesis per sentence at the start
    finished = [_Finished(K) for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    for t in range(max_len):
        scores = torch.log_softmax(model.decode_step(tokens[:, -1:], state).float(), dim=-1)
        V = scores.shape[-1]
        cand = (logp[:, :, None] + scores.view(B, K, V)).view(B, K * V)  # (B, K*V)
        top, index = cand.topk(2 * K, dim=1)  # (B, 2K), best first
        src_beam, tok = index // V, index % V
        is_eos = (tok == eos_id) & torch.isfinite(top)
        _finish(finished, done, is_eos[:, :K], top, src_beam, tokens.view(B, K, -1), t + 1,
                alpha)
        # the K best continuations that do not end in EOS stay alive
        keep = torch.argsort(is_eos.int() * (2 * K) + torch.arange(2 * K, device=dev),
                             dim=1)[:, :K]  # (B, K)
        logp, src_beam, tok = top.gather(1, keep), src_beam.gather(1, keep), tok.gather(1, keep)
        rows = (torch.arange(B, device=dev)[:, None] * K + src_beam).view(-1)  # (B*K,)
        tokens = torch.cat([tokens[rows], tok.view(-1, 1)], dim=1)
        state.reorder(rows)
        best_alive = logp[:, 0] / length_penalty(max_len, alpha)  # an upper bound
        worst = torch.tensor([f.worst() for f in finished], device=dev)
        done |= worst >= best_alive
        local = bool(done.all())
        if (all_done(local) if all_done else local):
            break
    return [_best(f, tokens.view(B, K, -1)[b], logp[b], max_len, alpha, eos_id)
            for b, f in enumerate(finished)]


def _finish(finished, done, ends, top, src_beam, prefixes, length: int, alpha: float) -> None:
    """Record the candidates among the first K that end in EOS (sentences not yet done)."""
    for b, k in ends.nonzero().tolist():
        if not bool(done[b]):
            ids = prefixes[b, int(src_beam[b, k]), 1:].tolist()  # without the start token
            finished[b].add(float(top[b, k]) / length_penalty(length, alpha), ids)


def _best(finished: _Finished, alive: torch.Tensor, logp: torch.Tensor, max_len: int,
          alpha: float, eos_id: int) -> list[int]:
    """The best finished hypothesis, or the best live one if none finished in max_len."""
    if finished.items:
        return finished.items[0][1]
    return _cut(alive[int(logp.argmax())][1:].tolist(), eos_id)


# ---- whole texts -------------------------------------------------------------------------

class Translator:
    """A trained encoder-decoder with its tokenizer: lines of text in, lines of text out."""

    def __init__(self, model: nn.Module, tokenizer_file: str | Path,
                 device: torch.device | str = "cpu"):
        from data_tools.tokenizer import load_tokenizer, tokenizer_info

        if model.cfg.family != "encdec":
            raise ValueError("pretrain.translate needs an encoder-decoder run (model.family "
                             f"encdec), this one is {model.cfg.family!r}")
        self.model, self.device = model.to(device).eval(), torch.device(device)
        self.tok = load_tokenizer(tokenizer_file)
        info = tokenizer_info(self.tok, tokenizer_file)
        self.eos_id, self.pad_id = info.eos_id, info.pad_id  # pad_id starts the decoder (T5)
        self.max_pos = model.cfg.max_seq_len
        self.truncated = 0

    def encode(self, line: str) -> list[int]:
        ids = self.tok.encode(line, add_special_tokens=False).ids
        if len(ids) >= self.max_pos:
            self.truncated += 1
            ids = ids[: self.max_pos - 1]
        return ids + [self.eos_id]

    def _batch(self, sources: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (B, S) ids and the (B, S) mask (True = real token), as the loader."""
        S = max(len(s) for s in sources)
        ids = torch.full((len(sources), S), self.pad_id, dtype=torch.long)
        for i, s in enumerate(sources):
            ids[i, : len(s)] = torch.tensor(s)
        mask = torch.arange(S)[None] < torch.tensor([len(s) for s in sources])[:, None]
        return ids.to(self.device), mask.to(self.device)

    def translate_ids(self, sources: list[list[int]], beam: int = 4, alpha: float = 0.6,
                      max_len: int | None = None) -> list[list[int]]:
        """One batch of tokenized sources (EOS included) -> target ids."""
        ids, mask = self._batch(sources)
        limit = min(self.max_pos, max_len or (max(len(s) for s in sources) + EXTRA_TOKENS))
        if beam == 1:
            return greedy(self.model, ids, mask, limit, self.pad_id, self.eos_id)
        return beam_search(self.model, ids, mask, beam, alpha, limit, self.pad_id, self.eos_id)

    def translate(self, lines: list[str], beam: int = 4, alpha: float = 0.6,
                  max_len: int | None = None, batch_size: int = 32,
                  progress: bool = False) -> list[str]:
        """Translations of `lines`, in order; batches of similar source length."""
        from tqdm import tqdm

        sources = [self.encode(line) for line in lines]
        order = sorted(range(len(lines)), key=lambda i: len(sources[i]))
        out: list[str] = [""] * len(lines)
        with tqdm(total=len(lines), desc="translate", unit="line",
                  disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                hyps = self.translate_ids([sources[i] for i in chunk], beam, alpha, max_len)
                for i, h in zip(chunk, hyps):
                    out[i] = self.tok.decode(h, skip_special_tokens=True)
                bar.update(len(chunk))
        if self.truncated:
            log.warning("%d source line(s) longer than the model's %d positions were cut",
                        self.truncated, self.max_pos)
        return out


def load_translator(run_dir: str | Path, device: str = "cpu", tag: str | None = None
                    ) -> Translator:
    from pretrain.export import load_trained_model
    from pretrain.sample import tokenizer_path

    model, meta = load_trained_model(run_dir, tag)
    tok = tokenizer_path(meta.config)
    if not tok.is_file():
        raise ValueError(f"the run's tokenizer {tok} is missing (data.tokenizer or the shard "
                         "folder's tokenizer.json)")
    return Translator(model, tok, device)


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog or "python -m pretrain.translate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="the run folder (holds checkpoints/)")
    p.add_argument("--input", type=Path, help="source text, one sentence per line (default: "
                   "stdin)")
    p.add_argument("--output", type=Path, help="where the translations go, one per line "
                   "(default: stdout)")
    p.add_argument("--beam", type=int, default=4, help="beam size; 1 is greedy (default 4)")
    p.add_argument("--length-penalty", type=float, default=0.6,
                   help="alpha of GNMT's length penalty ((5 + |Y|) / 6)^alpha (default 0.6)")
    p.add_argument("--max-len", type=int, help="longest translation in tokens (default: "
                   f"source length + {EXTRA_TOKENS}, at most the model's max_seq_len)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences decoded together "
                   "(default 32)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when there is a GPU)")
    p.add_argument("--tag", help="checkpoint tag (default: the newest complete one)")
    args = p.parse_args(argv)
    for name in ("beam", "batch_size", "max_len"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    setup_logging()
    from pretrain.export import ExportError

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        translator = load_translator(args.run_dir, device, args.tag)
        text = args.input.read_text(encoding="utf-8") if args.input else sys.stdin.read()
    except (ExportError, ValueError, OSError) as e:
        log.error("%s", e)
        return 2
    lines = text.splitlines()
    out = translator.translate(lines, args.beam, args.length_penalty, args.max_len,
                               args.batch_size, progress=sys.stderr.isatty())
    result = "".join(line + "\n" for line in out)
    if args.output:
        args.output.write_text(result, encoding="utf-8")
    else:
        sys.stdout.write(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
