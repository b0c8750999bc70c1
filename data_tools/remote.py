"""Object storage (S3 and S3-compatible servers) for shard folders: `s3://BUCKET/PREFIX`.

Torch-free; pyarrow's S3FileSystem (aws-sdk-cpp) underneath. Endpoint and credentials come from
the standard AWS environment only — AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION, AWS_PROFILE (the SDK's
own chain: env, profile, then instance roles) — never from a config file of ours, so no secret
ever reaches a run folder, a log or a checkpoint. With an endpoint given (any non-AWS server),
`configure_env` sets AWS_REQUEST_CHECKSUM_CALCULATION / AWS_RESPONSE_CHECKSUM_VALIDATION =
WHEN_REQUIRED (the SDK's default aws-chunked uploads are refused or stored corrupt by Ceph,
Swift and others) and AWS_EC2_METADATA_DISABLED, unless the user set them.

Every call retries connection errors, timeouts and 5xx with exponential backoff until its
deadline, then raises `RemoteUnavailable`; a wrong secret, a missing bucket or a missing key
raise `RemoteError` at once, each naming which (`kind`) and the s3:// address. Downloads go to a
temp file, resume from the last byte on a reset, and are checked against the expected size and
sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from data_tools.errors import DataToolsError

log = logging.getLogger("data_tools")

SCHEME = "s3://"
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # the first one set wins
REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Everything a rank on another host needs to reach the same store (passed through the
# environment by the launchers, never written into a script or file).
ENV_VARS = (*ENDPOINT_VARS, "AWS_ACCESS_KEY_ID", *SECRET_VARS, *REGION_VARS, "AWS_PROFILE")
SERVER_COMPAT_ENV = {"AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
                     "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED",
                     "AWS_EC2_METADATA_DISABLED": "true"}
CHUNK_BYTES = 8 << 20           # one ranged GET per chunk of a download
CONNECT_TIMEOUT_S = 5.0
STALL_TIMEOUT_S = 30.0          # a transfer with no byte for this long is retried
DEFAULT_DEADLINE_S = 600.0      # how long one call keeps retrying (data.remote_timeout's default)
BACKOFF_S = (0.2, 10.0)         # first and largest wait between tries
SDK_ATTEMPTS = 2                # the SDK's own quick retries inside each of our tries

T = TypeVar("T")


class RemoteError(DataToolsError):
    """Object storage refused or lacks something. `kind`: 'credentials' (wrong key or secret,
    no permission), 'bucket' (no such bucket), 'key' (no such object), 'endpoint' (nothing
    answers), 'checksum' (bytes differ from the manifest), 'url' (a malformed s3:// address),
    'refused' (another 4xx answer: the request itself is wrong)."""

    def __init__(self, message: str, kind: str, url: str = ""):
        super().__init__(message)
        self.kind, self.url = kind, url


class RemoteUnavailable(RemoteError):
    """Connection errors, timeouts or 5xx lasted longer than the call's deadline (an outage)."""

    def __init__(self, message: str, url: str = ""):
        super().__init__(message, "endpoint", url)


# ---- addresses ------------------------------------------------------------------------------

def is_remote(path: str | os.PathLike | None) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


@dataclass(frozen=True)
class S3Path:
    """s3://BUCKET/KEY; `key` has no leading or trailing slash ('' is the bucket itself)."""

    bucket: str
    key: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Path:
        if not is_remote(url):
            raise RemoteError(f"{url!r}: not an s3:// address", "url", str(url))
        rest = url[len(SCHEME):]
        bucket, _, key = rest.partition("/")
        if not bucket or any(c in bucket for c in " \\?#") or "//" in rest.rstrip("/"):
            raise RemoteError(f"{url!r}: expected s3://BUCKET/PREFIX (no empty parts)", "url",
                              url)
        return cls(bucket, key.strip("/"))

    def join(self, *parts: str) -> S3Path:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Path(self.bucket, key)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def fs_path(self) -> str:
        """BUCKET/KEY as pyarrow.fs names it."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    def __str__(self) -> str:
        return f"{SCHEME}{self.fs_path}"


# ---- environment ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    scheme: str          # http | https
    host_port: str       # "127.0.0.1:7480"; "" for AWS itself
    region: str | None


def endpoint_from_env(env: dict[str, str] | None = None) -> Endpoint:
    env = os.environ if env is None else env
    url = next((env[v] for v in ENDPOINT_VARS if env.get(v)), "")
    region = next((env[v] for v in REGION_VARS if env.get(v)), None)
    if not url:
        return Endpoint("https", "", region)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https") or not rest.strip("/"):
        var = next(v for v in ENDPOINT_VARS if env.get(v))
        raise RemoteError(f"{var}={url!r}: expected http(s)://HOST[:PORT]", "endpoint")
    return Endpoint(scheme, rest.strip("/"), region)


def configure_env(env: dict[str, str] | None = None) -> None:
    """With an endpoint given (not AWS itself): the SDK settings every non-AWS server needs
    (the user's own values are kept). Read by the SDK at its first use in this process."""
    env = os.environ if env is None else env
    if any(env.get(v) for v in ENDPOINT_VARS):
        for key, value in SERVER_COMPAT_ENV.items():
            env.setdefault(key, value)


def describe_endpoint(env: dict[str, str] | None = None) -> str:
    """Where requests go, for messages (never a credential)."""
    try:
        ep = endpoint_from_env(env)
    except RemoteError as e:
        return str(e)
    return f"{ep.scheme}://{ep.host_port}" if ep.host_port else "AWS S3"


def remote_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The AWS variables set in `env` (what must reach ranks on other hosts)."""
    env = os.environ if env is None else env
    return {k: env[k] for k in ENV_VARS if env.get(k)}


# ---- errors ---------------------------------------------------------------------------------

_TRANSIENT_MARKS = ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Timeout",
                    "timed out", "Connection reset", "connection reset", "Broken pipe",
                    "SLOW_DOWN", "SlowDown", "SERVICE_UNAVAILABLE", "ServiceUnavailable",
                    "INTERNAL_FAILURE", "InternalError", "Unable to connect", "HTTP response code 5",
                    "response code: 5", "THROTTLING", "REQUEST_TIMEOUT", "Empty reply",
                    "Recv failure", "Send failure", "unexpected end", "premature end")
_CREDENTIAL_MARKS = ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                     "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "ExpiredToken",
                     "MISSING_AUTHENTICATION_TOKEN", "UNRECOGNIZED_CLIENT", "EXPIRED_TOKEN")


_CLIENT_ERROR = re.compile(r"HTTP status (4\d\d)")


def classify(err: BaseException) -> str:
    """'key' (not found), 'bucket', 'credentials', 'refused' (another 4xx: the request itself
    is wrong, e.g. an invalid bucket name), or 'transient' (anything else: retried)."""
    text = str(err)
    if isinstance(err, FileNotFoundError):
        return "key"
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return "bucket"
    if any(m in text for m in _CREDENTIAL_MARKS):
        return "credentials"
    status = _CLIENT_ERROR.search(text)
    if status and status.group(1) not in ("408", "429") and \
            not any(m in text for m in _TRANSIENT_MARKS):
        return "refused"
    return "transient"


def _credentials_hint() -> str:
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID"):
        who = f"AWS_ACCESS_KEY_ID {env['AWS_ACCESS_KEY_ID']!r} with the AWS_SECRET_ACCESS_KEY set"
    elif env.get("AWS_PROFILE"):
        who = f"AWS_PROFILE {env['AWS_PROFILE']!r}"
    else:
        who = "no AWS_ACCESS_KEY_ID / AWS_PROFILE set (the SDK's default chain)"
    return f"{who} at {describe_endpoint()}"


# ---- the client -----------------------------------------------------------------------------

class Remote:
    """One S3 connection pool per process (thread-safe), with retries and clear errors.

    `deadline_s` bounds how long each call keeps retrying transient errors; `on_retry(error,
    wait_s)` is told of each retry (logging, metrics)."""

    def __init__(self, deadline_s: float = DEFAULT_DEADLINE_S,
                 on_retry: Callable[[BaseException, float], None] | None = None):
        self.deadline_s, self.on_retry = float(deadline_s), on_retry
        self._fs = None
        self._lock = threading.Lock()
        self.bytes_down = 0   # bytes received by downloads (all threads)
        self.bytes_up = 0
        self.retries = 0

    @property
    def fs(self):
        with self._lock:
            if self._fs is None:
                self._fs = _make_filesystem()
                _finalize_at_exit()
            return self._fs

    def _retrying(self, what: str, url: str, op: Callable[[], T],
                  deadline_s: float | None = None) -> T:
        """op() until it succeeds; transient errors retried with backoff until the deadline."""
        deadline = time.monotonic() + (self.deadline_s if deadline_s is None else deadline_s)
        wait = BACKOFF_S[0]
        while True:
            try:
                return op()
            except OSError as e:
                kind = classify(e)
                if kind != "transient":
                    raise self._error(kind, what, url, e) from None
                if time.monotonic() + wait > deadline:
                    raise RemoteUnavailable(
                        f"{url}: {what} failed for {self._limit(deadline_s):.0f} s "
                        f"({describe_endpoint()} unreachable or failing): {_short(e)}", url
                    ) from None
                self.retries += 1
                if self.on_retry:
                    self.on_retry(e, wait)
                log.debug("%s %s: %s; retrying in %.1f s", what, url, _short(e), wait)
                time.sleep(wait)
                wait = min(wait * 2, BACKOFF_S[1])

    def _limit(self, deadline_s: float | None) -> float:
        return self.deadline_s if deadline_s is None else deadline_s

    def _error(self, kind: str, what: str, url: str, e: BaseException) -> RemoteError:
        if kind == "credentials":
            return RemoteError(f"{url}: access denied ({what}): wrong AWS_ACCESS_KEY_ID / "
                               f"AWS_SECRET_ACCESS_KEY, or no permission ({_credentials_hint()})",
                               "credentials", url)
        if kind == "bucket":
            return RemoteError(f"{url}: no such bucket at {describe_endpoint()}", "bucket", url)
        if kind == "refused":
            return RemoteError(f"{url}: {what} refused by {describe_endpoint()}: {_short(e)}",
                               "refused", url)
        return self._missing(url)

    def _missing(self, url: str) -> RemoteError:
        """A missing object: says whether its bucket is missing too (one more request)."""
        path = S3Path.parse(url)
        with contextlib.suppress(RemoteError):
            if not self.bucket_exists(path.bucket):
                return RemoteError(f"{url}: no such bucket {path.bucket!r} at "
                                   f"{describe_endpoint()}", "bucket", url)
        return RemoteError(f"{url}: no such object (key {path.key!r} in bucket {path.bucket!r})",
                           "key", url)

    # ---- reading ----------------------------------------------------------------------------
    def bucket_exists(self, bucket: str, deadline_s: float | None = None) -> bool:
        import pyarrow.fs as pafs

        url = f"{SCHEME}{bucket}"
        info = self._retrying("checking the bucket", url,
                              lambda: self.fs.get_file_info(bucket), deadline_s)
        return info.type != pafs.FileType.NotFound

    def size(self, path: S3Path) -> int | None:
        """The object's size; None when it does not exist (its bucket must)."""
        import pyarrow.fs as pafs

        info = self._retrying("HEAD", str(path), lambda: self.fs.get_file_info(path.fs_path))
        return None if info.type == pafs.FileType.NotFound else info.size

    def check_access(self, prefix: S3Path) -> None:
        """Endpoint reachable, credentials accepted, bucket present — or a RemoteError naming
        which (a listing of the prefix's first level)."""
        if not self.bucket_exists(prefix.bucket):
            raise RemoteError(f"{prefix}: no such bucket {prefix.bucket!r} at "
                              f"{describe_endpoint()}", "bucket", str(prefix))
        self.list(prefix, recursive=False)

    def list(self, prefix: S3Path, recursive: bool = True,
             deadline_s: float | None = None) -> dict[str, int]:
        """{key relative to prefix: size} of the objects under prefix/ (none: {})."""
        import pyarrow.fs as pafs

        def op():
            sel = pafs.FileSelector(prefix.fs_path, allow_not_found=True, recursive=recursive)
            return self.fs.get_file_info(sel)

        infos = self._retrying("LIST", str(prefix), op, deadline_s)
        base = len(prefix.fs_path) + 1
        return {i.path[base:]: i.size for i in infos if i.type == pafs.FileType.File}

    def read_bytes(self, path: S3Path, deadline_s: float | None = None) -> bytes:
        """A small object whole (manifest.json, tokenizer.json)."""
        def op():
            with self.fs.open_input_stream(path.fs_path) as f:
                return f.read()
        data = self._retrying("GET", str(path), op, deadline_s)
        self._count(down=len(data))
        return data

    def _count(self, down: int = 0, up: int = 0) -> None:
        with self._lock:
            self.bytes_down += down
            self.bytes_up += up

    def download(self, path: S3Path, dest: Path, size: int, sha256: str | None = None,
                 progress: Callable[[int], None] | None = None,
                 deadline_s: float | None = None) -> str:
        """Object -> file `dest` (written in place: the caller gives a temp name). Ranged GETs
        of CHUNK_BYTES; after a reset it goes on from the last byte received, retrying until
        the deadline. Size and, if given, sha256 are checked (RemoteError kind 'checksum').
        Returns the sha256."""
        h = hashlib.sha256()
        with open(dest, "wb") as out:
            for chunk in self.read_chunks(path, size, deadline_s):
                out.write(chunk)
                h.update(chunk)
                if progress:
                    progress(len(chunk))
        digest = h.hexdigest()
        if sha256 is not None and digest != sha256:
            raise RemoteError(f"{path}: sha256 {digest[:16]}... differs from the manifest's "
                              f"{sha256[:16]}...", "checksum", str(path))
        return digest

    def read_chunks(self, path: S3Path, size: int, deadline_s: float | None = None
                    ) -> Iterator[bytes]:
        """The object in CHUNK_BYTES pieces: one HEAD (opening, again after an error) and one
        ranged GET per piece, each retried; its size must be `size`."""
        reader = _ChunkReader(self, path, size)
        try:
            while reader.got < size:
                chunk = self._retrying("GET", str(path), reader.next_chunk, deadline_s)
                self._count(down=len(chunk))
                yield chunk
        finally:
            reader.close()

    # ---- writing ----------------------------------------------------------------------------
    def upload(self, chunks: Callable[[], Iterator[bytes]], path: S3Path,
               progress: Callable[[int], None] | None = None) -> None:
        """Write an object from a fresh iterator of chunks (made again for each try). An object
        appears only once its upload completed (S3 semantics), so no temp key is needed."""
        def op():
            sent = 0
            with self.fs.open_output_stream(path.fs_path) as out:
                for chunk in chunks():
                    out.write(chunk)
                    sent += len(chunk)
                    if progress:
                        progress(len(chunk))
            self._count(up=sent)
        self._retrying("PUT", str(path), op)

    def put_bytes(self, path: S3Path, data: bytes) -> None:
        self.upload(lambda: iter([data]), path)

    def delete(self, path: S3Path) -> None:
        self._retrying("DELETE", str(path), lambda: self.fs.delete_file(path.fs_path))

    def create_bucket(self, bucket: str) -> None:
        self._retrying("CREATE BUCKET", f"{SCHEME}{bucket}", lambda: self.fs.create_dir(bucket))


class _ChunkReader:
    """Sequential ranged reads of one object through one open handle (reopened after an
    error, so a retry starts a fresh connection where the last one stopped)."""

    def __init__(self, remote: Remote, path: S3Path, size: int):
        self.remote, self.path, self.size = remote, path, size
        self.got, self.file = 0, None

    def next_chunk(self) -> bytes:
        if self.file is None:
            self.file = self.remote.fs.open_input_file(self.path.fs_path)
            if self.file.size() != self.size:
                got = self.file.size()
                self.close()
                raise RemoteError(f"{self.path}: object is {got} bytes, expected {self.size} "
                                  "(changed since the manifest was written?)", "checksum",
                                  str(self.path))
        try:
            chunk = self.file.read_at(min(CHUNK_BYTES, self.size - self.got), self.got)
        except OSError:
            self.close()
            raise
        chunk = chunk.to_pybytes() if hasattr(chunk, "to_pybytes") else bytes(chunk)
        if not chunk:
            raise RemoteError(f"{self.path}: object ended at {self.got} bytes, expected "
                              f"{self.size}", "checksum", str(self.path))
        self.got += len(chunk)
        return chunk

    def close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _make_filesystem():
    """pyarrow's S3FileSystem from the AWS environment (credentials: the SDK's chain when no key
    pair is set, so AWS_PROFILE and instance roles work)."""
    import pyarrow.fs as pafs

    configure_env()
    env, ep = os.environ, endpoint_from_env()
    kwargs: dict[str, Any] = {
        "region": ep.region or "us-east-1", "connect_timeout": CONNECT_TIMEOUT_S,
        "request_timeout": STALL_TIMEOUT_S, "allow_bucket_creation": True,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=SDK_ATTEMPTS)}
    if ep.host_port:
        kwargs.update(endpoint_override=ep.host_port, scheme=ep.scheme)
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        kwargs.update(access_key=env["AWS_ACCESS_KEY_ID"],
                      secret_key=env["AWS_SECRET_ACCESS_KEY"],
                      session_token=env.get("AWS_SESSION_TOKEN") or None)
    return pafs.S3FileSystem(**kwargs)


_shared: Remote | None = None
_shared_env: tuple | None = None
_shared_lock = threading.Lock()


def _env_identity() -> tuple:
    """What the client was made from; the secret only as a hash, held in memory."""
    env = os.environ
    secret = hashlib.sha256("\0".join(env.get(v, "") for v in SECRET_VARS).encode()).digest()
    return (*(env.get(v, "") for v in ENV_VARS if v not in SECRET_VARS), secret)


def shared_remote(deadline_s: float | None = None) -> Remote:
    """This process's client (one connection pool; made again if the AWS environment
    changed); `deadline_s` updates its retry deadline."""
    global _shared, _shared_env
    with _shared_lock:
        if _shared is None or _shared_env != _env_identity():
            _shared, _shared_env = Remote(), _env_identity()
        if deadline_s is not None:
            _shared.deadline_s = float(deadline_s)
        return _shared


_registered = False


def _finalize_at_exit() -> None:
    """S3 shut down when the interpreter exits (pyarrow can hang at exit otherwise) — not when
    a command's main() returns: commands also run inside other processes (tests, arrowtrain),
    and S3 cannot be initialised again once finalised."""
    global _registered
    if not _registered:
        import atexit

        atexit.register(finalize)
        _registered = True


def finalize() -> None:
    """Shut the S3 client down before the process exits (pyarrow can hang at exit otherwise);
    a no-op when S3 was never used."""
    global _shared
    if _shared is None or _shared._fs is None:
        return
    import pyarrow.fs as pafs

    _shared._fs = None
    with contextlib.suppress(Exception):
        pafs.finalize_s3()
