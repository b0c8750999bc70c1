"""The objective registry and the invariants each objective owns: names and modules, the data
keys each needs (checked with the run config's data section), the resume keys, and the sample
count the pre-flight computes from a folder's manifest equal to the loader's from its files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers.dist import REPO
from pydantic import ValidationError

from pretrain.configlib import ConfigError, validate_section
from pretrain.data import DataConfig, DataError
from pretrain.data.synthetic import random_docs, write_folder, write_random_pair_folder
from pretrain.objectives import (
    REGISTRY,
    DataSection,
    Objective,
    all_objectives,
    exactness_keys,
    get_objective,
    objective_for,
    open_data,
)
from pretrain.train.preflight import read_folder, split_samples

VOCAB = 512
SENTINELS = list(range(400, 512))


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("objectives") / "docs"
    write_folder(path, {"train": [random_docs(rng, n, 12, 2, 400) for n in (1500, 900)],
                        "val": [random_docs(rng, 400, 12, 2, 400)]}, VOCAB,
                 sentinel_ids=SENTINELS, batch_docs=23)
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("objectives") / "pairs"
    write_random_pair_folder(path, 1, (300, 200), (120,), VOCAB, batch_rows=41)
    return path


def test_every_registered_name_is_its_objective():
    assert list(REGISTRY) == ["clm", "span_corruption", "seq2seq"]
    for name in REGISTRY:
        cls = get_objective(name)
        assert issubclass(cls, Objective) and cls.name == name
        assert cls.family in ("decoder", "encdec") and cls.folder_kind in ("documents", "pairs")
        assert all(k.startswith("data.") for k in (cls.sample_key, *cls.exactness_keys))
    assert [o.name for o in all_objectives()] == list(REGISTRY)
    with pytest.raises(KeyError, match="'mlm' is not one of clm, span_corruption, seq2seq"):
        get_objective("mlm")


def test_objectives_import_without_torch():
    """The pre-flight and the launchers ask the objectives, and must not start torch."""
    code = ("import sys; from pretrain.objectives import all_objectives; all_objectives(); "
            "import pretrain.train.preflight; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'deepspeed'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "[]"


def test_data_section_checks_the_objective_and_its_keys():
    with pytest.raises(ConfigError) as e:
        validate_section(DataSection, {"path": "d", "objective": "mlm"}, "data")
    assert "data.objective: Input should be 'clm', 'span_corruption' or 'seq2seq'" in str(e.value)
    with pytest.raises(ConfigError, match="data.seq_len is required when data.objective is clm"):
        validate_section(DataSection, {"path": "d"}, "data")
    with pytest.raises(ConfigError, match="data.input_length is required when data.objective is "
                                          "span_corruption"):
        validate_section(DataSection, {"path": "d", "objective": "span_corruption"}, "data")
    with pytest.raises(ValidationError, match="input_length is required .* seq2seq") as e:
        DataSection(path="x", objective="seq2seq")
    assert "data.target_length is required" in str(e.value)
    with pytest.raises(ValidationError, match="data.path: the list of folders is empty"):
        DataSection(path=[], seq_len=8)
    assert isinstance(DataSection(path="d", seq_len=8), DataConfig)


def test_resume_refuses_the_keys_of_every_objective():
    """The union of the objectives' keys: what train/resume.py has always refused."""
    assert set(exactness_keys()) == {"data.seq_len", "data.input_length", "data.target_length",
                                     "data.noise_density", "data.mean_span_length"}


def _configs(docs, pairs):
    return [DataConfig(path=str(docs), seq_len=16, num_workers=0),
            DataConfig(path=str(docs), objective="span_corruption", input_length=32,
                       num_workers=0),
            DataConfig(path=str(pairs), objective="seq2seq", input_length=200, target_length=200,
                       num_workers=0)]


def test_every_objective_is_tested_here(docs, pairs):
    assert sorted(c.objective for c in _configs(docs, pairs)) == sorted(REGISTRY)


@pytest.mark.parametrize("which", range(3), ids=list(REGISTRY))
def test_preflight_counts_the_loaders_samples(docs, pairs, which):
    cfg = _configs(docs, pairs)[which]
    facts = read_folder(docs if cfg.objective != "seq2seq" else pairs)
    src = open_data(cfg, seed=0)
    for split in ("train", "val"):
        assert split_samples(cfg, facts, split) == src.num_samples(split) > 0
        assert objective_for(cfg).samples(facts.counts(split)) == src.num_samples(split)


def test_seq2seq_preflight_counts_at_most_the_loaders(pairs):
    """The manifest does not say which pairs fit: the pre-flight counts them all."""
    cfg = DataConfig(path=str(pairs), objective="seq2seq", input_length=8, target_length=8)
    src, facts = open_data(cfg, seed=0), read_folder(pairs)
    for split in ("train", "val"):
        skipped = src.objective.skipped_pairs[split]
        assert skipped > 0
        assert split_samples(cfg, facts, split) == src.num_samples(split) + skipped


def test_folder_kind_problems_name_the_objectives_for_the_folder(docs, pairs):
    clm = objective_for(DataConfig(path=str(pairs), seq_len=8))
    assert clm.kind_problem(pairs, "documents") is None
    assert clm.kind_problem(pairs, "pairs") == (
        f"{pairs} is a pair folder (source -> target): data.objective clm needs documents; to "
        "train on it, use data.objective seq2seq")
    s2s = objective_for(DataConfig(path=str(docs), objective="seq2seq", input_length=8,
                                   target_length=8))
    assert s2s.kind_problem(docs, "documents").endswith(
        "use data.objective clm or span_corruption")
    with pytest.raises(DataError, match="is a document folder: data.objective seq2seq needs a "
                                        "pair folder"):
        open_data(s2s.data, seed=0)
