import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks import sources, store
from tasks.dataset import QUARANTINE, SAMPLES, existing_rows, read_manifest, summarize
from tasks.images import decode_png
from tasks.ingest import IngestOptions, ingest
from tasks.labels import vocabulary
from tests.imagefiles import NIH_HEADER, dicom_bytes, gradient, pattern, png_bytes, write_csv

@pytest.fixture
def broken_corpus(tmp_path):
    """A NIH-style table over a folder holding every kind of bad input next to good images.
    Returns (table, images, expected quarantine codes by path, good paths)."""
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "outside.png").write_bytes(png_bytes(pattern(99)))
    files = {
        "good_gray.png": png_bytes(pattern(1)),
        "good_rgb.png": png_bytes(pattern(2), "RGB"),
        "good_rgba.png": png_bytes(pattern(3), "RGBA"),
        "good_16bit.png": png_bytes(gradient(50, 60, 65535).astype(np.uint16)),
        "good_jpeg.jpg": png_bytes(pattern(4), "RGB", fmt="JPEG"),
        "good_dicom.dcm": dicom_bytes(gradient(64, 64, 4095).astype(np.uint16), photometric="MONOCHROME1"),
        "copy_of_gray.png": png_bytes(pattern(1)),
        "empty.png": b"",
        "truncated.png": png_bytes(pattern(5))[:200],
        "notes.png": b"radiology notes, not an image\n" * 10,
        "bomb.png": png_bytes(np.zeros((9000, 9000), np.uint8)),  # 81 Mpx, ~80 kB on disk
        "unknown_label.png": png_bytes(pattern(6)),
    }
    for name, data in files.items():
        (images / name).write_bytes(data)
    (images / "folder.png").mkdir()
    rows = [
        ["good_gray.png", "Cardiomegaly", 0, 1, 50, "M", "PA"],
        ["good_rgb.png", "No Finding", 0, 2, 50, "F", "PA"],
        ["good_rgba.png", "Mass|Nodule", 0, 3, 50, "F", "AP"],
        ["good_16bit.png", "Effusion", 0, 4, 50, "M", "PA"],
        ["good_jpeg.jpg", "Hernia", 0, 5, 50, "M", "PA"],
        ["good_dicom.dcm", "Edema", 0, 6, 50, "M", "AP"],
        ["copy_of_gray.png", "Cardiomegaly", 1, 1, 51, "M", "PA"],
        ["missing.png", "Mass", 0, 7, 50, "M", "PA"],
        ["../outside.png", "Mass", 0, 8, 50, "M", "PA"],
        ["/etc/hostname", "Mass", 0, 9, 50, "M", "PA"],
        ["empty.png", "Mass", 0, 10, 50, "M", "PA"],
        ["truncated.png", "Mass", 0, 11, 50, "M", "PA"],
        ["notes.png", "Mass", 0, 12, 50, "M", "PA"],
        ["bomb.png", "Mass", 0, 13, 50, "M", "PA"],
        ["unknown_label.png", "Mass|Dragon", 0, 14, 50, "M", "PA"],
        ["folder.png", "Mass", 0, 15, 50, "M", "PA"],
        ["good_rgb.png", "No Finding", 1, 2, 51, "F", "PA"],
    ]
    table = write_csv(tmp_path / "Data_Entry_2017.csv", NIH_HEADER, rows)
    expected = {
        "copy_of_gray.png": "duplicate_image", "missing.png": "missing_file",
        "../outside.png": "path_escape", "/etc/hostname": "path_escape", "empty.png": "zero_byte",
        "truncated.png": "truncated", "notes.png": "not_an_image", "bomb.png": "decompression_bomb",
        "unknown_label.png": "bad_label", "folder.png": "not_an_image", "good_rgb.png": "duplicate_row",
    }
    good = ["good_gray.png", "good_rgb.png", "good_rgba.png", "good_16bit.png", "good_jpeg.jpg", "good_dicom.dcm"]
    return table, images, expected, good


def test_every_kind_of_bad_input_is_quarantined_and_the_good_rows_land(broken_corpus, tmp_path):
    table, images, expected, good = broken_corpus
    out = str(tmp_path / "ds")
    report = ingest(sources.read_nih(str(table)), str(images), out, IngestOptions(size=32, shard_rows=4))

    rows = existing_rows(out, None).to_pylist()
    assert sorted(r["source_uri"] for r in rows) == sorted(good)
    bad = store.read_shards(store.join(out, QUARANTINE)).to_pylist()
    assert {r["source_uri"]: r["reason_code"] for r in bad} == expected
    assert all(r["reason"] and r["stage"] == "ingest" for r in bad)
    # nothing lost: every table row is a sample or a quarantine row
    assert len(rows) + len(bad) == 17 == report.rows_written + sum(report.quarantined.values())
    duplicate = next(r for r in bad if r["reason_code"] == "duplicate_image")
    assert "good_gray.png" in duplicate["reason"]
    assert next(r for r in bad if r["reason_code"] == "bad_label")["raw_labels"] == "Mass|Dragon"

    by_path = {r["source_uri"]: r for r in rows}
    for r in rows:
        pixels = decode_png(r["image"])
        assert pixels.shape == (32, 32) and r["height"] == r["width"] == 32
    assert by_path["good_16bit.png"]["bit_depth"] == 16 and by_path["good_gray.png"]["bit_depth"] == 16 - 8
    assert by_path["good_dicom.dcm"]["bit_depth"] == 16
    nih = vocabulary("nih")
    assert nih.positives(by_path["good_rgba.png"]["labels"]) == ["Mass", "Nodule"]
    assert by_path["good_rgba.png"]["view"] == "AP" and by_path["good_rgba.png"]["patient_id"] == "3"
    assert len({r["sample_id"] for r in rows}) == len(rows)
    assert len(store.list_shards(store.join(out, SAMPLES))) == 2  # 6 rows at 4 per shard

    info = summarize(out)
    assert info["rows"] == 6 and info["quarantined"] == 11
    assert info["quarantine_reasons"]["path_escape"] == 2 and info["quarantine_reasons"]["not_an_image"] == 2


def test_dicom_patient_tags_never_reach_the_outputs(broken_corpus, tmp_path):
    table, images, _, _ = broken_corpus
    out = tmp_path / "ds"
    ingest(sources.read_nih(str(table)), str(images), str(out), IngestOptions(size=32))
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for tag_value in (b"DOE^JANE", b"MRN123", b"19700101", b"ACC9"):
        assert tag_value not in written


def test_malformed_table_fails_before_any_work(tmp_path):
    table = write_csv(tmp_path / "t.csv", ["Image Index", "Patient ID"], [["a.png", "1"]])
    with pytest.raises(sources.TableError, match="Finding Labels"):
        sources.read_nih(str(table))
    with pytest.raises(sources.TableError, match="not found"):
        sources.read_nih(str(tmp_path / "absent.csv"))


def test_rerun_writes_nothing_and_new_rows_are_added(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    rows = []
    for i in range(6):
        (images / f"{i}.png").write_bytes(png_bytes(pattern(10 + i)))
        rows.append([f"{i}.png", "Effusion" if i % 2 else "No Finding", 0, i, 40, "M", "PA"])
    first = write_csv(tmp_path / "first.csv", NIH_HEADER, rows[:4])
    full = write_csv(tmp_path / "full.csv", NIH_HEADER, rows)
    out = str(tmp_path / "ds")
    assert ingest(sources.read_nih(str(first)), str(images), out).rows_written == 4
    shards_before = store.list_shards(store.join(out, SAMPLES))
    again = ingest(sources.read_nih(str(first)), str(images), out)
    assert again.rows_written == 0 and again.already_present == 4
    assert store.list_shards(store.join(out, SAMPLES)) == shards_before
    grown = ingest(sources.read_nih(str(full)), str(images), out)
    assert grown.rows_written == 2 and grown.already_present == 4
    assert summarize(out)["rows"] == 6
    with pytest.raises(ValueError, match="Choose another --out"):
        ingest(sources.read_nih(str(full)), str(images), out, IngestOptions(size=48))


def _stems(dataset: str) -> list[str]:
    """Each sample shard's name without its bytes' digest: what its rows' keys decide."""
    return [Path(u).name.rsplit("-", 1)[0] for u in store.list_shards(store.join(dataset, SAMPLES))]


def test_same_rows_give_the_same_shard_stem(tmp_path):
    """The rows' keys name the shard's stem (a rerun finds it); the bytes' digest, which readers
    check, follows the run id and time inside."""
    images = tmp_path / "img"
    images.mkdir()
    (images / "a.png").write_bytes(png_bytes(pattern(1)))
    table = write_csv(tmp_path / "t.csv", NIH_HEADER, [["a.png", "Mass", 0, 1, 40, "M", "PA"]])
    names = []
    for out in (tmp_path / "one", tmp_path / "two"):
        ingest(sources.read_nih(str(table)), str(images), str(out))
        names.append(_stems(str(out)))
    assert names[0] == names[1] and len(names[0]) == 1


def test_split_csv_overrides_and_default_split_is_patient_disjoint(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    rows = []
    for i in range(40):
        (images / f"{i}.png").write_bytes(png_bytes(pattern(100 + i)))
        rows.append([f"{i}.png", "No Finding", i % 3, i // 3, 40, "M", "PA"])
    table = write_csv(tmp_path / "t.csv", NIH_HEADER, rows)
    out = str(tmp_path / "ds")
    ingest(sources.read_nih(str(table)), str(images), out)
    got = existing_rows(out, ["patient_id", "split"]).to_pylist()
    split_of_patient: dict[str, set] = {}
    for r in got:
        split_of_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of_patient.values())
    assert {s for r in got for s in [r["split"]]} <= {"train", "val", "test"}

    split_csv = write_csv(tmp_path / "split.csv", ["Image Index", "split"], [[f"{i}.png", "test"] for i in range(40)])
    source = sources.read_nih(str(table))
    assert sources.apply_split_csv(source, str(split_csv)) == 40
    out2 = str(tmp_path / "ds2")
    ingest(source, str(images), out2)
    assert summarize(out2)["splits"] == {"test": 40}
    bad = write_csv(tmp_path / "bad.csv", ["Image Index", "split"], [["0.png", "holdout"]])
    with pytest.raises(sources.TableError, match="holdout"):
        sources.apply_split_csv(source, str(bad))


CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
                    "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
                    "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
                    "Support Devices"]


def _chexpert_row(path, orientation, ap_pa, **labels):
    cells = {c: "" for c in CHEXPERT_COLUMNS}
    cells.update({"Path": path, "Sex": "Female", "Age": "68", "Frontal/Lateral": orientation, "AP/PA": ap_pa})
    cells.update({k.replace("_", " "): v for k, v in labels.items()})
    return [cells[c] for c in CHEXPERT_COLUMNS]


def test_chexpert_reader_views_policies_and_patient_ids(tmp_path):
    root = tmp_path / "chexpert"
    study = root / "CheXpert-v1.0-small" / "train" / "patient00001" / "study1"
    study.mkdir(parents=True)
    (study / "view1_frontal.jpg").write_bytes(png_bytes(pattern(1), "RGB", fmt="JPEG"))
    (study / "view2_lateral.jpg").write_bytes(png_bytes(pattern(2), "RGB", fmt="JPEG"))
    prefix = "CheXpert-v1.0-small/train/patient00001/study1/"
    table = write_csv(tmp_path / "train.csv", CHEXPERT_COLUMNS, [
        _chexpert_row(prefix + "view1_frontal.jpg", "Frontal", "AP", Edema="-1.0", Cardiomegaly="1.0",
                      Pneumonia="0.0"),
        _chexpert_row(prefix + "view2_lateral.jpg", "Lateral", "", Edema="1.0"),
    ])
    source = sources.read_chexpert(str(table), uncertain="ones")
    assert len(source.records) == 1 and source.filtered == {"view lateral": 1}
    record = source.records[0]
    chx = vocabulary("chexpert")
    assert record.patient_id == "patient00001" and record.view == "AP"
    assert record.labels[chx.index("Edema")] == 1.0 and math.isnan(record.labels[chx.index("Fracture")])
    out = str(tmp_path / "ds")
    report = ingest(source, str(root), out)
    assert report.rows_written == 1 and report.filtered == {"view lateral": 1}
    assert read_manifest(out)["source"]["uncertain_policy"] == "ones"
    assert len(sources.read_chexpert(str(table), views="all").records) == 2
    with pytest.raises(sources.TableError, match="Pleural Other"):
        cols = [c for c in CHEXPERT_COLUMNS if c != "Pleural Other"]
        sources.read_chexpert(str(write_csv(tmp_path / "bad.csv", cols, [])))


def test_mimic_reader_builds_paths_and_joins_the_three_tables(tmp_path):
    root = tmp_path / "mimic"
    image_dir = root / "files" / "p10" / "p10000032" / "s50414267"
    image_dir.mkdir(parents=True)
    (image_dir / "abc.jpg").write_bytes(png_bytes(pattern(1), "RGB", fmt="JPEG"))
    (image_dir / "lat.jpg").write_bytes(png_bytes(pattern(2), "RGB", fmt="JPEG"))
    label_cols = ["subject_id", "study_id", *vocabulary("chexpert").findings, "No Finding"]
    chexpert = write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", label_cols,
                          [["10000032", "50414267"] + [""] * 13 + ["1.0"]])
    write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
               [["abc", "50414267", "10000032", "validate"], ["lat", "50414267", "10000032", "validate"],
                ["orphan", "59999999", "10000032", "train"]])
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition"],
               [["abc", "10000032", "50414267", "PA"], ["lat", "10000032", "50414267", "LATERAL"],
                ["orphan", "10000032", "59999999", "AP"]])
    source = sources.read_mimic(str(chexpert))
    assert source.filtered == {"view LATERAL": 1}
    by_id = {Path(r.path).stem: r for r in source.records}
    assert by_id["abc"].path == "files/p10/p10000032/s50414267/abc.jpg"
    assert by_id["abc"].split == "val" and by_id["abc"].patient_id == "p10000032"
    assert by_id["abc"].labels.sum() == 0 and not np.isnan(by_id["abc"].labels).any()  # No Finding row
    assert "no label row" in by_id["orphan"].label_error
    report = ingest(source, str(root), str(tmp_path / "ds"))
    assert report.rows_written == 1 and report.quarantined == {"bad_label": 1}


def test_folder_reader_keeps_extra_columns(tmp_path):
    images = tmp_path / "images" / "src"
    images.mkdir(parents=True)
    for i in range(3):
        (images / f"{i}.png").write_bytes(png_bytes(pattern(i)))
    table = write_csv(tmp_path / "normals.csv", ["Image Index", "Finding Labels", "Source", "Age Group"],
                       [[f"images/src/{i}.png", "No Finding", "src", "adult" if i else "pediatric"] for i in range(3)])
    source = sources.read_folder(str(table))
    out = str(tmp_path / "ds")
    ingest(source, str(tmp_path), out)
    rows = existing_rows(out, ["source", "age_group", "labels"]).to_pylist()
    assert sorted(r["age_group"] for r in rows) == ["adult", "adult", "pediatric"]
    assert {r["source"] for r in rows} == {"src"} and all(sum(r["labels"]) == 0 for r in rows)
    assert read_manifest(out)["extra_columns"] == ["source", "age_group"]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_quoted_path_keeps_its_spaces_and_a_plain_one_is_stripped(tmp_path, newline):
    """Issue 12, low items: a file name ending in a space, quoted in the table, is found."""
    images = tmp_path / "images"
    images.mkdir()
    names = ["spaced.png ", " lead.png", "plain.png", "comma, quoted.png"]
    for i, name in enumerate(names):
        (images / name).write_bytes(png_bytes(pattern(20 + i)))
    lines = [",".join(NIH_HEADER), '"spaced.png ",Mass,0,1,50,M,PA', '" lead.png",Mass,0,2,50,M,PA',
             " plain.png ,Mass,0,3,50,M,PA", "", '"comma, quoted.png",Mass,0,4,50,M,PA', "gone.png  ,Mass,0,5,50,M,PA"]
    table = tmp_path / "Data_Entry_2017.csv"
    table.write_bytes(newline.join(lines).encode())
    source = sources.read_nih(str(table))
    assert [r.path for r in source.records] == [*names, "gone.png"]
    out = str(tmp_path / "ds")
    report = ingest(source, str(images), out, IngestOptions(size=32))
    assert report.rows_written == 4 and report.quarantined == {"missing_file": 1}
    assert sorted(r["source_uri"] for r in existing_rows(out, ["source_uri"]).to_pylist()) == sorted(names)


def test_round_trip_on_s3(broken_corpus, s3_bucket, tmp_path):
    table, images, expected, good = broken_corpus
    uri = f"{s3_bucket}/datasets/nih"
    options = IngestOptions(size=32, shard_rows=4)
    report = ingest(sources.read_nih(str(table)), str(images), uri, options)
    assert report.rows_written == len(good) and sum(report.quarantined.values()) == len(expected)
    local = str(tmp_path / "local")
    ingest(sources.read_nih(str(table)), str(images), local, options)
    # identical content on S3 and on disk, read back through the same code
    remote_rows = sorted(existing_rows(uri, ["sample_id", "image", "labels"]).to_pylist(), key=lambda r: r["sample_id"])
    local_rows = sorted(existing_rows(local, ["sample_id", "image", "labels"]).to_pylist(), key=lambda r: r["sample_id"])
    assert remote_rows == local_rows
    assert _stems(uri) == _stems(local)  # the same rows in the same shards
    assert summarize(uri)["quarantined"] == len(expected)
    assert json.loads(store.read_bytes(store.join(uri, "dataset.json")))["vocabulary"] == "nih"
    again = ingest(sources.read_nih(str(table)), str(images), uri, options)
    assert again.rows_written == 0 and again.already_present == len(good)
    assert again.quarantined == report.quarantined  # the same bad rows are reported again...
    assert summarize(uri)["quarantined"] == len(expected)  # ...but recorded once


def test_images_can_be_read_from_s3(s3_bucket, tmp_path):
    fs, _ = store.filesystem(s3_bucket)
    fs.pipe_file(f"{s3_bucket[5:]}/raw/a.png", png_bytes(pattern(7)))
    table = write_csv(tmp_path / "t.csv", NIH_HEADER, [["a.png", "Mass", 0, 1, 40, "M", "PA"],
                                                        ["../../escape.png", "Mass", 0, 2, 40, "M", "PA"],
                                                        ["gone.png", "Mass", 0, 3, 40, "M", "PA"]])
    report = ingest(sources.read_nih(str(table)), f"{s3_bucket}/raw", str(tmp_path / "ds"))
    assert report.rows_written == 1
    assert report.quarantined == {"path_escape": 1, "missing_file": 1}


def test_shards_are_valid_parquet_with_the_contract_columns(broken_corpus, tmp_path):
    table, images, _, _ = broken_corpus
    out = str(tmp_path / "ds")
    ingest(sources.read_nih(str(table)), str(images), out, IngestOptions(size=32))
    shard = store.list_shards(store.join(out, SAMPLES))[0]
    columns = set(pq.read_schema(shard).names)
    assert {"sample_id", "image", "labels", "split", "patient_id", "source_uri", "origin", "parent_id",
            "removed_labels", "kept_labels", "mask", "decision_id", "generator_id", "classifier_id", "seed",
            "quality", "accepted", "run_id", "created_at"} <= columns
    assert not [p for p in Path(out).rglob("*") if ".tmp-" in p.name]


def test_phantom_dataset_keeps_ground_truth_masks_and_is_reproducible(tmp_path):
    from tasks.images import decode_mask
    from tasks.ingest import ingest_phantom

    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    assert ingest_phantom(first, 40, size=64, seed=3, shard_rows=16).rows_written == 40
    ingest_phantom(second, 40, size=64, seed=3, shard_rows=16)
    rows = existing_rows(first, None).to_pylist()
    assert sorted(r["sample_id"] for r in rows) == sorted(existing_rows(second, ["sample_id"]).column("sample_id").to_pylist())
    assert _stems(first) == _stems(second)
    nih = vocabulary("nih")
    for r in rows:
        present = nih.positives(r["labels"])
        masks = {m["label"]: decode_mask(m["mask"]) for m in (r["lesion_masks"] or [])}
        assert sorted(masks) == sorted(present) and all(m.shape == (64, 64) and m.any() for m in masks.values())
        assert r["origin"] == "phantom" and r["seed"] == 3
    assert ingest_phantom(first, 60, size=64, seed=3).rows_written == 20  # a longer stream adds only the new tail
    with pytest.raises(ValueError, match="Choose another --out"):
        ingest_phantom(first, 10, size=32, seed=3)


def test_a_gzipped_box_table_is_read_and_found_beside_the_labels(tmp_path):
    """Issue 15: `--bbox-table x.csv.gz` failed with a raw UTF-8 decode error, and a gzipped
    BBox_List_2017.csv.gz beside a gzipped label table was not picked up."""
    import gzip

    from tasks.sources import read_source

    labels = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n" \
             "a.png,Mass,0,1,40,M,PA\nb.png,No Finding,0,2,50,F,PA\n"
    boxes = "Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,102.4,204.8,51.2,51.2\n"
    (tmp_path / "Data_Entry_2017.csv.gz").write_bytes(gzip.compress(labels.encode()))
    (tmp_path / "BBox_List_2017.csv.gz").write_bytes(gzip.compress(boxes.encode()))
    for named in (None, str(tmp_path / "BBox_List_2017.csv.gz")):
        source = read_source("nih", str(tmp_path / "Data_Entry_2017.csv.gz"), bbox_table=named)
        (box,) = source.records[0].boxes
        assert box["label"] == "Mass" and abs(box["x"] - 0.1) < 1e-9 and not source.records[1].boxes


def test_a_folder_table_without_the_default_columns_says_which_options_to_use(tmp_path):
    from tasks.sources import TableError, read_source

    table = tmp_path / "images.csv"
    table.write_text("file,findings\na.png,Mass\n")
    with pytest.raises(TableError, match=r"lacks required column.*'file', 'findings'.*--path-column and --label-column"):
        read_source("folder", str(table))
    source = read_source("folder", str(table), path_column="file", label_column="findings")
    assert source.records[0].path == "a.png"


def test_a_folder_of_symlinks_into_an_archive_stops_in_one_line_or_ingests_when_told(tmp_path):
    """Films are often delivered as a folder of links into an archive. Links that lead outside
    the folder are not read unless the operator says so (an upload folder others can write to
    must not pull in files from elsewhere); a folder of nothing else stops before any work with
    the option to pass (seen: every row quarantined as path_escape, exit 0). With it, the links
    are read, and a table's own path that leaves the folder is still refused."""
    from tasks.ingest import MissingImages

    archive, delivery = tmp_path / "archive", tmp_path / "delivery"
    archive.mkdir()
    (delivery / "sub").mkdir(parents=True)
    for k in range(3):
        (archive / f"{k}.png").write_bytes(png_bytes(pattern(k)))
        (delivery / "sub" / f"{k}.png").symlink_to(archive / f"{k}.png")
    (delivery / "linked_dir").symlink_to(archive, target_is_directory=True)
    links = [["sub/0.png", "Mass", 0, 1, 40, "M", "PA"], ["sub/1.png", "No Finding", 0, 2, 40, "M", "PA"],
             ["linked_dir/2.png", "Mass", 0, 3, 40, "M", "PA"]]
    out = tmp_path / "ds"
    with pytest.raises(MissingImages, match="3 of 3 sampled image paths .* are symlinks that lead outside .*"
                                            "--follow-symlinks"):
        ingest(sources.read_nih(str(write_csv(tmp_path / "links.csv", NIH_HEADER, links))), str(delivery), str(out),
               IngestOptions(size=32))
    assert not out.exists()
    table = write_csv(tmp_path / "t.csv", NIH_HEADER, links + [["../archive/0.png", "Mass", 0, 4, 40, "M", "PA"],
                                                               [str(archive / "1.png"), "Mass", 0, 5, 40, "M", "PA"]])
    report = ingest(sources.read_nih(str(table)), str(delivery), str(out), IngestOptions(size=32, follow_symlinks=True))
    assert report.rows_written == 3
    assert report.quarantined == {"path_escape": 2}
