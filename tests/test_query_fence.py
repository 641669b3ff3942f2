"""The read-only fence of `tailforge query` (issue 12, defect 1): probes that try to write or read
outside the root, each refused with nothing changed under the root, the outside folder or the
working directory (DuckDB's default temp folder is ``<cwd>/.tmp``)."""

import os
import threading
import time

import duckdb
import pytest

from flows.cli import main
from tasks import store
from tasks.catalog import QueryRefused, open_catalog, query
from tasks.query_fence import ReadOnlyFileSystem, check_select, fenced_url, FenceError
from benchmarks.query_probes import PROBES, RAW_WRITES, build_world, snapshot


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("fence"))


@pytest.fixture
def unchanged(world, monkeypatch):
    """Run in the probe's working directory; afterwards nothing under root, outside or cwd changed."""
    monkeypatch.chdir(world["cwd"])
    before = snapshot(world["root"], world["outside"], world["cwd"])
    yield
    assert snapshot(world["root"], world["outside"], world["cwd"]) == before


@pytest.mark.parametrize("name", sorted(PROBES))
def test_probe_is_refused_and_nothing_changes(world, unchanged, name):
    sql = PROBES[name].format(**world)
    with open_catalog(world["root"]) as catalog:
        with pytest.raises(QueryRefused):
            query(catalog, sql)
        # the catalog is still whole after the probe
        assert query(catalog, "SELECT count(*) FROM samples")[1] == [(24,)]


def test_probe_count():
    assert len(PROBES) >= 30


@pytest.mark.parametrize("name", sorted(RAW_WRITES))
def test_connection_cannot_write_even_without_the_check(world, unchanged, name):
    sql = RAW_WRITES[name].format(**world)
    with open_catalog(world["root"]) as catalog:
        try:
            rows = catalog.con.execute(sql).fetchall()
        except duckdb.Error:
            return
    assert not any("secret" in str(r) for r in rows), rows  # a read that ran found nothing outside the root


def test_temp_directory_is_off_and_not_allowed(world, unchanged):
    with open_catalog(world["root"]) as catalog:
        temp, allowed = catalog.con.execute(
            "SELECT current_setting('temp_directory'), current_setting('allowed_directories')").fetchone()
    assert temp == "" and allowed == [fenced_url(world["root"]) + "/"]


def test_read_only_file_system_refuses_writes_and_escapes(world):
    fs = ReadOnlyFileSystem(store.filesystem(world["root"])[0], world["root"], local=True)
    with pytest.raises(PermissionError):
        fs.open(fenced_url(world["shard"]), "wb")
    for write in (fs.rm, fs.mkdir, fs.touch):
        with pytest.raises(PermissionError):
            write(fenced_url(world["root"] + "/new"))
    for escape in ("/link/secret.txt", "/../outside/secret.txt"):
        with pytest.raises(PermissionError):
            fs.open(fenced_url(world["root"] + escape), "rb")
    with fs.open(fenced_url(world["manifest"]), "rb") as fh:
        assert fh.read(1) == b"{"


def test_two_threads_reading_one_handle_each_get_their_own_bytes(world):
    """DuckDB reads a Python file as seek() then read() and does so from two threads on one handle
    (even with threads = 1): thread B's seek between thread A's seek and read gave A the wrong
    bytes, 1-7% of lineage look-ups failed with 'ZSTD Decompression failure' (CI of stop 20)."""
    fs = ReadOnlyFileSystem(store.filesystem(world["root"])[0], world["root"], local=True)
    data = open(world["shard"], "rb").read()
    a_sought, b_sought = threading.Event(), threading.Event()
    got = {}

    def reader_a(fh):
        fh.seek(4)
        a_sought.set()
        b_sought.wait(5)  # B seeks to the end of the file in between
        got["a"] = fh.read(8)

    def reader_b(fh):
        a_sought.wait(5)
        fh.seek(-8, 2)
        b_sought.set()
        got["b"] = fh.read(8)

    with fs.open(fenced_url(world["shard"]), "rb") as fh:
        threads = [threading.Thread(target=reader, args=(fh,)) for reader in (reader_a, reader_b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert got == {"a": data[4:12], "b": data[-8:]}
        assert fh.tell() == 0  # this thread never moved


@pytest.mark.parametrize("sql", [
    "SELECT origin, split, count(*) AS n FROM samples GROUP BY ALL",
    "WITH s AS (SELECT * FROM samples) SELECT count(*) FROM s JOIN runs ON true",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) SELECT max(n) FROM t",
    "SELECT r.range FROM range(3) r UNION SELECT unnest([7, 8])",
    "DESCRIBE samples",
    "FROM quarantine SELECT count(*)",
])
def test_legitimate_selects_run(world, unchanged, sql):
    check_select(sql)
    with open_catalog(world["root"]) as catalog:
        columns, rows = query(catalog, sql)
    assert columns and rows


def test_dataset_column_names_the_users_uri(world, unchanged):
    with open_catalog(world["root"]) as catalog:
        _, rows = query(catalog, "SELECT DISTINCT dataset FROM samples")
    assert rows == [(os.path.join(world["root"], "datasets", "ph"),)]


def test_cross_join_is_stopped_by_the_time_limit(world, unchanged):
    sql = "SELECT count(*) FROM range(100000) a, range(100000) b, range(100000) c"
    with open_catalog(world["root"], timeout_s=1.0) as catalog:
        started = time.monotonic()
        with pytest.raises(QueryRefused, match="1 s time limit"):
            query(catalog, sql)
        assert time.monotonic() - started < 10
        assert query(catalog, "SELECT 1")[1] == [(1,)]  # the connection is usable after the interrupt


def test_cli_refuses_in_one_line_with_rc_2(world, unchanged, capsys):
    sql = PROBES["cte_copy_into_shard"].format(**world)
    assert main(["query", sql, "--root", world["root"]]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "read-only" in err
    assert main(["query", "SELECT count(*) FROM range(100000) a, range(100000) b, range(100000) c",
                 "--root", world["root"], "--timeout", "0.5"]) == 2
    assert "time limit" in capsys.readouterr().err
    assert main(["query", "SELECT count(*) AS n FROM samples", "--root", world["root"], "--csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["n", "24"]


@pytest.mark.parametrize("sql", ["SELECT length(repeat('x', 3000000000))",
                                 "SELECT max(length(repeat('x', 200000000 + r.range))) FROM range(40) r"])
def test_an_allocation_past_the_memory_limit_is_refused_in_one_line(world, unchanged, capsys, sql):
    """Issue 35: repeat() built a 3 GB string past the 2 GB limit (5.9 GB peak); the query's
    child process has its address space capped, so the query is refused instead."""
    assert main(["query", sql, "--root", world["root"]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "memory" in err, err
    assert main(["query", "SELECT count(*) AS n FROM samples", "--root", world["root"], "--csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["n", "24"]


def test_check_names_what_it_refuses():
    with pytest.raises(FenceError, match="COPY inside the query"):
        check_select("WITH x AS (COPY (SELECT 1) TO '/tmp/a.csv') SELECT 1")
    with pytest.raises(FenceError, match="read_csv"):
        check_select("SELECT * FROM read_csv('/etc/passwd')")


def test_s3_root_cannot_be_written(world, s3_bucket):
    fs, _ = store.filesystem(s3_bucket)
    fs.put(world["root"] + "/datasets/", s3_bucket[5:] + "/root/datasets/", recursive=True)
    root = f"{s3_bucket}/root"
    shard = store.list_shards(f"{root}/datasets/ph/samples")[0]
    before = {p: fs.info(p)["ETag"] for p in fs.find(s3_bucket[5:])}
    with open_catalog(root) as catalog:
        assert query(catalog, "SELECT count(*) FROM samples")[1] == [(24,)]
        for sql in (f"WITH x AS (COPY (SELECT 1 AS a) TO '{shard}' (FORMAT parquet)) SELECT 1",
                    f"COPY (SELECT 1 AS a) TO '{root}/new.csv'"):
            with pytest.raises(QueryRefused):
                query(catalog, sql)
        for sql in (f"COPY (SELECT 1 AS a) TO '{shard}' (FORMAT parquet)",
                    f"COPY (SELECT 1 AS a) TO '{fenced_url(shard)}' (FORMAT parquet, USE_TMP_FILE false)"):
            with pytest.raises(duckdb.Error):
                catalog.con.execute(sql)
    assert {p: fs.info(p)["ETag"] for p in fs.find(s3_bucket[5:])} == before
