"""The lineage catalog: DuckDB views over every dataset under a root URI, no copy of the data.

Views: ``samples`` and ``quarantine`` (every dataset's shards, with a ``dataset`` column),
``decisions`` (the decisions each run exported), ``runs`` (run records) and ``checkpoints``
(model cards). Local roots and ``s3://`` roots (s3fs registered with DuckDB; the httpfs
extension cannot be installed offline).

Read-only queries (``tasks.query_fence``): each query is parsed by DuckDB and must be one plain
SELECT tree; the connection reads files only through a read-only file system fenced to the root
(DuckDB's local file system disabled, temp directory off, external access off, configuration
locked); every query runs under a time limit, memory and threads are capped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from tasks import store
from tasks.dataset import QUARANTINE_SCHEMA, sample_schema
from tasks.knowledge.cache import DECISION_SCHEMA
from tasks.query_fence import (PROTOCOL, FenceError, QueryTimeout, ReadOnlyFileSystem, check_select, fenced_url,
                               original_prefix, run_with_time_limit)

VIEWS = ("samples", "quarantine", "decisions", "runs", "checkpoints")
TIMEOUT_S = 30.0  # default wall-clock limit per query
MEMORY_LIMIT = "2GB"  # DuckDB memory_limit for the catalog connection
# one thread: every read goes through Python (the fenced fsspec wrapper) under the GIL, so more
# threads gain little. (It does not stop DuckDB reading one handle from two threads: see
# query_fence.PerThreadPosition.)
THREADS = 1
PROTOCOL_RE = PROTOCOL + "://"


class QueryRefused(ValueError):
    """A query the read-only catalog will not run; the message says why."""


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join(_sql_str(p) for p in paths) + "]"


@dataclass
class Catalog:
    root: str
    con: duckdb.DuckDBPyConnection
    datasets: list[str]
    timeout_s: float | None = TIMEOUT_S

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_catalog(root: str, timeout_s: float | None = TIMEOUT_S, memory_limit: str = MEMORY_LIMIT,
                 threads: int = THREADS, shards: bool = True) -> Catalog:
    """Build the views over everything under ``root`` and lock the connection down.

    Files are read through ``ReadOnlyFileSystem`` under its own protocol (views name fenced
    URLs; the ``dataset`` column is mapped back to the user's URI). ``shards=False`` (`tailforge
    runs`): the samples, quarantine and decisions views are empty and no shard is read, so a
    corrupt shard does not hide the run records that say what wrote it."""
    if not store.exists(root):
        raise FileNotFoundError(f"no catalog root at {root}")
    root = root.rstrip("/") if store.is_remote(root) else os.path.abspath(root)
    con = duckdb.connect(":memory:")
    con.execute("SET parquet_metadata_cache = true")  # footers parsed once per catalog, not per query
    inner, inner_root = store.filesystem(root)
    con.register_filesystem(ReadOnlyFileSystem(inner, inner_root, local=not store.is_remote(root)))
    manifests = store.glob(root, "**/dataset.json")
    datasets = [m.rsplit("/", 1)[0] for m in manifests]
    prefix = original_prefix(root)
    names = {d: store.read_json(m).get("name") for d, m in zip(datasets, manifests)}
    files = {kind: [f for d in datasets for f in store.glob(d, f"{kind}/part-*.parquet")] if shards else []
             for kind in ("samples", "quarantine")}
    decisions = store.glob(root, "**/decisions/part-*.parquet") if shards else []
    store.verify_shards([*files["samples"], *files["quarantine"], *decisions])  # a changed shard: refused by name
    for view in ("samples", "quarantine"):
        _view_over(con, view, [fenced_url(f) for f in files[view]], prefix, names)
    decision_files = [fenced_url(f) for f in decisions]
    if decision_files:
        con.execute(f"CREATE VIEW decisions AS SELECT DISTINCT ON (decision_id) * "
                    f"FROM read_parquet({_sql_list(decision_files)}, union_by_name = true)")
    else:  # an empty view that still has the decision columns (lineage selects them)
        con.register("empty_decisions", DECISION_SCHEMA.empty_table())
        con.execute("CREATE VIEW decisions AS SELECT * FROM empty_decisions")
    _json_view(con, "runs", store.glob(root, "**/runs/*.json"), "run_id")
    _json_view(con, "checkpoints", [f for f in store.glob(root, "**/*.json")
                                     if f.rsplit("/", 1)[-1].startswith(("classifier-", "dit-"))], "id")
    _lock_down(con, fenced_url(root), memory_limit, threads)
    return Catalog(root, con, datasets, timeout_s)


def _lock_down(con, fenced_root: str, memory_limit: str, threads: int) -> None:
    """The fence (layer 2 of tasks.query_fence), then caps, then the lock: no query can undo them."""
    con.execute("SET temp_directory = ''")  # no spilling: a temp dir would be an allowed directory
    con.execute(f"SET allowed_directories = {_sql_list([fenced_root.rstrip('/') + '/'])}")
    con.execute("SET disabled_filesystems = 'LocalFileSystem'")  # local files only via the read-only wrapper
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute(f"SET memory_limit = {_sql_str(memory_limit)}")
    con.execute(f"SET threads = {int(threads)}")
    con.execute("SET lock_configuration = true")


def _view_over(con, view: str, files: list[str], prefix: str, names: dict[str, str]) -> None:
    """``dataset`` (the folder's URI, as the user named it) and ``dataset_name`` (its manifest's
    name, what a WHERE clause wants) before the shard's own columns."""
    if not files:  # an empty view that still has the contract's columns
        schema = sample_schema() if view == "samples" else QUARANTINE_SCHEMA
        con.register(f"empty_{view}", schema.empty_table())
        con.execute(f"CREATE VIEW {view} AS SELECT NULL::VARCHAR AS dataset, NULL::VARCHAR AS dataset_name, * "
                    f"FROM empty_{view}")
        return
    # the dataset a row belongs to is the folder above samples/ or quarantine/, named as the user named it
    folder = "regexp_replace(filename, '/[^/]+/[^/]+$', '')"
    uri = f"regexp_replace({folder}, {_sql_str('^' + PROTOCOL_RE)}, {_sql_str(prefix)})"
    cases = " ".join(f"WHEN {_sql_str(d)} THEN {_sql_str(n or '')}" for d, n in names.items())
    name = f"CASE {uri} {cases} END" if cases else "NULL::VARCHAR"
    con.execute(f"CREATE VIEW {view} AS SELECT {uri} AS dataset, {name} AS dataset_name, * "
                f"EXCLUDE (filename) FROM read_parquet({_sql_list(files)}, union_by_name = true, filename = true)")


def _json_view(con, view: str, files: list[str], key: str) -> None:
    """A view over small JSON records (run records, model cards), read here rather than by
    DuckDB's JSON reader, whose type inference over many files' union of keys failed now and
    then ("don't know what type", "Out of buffer"). One row per file: ``key`` first, every
    top-level scalar as a column, nested values as JSON text (query them with json_extract),
    times (``*_at``) as timestamps, and ``record``, the whole file as JSON text."""
    records = []
    for uri in files:
        try:
            record = store.read_json(uri)
        except (ValueError, FileNotFoundError):
            continue  # removed meanwhile, or not JSON: not a record
        if isinstance(record, dict) and record.get(key) is not None:
            records.append(record)
    names = [key] + sorted({k for r in records for k in r} - {key})
    columns = {name: _column(name, [r.get(name) for r in records]) for name in names}
    columns["record"] = pa.array([json.dumps(r, sort_keys=True) for r in records], pa.string())
    con.register(f"{view}_records", pa.table(columns))
    con.execute(f"CREATE VIEW {view} AS SELECT * FROM {view}_records")


def _column(name: str, values: list) -> pa.Array:
    """One typed column: timestamps for ``*_at``, else the scalars' own type when they share
    one, else text (nested values as JSON)."""
    present = [v for v in values if v is not None]
    if name.endswith("_at"):
        try:
            return pa.array([dt.datetime.fromisoformat(v) if v else None for v in values], pa.timestamp("us", tz="UTC"))
        except (TypeError, ValueError):
            pass
    kinds = {type(v) for v in present}
    if kinds == {bool}:
        return pa.array(values, pa.bool_())
    if kinds and kinds <= {int}:
        return pa.array(values, pa.int64())
    if kinds and kinds <= {int, float}:
        return pa.array([float(v) if v is not None else None for v in values], pa.float64())
    return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                     for v in values], pa.string())


def query(catalog: Catalog, sql: str, limit: int | None = 10_000,
          timeout_s: float | None = None) -> tuple[list[str], list[tuple]]:
    """Run one read-only SELECT (checked, fenced, time-limited); returns (column names, rows).

    ``timeout_s`` defaults to the catalog's; 0 or None there means no limit."""
    try:
        check_select(sql)
    except FenceError as exc:
        raise QueryRefused(str(exc)) from exc
    seconds = catalog.timeout_s if timeout_s is None else timeout_s
    try:
        return run_with_time_limit(catalog.con, sql, limit, seconds)
    except QueryTimeout as exc:
        raise QueryRefused(f"query {exc}") from exc
    except duckdb.PermissionException as exc:
        raise QueryRefused(f"refused: the query reaches outside {catalog.root} ({_first_line(exc)})") from exc
    except duckdb.OutOfMemoryException as exc:
        raise QueryRefused(f"query needs more than the catalog's memory limit; narrow it ({_first_line(exc)})") from exc
    except duckdb.Error as exc:
        raise QueryRefused(f"query failed: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    """DuckDB's message without the advice paragraphs it appends (one line for the user)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
