"""Which token ends a document (EOS) and which, if any, starts one (BOS), for any tokenizer:
our own (`<|endoftext|>`), GPT-2's, Llama / TinyLlama's (`</s>`, `<s>`), Llama 3's
(`<|end_of_text|>`, `<|begin_of_text|>`), or one named on the command line.

EOS, first that applies:
1. `--eos-token TOKEN`;
2. `eos_token` of a `tokenizer_config.json` beside the tokenizer.json (a string, or an
   AddedToken object with `content`), as transformers saves it;
3. a special token at the end of the tokenizer.json's own post_processor template (`$A </s>`);
4. the first of EOS_NAMES the vocabulary has.
Else an error listing the tokenizer's special tokens and naming --eos-token.

BOS, the one the model family expects at the start of each document (`shard` stores it there,
like `add_special_tokens` would; EOS is never stored, the loader inserts it):
1. `--bos-token TOKEN` (`--bos-token none`: no BOS);
2. `add_bos_token` of tokenizer_config.json, with its `bos_token` (or the template's);
3. a special token at the start of the post_processor template (`<s> $A`; Llama 3 wraps it in a
   Sequence with ByteLevel).
Otherwise documents start with no BOS, and the manifest's `bos_id` is still the tokenizer's
BOS token when it names one (tokenizer_config's `bos_token`, or one of BOS_NAMES).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from data_tools.errors import DataToolsError

EOS = "<|endoftext|>"  # ours (train-tokenizer) and GPT-2's
EOS_NAMES = (EOS, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
BOS_NAMES = ("<|bos|>", "<s>", "<|begin_of_text|>", "<bos>")
NO_BOS = "none"
CONFIG_NAME = "tokenizer_config.json"
SHOW_SPECIALS = 20


@dataclass(frozen=True)
class Specials:
    eos: str
    eos_from: str  # where it came from, for the log
    bos: str | None
    add_bos: bool  # every document starts with `bos`
    bos_from: str

    def describe(self, eos_id: int, bos_id: int | None) -> str:
        start = f"each document starts with {self.bos} (id {bos_id}, from {self.bos_from})" \
            if self.add_bos else "documents start with no BOS" + (
                f" ({self.bos_from})" if self.bos_from else "")
        return f"end of document: {self.eos} (id {eos_id}, from {self.eos_from}); {start}"


def _token_text(value) -> str | None:
    """A tokenizer_config.json token: "</s>" or {"content": "</s>", ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _special_name(piece, specials: dict) -> str | None:
    """The token of a template piece {"SpecialToken": {"id": "<s>"}} (None: not special)."""
    sid = piece.get("SpecialToken", {}).get("id") if isinstance(piece, dict) else None
    tokens = (specials.get(sid) or {}).get("tokens") if sid else None
    return tokens[0] if tokens else sid


def _template_ends(tok_json: dict) -> tuple[str | None, str | None]:
    """(first, last) special token of the post_processor's single-sequence template, looking
    inside a Sequence of processors; None where the template has none there."""
    proc = tok_json.get("post_processor") or {}
    procs = (proc.get("processors") or []) if proc.get("type") == "Sequence" else [proc]
    for p in procs:
        if isinstance(p, dict) and p.get("type") == "TemplateProcessing" and p.get("single"):
            single, specials = p["single"], p.get("special_tokens") or {}
            return _special_name(single[0], specials), _special_name(single[-1], specials)
    return None, None


def special_token_list(tok_json: dict) -> list[str]:
    """The tokenizer's special tokens (its added tokens marked special), in id order."""
    added = [t for t in tok_json.get("added_tokens") or [] if isinstance(t, dict)]
    return [t.get("content") for t in sorted(added, key=lambda t: t.get("id", 0))
            if t.get("special")]


def _listing(tok_json: dict) -> str:
    names = special_token_list(tok_json)
    if not names:
        return "it has no special tokens"
    more = f" and {len(names) - SHOW_SPECIALS} more" if len(names) > SHOW_SPECIALS else ""
    return f"its special tokens: {', '.join(names[:SHOW_SPECIALS])}{more}"


def choose_specials(tok, tok_file: Path, eos_token: str | None = None,
                    bos_token: str | None = None) -> Specials:
    """EOS and BOS of the tokenizer `tok` loaded from `tok_file` (see the module doc);
    DataToolsError naming the file and listing its special tokens when no EOS fits."""
    tok_json = _read_json(tok_file)
    config = _read_json(tok_file.parent / CONFIG_NAME)
    first, last = _template_ends(tok_json)
    known = [name for name in (eos_token, bos_token) if name and name != NO_BOS]
    for name, option in zip(known, ("--eos-token", "--bos-token")):
        if tok.token_to_id(name) is None:
            raise DataToolsError(f"{option} {name!r} is not a token of {tok_file}; "
                                 f"{_listing(tok_json)}")
    eos, eos_from = _choose_eos(tok, eos_token, config, last)
    if eos is None:
        raise DataToolsError(
            f"tokenizer file {tok_file} has no end-of-document token: no eos_token in a "
            f"{CONFIG_NAME} beside it, no special token ending its post_processor template, "
            f"none of {', '.join(EOS_NAMES)}; {_listing(tok_json)}; name one with "
            "--eos-token TOKEN")
    bos, add_bos, bos_from = _choose_bos(tok, bos_token, config, first)
    return Specials(eos, eos_from, bos, add_bos, bos_from)


def _choose_eos(tok, given: str | None, config: dict, last: str | None
                ) -> tuple[str | None, str]:
    if given:
        return given, "--eos-token"
    from_config = _token_text(config.get("eos_token"))
    if from_config and tok.token_to_id(from_config) is not None:
        return from_config, f"{CONFIG_NAME} eos_token"
    if last and tok.token_to_id(last) is not None:
        return last, "the end of its post_processor template"
    name = next((n for n in EOS_NAMES if tok.token_to_id(n) is not None), None)
    return name, "its vocabulary"


def _choose_bos(tok, given: str | None, config: dict, first: str | None
                ) -> tuple[str | None, bool, str]:
    """(bos token or None, prepend it to every document, where that came from)."""
    if given:
        return (None, False, "--bos-token none") if given == NO_BOS else \
            (given, True, "--bos-token")
    from_config = _token_text(config.get("bos_token"))
    from_config = from_config if from_config and tok.token_to_id(from_config) is not None \
        else None
    first = first if first and tok.token_to_id(first) is not None else None
    if isinstance(config.get("add_bos_token"), bool):
        bos = from_config or first
        return bos, config["add_bos_token"] and bos is not None, \
            f"{CONFIG_NAME} add_bos_token {str(config['add_bos_token']).lower()}"
    if first:
        return first, True, "the start of its post_processor template"
    bos = from_config or next((n for n in BOS_NAMES if tok.token_to_id(n) is not None), None)
    return bos, False, ""
