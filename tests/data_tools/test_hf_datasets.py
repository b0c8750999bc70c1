"""The shards (Arrow IPC *file* format) in Hugging Face `datasets`: docs/interop.md's one-liners work
and give the same rows as pyarrow; `Dataset.from_file` expects the IPC *stream* format."""

import pyarrow as pa
import pytest

from tests.data_tools.dt_util import shard_folder


@pytest.fixture(scope="module")
def datasets():
    """Hugging Face `datasets` (the dev extra installs it): imported by the tests that use it,
    not at collection, which every xdist worker runs (~0.5 s)."""
    import datasets

    return datasets


@pytest.fixture(scope="module")
def folder(tmp_path_factory, corpus, tokenizer):
    return shard_folder(tmp_path_factory.mktemp("hf"), corpus, tokenizer, "64KB")


def pyarrow_rows(paths) -> list[list[int]]:
    rows = []
    for p in paths:
        rows += pa.ipc.open_file(str(p)).read_all().column("tokens").to_pylist()
    return rows


def test_one_shard_memory_mapped(folder, datasets):
    path = str(folder / "train" / "00000.arrow")
    # docs/interop.md's one-liner: zero copy, the file stays memory-mapped
    ds = datasets.Dataset(pa.ipc.open_file(pa.memory_map(path)).read_all())
    assert ds.column_names == ["tokens"] and ds.num_rows > 0
    assert ds[:]["tokens"] == pyarrow_rows([path])
    assert ds.with_format("numpy")[0]["tokens"].tolist() == pyarrow_rows([path])[0]


def test_a_whole_split_with_load_dataset(folder, datasets, tmp_path):
    files = sorted(str(p) for p in (folder / "train").glob("*.arrow"))
    assert len(files) > 1
    ds = datasets.load_dataset("arrow", data_files={"train": files}, split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert [r["tokens"] for r in ds] == pyarrow_rows(files)


def test_from_file_wants_the_stream_format(folder, datasets):
    """Why docs/interop.md does not show Dataset.from_file: it reads the IPC stream format only. If a
    future `datasets` reads the file format too, this fails and docs/interop.md can say so."""
    with pytest.raises(pa.ArrowInvalid):
        datasets.Dataset.from_file(str(folder / "train" / "00000.arrow"))
