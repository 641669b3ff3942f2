"""Storage: fsspec URIs (local paths by default, ``s3://`` through s3fs), atomic writes, shards.

Endpoints and credentials come from configuration or the environment, never from code:
``TAILFORGE_S3_ENDPOINT_URL`` (or the AWS SDK's ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``)
names an S3-compatible endpoint such as MinIO; keys come from the standard AWS chain
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, profiles, instance roles).

Writes are atomic: locally a temporary name in the same folder and ``os.replace``; on S3 one
PUT of the whole object. Shards are named by what they contain: ``part-<rows>-<bytes>.parquet``,
a digest of the rows' keys (writing the same rows twice finds the first shard and writes nothing)
and a digest of the file's bytes, which every read checks (``read_verified``): a shard that
changed at rest (a flipped bit, a truncated copy) is refused by name instead of decoding to
wrong labels. Shards written before content digests (``part-<rows>.parquet``) are read
unchecked; ``tailforge verify`` counts them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import uuid
from typing import Any, Iterable, Mapping

import fsspec
from fsspec.exceptions import FSTimeoutError
import pyarrow as pa
import pyarrow.parquet as pq

SHARD_PREFIX = "part-"
KEYS_DIGEST, CONTENT_DIGEST = 20, 16  # hex characters of each sha256 in a shard's name
_SEALED = re.compile(rf"^{SHARD_PREFIX}[0-9a-f]{{{KEYS_DIGEST}}}-(?P<content>[0-9a-f]{{{CONTENT_DIGEST}}})\.parquet$")


# An S3 write is one PUT; s3fs bounds a silent server's answer (its read timeout) but not a body
# sent into a connection that stopped moving, and retries on top: each PUT gets a bound of its own.
PUT_BOUND_S = 60.0  # plus one second per MiB of the object (a link slower than 1 MiB/s needs a re-run)


class StorageTimeout(ConnectionError):
    """An S3 call that did not end within its bound: the endpoint stopped answering mid-call."""


class ShardCorrupt(ValueError):
    """A shard whose bytes do not match the digest in its name, or that is not Parquet at all."""


def storage_options_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """s3fs options from the environment; empty for plain AWS defaults."""
    env = os.environ if env is None else env
    endpoint = (env.get("TAILFORGE_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3")
                or env.get("AWS_ENDPOINT_URL"))
    options: dict[str, Any] = {"use_listings_cache": False}
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


# folders the system owns: no dataset, model or run output belongs in (or under) one
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys",
                  "/usr", "/var/log", "/var/run")  # /var/lib/<app> is where a service keeps its state: allowed


def check_output_location(uri: str, what: str = "output") -> None:
    """Refuse, in one line, to write under the file system's root itself or a system folder
    (`output: /etc`); ``..`` and symlinks are resolved first. Remote URIs are the store's own."""
    if is_remote(uri):
        return
    path = os.path.realpath(uri.removeprefix("file://"))
    system = next((s for s in SYSTEM_FOLDERS if path == s or path.startswith(s + "/")), "/" if path == "/" else None)
    if system:
        raise ValueError(f"{what} {uri} is {'the root folder' if system == '/' else 'in the system folder ' + system}"
                         f": write under your own folder or $TAILFORGE_HOME instead")


def filesystem(uri: str, storage_options: Mapping[str, Any] | None = None):
    """``(fs, path)`` for a URI; local paths are made absolute."""
    if not is_remote(uri):
        path = os.path.abspath(uri.removeprefix("file://"))
        return fsspec.filesystem("file"), path
    protocol = uri.split("://", 1)[0]
    options = dict(storage_options_from_env() if storage_options is None else storage_options)
    if protocol != "s3":
        options = {k: v for k, v in options.items() if k not in ("client_kwargs", "use_listings_cache")}
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path


def join(uri: str, *parts: str) -> str:
    if is_remote(uri):
        return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(uri, *parts)


def _full_uri(fs, path: str, like: str) -> str:
    if not is_remote(like):
        return path
    return f"{like.split('://', 1)[0]}://{path}"


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def must_exist(what: str, uri: str | None) -> None:
    """A file the user named (a checkpoint) is there: FileNotFoundError naming it if not."""
    if uri and not exists(uri):
        raise FileNotFoundError(f"{what} {uri} does not exist")


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write the whole object or nothing: temp file + rename locally, one PUT on S3."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        bound = PUT_BOUND_S + len(data) / 2**20
        try:
            fs.pipe_file(path, data, timeout=bound)
        except FSTimeoutError as exc:
            raise StorageTimeout(f"writing {uri} did not finish within {bound:.0f} s: the endpoint stopped "
                                 f"answering") from exc
        return
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(uri: str, obj: Any) -> None:
    write_bytes_atomic(uri, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def glob(uri: str, pattern: str) -> list[str]:
    """Full URIs under ``uri`` matching ``pattern`` (``**`` recurses), sorted."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    found = fs.glob(posixpath.join(path, pattern) if is_remote(uri) else os.path.join(path, pattern))
    return sorted(_full_uri(fs, p, uri) for p in found)


def list_shards(folder_uri: str) -> list[str]:
    """Completed shards in a folder (temporary files never match), sorted by name."""
    return glob(folder_uri, f"{SHARD_PREFIX}*.parquet")


def shard_stem(keys: Iterable[str]) -> str:
    """The part of a shard's name that its rows' sorted keys decide: same rows, same stem."""
    return f"{SHARD_PREFIX}{hashlib.sha256(chr(10).join(sorted(keys)).encode()).hexdigest()[:KEYS_DIGEST]}"


def shard_name(keys: Iterable[str], data: bytes) -> str:
    """The stem of the keys, then the digest of the file's bytes that readers check."""
    return f"{shard_stem(keys)}-{hashlib.sha256(data).hexdigest()[:CONTENT_DIGEST]}.parquet"


def sealed_digest(uri: str) -> str | None:
    """The content digest a shard's name records; None for a name from before content digests."""
    found = _SEALED.match(uri.rsplit("/", 1)[-1])
    return found["content"] if found else None


def verify(uri: str, data: bytes) -> bool:
    """True when ``data`` matches the digest in ``uri``'s name, False when the name records none;
    ``ShardCorrupt`` (one line naming the shard) when they differ."""
    expected = sealed_digest(uri)
    if expected is None:
        return False
    found = hashlib.sha256(data).hexdigest()[:CONTENT_DIGEST]
    if found != expected:
        raise ShardCorrupt(f"shard {uri} is corrupt: its bytes hash to {found}, its name says {expected} (it "
                           f"changed after it was written). Restore it from a copy, or remove it and re-run the "
                           f"stage that wrote it; `tailforge verify` checks every shard of a dataset")
    return True


def read_verified(uri: str) -> bytes:
    """A shard's bytes, checked against its name. A local shard that is a symbolic link is
    refused: a dataset's shards are its own files, and a link may point anywhere."""
    if not is_remote(uri) and os.path.islink(uri.removeprefix("file://")):
        raise ShardCorrupt(f"shard {uri} is a symbolic link (to {os.path.realpath(uri.removeprefix('file://'))}): a "
                           f"dataset's shards are its own files; copy the file in place of the link, or remove it")
    data = read_bytes(uri)
    verify(uri, data)
    return data


def verify_shards(uris: Iterable[str]) -> dict:
    """Every shard read whole and checked against its name (``ShardCorrupt`` at the first that
    differs): how many, how many had a digest to check (``sealed``), their bytes."""
    counts = {"shards": 0, "sealed": 0, "bytes": 0}
    for uri in uris:
        data = read_verified(uri)
        counts["sealed"] += sealed_digest(uri) is not None
        counts["shards"] += 1
        counts["bytes"] += len(data)
    return counts


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=256)
    return sink.getvalue()


def write_shard(folder_uri: str, table: pa.Table, key_column: str) -> tuple[str, bool]:
    """Write ``table`` as one shard named by its keys and bytes. Returns (uri, written); a shard
    with the same keys already holds these rows and is left as it is (idempotent)."""
    keys = table.column(key_column).to_pylist()
    stem = shard_stem(keys)
    found = glob(folder_uri, f"{stem}*.parquet")  # this stem, with or without a content digest
    if found:
        return found[0], False
    data = parquet_bytes(table)
    uri = join(folder_uri, shard_name(keys, data))
    write_bytes_atomic(uri, data)
    return uri, True


def remove(uri: str) -> None:
    """Delete one file (gone already: nothing to do)."""
    fs, path = filesystem(uri)
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass


def read_parquet(uris: list[str], columns: list[str] | None = None) -> pa.Table | None:
    """These Parquet files as one table (None for an empty list), each checked against its name
    first; a file that is not Parquet is ``ShardCorrupt`` naming it."""
    tables = []
    for uri in uris:
        data = read_verified(uri)
        try:
            # one thread: Arrow's pool left running at exit aborted 1 in 30 processes that stopped on
            # a corrupt shard ("terminate called without an active exception", exit 134 after the line)
            tables.append(pq.read_table(pa.BufferReader(data), columns=columns, use_threads=False))
        except (pa.ArrowException, OSError) as exc:
            raise ShardCorrupt(f"shard {uri} cannot be read as Parquet ({str(exc).splitlines()[0][:160]}): restore "
                               f"it from a copy, or remove it and re-run the stage that wrote it") from exc
    return pa.concat_tables(tables, promote_options="default") if tables else None


def read_shards(folder_uri: str, columns: list[str] | None = None) -> pa.Table | None:
    """All shards of a folder as one table (None when there are none)."""
    return read_parquet(list_shards(folder_uri), columns)
