"""`shard`: tokenize raw text into Arrow IPC shards (docs/design.md §2, §8).

Documents are read in a fixed order (input file, record index); `--workers` processes tokenize
batches, and a single writer takes the results back in that order, so the output bytes never
depend on the worker count. Which documents go to `val` is a function of their bytes' hashes:
a share of them (`--val-fraction`) or a token budget (`--val-tokens`; data_tools.split).
Re-running the same command after a crash resumes from the last finished shard.
`--out s3://BUCKET/PREFIX` shards into a local stage folder and uploads it (data_tools.copy:
every file verified, the manifest last); an interrupted upload resumes the same way.

Pairs (`--source-field/--target-field` on jsonl/parquet records, or `--source-file/
--target-file` aligned text files) make a *pair folder*: shards with `source` and `target`
token columns, one pair per row, no EOS stored on either side (the loader appends one to each,
as it does to documents); the manifest says `"kind": "pairs"`. The val split hashes both sides.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from data_tools.atomic import atomic_path, is_temp_name
from data_tools.encode import Encoder, encode_in_worker, init_worker
from data_tools.errors import DataToolsError
from data_tools.exit_codes import EXIT_OK
from data_tools.folder import read_manifest
from data_tools.inputs import (
    InputFile,
    PairFields,
    Skip,
    add_input_arguments,
    add_pair_arguments,
    excludes_of,
    iter_units,
    parse_size,
    resolve_inputs,
)
from data_tools.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    SPLITS,
    InputEntry,
    Manifest,
    ManifestError,
    SplitInfo,
    TokenizerInfo,
    dtype_for_vocab,
    write_manifest,
)
from data_tools.progress import Progress
from data_tools.remote import is_remote
from data_tools.split import (
    TYPICAL_SEQ_LEN,
    USEFUL_VAL_TOKENS,
    USEFUL_VAL_WINDOWS,
    Doc,
    doc_hash,
    make_split,
    more_val_hint,
    too_small,
)
from data_tools.tokenizer import load_tokenizer, resolve_tokenizer_path, tokenizer_info
from data_tools.walk import Walk
from data_tools.writer import RESUME_DIR, ShardWriter, load_state, state_problem

log = logging.getLogger("data_tools")
BATCH_DOCS = 512
BATCH_BYTES = 1 << 18  # small enough that the last batches keep every worker busy
# Batches handed out per worker before the oldest result is collected. Results are taken in
# input order, so one slow batch (a single large document can be several times the others'
# work) idles every worker that has run out of queued batches; 4 keeps them fed through such
# a batch for a few MB of texts in memory.
IN_FLIGHT_PER_WORKER = 4
SHOW_FIRST_SKIPS = 5
DEFAULT_VAL_FRACTION = 0.005
OUR_ENTRIES = {MANIFEST_NAME, "tokenizer.json", RESUME_DIR, *SPLITS}


def usable_cores() -> int:
    """Cores this process may run on (respects taskset / SLURM cgroups), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def add_arguments(p) -> None:
    p.add_argument("--tokenizer", required=True, metavar="FILE",
                   help="tokenizer.json (or the folder holding it)")
    p.add_argument("--eos-token", metavar="TOKEN",
                   help="the token that ends each document (stored as the manifest's eos_id, "
                        "inserted by the loader); default: the tokenizer's own (a "
                        "tokenizer_config.json beside it, its post_processor, <|endoftext|>, "
                        "</s>, <|end_of_text|>, ...)")
    p.add_argument("--bos-token", metavar="TOKEN",
                   help="a token stored at the start of every document, or `none`; default: "
                        "the one the tokenizer's configuration adds (Llama's <s>), else none")
    p.add_argument("--out", required=True, metavar="DIR", help="output shard folder")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="tokenizer processes (1: tokenize in this process); default: the "
                        f"cores this process may use ({usable_cores()} here)")
    p.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help=f"share of documents (by hash of their bytes) put in the val split "
                        f"(default {DEFAULT_VAL_FRACTION} unless --val-tokens is given)")
    p.add_argument("--val-tokens", type=int, default=None, metavar="N",
                   help="put N tokens in the val split instead: the documents with the smallest "
                        f"hashes until N tokens (held in memory until the end; "
                        f"{USEFUL_VAL_TOKENS} = {USEFUL_VAL_WINDOWS} windows of "
                        f"{TYPICAL_SEQ_LEN} is a useful minimum)")
    p.add_argument("--shard-size", default="256MB", metavar="SIZE",
                   help="target size of one shard file")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first bad record instead of skipping and counting it")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output folder made with other arguments or inputs")
    p.add_argument("--stage", metavar="DIR", default=None,
                   help="--out s3://...: the local folder the shards are written to before "
                        "they are uploaded (default: one per destination under $TMPDIR; kept "
                        "until the upload finished, so an interrupted run resumes)")
    add_input_arguments(p)
    add_pair_arguments(p)


@dataclass
class Run:
    """Everything fixed before work starts (checked, typed), plus the skip counters."""
    files: list[InputFile]
    tokenizer_path: Path
    tok_info: TokenizerInfo
    dtype: str
    text_field: str
    val_fraction: float | None
    val_tokens: int | None
    shard_bytes: int
    max_doc_bytes: int
    strict: bool
    workers: int
    key: dict  # args + tokenizer + inputs: must match to resume or to call a folder finished
    counts: dict = field(default_factory=dict)
    pairs: PairFields | None = None  # the fields of jsonl/parquet pairs
    pair_mode: bool = False  # records are pairs: a pair folder
    walk: Walk = field(default_factory=Walk)  # files --format auto read or left out by content
    kept_one_val: bool = False  # --val-fraction chose none: the smallest-hash one went to val


def _option_problems(args) -> list[str]:
    problems = []
    if args.val_fraction is not None and args.val_tokens is not None:
        problems.append("--val-fraction and --val-tokens both given: pass one (a share of the "
                        "documents, or a token budget)")
    if args.val_fraction is not None and not 0.0 <= args.val_fraction < 1.0:
        problems.append(f"--val-fraction {args.val_fraction} must be in [0, 1)")
    if args.val_tokens is not None and args.val_tokens < 1:
        problems.append(f"--val-tokens {args.val_tokens} must be >= 1")
    if args.workers is not None and args.workers < 1:
        problems.append(f"--workers {args.workers} must be >= 1")
    return problems


def plan(args) -> Run:
    """Check every input before any work: paths, tokenizer, sizes (all problems at once)."""
    problems = _option_problems(args)
    sizes = {}
    for opt in ("shard_size", "max_doc_bytes"):
        try:
            sizes[opt] = parse_size(getattr(args, opt))
        except DataToolsError as e:
            problems.append(f"--{opt.replace('_', '-')}: {e}")
    inputs = tok_info = None
    try:
        inputs = resolve_inputs(args)
    except DataToolsError as e:
        problems.append(str(e))
    try:
        tok_info = tokenizer_info(load_tokenizer(args.tokenizer), args.tokenizer,
                                  args.eos_token, args.bos_token,
                                  announce=inputs is not None and not inputs.pair_mode)
    except DataToolsError as e:
        problems.append(str(e))
    if problems:
        raise DataToolsError("; ".join(problems))
    if inputs.pair_mode and tok_info.bos_prepended:  # a pair's sides start with no BOS
        tok_info = tok_info.model_copy(update={"bos_prepended": None})
    val_fraction = None if args.val_tokens is not None else \
        (DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction)
    cli_args = {"inputs": list(args.inputs), "format": args.format, "txt_mode": args.txt_mode,
                "text_field": args.text_field, "tokenizer": str(args.tokenizer),
                "val_fraction": val_fraction, "val_tokens": args.val_tokens,
                "shard_size_bytes": sizes["shard_size"], "max_doc_bytes": sizes["max_doc_bytes"],
                "exclude": list(excludes_of(args)), "strict": args.strict}
    cli_args.update({k: getattr(args, k) for k in ("eos_token", "bos_token")
                     if getattr(args, k) is not None})  # recorded only when given
    if inputs.pair_mode:  # only for pairs: a document folder's recorded arguments stay as they were
        cli_args.update(source_field=args.source_field, target_field=args.target_field,
                        source_file=list(args.source_file or []),
                        target_file=list(args.target_file or []))
    entries = [InputEntry(**e).model_dump() for f in inputs.files for e in f.entries()]
    key = {"format_version": FORMAT_VERSION, "args": cli_args, "tokenizer_sha256": tok_info.sha256,
           "inputs": entries}
    return Run(inputs.files, resolve_tokenizer_path(args.tokenizer), tok_info,
               dtype_for_vocab(tok_info.vocab_size), args.text_field, val_fraction,
               args.val_tokens, sizes["shard_size"], sizes["max_doc_bytes"], args.strict,
               args.workers or usable_cores(), key, pairs=inputs.pairs,
               pair_mode=inputs.pair_mode, walk=inputs.walk)


def _key_difference(old: dict, new: dict) -> str:
    diffs = [f"--{k.replace('_', '-')} was {old['args'].get(k)!r}, now {v!r}"
             for k, v in new["args"].items() if old.get("args", {}).get(k) != v]
    if old.get("tokenizer_sha256") != new["tokenizer_sha256"]:
        diffs.append("the tokenizer file differs")
    if old.get("inputs") != new["inputs"]:
        diffs.append("the input files (paths, sizes or formats) differ")
    return "; ".join(diffs) or "format version differs"


def _manifest_key(m: Manifest) -> dict:
    return {"format_version": m.format_version, "args": m.args,
            "tokenizer_sha256": m.tokenizer.sha256,
            "inputs": [i.model_dump() for i in m.inputs]}


def _ours(name: str) -> bool:
    return name in OUR_ENTRIES or is_temp_name(name)


def prepare_outdir(out: Path, key: dict, overwrite: bool) -> str | dict | None:
    """'done' if the folder already holds this exact result; a checkpoint dict to resume from;
    None to start fresh. Refuses a folder made with other arguments unless overwrite."""
    if not out.exists():
        out.mkdir(parents=True)
        return None
    entries = set(os.listdir(out))
    if (out / MANIFEST_NAME).is_file() and not overwrite:
        try:
            old = _manifest_key(read_manifest(out))
        except ManifestError as e:
            raise DataToolsError(f"{e}; pass --overwrite to replace {out}") from None
        if old == key:
            return "done"
        raise DataToolsError(f"{out} holds shards made with other arguments "
                             f"({_key_difference(old, key)}); pass --overwrite to replace it")
    elif (state := load_state(out)) is not None and not overwrite:
        if state.get("run_key") != key:
            raise DataToolsError(f"{out} holds an interrupted run with other arguments "
                                 f"({_key_difference(state.get('run_key', {}), key)}); "
                                 "pass --overwrite to replace it")
        problem = state_problem(out, state)
        if problem is None:
            return state
        log.warning("cannot resume (%s); starting over", problem)
    elif (foreign := sorted(n for n in entries if not _ours(n))) and not overwrite:
        raise DataToolsError(f"{out} exists and is not a shard folder (it holds "
                             f"{foreign[:3]}); pass --overwrite or use another --out")
    _remove_ours(out)
    return None


def _remove_ours(out: Path) -> None:
    for name in os.listdir(out):
        if _ours(name):
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink()


@dataclass
class Batch:
    texts: list[str] = field(default_factory=list)  # a pair adds its source, then its target
    # one entry per record in input order: (file_index, record_index, (hash, text_bytes) | Skip)
    items: list = field(default_factory=list)
    nbytes: int = 0
    progress_bytes: int = 0  # input bytes behind us once this batch is done (for the bar)


def read_batches(run: Run, cursor: tuple[int, int]) -> Iterator[Batch]:
    """Records from `cursor` on, grouped into batches; bad records are logged (first few) or,
    with --strict, raise at once."""
    batch, done_bytes, shown = Batch(), 0, 0
    for fi, inp in enumerate(run.files):
        if fi < cursor[0]:
            done_bytes += inp.total_size
            continue
        file_bytes = 0
        for ri, rec in iter_units(inp, run.text_field, run.max_doc_bytes, run.pairs,
                                  run.pair_mode):
            if (fi, ri) < cursor:
                continue
            if isinstance(rec, Skip):
                if run.strict:
                    raise DataToolsError(f"{rec.message()} (--strict)")
                if shown < SHOW_FIRST_SKIPS:
                    log.warning("skipped %s", rec.message())
                    shown += 1
                batch.items.append((fi, ri, rec))
                continue
            batch.items.append((fi, ri, (doc_hash(rec.key), rec.nbytes)))
            batch.texts += rec.texts
            batch.nbytes += rec.nbytes
            file_bytes += rec.nbytes
            if len(batch.texts) >= BATCH_DOCS or batch.nbytes >= BATCH_BYTES:
                batch.progress_bytes = done_bytes + min(file_bytes, inp.total_size)
                yield batch
                batch = Batch()
        done_bytes += inp.total_size
    batch.progress_bytes = done_bytes
    yield batch


def tokenized(batches: Iterator[Batch], tokenizer: str, dtype: str, workers: int,
              bos_id: int | None = None):
    """Yield (batch, (tokens, lengths)) in input order (each text starting with bos_id when
    given); at most IN_FLIGHT_PER_WORKER batches per worker in flight."""
    if workers == 1:
        enc = Encoder(tokenizer, dtype, bos_id=bos_id)
        for b in batches:
            yield b, enc.encode(b.texts)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=init_worker, initargs=(tokenizer, dtype, bos_id)) as pool:
        pending = deque()
        for b in batches:
            pending.append((b, pool.apply_async(encode_in_worker, (b.texts,))))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                b0, res = pending.popleft()
                yield b0, res.get()
        while pending:
            b0, res = pending.popleft()
            yield b0, res.get()


def _place(writer: ShardWriter, routed: list[tuple[str, Doc]]) -> bool:
    """Hand documents to their splits' buffers, writing each shard that fills; True if any."""
    wrote = False
    for split, doc in routed:
        if writer.add(split, doc):
            writer.flush(split)
            wrote = True
    return wrote


def write_all(run: Run, out: Path, state: dict | None) -> ShardWriter:
    """The single writer: documents in input order, a checkpoint after every shard."""
    writer = ShardWriter(out, run.dtype, run.shard_bytes, pairs=run.pair_mode)
    chooser = make_split(run.val_fraction, run.val_tokens)
    cursor = (0, 0)
    if state:
        chooser.restore(writer.restore(state))
        cursor, run.counts = tuple(state["cursor"]), dict(state["skipped"])
    total = sum(f.total_size for f in run.files)
    per_record = 2 if run.pair_mode else 1  # texts tokenized per record
    bar = Progress(total, "shard")
    t0, docs, toks = time.perf_counter(), 0, 0
    batches = read_batches(run, cursor)
    bos = run.tok_info.bos_id if run.tok_info.bos_prepended else None
    for batch, (flat, lengths) in tokenized(batches, str(run.tokenizer_path), run.dtype,
                                            run.workers, bos):  # (N_tokens,), (D,) per batch
        start, di = 0, 0
        for fi, ri, what in batch.items:
            if isinstance(what, Skip):
                run.counts[what.reason] = run.counts.get(what.reason, 0) + 1
                continue
            n = lengths[di:di + per_record]  # (1,) or (2,): source, target
            end = start + int(n.sum())
            doc = Doc(what[0], (fi, ri), flat[start:end], what[1],
                      int(n[0]) if run.pair_mode else None)
            start, di = end, di + per_record
            if _place(writer, chooser.offer(doc)):
                writer.checkpoint(run.key, (fi, ri + 1), dict(run.counts), chooser.held())
        docs, toks = docs + di // per_record, toks + start
        dt = max(time.perf_counter() - t0, 1e-9)
        bar.update(batch.progress_bytes, f"{docs / dt:,.0f} docs/s, {toks / dt:,.0f} tok/s")
    bar.close()
    _place(writer, chooser.finish())
    run.kept_one_val = getattr(chooser, "kept_one", False)
    for split in SPLITS:
        writer.flush(split)
    return writer


def all_skipped(run: Run) -> dict[str, int]:
    """Records skipped while reading plus files left out by content, by reason."""
    counts = dict(run.counts)
    for reason, n in run.walk.counts().items():
        counts[reason] = counts.get(reason, 0) + n
    return dict(sorted(counts.items()))


def build_manifest(run: Run, writer: ShardWriter, timing: dict) -> Manifest:
    return Manifest.new(tokenizer=run.tok_info, dtype=run.dtype,
                        shards={name: buf.shards for name, buf in writer.splits.items()},
                        inputs=run.key["inputs"], skipped=all_skipped(run),
                        skipped_files=run.walk.skipped_files(), args=run.key["args"],
                        timing=timing, pairs=run.pair_mode)


def _remove_strays(out: Path, manifest: Manifest) -> None:
    keep = {s.file for _, s in manifest.shards()}
    for split in SPLITS:
        for p in (out / split).iterdir():
            if f"{split}/{p.name}" not in keep:
                p.unlink()
    shutil.rmtree(out / RESUME_DIR, ignore_errors=True)


def copy_tokenizer(src: Path, out: Path) -> None:
    with atomic_path(out / "tokenizer.json") as tmp:
        shutil.copyfile(src, tmp)


def missing_dirs(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    out = []
    while not path.exists():
        out.append(path)
        if path.parent == path:
            break
        path = path.parent
    return out


def main(args) -> int:
    if is_remote(args.out):
        return shard_to_remote(args)
    run = plan(args)
    out = Path(args.out)
    created = missing_dirs(out.absolute())
    state = prepare_outdir(out, run.key, args.overwrite)
    if state == "done":
        log.info("%s already holds these shards (same arguments, inputs and tokenizer); "
                 "nothing to do", out)
        return EXIT_OK
    for split in SPLITS:
        (out / split).mkdir(exist_ok=True)
    (out / RESUME_DIR).mkdir(exist_ok=True)
    copy_tokenizer(run.tokenizer_path, out)
    if state:
        log.info("resuming %s from %d finished shards", out,
                 sum(len(v) for v in state["shards"].values()))
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    writer = write_all(run, out, state)
    wall_s, cpu_s = time.perf_counter() - t0, cpu_seconds() - cpu0
    try:
        return finish(run, writer, out, (wall_s, cpu_s), resumed=state is not None)
    except NothingToWrite:
        _remove_ours(out)  # leave nothing behind that looks like output
        for d in created:
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise


def shard_to_remote(args) -> int:
    """--out s3://BUCKET/PREFIX: shard into a local stage folder (resumable as always), then
    upload it with `copy` (verified, the manifest last; resumes too), then remove the stage.
    Nothing to do when the destination already holds shards of these very arguments."""
    from data_tools.copy import copy_folder, remove_stage, stage_dir
    from data_tools.remote import RemoteError
    from data_tools.remote_folder import read_remote_manifest

    url = args.out.rstrip("/")
    run = plan(args)
    try:
        done = _manifest_key(read_remote_manifest(url)) == run.key
    except (ManifestError, RemoteError) as e:
        if isinstance(e, RemoteError) and e.kind != "key":
            raise
        done = False
    if done and not args.overwrite:
        log.info("%s already holds these shards (same arguments, inputs and tokenizer); "
                 "nothing to do", url)
        return 0
    stage = Path(args.stage) if args.stage else stage_dir(url)
    log.info("sharding into the local stage %s, then uploading to %s", stage, url)
    local = argparse.Namespace(**{**vars(args), "out": str(stage)})
    main(local)
    copy_folder(str(stage), url, workers=max(1, min(8, run.workers)), overwrite=args.overwrite)
    remove_stage(stage)
    return 0


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the tokenizer workers)."""
    import resource
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _unit(run: Run) -> str:
    return "pairs" if run.pair_mode else "documents"


class NothingToWrite(DataToolsError):
    """No document, or none left for train: the output folder is removed again."""


def _check_splits(run: Run, sp: dict, skipped: str) -> None:
    docs, what = sum(s.documents for s in sp.values()), _unit(run)
    if docs == 0:
        files = sum(len(f.entries()) for f in run.files)
        raise NothingToWrite(f"no {what} in {files} input files (skipped: {skipped}); nothing "
                             "written")
    if sp["train"].documents == 0:
        how = f"--val-tokens {run.val_tokens}" if run.val_tokens is not None else \
            f"--val-fraction {run.val_fraction}"
        raise NothingToWrite(f"{how} put all {docs} {what} ({sp['val'].tokens} tokens) in "
                             "the val split, none is left for train; pass a smaller "
                             f"{how.split()[0]}; nothing written")
    train, val = sp["train"], sp["val"]
    if train.tokens < val.tokens and val.documents > 1:  # one val document: the least there is
        how = f"--val-tokens {run.val_tokens}" if run.val_tokens is not None else \
            f"--val-fraction {run.val_fraction}"
        total = train.tokens + val.tokens
        raise NothingToWrite(
            f"{how} leaves train smaller than val: train {train.documents} {what} "
            f"({train.tokens:,} tokens), val {val.documents} {what} ({val.tokens:,} tokens) of "
            f"{total:,} tokens; pass a smaller {how.split()[0]} (--val-tokens "
            f"{max(1, total // 10)} is a tenth); nothing written")


def _warn_small_val(run: Run, val: SplitInfo, total_tokens: int) -> None:
    how = f"--val-tokens {run.val_tokens}" if run.val_tokens is not None else \
        f"--val-fraction {run.val_fraction}"
    if run.pair_mode:  # a pair is one sample: count pairs, not windows of tokens
        if val.documents < USEFUL_VAL_WINDOWS:
            log.warning("the val split holds %d pairs (%s): fewer than %d, too few for a stable "
                        "validation loss or BLEU; pass a larger --val-fraction or --val-tokens",
                        val.documents, how, USEFUL_VAL_WINDOWS)
        return
    if not too_small(val.tokens):
        return
    hint = more_val_hint(USEFUL_VAL_TOKENS) if total_tokens >= USEFUL_VAL_TOKENS * 10 \
        else f"the corpus holds only {total_tokens:,} tokens: shard more text or " \
             f"{more_val_hint(total_tokens // 10)} (a tenth)"
    log.warning("the val split holds %d documents, %s tokens (%s): fewer than %s tokens = %d "
                "windows of %d, too few for a stable validation loss; %s", val.documents,
                f"{val.tokens:,}", how, f"{USEFUL_VAL_TOKENS:,}", USEFUL_VAL_WINDOWS,
                TYPICAL_SEQ_LEN, hint)


def finish(run: Run, writer: ShardWriter, out: Path, seconds: tuple[float, float],
           resumed: bool) -> int:
    wall_s, cpu_s = seconds
    skipped = ", ".join(f"{k} {v}" for k, v in all_skipped(run).items()) or "none"
    timing = {"wall_s": round(wall_s, 3), "cpu_s": round(cpu_s, 3), "workers": run.workers,
              "resumed": resumed}
    manifest = build_manifest(run, writer, timing)
    sp = manifest.splits
    _check_splits(run, sp, skipped)
    docs, tokens = sum(s.documents for s in sp.values()), sum(s.tokens for s in sp.values())
    manifest.timing.update(documents_per_sec=round(docs / wall_s, 1),
                  tokens_per_sec=round(tokens / wall_s, 1),
                  input_mb_per_sec=round(sum(f.total_size for f in run.files) / 1e6 / wall_s, 3))
    _remove_strays(out, manifest)
    write_manifest(out, manifest)
    log.info("%s: %d %s (train %d, val %d), %d tokens (val %s), %d shards; skipped: "
             "%s; %.1f s, %.0f tokens/s%s", out, docs, _unit(run), sp["train"].documents,
             sp["val"].documents, tokens, f"{sp['val'].tokens:,}",
             sum(len(v.shards) for v in sp.values()), skipped, wall_s, tokens / wall_s,
             " (resumed)" if resumed else "")
    if run.kept_one_val:
        log.warning("--val-fraction %s put none of the %d %s in val: kept the one with the "
                    "smallest hash there, so that the val split is not empty (--val-fraction 0 "
                    "asks for none)", run.val_fraction, docs, _unit(run))
    _warn_small_val(run, sp["val"], tokens)
    return EXIT_OK
