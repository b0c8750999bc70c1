"""The `data` section of a run config: which shard folders, which objective, which lengths."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from data_tools.errors import DataToolsError
from data_tools.inputs import parse_size
from pretrain.configlib import Section


class MixEntry(Section):
    """One shard folder of a weighted mixture."""

    path: str
    weight: float = Field(gt=0)


class DataConfig(Section):
    # A shard folder, or several with weights (`[{path: a, weight: 0.7}, {path: b, weight: 0.3}]`).
    # Relative paths are resolved by the trainer.
    path: str | list[MixEntry]
    # clm: packed documents (decoder); span_corruption: T5's objective on documents (encdec);
    # seq2seq: source -> target pairs of a pair folder (encdec), e.g. translation
    objective: Literal["clm", "span_corruption", "seq2seq"] = "clm"
    # clm: decoder window T; a sample is T + 1 packed tokens (inputs and shifted targets).
    seq_len: int | None = Field(default=None, gt=0)
    # span_corruption: encoder length S and decoder length (fixed; targets padded with -100).
    # target_length None means "exactly what S needs" (T5's random_spans_helper).
    # seq2seq: the longest source and target, EOS included (the decoder's length); a pair with
    # a longer side is skipped (counted at start), each batch is padded to its longest pair.
    input_length: int | None = Field(default=None, gt=1)
    target_length: int | None = Field(default=None, gt=1)
    # seq2seq: this many global batches of the shuffled order are sorted by length together
    # and cut into batches (served in a shuffled order), so a batch holds pairs of similar
    # length and padding stays low; 1 sorts within each global batch only.
    bucket_pool_batches: int = Field(default=32, ge=1)
    noise_density: float = Field(default=0.15, gt=0, lt=1)
    mean_span_length: float = Field(default=3.0, ge=1)
    # tokenizer.json of the run; its sha256 must equal the one in every manifest.
    tokenizer: str | None = None
    shuffle: bool = True            # False: identity order (debugging only)
    num_workers: int = Field(default=1, ge=0)
    prefetch_factor: int = Field(default=2, ge=1)
    pin_memory: bool = False
    # ---- shard folders in object storage (path s3://BUCKET/PREFIX; docs/object-storage.md) ---
    # Node-local folder for whole shards, shared by the ranks of a node; default
    # $TMPDIR/arrowtrain-cache (/tmp/arrowtrain-cache without TMPDIR).
    cache_dir: str | None = None
    # Most bytes the cache may hold: bytes or "20GB"; default half of the space free on
    # cache_dir's disk. A limit too small for one step is refused before any rank starts.
    cache_limit: int | None = Field(default=None, gt=0)
    # Shards downloaded ahead of use (in use order), beyond those the next micro-batch needs.
    prefetch_shards: int = Field(default=2, ge=0)
    # Seconds of failing requests before training saves a checkpoint and exits 75 (resume me).
    remote_timeout: float = Field(default=600.0, gt=0)

    @field_validator("cache_limit", mode="before")
    @classmethod
    def _size(cls, value):
        if isinstance(value, str):
            try:
                return parse_size(value)
            except DataToolsError as e:
                raise ValueError(str(e)) from None
        return value

    @model_validator(mode="after")
    def _lengths_for_objective(self) -> DataConfig:
        problems = []
        if self.objective == "clm" and self.seq_len is None:
            problems.append("data.seq_len is required when data.objective is clm")
        if self.objective == "span_corruption" and self.input_length is None:
            problems.append("data.input_length is required when data.objective is span_corruption")
        if self.objective == "seq2seq":
            problems += [f"data.{key} is required when data.objective is seq2seq (the longest "
                         f"{side}, EOS included; longer pairs are skipped)"
                         for key, side in (("input_length", "source"),
                                           ("target_length", "target"))
                         if getattr(self, key) is None]
        if isinstance(self.path, list) and not self.path:
            problems.append("data.path: the list of folders is empty")

        if problems:
            raise ValueError("; ".join(problems))
        return self

    def remote(self) -> bool:
        """Whether any folder is in object storage (s3://)."""
        return any(p.startswith("s3://") for p, _ in self.folders())

    def folders(self) -> list[tuple[str, float]]:
        """[(path, weight)] with weights normalised to sum to 1."""
        if isinstance(self.path, str):
            return [(self.path, 1.0)]
        total = sum(e.weight for e in self.path)
        return [(e.path, e.weight / total) for e in self.path]
