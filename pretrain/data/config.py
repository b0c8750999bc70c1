"""The `data` section of a run config: which shard folders, which objective, which lengths.
The keys each objective needs are its own to check (pretrain.objectives: DataSection)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from data_tools.errors import DataToolsError
from data_tools.inputs import parse_size
from pretrain.configlib import Section

AUTO_BLOCK_SHARDS = 8   # data.shuffle_block_shards "auto" with a folder in object storage


class MixEntry(Section):
    """One shard folder of a weighted mixture."""

    path: str = Field(description="a shard folder")
    weight: float = Field(gt=0, description="its share of the mixture (weights are normalised "
                          "to sum to 1)")


class DataConfig(Section):
    """Which shard folders, which objective, which lengths. Every field's meaning is its
    `description` (`arrowtrain config explain data`, docs/config.md)."""

    path: str | list[MixEntry] = Field(
        description="a shard folder, or several with weights ([{path: a, weight: 0.7}, {path: "
        "b, weight: 0.3}]); relative paths resolve against the working directory")
    objective: str = Field(
        "clm", description="the training objective, a name in pretrain.objectives.REGISTRY")
    seq_len: int | None = Field(
        default=None, gt=0, description="clm (required there): the decoder window T; a sample "
        "is T + 1 packed tokens (inputs and targets shifted by one)")
    input_length: int | None = Field(
        default=None, gt=1, description="span_corruption (required there): the encoder length "
        "S; seq2seq (required there): the longest source, EOS included (a longer pair is "
        "skipped, counted at start)")
    target_length: int | None = Field(
        default=None, gt=1, description="span_corruption: the decoder length (targets padded "
        "with -100), null: exactly what input_length needs (T5's random_spans_helper); "
        "seq2seq (required there): the longest target, EOS included (the decoder's length)")
    bucket_pool_batches: int = Field(
        default=32, ge=1, description="seq2seq: this many global batches of the shuffled order "
        "are sorted by length together and cut into batches (served in a shuffled order), so "
        "a batch holds pairs of similar length; 1: sort within each global batch only")
    noise_density: float = Field(default=0.15, gt=0, lt=1,
                                 description="span_corruption: share of tokens masked")
    mean_span_length: float = Field(default=3.0, ge=1,
                                    description="span_corruption: mean masked span, in tokens")
    tokenizer: str | None = Field(
        None, description="tokenizer.json of the run, checked against the shards: its sha256 "
        "must equal the one in every manifest (null: no check, the folder's own is used)")
    shuffle: bool = Field(True, description="false: identity order (debugging only)")
    shuffle_block_shards: Literal["auto"] | Annotated[int, Field(ge=0)] = Field(
        "auto", description="the training order's shuffle: 0 one global shuffle; N > 0 "
        "within blocks of the samples of about N consecutive shard files, the blocks in a "
        "shuffled order (each epoch anew), so a few shards are read at a time; auto: 0 when "
        f"every folder is local, {AUTO_BLOCK_SHARDS} when one is in object storage (s3://), "
        "resolved before the ranks start; a resume refuses a change (it decides the order)")
    num_workers: int = Field(default=1, ge=0,
                             description="loader worker processes per rank (0: in the rank)")
    prefetch_factor: int = Field(default=2, ge=1, description="batches each worker loads ahead")
    pin_memory: bool = Field(False, description="pinned host memory for faster copies to a GPU")
    # ---- shard folders in object storage (path s3://BUCKET/PREFIX; docs/object-storage.md) ----
    cache_dir: str | None = Field(
        None, description="s3:// folders: the node-local folder of whole shards, shared by the "
        "ranks of a node (null: $TMPDIR/arrowtrain-cache, /tmp/arrowtrain-cache without TMPDIR)")
    cache_limit: int | None = Field(
        default=None, gt=0, description="s3:// folders: the most bytes the cache may hold, bytes "
        "or a size such as \"20GB\" (null: half of the space free on cache_dir's disk); a limit "
        "too small for one step is refused before any rank starts, naming the smallest one")
    prefetch_shards: int = Field(
        default=2, ge=0, description="s3:// folders: shards downloaded ahead of use, in use "
        "order, beyond those the next micro-batch needs")
    remote_timeout: float = Field(
        default=600.0, gt=0, description="s3:// folders: seconds of failing requests before "
        "training saves a checkpoint and exits 75 (resume me)")

    @field_validator("shuffle_block_shards", mode="before")
    @classmethod
    def _blocks(cls, value):
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                               and value >= 0):
            return value
        raise ValueError(f"'auto' or a number of shard files >= 0 (0: a global shuffle), "
                         f"not {value!r}")

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
    def _consistent(self) -> DataConfig:
        if problems := self.problems():
            raise ValueError("; ".join(problems))
        return self

    def problems(self) -> list[str]:
        """What makes this section inconsistent (a run config's DataSection adds the keys its
        objective needs: pretrain.objectives)."""
        if isinstance(self.path, list) and not self.path:
            return ["data.path: the list of folders is empty"]
        return []

    def block_shards(self) -> int:
        """data.shuffle_block_shards resolved: shard files per shuffle block (0: global)."""
        if self.shuffle_block_shards == "auto":
            return AUTO_BLOCK_SHARDS if self.remote() else 0
        return int(self.shuffle_block_shards)

    def remote(self) -> bool:
        """Whether any folder is in object storage (s3://)."""
        return any(p.startswith("s3://") for p, _ in self.folders())

    def folders(self) -> list[tuple[str, float]]:
        """[(path, weight)] with weights normalised to sum to 1."""
        if isinstance(self.path, str):
            return [(self.path, 1.0)]
        total = sum(e.weight for e in self.path)
        return [(e.path, e.weight / total) for e in self.path]
