"""Ingest against files that are not plain images (issue 12, defect 2 and low items): FIFOs,
sockets, devices, dangling and looping symlinks never hang or stop an ingest."""

import csv
import os
import socket
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from tasks import sources, store
from tasks.dataset import QUARANTINE, existing_rows
from tasks.ingest import IngestOptions, ingest
from tests.imagefiles import png_bytes

NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
              "Patient Gender", "View Position"]
HANG_LIMIT_S = 60


def _table(path: Path, names: list[str]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(NIH_HEADER)
        writer.writerows([[name, "Mass", 0, i, 50, "M", "PA"] for i, name in enumerate(names)])
    return path


def _ingest_or_fail(table: Path, images: Path, out: str, fifos: list[Path], **options):
    """Run the ingest in a thread; fail (and unblock it) if it does not finish in HANG_LIMIT_S."""
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        report=ingest(sources.read_nih(str(table)), str(images), out, IngestOptions(size=32, **options))),
        daemon=True)
    worker.start()
    worker.join(HANG_LIMIT_S)
    if worker.is_alive():
        for fifo in fifos:  # a writer end releases a reader blocked in open(); closing it gives EOF
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail(f"ingest hung for over {HANG_LIMIT_S} s on a special file")
    return result["report"]


@pytest.fixture
def hostile_root(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"good{i}.png").write_bytes(png_bytes(np.random.default_rng(i).integers(0, 256, (40, 40),
                                                                                          dtype=np.uint8)))
    os.mkfifo(images / "pipe.png")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(images / "socket.png"))
    os.symlink(images / "nothing.png", images / "dangling.png")
    os.symlink(images / "loop_b.png", images / "loop_a.png")
    os.symlink(images / "loop_a.png", images / "loop_b.png")
    expected = {"pipe.png": "not_regular_file", "socket.png": "not_regular_file",
                "dangling.png": "not_regular_file", "loop_a.png": "not_regular_file"}
    try:
        os.mknod(images / "device.png", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero: endless bytes
        expected["device.png"] = "not_regular_file"
    except (PermissionError, OSError):
        pass  # no CAP_MKNOD here: the device case is left out
    yield images, expected
    server.close()


def test_fifo_socket_device_and_bad_symlinks_are_quarantined_and_good_rows_land(hostile_root, tmp_path):
    images, expected = hostile_root
    names = ["good0.png", *expected, "good1.png", "good2.png"]
    table = _table(tmp_path / "Data_Entry_2017.csv", names)
    out = str(tmp_path / "ds")
    report = _ingest_or_fail(table, images, out, [images / "pipe.png"], workers=2)

    assert report.rows_written == 3
    assert sorted(r["source_uri"] for r in existing_rows(out, ["source_uri"]).to_pylist()) == \
        ["good0.png", "good1.png", "good2.png"]
    bad = {r["source_uri"]: r for r in store.read_shards(store.join(out, QUARANTINE)).to_pylist()}
    assert {k: v["reason_code"] for k, v in bad.items()} == expected
    assert "FIFO" in bad["pipe.png"]["reason"] and "socket" in bad["socket.png"]["reason"]
    assert "loop" in bad["loop_a.png"]["reason"] and "symlink to nothing" in bad["dangling.png"]["reason"]


def test_a_fifo_alone_does_not_hang(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    os.mkfifo(images / "only.png")
    table = _table(tmp_path / "Data_Entry_2017.csv", ["only.png"])
    report = _ingest_or_fail(table, images, str(tmp_path / "ds"), [images / "only.png"], workers=1)
    assert report.rows_written == 0 and report.quarantined == {"not_regular_file": 1}


def test_a_file_over_the_byte_limit_is_not_read(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    with open(images / "sparse.png", "wb") as fh:  # a sparse 1 GiB file: costs no disk
        fh.truncate(2**30)
    table = _table(tmp_path / "Data_Entry_2017.csv", ["sparse.png"])
    report = _ingest_or_fail(table, images, str(tmp_path / "ds"), [], max_file_bytes=2**20)
    assert report.quarantined == {"too_large": 1}


def test_implausible_sizes_and_damaged_pngs_are_quarantined_with_their_reason(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    good = png_bytes(np.random.default_rng(5).integers(0, 256, (40, 40), dtype=np.uint8))
    (images / "good.png").write_bytes(good)
    (images / "dot.png").write_bytes(png_bytes(np.zeros((1, 1), np.uint8)))
    (images / "strip.png").write_bytes(png_bytes(np.zeros((20, 2000), np.uint8)))
    damaged = bytearray(good)
    damaged[good.index(b"IDAT") + 6] ^= 0xFF
    (images / "damaged.png").write_bytes(bytes(damaged))
    table = _table(tmp_path / "Data_Entry_2017.csv", ["good.png", "dot.png", "strip.png", "damaged.png"])
    out = str(tmp_path / "ds")
    report = _ingest_or_fail(table, images, out, [])
    assert report.rows_written == 1
    bad = {r["source_uri"]: r for r in store.read_shards(store.join(out, QUARANTINE)).to_pylist()}
    assert {k: v["reason_code"] for k, v in bad.items()} == {
        "dot.png": "implausible_size", "strip.png": "implausible_size", "damaged.png": "corrupt"}
    assert "1x1" in bad["dot.png"]["reason"] and "100.0:1" in bad["strip.png"]["reason"]


def test_a_path_with_a_nul_byte_is_quarantined_not_fatal(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.png").write_bytes(png_bytes(np.random.default_rng(7).integers(0, 256, (40, 40), dtype=np.uint8)))
    table = _table(tmp_path / "Data_Entry_2017.csv", ["bad\0name.png", "good.png"])
    out = str(tmp_path / "ds")
    report = _ingest_or_fail(table, images, out, [])
    assert report.rows_written == 1 and report.quarantined == {"missing_file": 1}
    (bad,) = store.read_shards(store.join(out, QUARANTINE)).to_pylist()
    assert "NUL byte" in bad["reason"]
