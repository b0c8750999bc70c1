"""Helpers for data_tools tests: real corpora from the Python stdlib, the real CLI in-process
or as a subprocess, and a byte comparison of shard folders."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

from data_tools.__main__ import main as cli_main

REPO = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
TRICKY = [
    "  leading spaces and trailing\n\n", "windows\r\nline ends\r\n", "emoji 🎉 and 中文 and é (e\u0301)",
    "a literal <|endoftext|> and <|pad|> inside text", "\ttabs\tand\u00a0nbsp\u200d zwj",
    "NUL \u0000 inside JSON text", "x" * 300 + " " + "y" * 5,
]


def stdlib_texts(max_bytes: int, piece_chars: int = 1000) -> list[str]:
    """Deterministic real text: stdlib .py files in sorted order, cut at line ends into
    documents of about piece_chars, until max_bytes."""
    texts, total = [], 0
    for p in sorted(glob.glob(str(STDLIB / "*.py"))):
        text, start = Path(p).read_text(encoding="utf-8"), 0
        while start < len(text):
            end = text.find("\n", start + piece_chars)
            end = len(text) if end < 0 else end + 1
            piece, start = text[start:end], end
            if total + len(piece) > max_bytes:
                return texts
            if piece.strip():
                texts.append(piece)
                total += len(piece)
    return texts


def write_jsonl(path: Path, texts, field: str = "text") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({field: t}) + "\n")
    return path


def cli(*args) -> int:
    """The real command line, in this process."""
    return cli_main([str(a) for a in args])


def shard_folder(root: Path, corpus, tokenizer, shard_size: str) -> Path:
    """ROOT/data: `corpus` sharded by the real CLI (one worker, a tenth in val)."""
    out = root / "data"
    assert cli("shard", corpus, "--tokenizer", tokenizer, "--out", out, "--workers", "1",
               "--shard-size", shard_size, "--val-fraction", "0.1") == 0
    return out


def cli_subprocess(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_tools", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, **kw)


def read_tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder -> bytes; manifest.json with its 'timing' key removed."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "manifest.json":
                m = json.loads(data)
                m.pop("timing")
                data = json.dumps(m, sort_keys=True).encode()
            out[str(p.relative_to(folder))] = data
    return out


# ---- tokenizers of other models (issue 18 item 2) ------------------------------------------

SENTENCES = [f"the {a} {n} sees the {m} ." for a in ("red", "small", "old", "quiet")
             for n in ("cat", "dog", "bird", "tree") for m in ("house", "river", "stone")]


def llama_tokenizer(folder, config: dict | None = None, specials=("<unk>", "<s>", "</s>"),
                    template: str | None = "<s> $A"):
    """A Llama/TinyLlama-style tokenizer.json (SentencePiece-like BPE, `<s>` prepended by its
    post_processor) and, when given, a tokenizer_config.json beside it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(vocab_size=90,
                                                           special_tokens=list(specials)))
    if template:
        first = template.split()[0]
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(first, tok.token_to_id(first))])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder / "tokenizer.json"


def llama3_tokenizer(folder):
    """A Llama-3-style tokenizer.json: byte-level BPE, then special tokens, and a
    post_processor Sequence(ByteLevel, TemplateProcessing('<|begin_of_text|> $A'))."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    bot = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      special_tokens=[("<|begin_of_text|>", bot)])])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def shard_rows(out):
    import pyarrow as pa

    from data_tools.folder import read_manifest
    rows = []
    for _, s in read_manifest(out).shards():
        with pa.memory_map(str(out / s.file)) as src:
            rows += pa.ipc.open_file(src).read_all().column("tokens").to_pylist()
    return rows
