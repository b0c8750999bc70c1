"""A data folder's manifest wherever the folder lives: a local path or s3://BUCKET/PREFIX.

data_tools.manifest reads and checks local manifests; data_tools.remote_folder reads them from
object storage; this module picks one (so neither imports the other the wrong way)."""

from __future__ import annotations

import os

from data_tools.manifest import Manifest


def read_manifest(datadir: str | os.PathLike) -> Manifest:
    """Load and check DATADIR/manifest.json; ManifestError names the file and every problem.
    An s3:// folder's is read from object storage (RemoteError names an unreachable endpoint,
    wrong credentials, a missing bucket)."""
    if isinstance(datadir, str) and datadir.startswith("s3://"):
        from data_tools.remote_folder import read_remote_manifest

        return read_remote_manifest(datadir)
    return Manifest.read(datadir)
