"""Pre-flight: every check that can run before a rank starts, in one function.

`check_run(config, overrides, world_size)` reads and validates the run config (malformed
overrides, every section, the checks across sections: `pretrain.train.config`) and then checks
it against the data folders' manifests: the folder exists and is a finished shard folder, the
folders of a mixture share one tokenizer, `data.tokenizer` is the one the shards were written
with, the model's vocabulary holds the tokenizer's, the folders are of the kind the objective
reads and pass its own checks (span corruption: its sentinels), each split holds at least one
sample (the objective's count, the loader's function) and the validation split fills one
evaluation batch (micro-batch × ranks), and an `init_from` file fits the model (its shapes and the keys that
change what they compute: pretrain/train/init_from.py). When the run folder holds a checkpoint
to resume from, the model must build its parameter shapes (a change is named key by key,
`model.n_layers: 4 → 6`) and train.max_steps must not lie below its step (`resume_findings`,
which also words the jump of the learning rate a changed schedule makes). Every problem comes
out in one ConfigError that says which came from the command line. It returns the config as the
ranks will run it: paths resolved against the working directory and `model.vocab_size` filled in from the
init_from file's model or else from the tokenizer.

The launchers call it before starting any rank; `pretrain.train` calls it again before DeepSpeed
starts. It imports neither torch nor DeepSpeed, so a launcher answers in a fraction of a second.
The deep checks of the shard files themselves (sizes, offsets, token ids) stay in the loader.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_tools.folder import read_manifest
from data_tools.manifest import Manifest, ManifestError, sha256_file
from data_tools.remote import RemoteError, is_remote
from pretrain.configlib import ConfigError, Problem, config_changes
from pretrain.data.config import DataConfig
from pretrain.data.layout import eval_batch_problem
from pretrain.model.config import padded_vocab_size, saved_model_config
from pretrain.model.shapes import parameter_shapes
from pretrain.objectives import SplitCounts, objective_for
from pretrain.train.checkpoint_meta import CheckpointMeta, find_resume_tag, read_meta
from pretrain.train.config import RunConfig, check_run_config, config_to_dict, data_parallel_size
from pretrain.train.init_from import init_problems, init_vocab
from pretrain.train.schedule import lr_jump

SPLITS = ("train", "val")


@dataclass(frozen=True)
class FolderFacts:
    """What the checks need from one shard folder (read from its manifest)."""

    folder: Path | str                  # str: an s3:// address
    vocab_size: int
    tokenizer_sha256: str
    tokenizer_file: Path
    dtype: str
    sentinels: int
    stream_tokens: dict[str, int]  # per split: tokens + one EOS per document
    pairs: bool = False  # a pair folder (source -> target)
    rows: dict[str, int] | None = None  # per split: documents, or pairs
    manifest: Manifest | None = None    # s3:// folders: for the cache size check
    tokenizer_bytes: int = 0            # s3:// folders: its tokenizer.json (held in the cache)

    @property
    def kind(self) -> str:
        return "pairs" if self.pairs else "documents"

    def counts(self, split: str) -> SplitCounts:
        """The split as the objective's sample count sees it (the loader's come from the files)."""
        return SplitCounts(stream_tokens=self.stream_tokens[split], rows=self.rows[split])


def read_folder(folder: Path | str, remote_timeout: float | None = None) -> FolderFacts:
    """The one place this module reads a manifest (the typed `Manifest`; raises ManifestError
    naming the file and key on a malformed one; an s3:// folder's through object storage,
    RemoteError naming the endpoint, credentials, bucket or key that fails)."""
    remote = is_remote(str(folder))
    if remote:
        from data_tools.remote_folder import START_DEADLINE_S, open_remote_folder

        deadline = min(START_DEADLINE_S, remote_timeout or START_DEADLINE_S)
        opened = open_remote_folder(str(folder), deadline_s=deadline)  # + every shard
        m, tok_bytes = opened.manifest, opened.objects[opened.manifest.tokenizer.file]
    else:
        m, tok_bytes = read_manifest(folder), 0
    tok = m.tokenizer
    return FolderFacts(
        folder=folder, vocab_size=tok.vocab_size, tokenizer_sha256=tok.sha256,
        tokenizer_file=None if remote else folder / (tok.file or "tokenizer.json"),
        dtype=m.dtype, manifest=m if remote else None, tokenizer_bytes=tok_bytes,
        sentinels=len(tok.sentinel_ids), stream_tokens={s: m.splits[s].tokens + m.splits[s].documents if s in m.splits else 0
                       for s in SPLITS},
        pairs=m.is_pairs, rows={s: m.splits[s].documents for s in SPLITS})


def resolve_paths(cfg: RunConfig) -> RunConfig:
    """Relative run_dir, data.path and data.tokenizer resolve against the working directory."""
    absolute = os.path.abspath  # no symlink resolution: keep the names the user gave
    data = _resolve_data(cfg.data)
    init = Path(absolute(cfg.init_from)) if cfg.init_from is not None else None
    return cfg.model_copy(update={"run_dir": Path(absolute(cfg.run_dir)), "data": data,
                                  "init_from": init})


def _resolve_data(data: DataConfig) -> DataConfig:
    def absolute(path: str) -> str:   # s3:// addresses stay as they are
        return path if is_remote(path) else os.path.abspath(path)

    data = data.model_copy()
    if isinstance(data.path, str):
        data.path = absolute(data.path)
    else:
        data.path = [e.model_copy(update={"path": absolute(e.path)}) for e in data.path]
    if data.tokenizer:
        data.tokenizer = absolute(data.tokenizer)
    if data.cache_dir:
        data.cache_dir = absolute(data.cache_dir)
    data.shuffle_block_shards = data.block_shards()   # "auto" resolved: recorded, resumed
    return data


def vocab_problem(model_vocab: int | None, data_vocab: int, where: Path | str) -> Problem | None:
    if model_vocab is not None and model_vocab < data_vocab:
        return Problem(f"model.vocab_size ({model_vocab}) is smaller than the vocabulary of the "
                       f"tokenizer of {where} ({data_vocab}): raise it, or set "
                       "model.vocab_size=null to take the tokenizer's (rounded up to 64)",
                       ("model.vocab_size", "data.path"))
    return None


def fill_vocab(cfg: RunConfig, data_vocab: int) -> RunConfig:
    """The model's vocabulary defaults to the init_from file's model's, else to the tokenizer's
    rounded up to a multiple of 64; a given one must hold the tokenizer's (ConfigError)."""
    problem = vocab_problem(cfg.model.vocab_size, data_vocab, "the data")
    if problem:
        raise ConfigError([problem])
    if cfg.model.vocab_size is not None:
        return cfg
    vocab = init_vocab(Path(cfg.init_from)) if cfg.init_from is not None else None
    if vocab is not None and vocab < data_vocab:
        raise ConfigError([_init_vocab_problem(cfg.init_from, vocab, data_vocab)])
    model = cfg.model.model_copy(update={"vocab_size": vocab or padded_vocab_size(data_vocab)})
    return cfg.model_copy(update={"model": model})


def _init_vocab_problem(path, vocab: int, data_vocab: int) -> Problem:
    return Problem(f"init_from {path}: its model's vocabulary ({vocab}) is smaller than the "
                   f"data's tokenizer's ({data_vocab}): shard the data with the tokenizer the "
                   "model was trained with", ("init_from", "data.path"))


def _init_problems(s: dict[str, Any], facts: list[FolderFacts]) -> list[Problem]:
    """The init_from file against the model section (vocabulary filled as fill_vocab does)."""
    path = s.get("init_from")
    if path is None or "model" not in s or not str(path).endswith(".safetensors"):
        return []
    path = Path(os.path.abspath(path))
    model = s["model"]
    if model.vocab_size is None:
        vocab = init_vocab(path)
        if vocab is None:  # unreadable: init_problems says why
            vocab = padded_vocab_size(facts[0].vocab_size) if facts else None
        elif facts and vocab < facts[0].vocab_size:
            return [_init_vocab_problem(path, vocab, facts[0].vocab_size)]
        if vocab is None:
            return []
        model = model.model_copy(update={"vocab_size": vocab})
    return init_problems(model, path)


# ---- checks against the data ------------------------------------------------------------------

def _read_folders(data: DataConfig) -> tuple[list[FolderFacts], list[Problem]]:
    facts, problems = [], []
    for path, _ in data.folders():
        if is_remote(path):
            try:
                facts.append(read_folder(path, data.remote_timeout))
            except (ManifestError, RemoteError) as e:
                problems.append(Problem(f"data.path: {e}", ("data.path",)))
            continue
        folder = Path(path)
        if not folder.exists():
            problems.append(Problem(f"data.path {folder}: no such folder", ("data.path",)))
        elif not folder.is_dir():
            problems.append(Problem(f"data.path {folder}: a file, not a shard folder (a folder "
                                    "made by `data_tools shard`)", ("data.path",)))
        else:
            try:
                facts.append(read_folder(folder))
            except ManifestError as e:
                problems.append(Problem(f"data.path: {e}", ("data.path",)))
    return facts, problems


def _tokenizer_problems(data: DataConfig, facts: list[FolderFacts]) -> list[Problem]:
    problems, first = [], facts[0]
    for f in facts:
        if f.tokenizer_file is not None and not f.tokenizer_file.is_file():
            problems.append(Problem(f"data.path: {f.tokenizer_file} is missing (the shard "
                                    "folder's copy of its tokenizer)", ("data.path",)))
        if (f.tokenizer_sha256, f.dtype) != (first.tokenizer_sha256, first.dtype):
            problems.append(Problem(f"data.path: {f.folder} was written with another tokenizer "
                                    f"or dtype than {first.folder}; mixed folders must share "
                                    "one tokenizer", ("data.path",)))
    if data.tokenizer:
        path = Path(data.tokenizer)
        try:
            got = sha256_file(path)
        except OSError as e:
            return [*problems, Problem(f"data.tokenizer {path}: {e.strerror or e}",
                                       ("data.tokenizer",))]
        problems += [Problem(f"data.tokenizer {path} (sha256 {got[:16]}...) is not the tokenizer "
                             f"{f.folder} was written with (sha256 {f.tokenizer_sha256[:16]}...):"
                             f" point data.tokenizer at {f.tokenizer_file} or re-shard",
                             ("data.tokenizer", "data.path"))
                     for f in facts if f.tokenizer_sha256 != got]
    return problems


def split_samples(data: DataConfig, facts: FolderFacts, split: str) -> int:
    """Samples the loader makes of one folder's split: the objective's count (the loader's
    function; seq2seq: all pairs, of which the loader skips those longer than the lengths)."""
    return objective_for(data).samples(facts.counts(split))


def _sample_problems(s: dict[str, Any], facts: list[FolderFacts],
                     world_size: int | None) -> list[Problem]:
    objective = objective_for(s["data"])
    keys = ("data.path", objective.sample_key)
    evaluates = "train" in s and "eval" in s and s["eval"].enabled
    world = data_parallel_size(world_size, s["parallel"].sequence_parallel_size) \
        if "parallel" in s else world_size or 1  # ranks that read different samples
    micro, world = (s["train"].micro_batch_size, world) if evaluates else (1, 1)
    fix = objective.more_val_hint(micro * world)  # shard's wording (data_tools.split)
    problems, val_samples = [], 0
    for f in facts:
        for split in SPLITS:
            n = objective.samples(f.counts(split))
            if split == "val":
                val_samples += n
            if n < 1:
                problems.append(Problem(
                    "data.path: " + objective.too_few(f.folder, split, f.counts(split))
                    + (f"; {fix}" if split == "val" else ""), keys))
    if problems or not evaluates:
        return problems
    cap = s["eval"].max_samples
    problem = eval_batch_problem("data.path: the validation split's sample count", val_samples,
                                 micro, world)
    if problem and (cap is None or cap >= micro * world):  # else: the config's problem
        problems.append(Problem(
            f"{problem}: {fix}, lower train.micro_batch_size, or turn evaluation off with "
            "eval.every_steps=0 eval.at_end=false", (*keys, "train.micro_batch_size")))
    return problems


def data_problems(s: dict[str, Any], world_size: int | None,
                  ranks_per_node: int | None = None) -> tuple[list[FolderFacts], list[Problem]]:
    """The config's valid sections (`s`) against the data folders they name: (what the
    manifests say, the problems)."""
    if "data" not in s:
        return [], []
    data = _resolve_data(s["data"])
    facts, problems = _read_folders(data)
    if not facts or problems:
        return facts, problems
    problems += _tokenizer_problems(data, facts)
    objective = objective_for(data)
    kinds = [Problem(f"data.path: {p}", ("data.path", "data.objective"))
             for f in facts if (p := objective.kind_problem(f.folder, f.kind))]
    if kinds:  # the sample counts below depend on the kind
        return facts, problems + kinds
    if "model" in s:
        problem = vocab_problem(s["model"].vocab_size, facts[0].vocab_size, facts[0].folder)
        problems += [problem] if problem else []
    problems += [Problem(f"data.path: {p}", ("data.path", objective.sample_key))  # sentinels
                 for p in objective.folder_problems(facts[0].folder, facts[0].sentinels)]
    return facts, (problems + _sample_problems({**s, "data": data}, facts, world_size)
                   + _cache_problems(data, facts, world_size, ranks_per_node))


def _cache_problems(data: DataConfig, facts: list[FolderFacts], world_size: int | None,
                    ranks: int | None) -> list[Problem]:
    """s3:// folders: the node cache's limit against what one step needs
    (pretrain.data.remote_plan), for `ranks` ranks per node (default: as the rank sees its
    node, or all ranks on one)."""
    from pretrain.data.remote_plan import plan_cache
    from pretrain.data.remote_plan import ranks_per_node as local_ranks

    manifests = [f.manifest for f in facts if f.manifest is not None]
    if not manifests:
        return []
    plan = plan_cache(data, manifests, ranks or local_ranks(world_size or 1),
                      objective_for(data).sample_window,
                      meta_bytes=max(f.tokenizer_bytes for f in facts))
    problem = plan.problem()
    return [Problem(problem, ("data.cache_limit", "data.prefetch_shards"))] if problem else []


# ---- the checkpoint a resume starts from ----------------------------------------------------

def resume_point(cfg: RunConfig) -> tuple[Path, CheckpointMeta] | None:
    """(tag folder, meta) of the checkpoint a start of `cfg` resumes from (resume: auto; as far
    as sizes tell, checkpoint_meta.find_resume_tag), or None for a fresh start."""
    if cfg.resume != "auto":
        return None
    ckpt_dir = Path(cfg.run_dir) / "checkpoints"
    tag = find_resume_tag(ckpt_dir)
    meta = read_meta(ckpt_dir / tag) if tag else None
    return (ckpt_dir / tag, meta) if meta is not None else None


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _model_changes(meta: CheckpointMeta, cfg: RunConfig, where: Path) -> list[Problem]:
    """A model section that builds other parameter shapes than the checkpoint's, naming the
    model keys that differ (`model.n_layers: 4 → 6`)."""
    old = meta.config.get("model")
    try:
        theirs = saved_model_config(old)
    except (AttributeError, TypeError, ValueError):  # unreadable: the ranks' check says more
        return []
    if parameter_shapes(theirs) == parameter_shapes(cfg.model):
        return []
    new = config_to_dict(cfg)["model"]
    keys = [f"model.{k}: {_plain(a)} → {_plain(b)}"
            for k, a, b in config_changes(theirs.model_dump(mode="json"), new)]
    return [Problem(f"the model changed since checkpoint {where} (step {meta.step}), so it "
                    "cannot resume: " + ("; ".join(keys) or "its parameter shapes differ")
                    + ". Put the model section back, or start over with resume=never or a new "
                    "run_dir", tuple(k.split(":")[0] for k in keys) or ("model",))]


def resume_findings(cfg: RunConfig) -> tuple[list[Problem], list[str]]:
    """What the checkpoint a start resumes from says about `cfg`, before any rank starts
    (torch-free; the ranks check the rest after verifying every file: pretrain/train/resume.py):
    (problems: a model that builds other parameter shapes, a train.max_steps below the
    checkpoint's step; notes: the jump of the learning rate when its schedule changed)."""
    point = resume_point(cfg)
    if point is None:
        return [], []
    where, meta = point
    problems = _model_changes(meta, cfg, where)
    if cfg.train.max_steps < meta.step:
        problems.append(Problem(f"train.max_steps ({cfg.train.max_steps}) is below the step of "
                                f"checkpoint {where} ({meta.step}): raise it, or start over with "
                                "resume=never", ("train.max_steps",)))
    jump = lr_jump(meta.config, cfg, meta.step)
    notes = [f"resuming from {where} at step {meta.step}: {jump}"] if jump else []
    return problems, notes


def check_run(config: str | Path, overrides: Sequence[str] | Iterable[str] = (),
              world_size: int | None = None, ranks_per_node: int | None = None) -> RunConfig:
    """Every pre-flight check; the config as the ranks run it, or one ConfigError listing all
    problems (those from the command line said to be so). `ranks_per_node`: for the node
    cache of s3:// data (default: what the environment says, else all ranks on one node)."""
    checked = check_run_config(config, list(overrides), world_size)
    facts, problems = data_problems(checked.sections, world_size, ranks_per_node)
    checked.problems += problems + _init_problems(checked.sections, facts)
    if checked.problems:
        raise checked.error(str(config))
    cfg = fill_vocab(resolve_paths(checked.cfg), facts[0].vocab_size)
    checked.problems += resume_findings(cfg)[0]
    if checked.problems:
        raise checked.error(str(config))
    return cfg
