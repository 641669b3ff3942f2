"""Lineage and the read-only catalog, on a small phantom run, locally and on S3 (moto)."""

import json
import re
from pathlib import Path

import pytest

from flows.cli import main
from models.classifier import ClassifierConfig
from models.dit import DiTConfig, DiTTrainConfig
from models.training import TrainConfig
from tasks import augment as work
from tasks import store
from tasks.catalog import QueryRefused, open_catalog, query
from tasks.dataset import existing_rows, finish_manifest, read_manifest
from tasks.images import decode_mask
from tasks.ingest import ingest_phantom
from tasks.knowledge import export_decisions, plan
from tasks.lineage import lineage
from tasks.pretrain import train_classifier, train_normal_dit
from tasks.runs import write_run_record
from tasks.dataset import utcnow


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A phantom dataset, tiny models, and one generated batch with its decisions and run record."""
    root = tmp_path_factory.mktemp("catalog-root")
    dataset, models, out = str(root / "datasets" / "ph"), str(root / "models"), str(root / "runs" / "r1" / "augmented")
    ingest_phantom(dataset, 300, size=32, seed=4)
    classifier = train_classifier(dataset, models, ClassifierConfig("resnet18", 14, 32), TrainConfig(epochs=1))
    generator = train_normal_dit([dataset], models, DiTConfig(image_size=32, patch_size=8, depth=1, num_heads=2,
                                                              head_dim=8), DiTTrainConfig(steps=5, batch_size=8))
    _, decisions = plan(dataset, root / "d.duckdb")
    manifest = read_manifest(dataset)
    settings = work.AugmentSettings.from_dict({"cam_method": "eigencam", "mask": {"max_area": 0.7},
                                               "inpaint": {"steps": 2, "jump_length": 2, "resample": 1}})
    batch = work.prepare(dataset, out, manifest, decisions, classifier, generator["id"], settings).candidates[:6]
    work.run_batch(dataset, out, batch, classifier, generator, settings, "run-0001")
    export_decisions(decisions, store.join(out, "decisions"))
    finish_manifest(out, name="augmented", kind="augmented", vocab_name="nih", image_size=32,
                    source={"kind": "augment"},
                    run_id="run-0001", explicit_tail=manifest["head_tail"]["tail"])
    write_run_record(out, "run-0001", "augment", {"dataset_uri": dataset, "api_key": "nope"}, "completed", utcnow(),
                     {"written": len(batch)})
    return {"root": str(root), "dataset": dataset, "out": out, "batch": batch, "decisions": decisions,
            "classifier": classifier, "generator": generator}


def test_lineage_is_complete_and_correct_field_by_field(small_run):
    generated = {r["sample_id"]: r for r in existing_rows(small_run["out"], None).to_pylist()}
    parents = {r["sample_id"]: r for r in existing_rows(small_run["dataset"], None).to_pylist()}
    decisions = {d.decision_id: d for d in small_run["decisions"]}
    names = read_manifest(small_run["dataset"])["labels"]
    checked = 0
    with open_catalog(small_run["root"]) as catalog:
        for candidate in small_run["batch"]:
            if candidate.output_id not in generated:
                continue  # quarantined (mask outcome): not a sample
            row, parent = generated[candidate.output_id], parents[candidate.parent_id]
            result = lineage(catalog, candidate.output_id[:12])
            step, source = result["chain"]
            assert step["sample_id"] == candidate.output_id and step["origin"] == "inpainted"
            assert step["parent_id"] == candidate.parent_id and source["sample_id"] == candidate.parent_id
            assert source["source_path"] == parent["source_uri"] and source["origin"] == "phantom"
            assert result["summary"]["labels_before"] == [n for n, v in zip(names, parent["labels"]) if v == 1]
            assert result["summary"]["labels_after"] == [n for n, v in zip(names, row["labels"]) if v == 1]
            assert step["removed_labels"] == list(candidate.remove) and step["kept_labels"] == list(candidate.keep)
            decision = decisions[candidate.decision_id]
            assert step["decision"]["rationale"] == decision.rationale and step["decision"]["source"] == "rules"
            assert step["classifier"]["id"] == small_run["classifier"]["id"]
            assert step["generator"]["id"] == small_run["generator"]["id"] and step["generator"]["kind"] == "dit"
            assert step["seed"] == candidate.seed and step["run_id"] == "run-0001"
            assert step["run"]["flow"] == "augment" and step["run"]["parameters"]["api_key"] == "<redacted>"
            assert step["mask"]["pixels"] == int(decode_mask(row["mask"]).sum())
            checked += 1
    assert checked >= 1


def test_unknown_and_ambiguous_ids(small_run):
    with open_catalog(small_run["root"]) as catalog:
        with pytest.raises(LookupError):
            lineage(catalog, "0" * 64)
        with pytest.raises(QueryRefused, match="8 characters"):
            lineage(catalog, "abc")


REFUSED = [
    "INSERT INTO samples SELECT * FROM samples",
    "CREATE TABLE x AS SELECT 1",
    "DROP VIEW samples",
    "ATTACH '/tmp/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "COPY (SELECT 1) TO '/tmp/out.csv'",
    "SET enable_external_access = true",
    "PRAGMA version",
    "SELECT * FROM read_csv('/etc/hostname')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT 1; SELECT 2",
]


def _check_refusals(root: str):
    with open_catalog(root) as catalog:
        for sql in REFUSED:
            with pytest.raises(QueryRefused):
                query(catalog, sql)
        columns, rows = query(catalog, "SELECT count(*) AS n FROM samples")
        assert columns == ["n"] and rows[0][0] > 0


def test_queries_that_write_or_reach_outside_are_refused(small_run):
    _check_refusals(small_run["root"])


README_QUERIES = [  # the ready queries the user guide shows
    "SELECT night, class, count(*) AS n FROM (SELECT date_trunc('day', s.created_at) AS night, unnest(d.tail) AS class "
    "FROM samples s JOIN decisions d USING (decision_id) WHERE s.origin = 'inpainted' AND s.accepted) "
    "GROUP BY ALL ORDER BY ALL",
    "SELECT origin, split, count(*) AS n FROM samples "
    "WHERE run_id = (SELECT run_id FROM runs WHERE flow = 'augment' ORDER BY started_at DESC LIMIT 1) GROUP BY ALL",
    "SELECT s.dataset_name, s.accepted, count(*) AS n FROM samples s JOIN runs r USING (run_id) "
    "WHERE r.parent_run_id = (SELECT run_id FROM runs WHERE flow = 'factory' ORDER BY started_at DESC LIMIT 1) "
    "GROUP BY ALL",
    "SELECT dataset_name, origin, count(*) AS n FROM samples GROUP BY ALL ORDER BY ALL",
    "SELECT sample_id, parent_id, removed_labels FROM samples WHERE decision_id = "
    "(SELECT decision_id FROM samples WHERE origin = 'inpainted' LIMIT 1)",
    "SELECT reason_code, count(*) AS n FROM quarantine GROUP BY ALL ORDER BY n DESC",
]


@pytest.mark.parametrize("sql", README_QUERIES)
def test_readme_queries_run(small_run, sql):
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    assert sql in " ".join(guide.split())
    with open_catalog(small_run["root"]) as catalog:
        columns, rows = query(catalog, sql)
    assert columns
    if "flow = 'augment'" in sql or "dataset_name, origin" in sql:
        assert rows  # examples that find something, as written (issue 15: 'run-0001' matched no real id)
    if "dataset_name, origin" in sql:
        assert {r[0] for r in rows} == {"augmented", "phantom"}  # the manifests' names, not paths


def test_no_ui_link_for_runs_outside_prefect(small_run, monkeypatch):
    """Issue 15: the Prefect link of a CLI ingest was a 404 (its run id is no flow run)."""
    monkeypatch.setenv("PREFECT_UI_URL", "http://127.0.0.1:4200")
    sample = next(r["sample_id"] for r in existing_rows(small_run["out"], ["sample_id"]).to_pylist())
    with open_catalog(small_run["root"]) as catalog:
        chain = lineage(catalog, sample)["chain"]
    assert [step["run_link"] for step in chain] == [None, None]


def test_lineage_lists_every_copy_of_a_sample_and_says_where_a_parent_is_missing(small_run, tmp_path, capsys):
    """Issue 15: the same sample written into two outputs made a prefix ambiguous and the full id
    pick one copy silently; a root without the parent printed '? in None (run None)'."""
    import shutil

    sample = next(r["sample_id"] for r in existing_rows(small_run["out"], ["sample_id"]).to_pylist())
    copy = Path(small_run["root"]) / "runs" / "r2" / "augmented"
    shutil.copytree(small_run["out"], copy)
    try:
        with open_catalog(small_run["root"]) as catalog:
            step = lineage(catalog, sample[:12])["chain"][0]
        assert step["sample_id"] == sample and [c["dataset"] for c in step["also_in"]] == [str(copy)]
        assert main(["lineage", sample, "--root", str(copy.parent)]) == 0
        shown = capsys.readouterr().out
        assert "its parent is not under" in shown and "--root that holds both" in shown and "None" not in shown
    finally:
        shutil.rmtree(copy.parent)


def test_a_missing_parent_names_the_folder_that_holds_both_datasets():
    """Seen from a fresh clone: lineage without --root suggested $TAILFORGE_HOME, the root it had used."""
    from tasks.lineage import _parent_missing

    assert _parent_missing("/home/x", "/srv/out/augmented", "/srv/datasets/nih").endswith(
        "its run read /srv/datasets/nih; give --root /srv")
    assert _parent_missing("/r", "s3://lake/out", "s3://lake/nih").endswith("give --root s3://lake")
    for dataset, parent in (("/data/out", "/home/nih"), ("s3://a/out", "s3://b/nih"), ("/x", None)):
        assert _parent_missing("/r", dataset, parent).endswith("give a --root that holds both datasets")


def test_lineage_follows_a_parent_into_the_dataset_its_run_read(small_run, tmp_path):
    """Issue 34: lineage named the dataset a parent image was first ingested into, not the one
    the generated row's run read (the same image ingested into two datasets)."""
    import json
    import shutil

    root = tmp_path / "root"
    shutil.copytree(small_run["root"], root)
    first = root / "datasets" / "aa-ingested-first"  # the same rows, sorted before the run's dataset
    shutil.copytree(root / "datasets" / "ph", first)
    out = root / "runs" / "r1" / "augmented"
    manifest = json.loads((out / "dataset.json").read_text())
    manifest["source"]["parent"] = str(root / "datasets" / "ph")  # what tasks.augment.finish_output records
    (out / "dataset.json").write_text(json.dumps(manifest))
    sample = next(r["sample_id"] for r in existing_rows(str(out), ["sample_id"]).to_pylist())
    with open_catalog(str(root)) as catalog:
        step, parent = lineage(catalog, sample)["chain"]
    assert parent["dataset"] == str(root / "datasets" / "ph")
    assert [c["dataset"] for c in parent["also_in"]] == [str(first)]


def test_cli_lineage_query_runs(small_run, capsys):
    sample = small_run["batch"][0].output_id
    generated = existing_rows(small_run["out"], ["sample_id"]).column("sample_id").to_pylist()
    sample = next(c.output_id for c in small_run["batch"] if c.output_id in generated)
    assert main(["lineage", sample[:10], "--root", small_run["root"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["sample_id"] == sample
    assert main(["query", "SELECT count(*) AS n FROM samples", "--root", small_run["root"], "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "n"
    assert main(["query", "DELETE FROM samples", "--root", small_run["root"]]) == 2
    assert "read-only" in capsys.readouterr().err
    assert main(["runs", "--root", small_run["root"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["run_id"] == "run-0001"


def test_the_same_on_s3(small_run, s3_bucket):
    fs, _ = store.filesystem(s3_bucket)
    fs.put(small_run["root"] + "/", s3_bucket[5:] + "/root/", recursive=True)
    root = f"{s3_bucket}/root"
    sample = next(c.output_id for c in small_run["batch"]
                  if c.output_id in existing_rows(small_run["out"], ["sample_id"]).column("sample_id").to_pylist())
    with open_catalog(root) as catalog:
        assert len(catalog.datasets) == 2
        result = lineage(catalog, sample)
        assert result["chain"][0]["decision"]["source"] == "rules"
        assert result["chain"][1]["dataset"].startswith("s3://")
        columns, rows = query(catalog, "SELECT count(*) FROM samples WHERE origin = 'phantom'")
        assert rows[0][0] == 300
    _check_refusals(root)
