"""One writer per dataset (issue 12, defect 4), stale temporary files, duplicate ids in `info`."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.cli import main
from tasks import store
from tasks.dataset import SAMPLES, existing_rows, sample_schema, summarize
from tasks.ingest import ingest_phantom
from tasks.locks import LEASE_NAME, LOCK_NAME, DatasetLocked, dataset_lock
from tasks.runs import process_start

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; sys.path.insert(0, {repo!r}); from tasks.locks import dataset_lock\n"
        "with dataset_lock({uri!r}, 'ingest nih'):\n    print('held', flush=True); time.sleep(120)")


def _holding_process(uri: str) -> subprocess.Popen:
    """Another process that takes the dataset's lock and keeps it."""
    child = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), uri=uri)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_writer_is_refused_at_once_naming_the_holder(tmp_path, capsys):
    out = str(tmp_path / "ds")
    child = _holding_process(out)
    try:
        started = time.monotonic()
        with pytest.raises(DatasetLocked, match=f"ingest nih \\(pid {child.pid} on"):
            ingest_phantom(out, 40, size=32)
        assert time.monotonic() - started < 5
        assert main(["phantom", "--n", "40", "--size", "32", "--out", out]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Wait for it to finish" in err and str(child.pid) in err
        assert existing_rows(out, ["sample_id"]) is None  # nothing was written by the refused writer
    finally:
        child.kill()
        child.wait()


def test_a_killed_holder_frees_the_dataset_and_the_next_writer_warns(tmp_path, caplog):
    out = str(tmp_path / "ds")
    child = _holding_process(out)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with caplog.at_level(logging.WARNING, logger="tasks.locks"):
        report = ingest_phantom(out, 40, size=32)
    assert report.rows_written == 40
    assert "did not finish" in caplog.text and str(child.pid) in caplog.text
    assert (Path(out) / LOCK_NAME).read_bytes() == b""  # a clean exit leaves no holder record


def test_a_stale_holder_record_is_taken_over(tmp_path, caplog):
    out = tmp_path / "ds"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "gone", "command": "ingest nih",
                                             "started_at": "2026-01-01T00:00:00"}))
    with caplog.at_level(logging.WARNING, logger="tasks.locks"):
        assert ingest_phantom(str(out), 40, size=32).rows_written == 40
    assert "999999" in caplog.text


def test_the_same_process_cannot_hold_it_twice(tmp_path):
    out = str(tmp_path / "ds")
    with dataset_lock(out, "first"):
        with pytest.raises(DatasetLocked, match="first"):
            with dataset_lock(out, "second"):
                pass
    with dataset_lock(out, "third"):  # released on exit
        pass


def test_stale_temporary_files_are_removed_on_the_next_write(tmp_path):
    out = tmp_path / "ds"
    ingest_phantom(str(out), 20, size=32)
    dead = _a_dead_pid()
    old = out / SAMPLES / f".part-0123.parquet.tmp-{os.getpid()}-deadbeef"
    old_manifest = out / f".dataset.json.tmp-{os.getpid()}-cafef00d"
    fresh = out / SAMPLES / f".part-4567.parquet.tmp-{os.getpid()}-0badf00d"
    killed = out / SAMPLES / f".part-89ab.parquet.tmp-{dead}-0badcafe"
    for path in (old, old_manifest, fresh, killed):
        path.write_bytes(b"half a shard")
    two_hours_ago = time.time() - 7200
    for path in (old, old_manifest):
        os.utime(path, (two_hours_ago, two_hours_ago))
    ingest_phantom(str(out), 30, size=32)
    assert not old.exists() and not old_manifest.exists()
    assert not killed.exists()  # fresh, but its writer is gone: the lock's holder can tell
    assert fresh.exists()  # its writer (this process) still runs


def _a_dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_info_reports_duplicate_sample_ids(tmp_path, capsys):
    out = str(tmp_path / "ds")
    ingest_phantom(out, 20, size=32)
    rows = existing_rows(out, None)
    assert summarize(out)["duplicate_ids"] == {}
    # what two writers with different shard sizes used to leave: the same rows in other shards
    store.write_shard(store.join(out, SAMPLES), rows.slice(0, 5).cast(sample_schema()), "sample_id")
    duplicates = summarize(out)["duplicate_ids"]
    assert len(duplicates) == 5 and set(duplicates.values()) == {2}
    assert main(["info", out]) == 0
    assert "5 sample ids are held more than once" in capsys.readouterr().out


def test_s3_lease_refuses_a_second_writer_and_expired_leases_are_taken(s3_bucket, monkeypatch):
    uri = f"{s3_bucket}/datasets/ph"
    fs, folder = store.filesystem(uri)
    lease = f"{folder}/{LEASE_NAME}"
    with dataset_lock(uri, "ingest nih"):
        assert json.loads(fs.cat_file(lease))["command"] == "ingest nih"
        with pytest.raises(DatasetLocked, match="ingest nih"):
            ingest_phantom(uri, 20, size=32)
    assert not fs.exists(lease)  # dropped on exit
    fs.pipe_file(lease, json.dumps({"command": "ingest nih", "pid": 1, "host": "gone",
                                    "expires_at": time.time() - 1}).encode())
    assert ingest_phantom(uri, 20, size=32).rows_written == 20
    assert not fs.exists(lease)


def test_s3_lease_of_a_dead_holder_on_this_host_is_taken_at_once(s3_bucket):
    """A writer killed (or cut off from S3 as it exited) leaves its lease; on its own host the
    next writer sees the holder is gone and does not wait out the term."""
    uri = f"{s3_bucket}/datasets/ph"
    fs, folder = store.filesystem(uri)
    lease = f"{folder}/{LEASE_NAME}"
    alive = {"command": "ingest nih", "host": socket.gethostname(), "expires_at": time.time() + 900}
    fs.pipe_file(lease, json.dumps({**alive, "pid": os.getpid(), "process_start": process_start(os.getpid())}).encode())
    with pytest.raises(DatasetLocked, match="expires in"):  # its holder (this process) still runs
        ingest_phantom(uri, 20, size=32)
    fs.pipe_file(lease, json.dumps({**alive, "pid": _a_dead_pid()}).encode())
    assert ingest_phantom(uri, 20, size=32).rows_written == 20
    assert not fs.exists(lease)
    fs.pipe_file(lease, json.dumps({**alive, "host": "another-host", "pid": 1}).encode())
    with pytest.raises(DatasetLocked):  # another host's holder cannot be checked from here: its term holds
        ingest_phantom(uri, 20, size=32)
