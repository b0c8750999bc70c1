"""T5 span corruption (Raffel et al. 2020), in numpy, following t5.data.preprocessors
`random_spans_helper` / `random_spans_noise_mask` and the sentinel layout of T5's inputs/targets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpanLengths:
    raw_length: int      # tokens taken from the packed stream per sample
    num_noise: int       # noise tokens per sample
    num_spans: int       # noise spans per sample = sentinels used
    inputs_length: int   # non-noise + one sentinel per span + EOS  (<= configured input_length)
    targets_length: int  # noise + one sentinel per span + EOS


def _lengths(raw: int, density: float, mean_span: float) -> SpanLengths:
    num_noise = min(max(int(round(raw * density)), 1), raw - 1)
    num_spans = max(int(round(num_noise / mean_span)), 1)
    return SpanLengths(raw, num_noise, num_spans,
                       raw - num_noise + num_spans + 1, num_noise + num_spans + 1)


def span_lengths(input_length: int, density: float, mean_span: float) -> SpanLengths:
    """The longest raw window whose corrupted inputs fit `input_length` (random_spans_helper)."""
    raw = input_length - 1
    while _lengths(raw + 1, density, mean_span).inputs_length <= input_length:
        raw += 1
    return _lengths(raw, density, mean_span)


def _segments(rng: np.random.Generator, num_items: int, num_segments: int) -> np.ndarray:
    """Random split of num_items into num_segments positive lengths."""
    first = np.zeros(num_items, bool)
    first[1:][rng.permutation(num_items - 1) < num_segments - 1] = True
    return np.bincount(np.cumsum(first), minlength=num_segments)


def noise_mask(rng: np.random.Generator, lens: SpanLengths) -> np.ndarray:
    """(raw_length,) bool: num_spans noise spans, starting with non-noise, as T5 does."""
    noise = _segments(rng, lens.num_noise, lens.num_spans)
    keep = _segments(rng, lens.raw_length - lens.num_noise, lens.num_spans)
    spans = np.stack([keep, noise], axis=1).reshape(-1)         # keep0 noise0 keep1 noise1 ...
    span_id = np.repeat(np.arange(2 * lens.num_spans), spans)
    return span_id % 2 == 1


def corrupt(tokens: np.ndarray, mask: np.ndarray, sentinels: np.ndarray,
            eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """inputs: kept tokens with span k replaced by sentinels[k], then EOS;
    targets: sentinels[k] followed by span k, for every span, then EOS."""
    starts = mask & ~np.concatenate([[False], mask[:-1]])       # first token of each span
    span_no = np.cumsum(starts) - 1
    inputs = np.where(starts, sentinels[span_no], tokens)[~mask | starts]
    noise_tokens = tokens[mask]
    span_at = np.flatnonzero(starts[mask])                      # span starts among noise
    targets = np.insert(noise_tokens, span_at, sentinels[: len(span_at)])
    return np.append(inputs, eos_id), np.append(targets, eos_id)
