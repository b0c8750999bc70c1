"""`train-tokenizer`: train a byte-level BPE tokenizer (HF `tokenizers`) on raw text and write
OUT/tokenizer.json: <|endoftext|> (id 0) ends each document, <|pad|> is id 1, and --sentinels N
adds the T5 sentinels <extra_id_0>... as the last N ids. Deterministic for the same inputs.
For pairs (--source-field/--target-field, --source-file/--target-file) it learns from both
sides: one vocabulary shared by source and target, as the 2017 Transformer's."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from data_tools.atomic import atomic_path
from data_tools.errors import DataToolsError
from data_tools.inputs import (
    Inputs,
    Skip,
    add_input_arguments,
    add_pair_arguments,
    iter_units,
    parse_size,
    resolve_inputs,
)
from data_tools.manifest import TokenizerInfo, sha256_file
from data_tools.progress import Progress
from data_tools.specials import EOS, choose_specials

log = logging.getLogger("data_tools")
PAD = "<|pad|>"


def sentinel(i: int) -> str:
    return f"<extra_id_{i}>"


def add_arguments(p) -> None:
    p.add_argument("--vocab-size", type=int, required=True, metavar="N",
                   help="total vocabulary including special and sentinel tokens")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for tokenizer.json (created)")
    p.add_argument("--sentinels", type=int, default=0, metavar="N",
                   help="add N T5 sentinel tokens <extra_id_0>.. (for encoder-decoder runs)")
    p.add_argument("--max-bytes", default="1GB", metavar="SIZE",
                   help="train on at most this much text, sampled evenly over the whole input")
    p.add_argument("--min-frequency", type=int, default=2, metavar="N",
                   help="minimum pair count for a merge")
    add_input_arguments(p)
    add_pair_arguments(p)


def sampled_texts(inputs: Inputs, text_field: str, max_bytes: int, max_doc_bytes: int,
                  counts: dict) -> Iterator[str]:
    """Documents (or both sides of each pair) in input order, systematically sampled by bytes:
    a record is kept when the running credit (keep fraction x bytes seen) covers it, keep =
    max_bytes / total input bytes. Deterministic, spread over the whole corpus, stops once
    max_bytes of text were yielded."""
    total = sum(f.total_size for f in inputs.files)
    keep = min(1.0, max_bytes / max(total, 1))
    used, credit = 0, 0.0
    bar = Progress(min(total, max_bytes), "tokenizer text")
    for inp in inputs.files:
        for _, rec in iter_units(inp, text_field, max_doc_bytes, inputs.pairs, inputs.pair_mode):
            if isinstance(rec, Skip):
                counts[rec.reason] = counts.get(rec.reason, 0) + 1
                continue
            credit += keep * rec.nbytes
            if credit < 0:
                continue
            credit -= rec.nbytes
            used += rec.nbytes
            counts["documents"] = counts.get("documents", 0) + 1
            bar.update(used)
            yield from rec.texts
            if used >= max_bytes:
                break
        if used >= max_bytes:
            break
    bar.close()
    log.info("read %d bytes of text; learning the merges", used)


def build_trainer(vocab_size: int, sentinels: int, min_frequency: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    bpe_vocab = vocab_size - sentinels
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab, min_frequency=min_frequency, special_tokens=[EOS, PAD],
        # One bar: sampled_texts' "tokenizer text" bar already moves while tokenizers reads
        # the text; its own bars would draw over that one on the same terminal line.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    return tok, trainer


def train(args) -> Path:
    max_bytes, max_doc_bytes = parse_size(args.max_bytes), parse_size(args.max_doc_bytes)
    if args.sentinels < 0:
        raise DataToolsError("--sentinels must be >= 0")
    if args.vocab_size - args.sentinels < 256 + 2:
        raise DataToolsError(f"--vocab-size {args.vocab_size} is too small: byte-level BPE needs "
                             f"256 byte tokens + 2 special + {args.sentinels} sentinels")
    inputs = resolve_inputs(args)
    files = inputs.files
    what = "pairs" if inputs.pair_mode else "documents"
    start = time.perf_counter()
    tok, trainer = build_trainer(args.vocab_size, args.sentinels, args.min_frequency)
    counts: dict[str, int] = {}
    tok.train_from_iterator(
        sampled_texts(inputs, args.text_field, max_bytes, max_doc_bytes, counts), trainer)
    for reason, n in inputs.walk.counts().items():  # files left out by content
        counts[reason] = counts.get(reason, 0) + n
    if counts.get("documents", 0) == 0:
        raise DataToolsError(f"no {what} in {sum(len(f.entries()) for f in files)} input files "
                             f"(skipped: {_fmt_counts(counts)}); no tokenizer written")
    if args.sentinels:
        tok.add_special_tokens([sentinel(i) for i in range(args.sentinels)])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tokenizer.json"
    with atomic_path(path) as tmp:
        tok.save(str(tmp))
    docs = counts.pop("documents")
    log.info("trained byte-level BPE: vocab %d (%d sentinels) on %d %s from %d files in "
             "%.1f s; skipped: %s -> %s", tok.get_vocab_size(), args.sentinels, docs, what,
             sum(len(f.entries()) for f in files), time.perf_counter() - start,
             _fmt_counts(counts), path)
    return path


def _fmt_counts(counts: dict) -> str:
    """'empty 2, invalid_json 1', or 'none' when nothing was skipped."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "documents") or "none"


def resolve_tokenizer_path(path: str) -> Path:
    p = Path(path)
    return p / "tokenizer.json" if p.is_dir() else p


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizers JSON file; DataToolsError naming the file if missing or corrupt.
    Special tokens in document text are encoded as plain text, never as special ids."""
    from tokenizers import Tokenizer
    p = resolve_tokenizer_path(str(path))
    if not p.is_file():
        raise DataToolsError(f"tokenizer file {p} does not exist (train one with "
                             "`arrowtrain data train-tokenizer`)")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a plain Exception on bad JSON
        raise DataToolsError(f"tokenizer file {p} is not a valid tokenizers JSON file: "
                             f"{str(e).splitlines()[0][:200]}") from None
    tok.encode_special_tokens = True
    return tok


def tokenizer_info(tok, path: str | os.PathLike, eos_token: str | None = None,
                   bos_token: str | None = None, announce: bool = False) -> TokenizerInfo:
    """The manifest's `tokenizer` block (design §8): EOS and BOS as data_tools.specials
    chooses them (`eos_token`/`bos_token`: --eos-token/--bos-token). A shard folder's own
    tokenizer.json (a manifest beside it with the same sha256) gives that manifest's ids, so
    export, translate and attention see what the folder was sharded with. `announce`: log the
    choice when it is not our own tokenizer's plain <|endoftext|>."""
    p = resolve_tokenizer_path(str(path))
    sha = sha256_file(p)
    if eos_token is None and bos_token is None and (known := _sharded_with(p, sha)):
        return known
    chosen = choose_specials(tok, p, eos_token, bos_token)
    eos = tok.token_to_id(chosen.eos)
    bos = None if chosen.bos is None else tok.token_to_id(chosen.bos)
    if announce and (chosen.eos != EOS or chosen.add_bos):
        log.info("%s", chosen.describe(eos, bos))
    sentinels, i = [], 0
    while (sid := tok.token_to_id(sentinel(i))) is not None:
        sentinels.append(sid)
        i += 1
    pad = tok.token_to_id(PAD)
    if pad is None:
        log.warning("tokenizer file %s has no %s token: the manifest names %s (id %d) as pad",
                    p, PAD, chosen.eos, eos)
        pad = eos
    return TokenizerInfo(file="tokenizer.json", sha256=sha,
                         vocab_size=tok.get_vocab_size(with_added_tokens=True), eos_id=eos,
                         pad_id=pad, bos_id=bos, sentinel_ids=sentinels,
                         bos_prepended=True if chosen.add_bos else None)


def _sharded_with(tok_file: Path, sha: str) -> TokenizerInfo | None:
    """The tokenizer block of the manifest beside `tok_file`, if it describes this file."""
    from data_tools.folder import read_manifest
    from data_tools.manifest import MANIFEST_NAME, ManifestError
    if not (tok_file.parent / MANIFEST_NAME).is_file():
        return None
    try:
        info = read_manifest(tok_file.parent).tokenizer
    except ManifestError:
        return None
    return info if info.sha256 == sha and info.file == tok_file.name else None
