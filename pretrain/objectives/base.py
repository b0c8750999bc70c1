"""The Objective interface (docs/design.md §11): what one training objective decides, in one
object that the run config, the pre-flight, the loader, the trainer and the benchmarks ask
instead of each branching on `data.objective`.

An objective owns
- its data keys: those it needs (`required_keys`), those that decide which sample comes at
  which position (`exactness_keys`: a resume that changes one is refused, train/resume.py) and
  the one that sets a sample's length (`sample_key`, named by problems about sample counts);
- the folder kind it reads (`folder_kind`) and the model family it trains (`family`);
- samples per split (`samples`): ONE function of a folder split's counts, whether they come
  from the manifest (the torch-free pre-flight) or from the opened files (the loader), and the
  message when a split gives none (`too_few`);
- its checks: lengths against model.max_seq_len (`model_problems`), a folder's tokenizer
  (`folder_problems`), eval settings (`eval_problems`);
- its batches (`batch`: numpy arrays (n, ...), docs/design.md §9), the training order's
  specifics (`train_samples`) and the evaluation order (`val_order`);
- what the trainer reports: a line at start (`describe`), per-step figures (`step_counts`,
  `log_fields`), extra evaluation metrics (`eval_metrics`), and the tokens per sample FLOPs are
  counted over (`tokens_per_sample`, `flops_per_token`).

One instance serves one data config. The loader's instance is opened on one DataSource
(`check`, then `open`, which keeps what its batches need). Imports without torch: torch and the
model are imported inside the methods that use them.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from pretrain.configlib import Problem
from pretrain.data.config import DataConfig
from pretrain.data.layout import RankSlice

if TYPE_CHECKING:
    from pretrain.data.source import DataSource
    from pretrain.model.config import ModelConfig

FolderKind = Literal["documents", "pairs"]
Batch = dict[str, np.ndarray]

KIND_NAMES = {"documents": "a document folder", "pairs": "a pair folder (source -> target)"}
KIND_NEEDS = {"documents": "needs documents",
              "pairs": "needs a pair folder (data_tools shard --source-field/--target-field or "
                       "--source-file/--target-file)"}


@dataclass(frozen=True)
class SplitCounts:
    """One folder's split as a sample count sees it: from its manifest (the pre-flight) or from
    its opened files (the loader)."""

    stream_tokens: int = 0  # documents: tokens + one EOS per document
    rows: int = 0  # documents, or pairs
    fitting_rows: int | None = None  # pairs whose sides fit the lengths; None: not read


@dataclass(frozen=True)
class EvalContext:
    """What an objective's evaluation metrics may use (the trainer fills it, model in eval
    mode, after val_loss is known on every rank)."""

    model: Any  # the engine's module
    src: DataSource
    micro_batch: int
    rank: int
    world: int
    device: Any  # torch.device
    eval: Any  # the run's eval section (pretrain.train.config.EvalConfig)
    zero3: bool  # parameters gathered in every forward: the ranks run their forwards together


def too_long(lengths: dict[str, int], max_seq_len: int,
             derived: frozenset[str] = frozenset()) -> list[Problem]:
    """Every sequence a sample holds fits the model's positions (model.max_seq_len)."""
    return [Problem(f"{key} ({n}{', derived from input_length' if key in derived else ''}) "
                    f"exceeds model.max_seq_len ({max_seq_len}): shorten it or raise "
                    "model.max_seq_len", (key, "model.max_seq_len"))
            for key, n in lengths.items() if n > max_seq_len]


class Objective(ABC):
    """See the module docstring. Subclasses set the class attributes below."""

    name: ClassVar[str]  # data.objective
    family: ClassVar[str]  # model.family it trains: decoder | encdec
    folder_kind: ClassVar[FolderKind]
    sample_key: ClassVar[str]  # the data key that sets a sample's length
    exactness_keys: ClassVar[tuple[str, ...]]  # data keys that decide the sample order
    # the data keys (without "data.") this objective needs, each with what its message adds
    required_keys: ClassVar[dict[str, str]]

    def __init__(self, data: DataConfig):
        self.data = data

    # ---- the run config (torch-free) ---------------------------------------------------------
    @classmethod
    def required_problems(cls, data: DataConfig) -> list[str]:
        """The data keys this objective needs (`required_keys`) that `data` leaves unset."""
        return [f"data.{key} is required when data.objective is {cls.name}{why}"
                for key, why in cls.required_keys.items() if getattr(data, key) is None]

    def length_problems(self) -> list[Problem]:
        """Lengths that contradict each other, from the data section alone."""
        return []

    @abstractmethod
    def model_problems(self, max_seq_len: int) -> list[Problem]:
        """Lengths against the model's positions (length_problems first)."""

    def eval_problems(self, eval_cfg: Any, micro_batch: int, world: int) -> list[Problem]:
        """This objective's evaluation settings against one evaluation batch."""
        return []

    @property
    @abstractmethod
    def tokens_per_sample(self) -> int:
        """`input_ids` tokens of one sample, at most (decoder: T; encoder-decoder: S): what the
        trainer's tokens/s counts and FLOPs per token are per."""

    def flops_per_token(self, model: ModelConfig) -> int:
        """Training FLOPs per token (pretrain.model.flops; builds the model on the meta device)."""
        from pretrain.model import flops_per_token

        return flops_per_token(model, self.tokens_per_sample, self.data.target_length)

    # ---- the data folders (the pre-flight and the loader alike) ------------------------------
    def kind_problem(self, folder: Path | str, kind: FolderKind) -> str | None:
        """A folder of another kind than this objective reads, and the objectives that read it."""
        if kind == self.folder_kind:
            return None
        from pretrain.objectives.registry import all_objectives

        others = " or ".join(o.name for o in all_objectives() if o.folder_kind == kind)
        return (f"{folder} is {KIND_NAMES[kind]}: data.objective {self.name} "
                f"{KIND_NEEDS[self.folder_kind]}; to train on it, use data.objective {others}")

    def folder_problems(self, folder: Path | str, sentinels: int) -> list[str]:
        """A folder's tokenizer (its `sentinels` sentinel ids) against this objective."""
        return []

    @abstractmethod
    def samples(self, counts: SplitCounts) -> int:
        """Samples one folder's split gives: the pre-flight's and the loader's count."""

    @abstractmethod
    def too_few(self, folder: Path | str, split: str, counts: SplitCounts) -> str:
        """Why a split with these counts gives no sample."""

    def more_val_hint(self, samples: int) -> str:
        """How to re-shard for a val split of at least `samples` samples (pairs: a sample is
        a pair, so a larger share of them)."""
        return f"re-shard with a larger --val-fraction (at least {samples} val pairs)"

    # ---- the loader ----------------------------------------------------------------------------
    def check(self, src: DataSource) -> list[str]:
        """Everything that stops the loader before it opens (the run config and the pre-flight
        report the same problems earlier)."""
        problems = self.required_problems(self.data)
        if problems:
            return problems
        return [p.text for p in self.length_problems()] + self.folder_problems(
            src.folders[0].folder, len(src.sentinel_ids))

    def open(self, src: DataSource) -> None:  # noqa: B027 (most objectives keep nothing)
        """Keep what batches of `src` need (after `check`)."""

    @abstractmethod
    def opened_counts(self, src: DataSource, k: int, split: str) -> SplitCounts:
        """The counts of folder k's split from its opened files."""

    @abstractmethod
    def batch(self, src: DataSource, split: str, folder: np.ndarray, within: np.ndarray,
              epochs: np.ndarray) -> Batch:
        """Samples `within` (n,) of folders `folder` (n,) of `split`, stacked (n, ...)."""

    def thread_copy(self) -> Objective:
        """A copy for another thread (the read-ahead over object storage computes the order
        beside the loader): memo tables of its own, the tables `open` made shared."""
        return copy.copy(self)

    @property
    def sample_window(self) -> int | None:
        """Tokens one sample reads from a split's packed stream; None: one row (pairs)."""
        return None

    @abstractmethod
    def file_spans(self, src: DataSource, split: str, k: int, within: np.ndarray
                   ) -> tuple[Any, np.ndarray, np.ndarray]:
        """Which shard files samples `within` (n,) of folder k's `split` read: (the split's
        shard set, pretrain.data.shardset; first file (n,); last file (n,))."""

    def train_samples(self, src: DataSource, step: int, micro: int,
                      part: RankSlice) -> tuple[np.ndarray, np.ndarray]:
        """(train sample index (m,), epoch (m,)) of micro-batch `micro` of `part`'s rank at
        global step `step`. Step s covers order positions [s*B, (s+1)*B); rank r takes
        [s*B + r*B/W, ... + B/W) in micro-batches, in order (docs/design.md §3)."""
        start = step * part.global_batch + part.rank * part.per_rank + micro * part.micro_batch
        return src.order(start + np.arange(part.micro_batch))

    def val_order(self, src: DataSource, n: int) -> np.ndarray:
        """The first n val samples in the order evaluation batches them."""
        return np.arange(n)

    # ---- the trainer ---------------------------------------------------------------------------
    def describe(self, src: DataSource) -> str | None:
        """A line for the log at start (rank 0), or None."""
        return None

    def step_counts(self, batch: dict[str, Any]) -> dict[str, int]:
        """Counts of one CPU micro-batch (torch tensors, before the copy to the device) that
        log_fields turns into per-step figures."""
        return {}

    def log_fields(self, counts: dict[str, int]) -> dict[str, float]:
        """Fields of a metrics row from the step_counts summed since the last row."""
        return {}

    def eval_metrics(self, ctx: EvalContext, val_loss: float) -> dict[str, float]:
        """Metrics next to val_loss (collective: every rank calls it; a value only rank 0
        knows is left out on the others)."""
        return {}
