"""arrowtrain translate RUNDIR [--input FILE] [--beam 4] [--length-penalty 0.6] [--max-len N]

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
import math
import sys
from pathlib import Path

import torch
from torch import nn

from arrowtrain.cmdline import command_parser, number
from pretrain.exit_codes import EXIT_CONFIG, EXIT_OK
from pretrain.logs import setup_logging
from pretrain.model.generate import beam_search, greedy

log = logging.getLogger("arrowtrain.commands.translate")
EXTRA_TOKENS = 50  # the paper's maximum output length: input length + 50


class Translator:
    """A trained encoder-decoder with its tokenizer: lines of text in, lines of text out."""

    def __init__(self, model: nn.Module, tokenizer_file: str | Path,
                 device: torch.device | str = "cpu"):
        from data_tools.tokenizer import load_tokenizer, tokenizer_info

        if model.cfg.family != "encdec":
            raise ValueError("arrowtrain translate needs an encoder-decoder run (model.family "
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
    from pretrain.interop.export import load_trained_model, tokenizer_path

    model, meta = load_trained_model(run_dir, tag)
    tok = tokenizer_path(meta.config)
    if not tok.is_file():
        raise ValueError(f"the run's tokenizer {tok} is missing (data.tokenizer or the shard "
                         "folder's tokenizer.json)")
    return Translator(model, tok, device)


def _device(text: str) -> str:
    """--device: cpu, cuda or cuda:N (an argparse type: a bad one is a usage error, exit 2)."""
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not cpu, cuda or cuda:N")
    if text != "cpu" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no GPU is visible here (use cpu)")
    if text.startswith("cuda:") and int(text[5:]) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: only {torch.cuda.device_count()} GPU(s) "
                                         "are visible")
    return text


# --length-penalty: a finite alpha >= 0 (nan or inf would rank hypotheses at random)
_length_penalty = number(float, lambda a: math.isfinite(a) and a >= 0, "a finite number >= 0")


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    p = command_parser(prog or "python -m arrowtrain.commands.translate", __doc__)
    p.add_argument("run_dir", type=Path, help="the run folder (holds checkpoints/)")
    p.add_argument("--input", type=Path, help="source text, UTF-8, one sentence per line "
                   "(lines end at \\n or \\r\\n only, as `arrowtrain data shard` reads them; "
                   "default: stdin)")
    p.add_argument("--output", type=Path, help="where the translations go, one per line "
                   "(default: stdout); a regular file or a new path, replaced whole at the end")
    p.add_argument("--beam", type=int, default=4, help="beam size; 1 is greedy (default 4)")
    p.add_argument("--length-penalty", type=_length_penalty, default=0.6,
                   help="alpha >= 0 of GNMT's length penalty ((5 + |Y|) / 6)^alpha (default 0.6)")
    p.add_argument("--max-len", type=int, help="longest translation in tokens (default: "
                   f"source length + {EXTRA_TOKENS}, at most the model's max_seq_len)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences decoded together "
                   "(default 32)")
    p.add_argument("--device", type=_device, help="cpu, cuda or cuda:N (default: cuda when "
                   "there is a GPU)")
    p.add_argument("--tag", help="checkpoint tag (default: the newest complete one)")
    args = p.parse_args(argv)
    for name in ("beam", "batch_size", "max_len"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def read_input_lines(path: Path | None) -> list[str]:
    """The source lines of --input (stdin when None), split as data shard splits them;
    ValueError naming the file and line of bytes that are not UTF-8."""
    from data_tools.errors import DataToolsError
    from data_tools.inputs import decode_lines

    raw = path.read_bytes() if path is not None else sys.stdin.buffer.read()
    try:
        return decode_lines(raw, str(path) if path is not None else "<stdin>")
    except DataToolsError as e:
        raise ValueError(str(e)) from None


def output_text(translations: list[str]) -> str:
    """One line per translation: a line end the tokenizer decoded inside one becomes a space,
    so that line i of the output is always the translation of input line i."""
    return "".join(t.replace("\r\n", " ").replace("\n", " ").replace("\r", " ") + "\n"
                   for t in translations)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    setup_logging()
    from data_tools.atomic import check_output_file, write_atomic
    from pretrain.interop.export import ExportError

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:  # every input checked before the model is loaded and a line translated
        if args.output is not None:
            check_output_file(args.output, "--output")
        lines = read_input_lines(args.input)
        translator = load_translator(args.run_dir, device, args.tag)
    except (ExportError, ValueError, OSError) as e:
        log.error("%s", e)
        return EXIT_CONFIG
    out = translator.translate(lines, args.beam, args.length_penalty, args.max_len,
                               args.batch_size, progress=sys.stderr.isatty())
    if args.output:
        try:
            write_atomic(check_output_file(args.output, "--output"), output_text(out))
        except (ValueError, OSError) as e:  # changed while translating
            log.error("--output %s: %s", args.output, e)
            return EXIT_CONFIG
    else:
        sys.stdout.write(output_text(out))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
