"""The probes of `tailforge query`'s read-only fence (tasks/query_fence.py): a world to try them
in (a catalog root, a folder outside it with secrets, a symlink out, a working directory with
DuckDB's default temp folder) and the statements that must be refused, shared by the tests
(tests/test_query_fence.py) and the reliability benchmark's fence section."""

import hashlib
import os

import duckdb

from tasks import store
from tasks.dataset import utcnow
from tasks.ingest import ingest_phantom
from tasks.runs import write_run_record


def build_world(base) -> dict:
    """A catalog root with one phantom dataset and a run record, a folder outside it with secrets,
    a symlink from inside the root to that folder, and a working directory with a .tmp folder.
    (tests/test_query_fence.py and the fence section of benchmarks/reliability_sections.py use it.)"""
    root, outside, cwd = base / "root", base / "outside", base / "cwd"
    dataset = root / "datasets" / "ph"
    ingest_phantom(str(dataset), 24, size=32, seed=3)
    write_run_record(str(dataset), "run-0001", "ingest", {}, "completed", utcnow(), {"written": 24})
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    duckdb.execute(f"COPY (SELECT 42 AS secret) TO '{outside / 'secret.parquet'}' (FORMAT parquet)")
    os.symlink(outside, root / "link")
    (cwd / ".tmp").mkdir(parents=True)
    (cwd / ".tmp" / "x.csv").write_text("a\n1\n")
    shard = store.list_shards(str(dataset / "samples"))[0]
    return {"root": str(root), "outside": str(outside), "cwd": str(cwd), "shard": shard,
            "manifest": str(dataset / "dataset.json"), "tmp": str(cwd / ".tmp")}


def snapshot(*folders: str) -> dict:
    """Every file (and folder) under these folders with its size, mtime and content hash."""
    seen = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            seen[dirpath] = "dir"
            for name in filenames:
                path = os.path.join(dirpath, name)
                st = os.stat(path)
                with open(path, "rb") as fh:
                    seen[path] = (st.st_size, st.st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
    return seen


PROBES = {
    # writes, plain and hidden in a SELECT tree
    "copy": "COPY (SELECT 1) TO '{root}/x.csv'",
    "copy_into_shard": "COPY (SELECT 'gone' AS a) TO '{shard}' (FORMAT parquet)",
    "cte_copy_into_shard": "WITH x AS (COPY (SELECT 'gone' AS a) TO '{shard}' (FORMAT parquet)) SELECT 1",
    "cte_copy_into_manifest": "WITH x AS (COPY (SELECT 1 AS a) TO '{manifest}' (FORMAT json)) SELECT 1",
    "cte_copy_no_tmp_file": "WITH x AS (COPY (SELECT 1 AS a) TO '{shard}' (FORMAT parquet, USE_TMP_FILE false)) "
                            "SELECT 1",
    "cte_copy_into_temp": "WITH x AS (COPY (SELECT 1 AS a) TO '{tmp}/y.csv') SELECT 1",
    "cte_copy_into_root": "WITH x AS (COPY (SELECT 1 AS a) TO '{root}/new.parquet' (FORMAT parquet)) SELECT 1",
    "cte_copy_fenced_url": "WITH x AS (COPY (SELECT 1 AS a) TO 'tailforge-ro://{root}/n.csv') SELECT 1",
    "nested_cte_copy": "WITH a AS (WITH b AS (COPY (SELECT 1 AS a) TO '{shard}' (FORMAT parquet)) SELECT 1) "
                       "SELECT * FROM a",
    "subquery_copy": "SELECT (WITH x AS (COPY (SELECT 1 AS a) TO '{root}/s.csv') SELECT 1)",
    "union_copy": "SELECT 1 UNION ALL (WITH x AS (COPY (SELECT 1 AS a) TO '{root}/u.csv') SELECT 2)",
    "insert": "INSERT INTO samples SELECT * FROM samples",
    "update": "UPDATE samples SET split = 'x'",
    "delete": "DELETE FROM samples",
    "create_table": "CREATE TABLE t AS SELECT 1",
    "create_macro": "CREATE MACRO m() AS 1",
    "create_secret": "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "drop": "DROP VIEW samples",
    "attach": "ATTACH '{root}/other.duckdb' AS other",
    "detach": "DETACH memory",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set": "SET enable_external_access = true",
    "set_temp": "SET temp_directory = '{root}'",
    "reset": "RESET allowed_directories",
    "pragma": "PRAGMA version",
    "call": "CALL pragma_version()",
    "export": "EXPORT DATABASE '{root}/export'",
    "import": "IMPORT DATABASE '{root}'",
    "vacuum": "VACUUM",
    "checkpoint": "CHECKPOINT",
    "explain_analyze": "EXPLAIN ANALYZE SELECT 1",
    "two_selects": "SELECT 1; SELECT 2",
    "select_then_copy": "SELECT 1; COPY (SELECT 1) TO '{root}/z.csv'",
    "hidden_after_line_comment": "-- just a select\nSELECT 1; /* and */ DROP VIEW samples",
    "hidden_in_block_comment": "/* SELECT 1 */ COPY (SELECT 1) TO '{root}/c.csv'",
    # reads outside the root, or through a file path at all
    "read_csv_etc": "SELECT * FROM read_csv('/etc/passwd')",
    "read_text_etc": "SELECT * FROM read_text('/etc/passwd')",
    "read_blob_etc": "SELECT * FROM read_blob('/etc/passwd')",
    "glob_etc": "SELECT * FROM glob('/etc/*')",
    "replacement_scan_etc": "SELECT * FROM '/etc/passwd'",
    "read_parquet_outside": "SELECT * FROM read_parquet('{outside}/secret.parquet')",
    "read_csv_temp": "SELECT * FROM read_csv('{tmp}/x.csv')",
    "dotdot_escape": "SELECT * FROM read_text('{root}/../outside/secret.txt')",
    "fenced_dotdot_escape": "SELECT * FROM read_text('tailforge-ro://{root}/../outside/secret.txt')",
    "symlink_escape": "SELECT * FROM read_text('{root}/link/secret.txt')",
    "symlink_replacement_scan": "SELECT * FROM '{root}/link/secret.parquet'",
    "read_inside_root_by_path": "SELECT * FROM read_text('{manifest}')",
    "query_function": "SELECT * FROM query('SELECT 1')",
    "getenv": "SELECT getenv('HOME')",
    "current_setting": "SELECT current_setting('secret_directory')",  # issue 35: host paths
    "current_setting_upper": "SELECT CURRENT_SETTING('temp_directory')",
    "settings_table": "SELECT * FROM duckdb_settings()",
}


RAW_WRITES = {  # layer 2 on its own: the statements the check refuses, run on the connection directly
    "copy_into_shard": "COPY (SELECT 'gone' AS a) TO '{shard}' (FORMAT parquet, USE_TMP_FILE false)",
    "cte_copy_into_manifest": "WITH x AS (COPY (SELECT 1 AS a) TO '{manifest}' (FORMAT json)) SELECT 1",
    "fenced_copy_into_shard": "COPY (SELECT 'gone' AS a) TO 'tailforge-ro://{shard}' (FORMAT parquet, "
                              "USE_TMP_FILE false)",
    "fenced_copy_into_root": "COPY (SELECT 1 AS a) TO 'tailforge-ro://{root}/new.csv'",
    "copy_into_temp": "COPY (SELECT 1 AS a) TO '{tmp}/y.csv'",
    "copy_into_relative_temp": "COPY (SELECT 1 AS a) TO '.tmp/z.csv'",
    "export": "EXPORT DATABASE 'tailforge-ro://{root}/export'",
    "unlock": "SET lock_configuration = false",
    "external_access": "SET enable_external_access = true",
    "fenced_read_outside": "SELECT * FROM read_text('tailforge-ro://{outside}/secret.txt')",
    "fenced_symlink_read": "SELECT content FROM read_text('tailforge-ro://{root}/link/secret.txt')",
}
