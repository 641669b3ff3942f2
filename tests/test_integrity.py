"""Corruption at rest (issue 35): a shard whose bytes changed after it was written is refused,
by name, by every command that reads it, instead of decoding to wrong labels with exit 0."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.cli import main
from tasks import store
from tasks.dataset import SAMPLES, summarize, verify_dataset
from tasks.ingest import ingest_phantom
from tasks.tensors import load_tensors


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("integrity") / "phantom")
    ingest_phantom(uri, 80, size=32, seed=5)
    return uri


def _column_middle(path: str, column: str) -> int:
    """A byte offset inside ``column``'s data in the first row group."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema.startswith(column))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    return start + chunk.total_compressed_size // 2


def _flipped(clean: str, tmp_path: Path, column: str, bits: int = 1) -> tuple[str, str]:
    """A copy of the dataset with ``bits`` bits flipped inside one column of its shard."""
    uri = str(tmp_path / f"flipped-{column}")
    shutil.copytree(clean, uri)
    shard = store.list_shards(store.join(uri, SAMPLES))[0]
    data = bytearray(Path(shard).read_bytes())
    at = _column_middle(shard, column)
    for k in range(bits):
        data[at + k] ^= 0x10
    Path(shard).write_bytes(bytes(data))
    return uri, os.path.basename(shard)


def test_shards_are_named_by_their_keys_and_their_bytes_and_written_once(clean):
    shard = store.list_shards(store.join(clean, SAMPLES))[0]
    assert store.sealed_digest(shard) is not None and store.verify(shard, Path(shard).read_bytes())
    table = store.read_parquet([shard])
    again, written = store.write_shard(store.join(clean, SAMPLES), table, "sample_id")
    assert again == shard and not written  # same rows: the shard there already holds them
    assert verify_dataset(clean)["sealed"] == verify_dataset(clean)["shards"] >= 1


@pytest.mark.parametrize("column,bits", [("labels", 1), ("image", 16)])
def test_a_flipped_byte_is_refused_by_every_reader_naming_the_shard(clean, tmp_path, capsys, column, bits):
    uri, name = _flipped(clean, tmp_path, column, bits)
    for read in (summarize, load_tensors, verify_dataset):
        with pytest.raises(store.ShardCorrupt, match=name):
            read(uri)
    for command in (["info", uri], ["verify", uri], ["plan", uri, "--judge", "none", "--cache", str(tmp_path / "d.db")],
                    ["query", "SELECT count(*) FROM samples", "--root", uri]):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and name in err and "corrupt" in err, (command, err)
    assert summarize(clean)["rows"] == 80  # the untouched copy still reads
    assert main(["runs", "--root", uri, "--json"]) == 0  # the run records that say what wrote it still show
    assert '"flow": "ingest"' in capsys.readouterr().out


def test_a_shard_that_is_not_parquet_is_named(clean, tmp_path):
    uri = str(tmp_path / "legacy")
    shutil.copytree(clean, uri)
    shard = store.list_shards(store.join(uri, SAMPLES))[0]
    legacy = store.join(uri, SAMPLES, os.path.basename(shard).rsplit("-", 1)[0] + ".parquet")  # no content digest
    os.rename(shard, legacy)
    assert verify_dataset(uri)["sealed"] == 0  # read, but not checkable
    Path(legacy).write_bytes(Path(legacy).read_bytes()[:-40])  # truncated
    with pytest.raises(store.ShardCorrupt, match=os.path.basename(legacy)):
        summarize(uri)


def test_a_shard_that_is_a_symbolic_link_is_refused(clean, tmp_path):
    """Issue 35: a symlinked shard pointing outside the root was followed by `info`."""
    uri = str(tmp_path / "linked")
    shutil.copytree(clean, uri)
    shard = store.list_shards(store.join(uri, SAMPLES))[0]
    outside = tmp_path / "outside.parquet"
    os.replace(shard, outside)
    os.symlink(outside, shard)
    for read in (summarize, verify_dataset):
        with pytest.raises(store.ShardCorrupt, match="symbolic link"):
            read(uri)


def test_run_and_finetune_name_the_corrupt_shard_in_one_line(clean, tmp_path, capsys, prefect_server, monkeypatch):
    """The factory (`tailforge run`, over the dataset it would grow) and `tailforge finetune` stop
    on a flipped byte with the shard's name, exit 2, before any training."""
    import yaml

    monkeypatch.setenv("TAILFORGE_HOME", str(tmp_path / "home"))
    uri, name = _flipped(clean, tmp_path, "labels")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"name": "corrupt", "output": str(tmp_path / "out"),
                                      "dataset": {"source": "phantom", "n": 80, "size": 32, "seed": 5, "uri": uri}}))
    classifier = tmp_path / "classifier.pt"
    classifier.write_bytes(b"never loaded: the data is read first")
    for command in (["run", str(config)], ["finetune", uri, "--classifier", str(classifier),
                                           "--out", str(tmp_path / "report")]):
        assert main(command) == 2, command
        shown = capsys.readouterr().err  # Prefect's INFO lines of the run, then the CLI's line
        err = [line for line in shown.strip().splitlines() if line.startswith("tailforge")]
        assert len(err) == 1 and name in err[0] and "corrupt" in err[0], (command, err)
        assert "Traceback" not in shown
