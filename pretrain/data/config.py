"""The `data` section of a run config: which shard folders, which objective, which lengths.
The keys each objective needs are its own to check (pretrain.objectives: DataSection)."""

from __future__ import annotations

from pydantic import Field, model_validator

from pretrain.configlib import Section


class MixEntry(Section):
    """One shard folder of a weighted mixture."""

    path: str
    weight: float = Field(gt=0)


class DataConfig(Section):
    # A shard folder, or several with weights (`[{path: a, weight: 0.7}, {path: b, weight: 0.3}]`).
    # Relative paths are resolved by the trainer.
    path: str | list[MixEntry]
    # A name in pretrain.objectives.REGISTRY (checked there: DataSection). clm: packed documents
    # (decoder); span_corruption: T5's objective on documents (encdec); seq2seq: source ->
    # target pairs of a pair folder (encdec), e.g. translation
    objective: str = "clm"
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

    def folders(self) -> list[tuple[str, float]]:
        """[(path, weight)] with weights normalised to sum to 1."""
        if isinstance(self.path, str):
            return [(self.path, 1.0)]
        total = sum(e.weight for e in self.path)
        return [(e.path, e.weight / total) for e in self.path]
