"""A shard folder in object storage (`s3://BUCKET/PREFIX`): the same layout as on disk
(docs/design.md §2) — PREFIX/manifest.json (written last: the commit point), PREFIX/tokenizer.json,
PREFIX/train/00000.arrow, ... — read through data_tools.remote.

`open_remote_folder` is what every reader does first: endpoint reachable, credentials accepted,
bucket present, manifest present and well-formed, every shard it lists present with its size
(one LIST of the prefix) — each failure a RemoteError or ManifestError naming which and where.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from data_tools.manifest import MANIFEST_NAME, Manifest, ManifestError
from data_tools.remote import Remote, RemoteError, S3Path, describe_endpoint, shared_remote

START_DEADLINE_S = 60.0   # how long the start-up checks retry an endpoint that does not answer


@dataclass
class RemoteFolder:
    url: S3Path
    manifest: Manifest
    objects: dict[str, int]     # key relative to the prefix -> bytes (one LIST)

    def shard_url(self, file: str) -> S3Path:
        return self.url.join(file)


def read_remote_manifest(url: str | S3Path, remote: Remote | None = None,
                         deadline_s: float | None = START_DEADLINE_S) -> Manifest:
    """PREFIX/manifest.json, checked like a local one (ManifestError names the s3:// file)."""
    prefix = url if isinstance(url, S3Path) else S3Path.parse(url)
    remote = remote or shared_remote()
    where = prefix.join(MANIFEST_NAME)
    try:
        raw = remote.read_bytes(where, deadline_s)
    except RemoteError as e:
        if e.kind != "key":
            raise
        raise ManifestError(f"{where}: not found — not a finished shard folder (an "
                            "interrupted upload? run the same `data copy` or `data shard "
                            "--out` again to finish it)") from None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{where}: invalid JSON: {e}") from None
    return Manifest.from_dict(obj, str(where))


def open_remote_folder(url: str | S3Path, remote: Remote | None = None,
                       deadline_s: float | None = START_DEADLINE_S) -> RemoteFolder:
    """Check access, read the manifest, and check that every shard it lists is there."""
    prefix = url if isinstance(url, S3Path) else S3Path.parse(url)
    remote = remote or shared_remote()
    if not remote.bucket_exists(prefix.bucket, deadline_s):
        raise RemoteError(f"{prefix}: no such bucket {prefix.bucket!r} at "
                          f"{describe_endpoint()}", "bucket", str(prefix))
    manifest = read_remote_manifest(prefix, remote, deadline_s)
    objects = remote.list(prefix, deadline_s=deadline_s)
    problems = []
    for _, entry in manifest.shards():
        size = objects.get(entry.file)
        if size is None:
            problems.append(f"{prefix.join(entry.file)}: listed in the manifest, missing "
                            "(no such key)")
        elif size != entry.file_bytes:
            problems.append(f"{prefix.join(entry.file)}: {size} bytes, the manifest says "
                            f"{entry.file_bytes}")
    if manifest.tokenizer.file not in objects:
        problems.append(f"{prefix.join(manifest.tokenizer.file)}: missing (no such key)")
    if problems:
        raise RemoteError("; ".join(problems[:5]) + (f"; and {len(problems) - 5} more"
                                                       if len(problems) > 5 else ""), "key",
                          str(prefix))
    return RemoteFolder(prefix, manifest, objects)
