"""The lineage catalog: DuckDB views over every dataset under a root URI, no copy of the data.

Views: ``samples`` and ``quarantine`` (every dataset's shards, with a ``dataset`` column),
``decisions`` (the decisions each run exported), ``runs`` (run records) and ``checkpoints``
(model cards). Local roots and ``s3://`` roots (s3fs registered with DuckDB; the httpfs
extension cannot be installed offline).

Read-only queries: one SELECT statement only, and file access fenced to the root
(``allowed_directories`` with external access off and the configuration locked), so a query
that would write, attach, install or read outside the root is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import duckdb

from tasks import store
from tasks.dataset import QUARANTINE_SCHEMA, sample_schema

VIEWS = ("samples", "quarantine", "decisions", "runs", "checkpoints")


class QueryRefused(ValueError):
    """A query the read-only catalog will not run; the message says why."""


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


@dataclass
class Catalog:
    root: str
    con: duckdb.DuckDBPyConnection
    datasets: list[str]

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_catalog(root: str) -> Catalog:
    """Build the views over everything under ``root`` and lock the connection down."""
    if not store.exists(root):
        raise FileNotFoundError(f"no catalog root at {root}")
    root = root.rstrip("/") if store.is_remote(root) else os.path.abspath(root)
    con = duckdb.connect(":memory:")
    con.execute("SET parquet_metadata_cache = true")  # footers parsed once per catalog, not per query
    if store.is_remote(root):
        con.register_filesystem(store.filesystem(root)[0])
    manifests = store.glob(root, "**/dataset.json")
    datasets = [m.rsplit("/", 1)[0] for m in manifests]
    for view, kind in (("samples", "samples"), ("quarantine", "quarantine")):
        files = [f for d in datasets for f in store.glob(d, f"{kind}/part-*.parquet")]
        _view_over(con, view, files, datasets)
    decision_files = store.glob(root, "**/decisions/part-*.parquet")
    if decision_files:
        con.execute(f"CREATE VIEW decisions AS SELECT DISTINCT ON (decision_id) * "
                    f"FROM read_parquet({_sql_list(decision_files)}, union_by_name = true)")
    else:
        con.execute("CREATE VIEW decisions AS SELECT NULL::VARCHAR AS decision_id WHERE false")
    _json_view(con, "runs", store.glob(root, "**/runs/*.json"), "run_id")
    _json_view(con, "checkpoints", [f for f in store.glob(root, "**/*.json")
                                     if f.rsplit("/", 1)[-1].startswith(("classifier-", "dit-"))], "id")
    allowed = root.rstrip("/") + "/"
    con.execute(f"SET allowed_directories = {_sql_list([allowed])}")
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET lock_configuration = true")
    return Catalog(root, con, datasets)


def _view_over(con, view: str, files: list[str], datasets: list[str]) -> None:
    if not files:  # an empty view that still has the contract's columns
        schema = sample_schema() if view == "samples" else QUARANTINE_SCHEMA
        con.register(f"empty_{view}", schema.empty_table())
        con.execute(f"CREATE VIEW {view} AS SELECT NULL::VARCHAR AS dataset, * FROM empty_{view}")
        return
    # the dataset a row belongs to is the folder above samples/ or quarantine/
    con.execute(f"CREATE VIEW {view} AS SELECT regexp_replace(filename, '/[^/]+/[^/]+$', '') AS dataset, * "
                f"EXCLUDE (filename) FROM read_parquet({_sql_list(files)}, union_by_name = true, filename = true)")


def _json_view(con, view: str, files: list[str], key: str) -> None:
    if files:
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_json_auto({_sql_list(files)}, union_by_name = true)")
    else:
        con.execute(f"CREATE VIEW {view} AS SELECT NULL::VARCHAR AS {key} WHERE false")


def query(catalog: Catalog, sql: str, limit: int | None = 10_000) -> tuple[list[str], list[tuple]]:
    """Run one read-only SELECT; returns (column names, rows)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"cannot parse the query: {exc}") from exc
    if len(statements) != 1:
        raise QueryRefused(f"give exactly one statement (got {len(statements)})")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise QueryRefused(f"only SELECT queries are allowed here (this is {statements[0].type.name}); "
                           f"the catalog is read-only")
    try:
        relation = catalog.con.execute(sql)
        rows = relation.fetchmany(limit) if limit else relation.fetchall()
    except duckdb.PermissionException as exc:
        raise QueryRefused(f"refused: the query reaches outside {catalog.root} ({exc})") from exc
    except duckdb.Error as exc:
        raise QueryRefused(f"query failed: {exc}") from exc
    return [d[0] for d in relation.description], rows
