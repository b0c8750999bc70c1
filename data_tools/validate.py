"""`validate DATADIR`: compare every shard's size (a shard of the wrong size is reported without
being read), then recompute its checksum, check the schema and that every token id is below the
vocabulary size. Exit 0 only when everything holds; otherwise one message naming each bad shard
and what is wrong. Shard and tokenizer files must lie inside DATADIR (the typed manifest refuses
other paths). Pair folders: both columns (`source`, `target`), each side's token count, and no
pair with an empty side."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pyarrow as pa

from data_tools.errors import DataToolsError
from data_tools.exit_codes import EXIT_OK
from data_tools.folder import read_manifest
from data_tools.manifest import MANIFEST_NAME, ShardEntry, sha256_file
from data_tools.progress import Progress
from data_tools.writer import tokens_schema

log = logging.getLogger("data_tools")


def add_arguments(p) -> None:
    p.add_argument("datadir", metavar="DATADIR",
                   help="a folder written by `shard` (or s3://BUCKET/PREFIX: each shard is "
                        "downloaded to a temp folder, checked and deleted)")


def check_shard(datadir: Path, entry: ShardEntry, dtype: str, vocab_size: int,
                columns: tuple[str, ...] = ("tokens",), bos_id: int | None = None
                ) -> list[str]:
    """Problems with one shard file (empty list: fine); `bos_id`: every document must start
    with it (the manifest's tokenizer.bos_prepended)."""
    path = datadir / entry.file
    if not path.is_file():
        return ["file is missing"]
    size = path.stat().st_size
    if size != entry.file_bytes:  # cannot match: neither hashed nor parsed (it may be huge)
        return [f"size {size} bytes, manifest says {entry.file_bytes} (not hashed)"]
    problems = []
    if sha256_file(path) != entry.sha256:
        problems.append("sha256 does not match the manifest (file changed or corrupt)")
    try:
        with pa.memory_map(str(path)) as src:
            table = pa.ipc.open_file(src).read_all()
    except (pa.ArrowException, OSError) as e:
        return [*problems, f"not a readable Arrow IPC file ({e})"]
    want = tokens_schema(dtype, columns)
    if not table.schema.equals(want):
        return [*problems, f"schema is {table.schema.to_string()!r}, expected "
                           f"{want.to_string()!r}"]
    try:
        table.validate(full=True)  # list offsets in bounds and non-decreasing
    except pa.ArrowException as e:
        return [*problems, f"invalid Arrow data: {e}"]
    rows = "pairs" if len(columns) > 1 else "documents"
    if table.num_rows != entry.documents:
        problems.append(f"{table.num_rows} {rows}, manifest says {entry.documents}")
    counts = {"tokens": entry.tokens, "source": entry.source_tokens,
              "target": entry.target_tokens}
    for name in columns:
        problems += _column_problems(table.column(name), name, counts[name], vocab_size,
                                     len(columns) > 1)
    if bos_id is not None:
        problems += _bos_problems(table.column("tokens"), bos_id)
    return problems


def _bos_problems(col, bos_id: int) -> list[str]:
    """bos_prepended: the first token of every document is bos_id."""
    import pyarrow.compute as pc
    if not len(col):
        return []
    if pc.min(pc.list_value_length(col)).as_py() == 0:
        return [f"an empty document, but the manifest says each starts with bos_id {bos_id}"]
    first = pc.list_element(col, 0)
    bad = len(first) - pc.sum(pc.equal(first, bos_id)).as_py()
    return [f"{bad} documents do not start with bos_id {bos_id} (the manifest's "
            "bos_prepended)"] if bad else []


def _column_problems(col, name: str, want_tokens: int, vocab_size: int, pairs: bool
                     ) -> list[str]:
    import pyarrow.compute as pc  # slow to import: only when validating
    values, problems = pc.list_flatten(col), []
    side = f"{name} " if pairs else ""
    if len(values) != want_tokens:
        problems.append(f"{len(values)} {side}tokens, manifest says {want_tokens}")
    if col.null_count or values.null_count:
        problems.append(f"{side}contains nulls")
    if pairs and len(col) and pc.min(pc.list_value_length(col)).as_py() == 0:
        problems.append(f"a pair with an empty {name} side")
    top = pc.max(values).as_py() if len(values) else None
    if top is not None and top >= vocab_size:
        problems.append(f"{side}token id {top} >= vocab size {vocab_size}")
    return problems


def validate_remote(url: str) -> list[str]:
    """validate() for s3://BUCKET/PREFIX: the listing against the manifest, then each shard
    (and the tokenizer) downloaded into a temp folder, checked, deleted (one at a time)."""
    from data_tools.remote import RemoteError, S3Path, shared_remote
    from data_tools.remote_folder import read_remote_manifest

    prefix = S3Path.parse(url)
    remote = shared_remote()
    m = read_remote_manifest(prefix)
    objects = remote.list(prefix)
    problems = [f"{prefix}/{MANIFEST_NAME}: {p}" for p in m.inconsistencies()]
    with tempfile.TemporaryDirectory(prefix="arrowtrain-validate-") as tmp:
        local = Path(tmp)
        tok = m.tokenizer
        if tok.file not in objects:
            problems.append(f"{prefix.join(tok.file)}: missing")
        elif remote.download(prefix.join(tok.file), local / "tok", objects[tok.file]) != tok.sha256:
            problems.append(f"{prefix.join(tok.file)}: sha256 does not match the manifest")
        entries = [s for _, s in m.shards()]
        bar = Progress(len(entries), "validate", unit="shards")
        for done, entry in enumerate(entries, 1):
            bar.update(done - 1)
            if entry.file not in objects:
                problems.append(f"{prefix.join(entry.file)}: file is missing")
                continue
            (local / entry.file).parent.mkdir(parents=True, exist_ok=True)
            try:
                remote.download(prefix.join(entry.file), local / entry.file, objects[entry.file])
            except RemoteError as e:
                problems.append(f"{prefix.join(entry.file)}: {e}")
                continue
            found = check_shard(local, entry, m.dtype, m.tokenizer.vocab_size, m.columns,
                                m.tokenizer.bos_id if m.tokenizer.bos_prepended else None)
            problems += [f"{prefix.join(entry.file)}: {p}" for p in found]
            (local / entry.file).unlink()
        bar.update(len(entries))
        bar.close()
    return problems


def validate(datadir: str | Path) -> list[str]:
    """Every problem in the folder as 'file: what is wrong' (empty list: valid)."""
    if isinstance(datadir, str) and datadir.startswith("s3://"):
        return validate_remote(datadir)
    datadir = Path(datadir)
    m = read_manifest(datadir)
    problems = [f"{datadir / MANIFEST_NAME}: {p}" for p in m.inconsistencies()]
    tok_path = datadir / m.tokenizer.file
    if not tok_path.is_file():
        problems.append(f"{tok_path}: missing")
    elif sha256_file(tok_path) != m.tokenizer.sha256:
        problems.append(f"{tok_path}: sha256 does not match the manifest")
    entries = [s for _, s in m.shards()]
    bar = Progress(len(entries), "validate", unit="shards")
    for done, entry in enumerate(entries, 1):
        found = check_shard(datadir, entry, m.dtype, m.tokenizer.vocab_size, m.columns,
                            m.tokenizer.bos_id if m.tokenizer.bos_prepended else None)
        problems += [f"{datadir / entry.file}: {p}" for p in found]
        bar.update(done)
    bar.close()
    return problems


def main(args) -> int:
    problems = validate(args.datadir)
    if problems:
        raise DataToolsError(f"{args.datadir} is NOT valid ({len(problems)} problems):\n  "
                             + "\n  ".join(problems))
    m = read_manifest(args.datadir)
    log.info("%s is valid: %d shards%s, checksums, schema (%s) and token ids < %d all hold",
             args.datadir, len(list(m.shards())), " of pairs (source, target)" if m.is_pairs
             else "", m.dtype, m.tokenizer.vocab_size)
    return EXIT_OK
