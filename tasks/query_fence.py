"""The read-only fence around `tailforge query`: three layers, each enough on its own to stop a write.

1. ``check_select``: every statement is parsed by DuckDB's own parser (``json_serialize_sql``,
   which serializes SELECT statements only) and its whole tree is walked. Anything that is not a
   plain SELECT tree is refused: a COPY hidden in a CTE (DuckDB reports ``WITH x AS (COPY ...)
   SELECT 1`` as a SELECT statement and runs the COPY), table functions other than a few
   value generators (no ``read_*``/``glob``/``query``), file paths used as table names.
2. ``ReadOnlyFileSystem``: the catalog reads its files only through this fsspec wrapper, under
   its own protocol; DuckDB's local file system is disabled and the fence's only allowed
   directory is the root under that protocol. Opening for writing, deleting, moving and making
   folders raise PermissionError, and paths that leave the root (``..``, symlinks) are refused.
   DuckDB's temp directory is off, so it is not an allowed directory either.
3. ``run_with_time_limit``: DuckDB has no statement timeout, so a timer interrupts the
   connection; memory and threads are capped when the catalog is opened.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import threading

import duckdb
from fsspec import AbstractFileSystem

PROTOCOL = "tailforge-ro"
QUERY_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}
TABLE_FUNCTIONS = {"range", "generate_series", "unnest"}  # value generators: they touch no file
DENIED_FUNCTIONS = re.compile(r"^(read_|parquet_|sniff_|iceberg_|delta_|glob$|query$|query_table$|getenv$|current_setting$)")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


class FenceError(ValueError):
    """A statement or file access the fence refuses; the message says why."""


def check_select(sql: str) -> None:
    """Raise FenceError unless ``sql`` is exactly one SELECT whose whole tree only reads."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise FenceError(f"cannot parse the query: {exc}") from exc
    if len(statements) != 1:
        raise FenceError(f"give exactly one statement (got {len(statements)})")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise FenceError(f"only SELECT queries are allowed here (this is {statements[0].type.name}); "
                         f"the catalog is read-only")
    tree = _parse_tree(sql)
    if tree.get("error"):
        raise FenceError(f"only a plain SELECT is allowed here ({tree.get('error_message')}); the catalog is read-only")
    if len(tree["statements"]) != 1:
        raise FenceError(f"give exactly one statement (got {len(tree['statements'])})")
    _walk(tree["statements"][0])


def _parse_tree(sql: str) -> dict:
    # a private connection: the parser never sees the catalog or its settings
    with duckdb.connect(":memory:") as parser:
        return json.loads(parser.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()[0])


def _walk(node) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item)
        return
    if not isinstance(node, dict):
        return
    _check_node(node)
    for value in node.values():
        _walk(value)


def _check_node(node: dict) -> None:
    kind = node.get("type")
    if "info_type" in node:  # a statement's payload (COPY_INFO, ...) inside the SELECT tree
        raise FenceError(f"a {node['info_type'].removesuffix('_INFO')} inside the query is not allowed; "
                         f"the catalog is read-only")
    if isinstance(kind, str) and kind.endswith("_NODE") and kind not in QUERY_NODES:
        raise FenceError(f"a {kind.removesuffix('_QUERY_NODE').removesuffix('_NODE')} inside the query is not "
                         f"allowed; the catalog is read-only")
    if kind == "TABLE_FUNCTION":
        name = (node.get("function") or {}).get("function_name", "?")
        if name.lower() not in TABLE_FUNCTIONS:
            raise FenceError(f"table function {name}() is not allowed here; query the views "
                             f"(samples, quarantine, decisions, runs, checkpoints)")
    elif node.get("class") == "FUNCTION" and DENIED_FUNCTIONS.match(str(node.get("function_name", "")).lower()):
        raise FenceError(f"function {node['function_name']}() is not allowed here; it reads files, runs SQL or "
                         f"shows the host's settings and paths")
    elif kind == "BASE_TABLE":
        for part in ("catalog_name", "schema_name", "table_name"):
            if node.get(part) and not IDENTIFIER.match(node[part]):
                raise FenceError(f"{node[part]!r} is not a table name; query the views "
                                 f"(samples, quarantine, decisions, runs, checkpoints), not files")


def fenced_url(uri: str) -> str:
    """The URL DuckDB reads ``uri`` (a local absolute path or ``s3://...``) through: the wrapper's protocol."""
    return f"{PROTOCOL}://{uri.split('://', 1)[1] if '://' in uri else uri}"


def original_prefix(root: str) -> str:
    """What replaces ``tailforge-ro://`` to turn a fenced URL back into the user's URI."""
    return root.split("://", 1)[0] + "://" if "://" in root else ""


class ReadOnlyFileSystem(AbstractFileSystem):
    """An fsspec file system that reads ``inner`` under ``root`` and refuses every write (layer 2)."""

    protocol = PROTOCOL
    cachable = False

    def __init__(self, inner: AbstractFileSystem, root: str, local: bool, **kwargs):
        super().__init__(**kwargs)
        self.inner, self.local = inner, local
        self.root = os.path.realpath(root) if local else root.rstrip("/")

    def _inside(self, path: str) -> str:
        inner = self._strip_protocol(path)
        if self.local:
            real = os.path.realpath(inner)  # resolves .. and symlinks before the check
            if real != self.root and not real.startswith(self.root + os.sep):
                raise PermissionError(f"{inner} is outside the catalog root {self.root}")
            return inner
        if ".." in inner.split("/") or not (inner + "/").startswith(self.root + "/"):
            raise PermissionError(f"{inner} is outside the catalog root {self.root}")
        return posixpath.normpath(inner)

    def _open(self, path, mode="rb", **kwargs):
        if mode != "rb":
            raise PermissionError(f"the catalog is read-only: cannot open {path} for writing")
        return PerThreadPosition(self.inner.open(self._inside(path), "rb"))

    def ls(self, path, detail=True, **kwargs):
        return self.inner.ls(self._inside(path), detail=detail)

    def info(self, path, **kwargs):
        return self.inner.info(self._inside(path))

    def modified(self, path):
        return self.inner.modified(self._inside(path))

    def _refuse(self, *args, **kwargs):
        raise PermissionError("the catalog is read-only: it never writes, moves or deletes files")

    rm = rm_file = _rm = mv = cp_file = copy = put = put_file = pipe = pipe_file = touch = _refuse
    mkdir = makedirs = rmdir = _refuse


class PerThreadPosition:
    """A read-only file handle whose position belongs to the calling thread.

    DuckDB reads a Python file as ``seek(offset)`` then ``read(n)``, two calls, and does so from
    more than one thread on the same handle even with ``SET threads = 1``: another thread's seek
    in between made a read return the wrong bytes ("ZSTD Decompression failure"; measured: 157
    overlapping calls and 4-21 failed look-ups in 300 lineage look-ups, /work CI of stop 20).
    Here each thread keeps its own position and a lock makes seek-then-read one step."""

    def __init__(self, inner):
        self._inner, self._lock, self._local = inner, threading.Lock(), threading.local()

    def tell(self) -> int:
        return getattr(self._local, "pos", 0)

    def seek(self, offset: int, whence: int = 0) -> int:
        with self._lock:
            self._inner.seek(self.tell())
            self._inner.seek(offset, whence)
            self._local.pos = self._inner.tell()
        return self._local.pos

    def read(self, size: int = -1) -> bytes:
        with self._lock:
            self._inner.seek(self.tell())
            data = self._inner.read(size)
            self._local.pos = self._inner.tell()
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self._inner.close()

    @property
    def closed(self) -> bool:
        return self._inner.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class QueryTimeout(RuntimeError):
    """A query stopped by the time limit."""


def run_with_time_limit(con: duckdb.DuckDBPyConnection, sql: str, limit: int | None, seconds: float | None):
    """Execute and fetch under a wall-clock limit (layer 3): a timer calls ``con.interrupt()``."""
    timer = threading.Timer(seconds, con.interrupt) if seconds else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        relation = con.execute(sql)
        rows = relation.fetchmany(limit) if limit else relation.fetchall()
        return [d[0] for d in relation.description], rows
    except duckdb.InterruptException as exc:
        raise QueryTimeout(f"stopped after the {seconds:g} s time limit; narrow the query (WHERE, LIMIT) "
                           f"or give a longer --timeout") from exc
    finally:
        if timer:
            timer.cancel()
