"""One writer per dataset: ``with dataset_lock(uri, "ingest"):`` around everything that writes it.

Two ingests into one dataset at once would each decide what is new before the other wrote it,
and both would write the same rows. The second writer is refused at once instead, with a
message naming the holder.

- Local folders: ``<dataset>/.tailforge.lock`` held with ``flock(LOCK_EX | LOCK_NB)``. The
  kernel drops the lock when its holder exits or is killed, so a dead writer never blocks the
  next one and there is no stale-lock race; while held, the file names the holder (pid, host,
  command, start time), and it is emptied on a clean exit. A holder record found on taking
  the lock means the last writer died: that is logged as a warning. On network file systems
  this relies on their lock support (NFSv4 has it).
- ``s3://``: a lease object ``<dataset>/.tailforge.lease`` written with a conditional PUT
  (``If-None-Match: *``; an expired lease is replaced with ``If-Match`` on its ETag, so one
  taker wins), renewed by a thread every third of its term and deleted on exit. Limits: the
  expiry compares wall clocks of different hosts (keep them in sync); a writer that stalls for
  longer than the term without renewing can lose its lease; S3-compatible stores without
  conditional writes refuse the PUT, and the error says so. A lease whose holder ran on this
  host and is gone (killed, or it could not delete the lease because S3 was down) is taken
  over at once instead of after its term.

Taking the lock also removes temporary files (``.*.tmp-<pid>-*``) a killed writer left in the
dataset folder: those whose writer process no longer runs on this host, and any older than
``STALE_TEMP_S``. Every writer of the dataset holds the lock and the new holder has not written
yet, so no live writer's file is touched.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from typing import Iterator

from tasks import store
from tasks.runs import process_gone, process_start

LOCK_NAME = ".tailforge.lock"
LEASE_NAME = ".tailforge.lease"
LEASE_S = 900.0  # an S3 lease's term; renewed every third of it
STALE_TEMP_S = 3600.0  # temporary files older than this are a killed writer's leftovers
TEMP_PID = re.compile(r"\.tmp-(\d+)-[0-9a-f]+$")  # store.write_bytes_atomic's ".<name>.tmp-<pid>-<id>"
log = logging.getLogger(__name__)


class DatasetLocked(RuntimeError):
    """Another writer holds the dataset; the message names it and says what to do."""


def _holder(command: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": uuid.uuid4().hex,
            "process_start": process_start(os.getpid())}


def _describe(holder: dict) -> str:
    return (f"{holder.get('command', 'a writer')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('started_at', '?')})")


@contextmanager
def dataset_lock(dataset_uri: str, command: str) -> Iterator[dict]:
    """Hold the dataset for ``command``; raises DatasetLocked when another writer has it."""
    holder = _holder(command)
    locker = _s3_lease if store.is_remote(dataset_uri) else _local_lock
    with locker(dataset_uri, holder):
        if not store.is_remote(dataset_uri):
            clean_stale_temps(dataset_uri)
        yield holder


@contextmanager
def _local_lock(dataset_uri: str, holder: dict) -> Iterator[None]:
    folder = store.filesystem(dataset_uri)[1]
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatasetLocked(_refusal(dataset_uri, _read_holder(fd), path)) from None
        previous = _read_holder(fd)
        if previous:
            log.warning("took over %s: the last writer, %s, did not finish (it is no longer running); "
                        "re-running it completes its work", path, _describe(previous))
        _write_holder(fd, holder)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a clean exit leaves no holder record
    finally:
        os.close(fd)  # closing drops the flock


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 4096)
    try:
        return json.loads(data) if data.strip() else {}
    except ValueError:
        return {"command": "an unknown writer"}


def _write_holder(fd: int, holder: dict) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(holder).encode())
    os.fsync(fd)


def _refusal(dataset_uri: str, holder: dict, lock: str) -> str:
    return (f"{dataset_uri} is being written by {_describe(holder) if holder else 'another process'}; "
            f"two writers would duplicate rows. Wait for it to finish (or stop it), then run again "
            f"(the lock: {lock})")


@contextmanager
def _s3_lease(dataset_uri: str, holder: dict) -> Iterator[None]:
    fs, folder = store.filesystem(dataset_uri)
    path = f"{folder.rstrip('/')}/{LEASE_NAME}"
    etag = _take_lease(fs, path, dataset_uri, holder)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(fs, path, holder, etag, stop), daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=30)
        _drop_lease(fs, path, holder)


def _lease_body(holder: dict) -> bytes:
    return json.dumps({**holder, "expires_at": time.time() + LEASE_S}).encode()


def _take_lease(fs, path: str, dataset_uri: str, holder: dict) -> str:
    try:
        return fs.pipe_file(path, _lease_body(holder), mode="create")["ETag"]
    except FileExistsError:
        pass
    current, etag = json.loads(fs.cat_file(path)), fs.info(path)["ETag"]
    dead = process_gone(current)  # its holder ran on this host and is gone: killed, or lost S3 on exit
    if current.get("expires_at", 0) > time.time() and not dead:
        raise DatasetLocked(_refusal(dataset_uri, current, f"s3://{path}, expires in "
                                     f"{current['expires_at'] - time.time():.0f} s"))
    log.warning("took over the %s lease s3://%s of %s", "dead holder's" if dead else "expired", path,
                _describe(current))
    try:
        return fs.pipe_file(path, _lease_body(holder), IfMatch=etag)["ETag"]
    except OSError as exc:  # another writer took it first (412)
        raise DatasetLocked(_refusal(dataset_uri, {}, f"s3://{path}")) from exc


def _s3_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError  # s3fs's client: present wherever s3:// works

    return OSError, ValueError, BotoCoreError


def _renew(fs, path: str, holder: dict, etag: str, stop: threading.Event) -> None:
    while not stop.wait(LEASE_S / 3):
        try:
            etag = fs.pipe_file(path, _lease_body(holder), IfMatch=etag)["ETag"]
        except _s3_errors() as exc:
            log.error("could not renew the lease s3://%s (%s); another writer may take the dataset", path, exc)
            return


def _drop_lease(fs, path: str, holder: dict) -> None:
    try:
        if json.loads(fs.cat_file(path)).get("token") == holder["token"]:
            fs.rm_file(path)
    except _s3_errors() as exc:
        # said at INFO: the command's own error already names the outage, and the next writer on
        # this host takes the lease over at once (its holder is gone); elsewhere it expires
        log.info("could not remove the lease s3://%s (%s); it expires on its own", path, exc)


def clean_stale_temps(dataset_uri: str, older_than_s: float = STALE_TEMP_S) -> list[str]:
    """Remove ``.<name>.tmp-<pid>-<id>`` files (store.write_bytes_atomic) whose writer is gone or
    that are older than ``older_than_s``. Call it only while holding the dataset's lock."""
    folder = store.filesystem(dataset_uri)[1]
    cutoff, removed = time.time() - older_than_s, []
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name.startswith(".") and ".tmp-" in name and (_writer_gone(name) or _mtime(path) < cutoff):
                with suppress(FileNotFoundError):
                    os.unlink(path)
                removed.append(path)
    if removed:
        log.warning("removed %d temporary file(s) a killed writer left in %s", len(removed), dataset_uri)
    return removed


def _writer_gone(name: str) -> bool:
    """The process named in a temporary file's name no longer runs on this host."""
    match = TEMP_PID.search(name)
    if not match:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _mtime(path: str) -> float:
    try:
        return os.lstat(path).st_mtime
    except FileNotFoundError:
        return float("inf")  # gone meanwhile
