"""Real data from ../shared/data: NIH's own tables and images, and the real normal corpus."""

from collections import Counter

import numpy as np
import pytest

from tasks import sources
from tasks.dataset import existing_rows, summarize
from tasks.images import decode_png
from tasks.ingest import IngestOptions, ingest

pytestmark = pytest.mark.realdata

# README of ../shared/data/nih1000: images per class and split
NIH1000_COUNTS = {
    "Effusion": (112, 24, 34), "Infiltration": (111, 23, 28), "Atelectasis": (63, 10, 22),
    "Cardiomegaly": (61, 4, 18), "Pneumothorax": (32, 1, 7), "Consolidation": (30, 5, 7),
    "Nodule": (28, 6, 5), "Mass": (27, 3, 5), "Emphysema": (25, 4, 8), "Edema": (22, 3, 6),
    "Pleural_Thickening": (22, 2, 5), "Fibrosis": (18, 3, 11), "Hernia": (9, 0, 0), "Pneumonia": (7, 2, 2),
}


@pytest.fixture(scope="module")
def nih_dataset(nih1000, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("nih1000") / "ds")
    source = sources.read_nih(str(nih1000 / "Data_Entry_2017_v2020.csv"))
    assert sources.apply_split_csv(source, str(nih1000 / "split.csv")) == 1000
    report = ingest(source, str(nih1000 / "images"), out)
    return out, report


def test_nih1000_ingests_whole_with_the_readme_counts(nih_dataset):
    out, report = nih_dataset
    assert report.rows_written == 1000 and report.quarantined == {}
    info = summarize(out)
    assert info["rows"] == 1000 and info["quarantined"] == 0
    assert info["splits"] == {"train": 700, "val": 88, "test": 212}
    for name, (train, val, test) in NIH1000_COUNTS.items():
        assert (info["classes"][name].get("train", 0), info["classes"][name].get("val", 0),
                info["classes"][name].get("test", 0)) == (train, val, test), name
    assert info["normal"] == {"train": 342, "val": 37, "test": 120, "all": 499}
    # below the median train frequency (27.5) is tail
    assert set(info["tail"]) == {"Mass", "Emphysema", "Edema", "Pleural_Thickening", "Fibrosis", "Hernia", "Pneumonia"}


def test_nih1000_images_are_64px_one_channel_and_labels_follow_the_table(nih_dataset, nih1000):
    out, _ = nih_dataset
    rows = existing_rows(out, ["image", "source_uri", "labels", "boxes", "patient_id"]).to_pylist()
    shapes = Counter(decode_png(r["image"]).shape for r in rows)
    assert shapes == {(64, 64): 1000}
    quirk = next(r for r in rows if r["source_uri"] == "00000193_019.png")
    assert quirk["labels"][6] == 1.0  # Pneumonia, as NIH's table says (the third party filed it as normal)
    boxed = [r for r in rows if r["boxes"]]
    assert len(boxed) == 9
    infiltrate = [b for r in boxed for b in r["boxes"] if b["label"] == "Infiltration"]
    assert infiltrate and all(0 <= b["x"] <= 1 and 0 < b["w"] <= 1 for r in boxed for b in r["boxes"])
    assert {r["patient_id"] for r in rows} and all(r["patient_id"].isdigit() for r in rows)


def test_normals_corpus_ingests_whole_with_source_and_age_group(normals, tmp_path):
    out = str(tmp_path / "normals")
    source = sources.read_folder(str(normals / "normals.csv"))
    report = ingest(source, str(normals), out, IngestOptions(size=128, shard_rows=2048))
    assert report.rows_written == 7625 and report.quarantined == {}
    rows = existing_rows(out, ["source", "age_group", "labels"])
    assert Counter(rows.column("source").to_pylist()) == {
        "covid19-radiography-db": 5561, "nih-chestxray14": 485, "kermany-pediatric": 1579}
    assert Counter(rows.column("age_group").to_pylist()) == {"adult": 6046, "pediatric": 1579}
    labels = np.asarray(rows.column("labels").to_pylist())
    assert labels.shape == (7625, 14) and (labels == 0).all()
