"""Provenance that stays true as a dataset grows (issues 34 and 35): each row's source path joined
to the folder it was ingested from and checked, no patient in two splits, and no dataset that
silently takes rows of another kind."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from flows.cli import main
from tasks import sources
from tasks.augment import AugmentSettings, prepare
from tasks.dataset import existing_rows, read_manifest, summarize
from tasks.ingest import ingest, ingest_phantom
from tasks.lineage import lineage
from tasks.catalog import open_catalog
from tests.imagefiles import NIH_HEADER, pattern, png_bytes, write_csv


def _folder(tmp_path: Path, name: str, rows: list[tuple[str, int, int]]) -> tuple[Path, Path]:
    """An image folder and its NIH table: (file name, pattern seed, patient) per row."""
    images = tmp_path / name
    images.mkdir()
    for file, seed, _ in rows:
        (images / file).write_bytes(png_bytes(pattern(seed)))
    table = write_csv(tmp_path / f"{name}.csv", NIH_HEADER,
                      [[file, "Mass", 0, patient, 40, "M", "PA"] for file, _, patient in rows])
    return table, images


def _tree(folder: str) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_lineage_joins_each_row_to_the_folder_it_came_from_and_says_when_the_file_is_gone(tmp_path, capsys):
    out = str(tmp_path / "root" / "ds")
    for name, seed in (("first", 1), ("second", 2)):  # the same file name in two folders, other pixels
        table, images = _folder(tmp_path, name, [("a.png", seed, seed)])
        ingest(sources.read_nih(str(table)), str(images), out)
    rows = existing_rows(out, ["sample_id", "run_id"]).to_pylist()
    assert len(rows) == 2 and read_manifest(out)["name"] == "nih"
    with open_catalog(str(tmp_path / "root")) as catalog:
        found = {lineage(catalog, r["sample_id"])["summary"]["source"] for r in rows}
    assert found == {str(tmp_path / "first" / "a.png"), str(tmp_path / "second" / "a.png")}
    os.remove(tmp_path / "first" / "a.png")
    roots = read_manifest(out)["images_roots"]
    first = next(r for r in rows if roots[r["run_id"]] == str(tmp_path / "first"))
    assert main(["lineage", first["sample_id"], "--root", str(tmp_path / "root")]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "first" / "a.png") in printed and "NOT FOUND" in printed
    # a manifest from before folders were kept per run names one folder: lineage says it may be wrong
    manifest = json.loads(Path(out, "dataset.json").read_text())
    manifest["source"]["images_root"] = str(tmp_path / "second")
    del manifest["images_roots"]
    Path(out, "dataset.json").write_text(json.dumps(manifest))
    with open_catalog(str(tmp_path / "root")) as catalog:
        step = lineage(catalog, first["sample_id"])["chain"][0]
    assert step["source_path"] == str(tmp_path / "second" / "a.png") and step["source_exists"]
    assert "only its last ingest's folder" in step["source_note"]


def test_a_patient_cannot_sit_in_two_splits(tmp_path, capsys):
    table, images = _folder(tmp_path, "img", [(f"{i}.png", 10 + i, 8) for i in range(3)])
    out = str(tmp_path / "ds")
    source = sources.read_nih(str(table))
    source.records = source.records[:1]  # the patient's first film, split by the patient hash
    ingest(source, str(images), out)
    first = existing_rows(out, ["split"]).column("split")[0].as_py()
    other = "test" if first != "test" else "train"
    split_csv = write_csv(tmp_path / "split.csv", ["Image Index", "split"], [[f"{i}.png", other] for i in (1, 2)])
    source = sources.read_nih(str(table))
    sources.apply_split_csv(source, str(split_csv))
    report = ingest(source, str(images), out)
    assert report.quarantined == {"patient_in_other_split": 2} and report.rows_written == 0
    assert summarize(out)["patients_in_several_splits"] == {}
    # a dataset that already mixes them (written before this check) is named by `info`
    leaky = str(tmp_path / "leaky")
    for i, split in ((0, first), (1, other)):
        src = sources.read_nih(str(table))
        src.records = [src.records[i]]
        src.records[0].split = split
        src.records[0].patient_id = f"{8}-{i}"  # not the same patient to the check
        ingest(src, str(images), leaky)
    import pyarrow as pa  # relabel both rows to one patient, as an older ingest could leave them
    from tasks.dataset import SAMPLES
    from tasks import store
    for shard in store.list_shards(store.join(leaky, SAMPLES)):
        table_ = store.read_parquet([shard])
        table_ = table_.set_column(table_.schema.get_field_index("patient_id"), "patient_id",
                                   pa.array(["8"] * table_.num_rows))
        os.remove(shard)
        store.write_shard(store.join(leaky, SAMPLES), table_, "sample_id")
    assert summarize(leaky)["patients_in_several_splits"] == {"8": sorted({first, other})}
    assert main(["info", leaky]) == 0
    assert "1 patients have images in more than one split" in capsys.readouterr().out


def test_phantom_and_generated_rows_are_refused_by_a_real_dataset_which_stays_byte_identical(tmp_path, capsys):
    table, images = _folder(tmp_path, "img", [(f"{i}.png", 30 + i, i) for i in range(4)])
    real = str(tmp_path / "real")
    ingest(sources.read_nih(str(table)), str(images), real)
    before = _tree(real)
    assert main(["phantom", "--n", "20", "--size", "64", "--out", real]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a real dataset" in err and "phantom rows" in err
    manifest = read_manifest(real)
    with pytest.raises(ValueError, match="is a real dataset"):
        prepare(str(tmp_path / "phantom"), real, manifest, [], {"id": "c" * 64}, "g" * 64, AugmentSettings())
    assert _tree(real) == before
    phantom = str(tmp_path / "phantom")
    ingest_phantom(phantom, 20, size=64)
    with pytest.raises(ValueError, match="is a phantom dataset"):
        ingest(sources.read_nih(str(table)), str(images), phantom)
