"""Label-conditioned generation (issue 16; the paper's DfT-Caption baseline): a DiT conditioned on
the finding set, trained on the labelled train split, sampling each candidate's kept set from
noise; rows with origin "conditional", no parent, no patient, no mask; lineage and the report
show how they were made."""

import numpy as np
import pytest
import torch

from flows.cli import main
from models.classifier import ClassifierConfig
from models.dit import (DiTConfig, DiTTrainConfig, build_dit, label_count, label_input, load_dit, predict_noise,
                        save_dit, train_dit)
from models.training import TrainConfig
from tasks import augment as work
from tasks.catalog import open_catalog
from tasks.dataset import existing_rows, finish_manifest, read_manifest
from tasks.ingest import ingest_phantom
from tasks.knowledge import plan
from tasks.lineage import lineage
from tasks.pretrain import train_classifier, train_label_dit
from tasks.report import before_after_png

TINY = dict(image_size=16, patch_size=4, depth=1, num_heads=2, head_dim=8)


def test_the_label_set_steers_the_prediction_and_survives_a_checkpoint():
    torch.manual_seed(0)
    config = DiTConfig(**TINY, conditioning="labels", num_labels=3)
    model = build_dit(config).eval()
    assert label_count(model) == 3 and label_count(build_dit(DiTConfig(**TINY))) == 0
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([500, 500])
    sets = torch.tensor([[1.0, 0, 0], [0, 1.0, float("nan")]])
    with torch.no_grad():
        conditioned = predict_noise(model, x, t, labels=label_input(sets))
        other = predict_noise(model, x, t, labels=label_input(sets.flip(0)))
        free = predict_noise(model, x, t)  # no labels: the unconditional model (the 'dropped' row)
        dropped = predict_noise(model, x, t, labels=label_input(sets, torch.tensor([True, True])))
        reloaded = predict_noise(load_dit(save_dit(model, config))[0], x, t, labels=label_input(sets))
    assert not torch.allclose(conditioned, other) and torch.allclose(free, dropped)
    assert torch.equal(conditioned, reloaded)
    assert label_input(sets).tolist() == [[1, 0, 0, 0], [0, 1, 0, 0]]  # NaN (unknown) is not present


def test_label_conditioning_is_checked():
    with pytest.raises(ValueError, match="num_labels"):
        DiTConfig(**TINY, conditioning="labels")
    with pytest.raises(ValueError, match="num_labels"):
        DiTConfig(**TINY, num_labels=3)
    plain = build_dit(DiTConfig(**TINY))
    with pytest.raises(ValueError, match="not conditioned on labels"):
        predict_noise(plain, torch.randn(1, 1, 16, 16), torch.tensor([1]), labels=torch.zeros(1, 4))
    config = DiTConfig(**TINY, conditioning="labels", num_labels=3)
    with pytest.raises(ValueError, match="with their labels"):
        train_dit(torch.rand(4, 1, 16, 16), config, DiTTrainConfig(steps=1, batch_size=2))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        train_dit(torch.rand(4, 1, 16, 16), config, DiTTrainConfig(steps=1, batch_size=2), labels=torch.zeros(4, 2))


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("conditional")
    dataset, models, out = str(root / "ph"), str(root / "models"), str(root / "aug")
    ingest_phantom(dataset, 200, size=32, seed=7)
    manifest = read_manifest(dataset)
    classifier = train_classifier(dataset, models, ClassifierConfig("resnet18", 14, 32), TrainConfig(epochs=1))
    config = DiTConfig(image_size=32, patch_size=8, depth=1, num_heads=2, head_dim=8, conditioning="labels",
                       num_labels=len(manifest["labels"]))
    generator = train_label_dit(dataset, models, config, DiTTrainConfig(steps=4, batch_size=8))
    _, decisions = plan(dataset, root / "d.duckdb")
    settings = work.AugmentSettings.from_dict({"inpaint": {"steps": 3}, "ood_filter": False})
    prepared = work.prepare(dataset, out, manifest, decisions, classifier, generator["id"], settings)
    batch = prepared.candidates[:5]
    result = work.run_batch(dataset, out, batch, classifier, generator, settings, "run-cond")
    finish_manifest(out, name="conditional", kind="augmented", vocab_name="nih", image_size=32,
                    source={"kind": "augment"},
                    run_id="run-cond", explicit_tail=manifest["head_tail"]["tail"])
    return {"root": str(root), "dataset": dataset, "out": out, "batch": batch, "result": result,
            "generator": generator, "classifier": classifier, "findings": manifest["labels"]}


def test_conditional_rows_are_new_images_of_the_kept_set_with_no_parent(conditional_run):
    run = conditional_run
    assert run["generator"]["kind"] == "dit" and run["result"]["written"] == len(run["batch"])
    rows = {r["sample_id"]: r for r in existing_rows(run["out"], None).to_pylist()}
    parents = {r["sample_id"]: r for r in existing_rows(run["dataset"], ["sample_id", "labels"]).to_pylist()}
    for c in run["batch"]:
        row = rows[c.output_id]
        assert row["origin"] == "conditional" and row["parent_id"] is None and row["patient_id"] is None
        assert row["mask"] is None and row["generator_id"] == run["generator"]["id"] and row["seed"] == c.seed
        expected = [0.0 if name in c.remove else v for name, v in zip(run["findings"], parents[c.parent_id]["labels"])]
        assert np.allclose(row["labels"], expected, equal_nan=True) and row["removed_labels"] == list(c.remove)
        assert row["verdict"]  # the same removal/quality check as inpainted rows


def test_a_label_conditioned_generator_is_not_its_own_ood_judge(conditional_run, tmp_path):
    """It reconstructs its own artefacts better than real films (benchmarks/results/bench_ood.md):
    the reconstruction filter is refused for it, and the feature filter (the default) scores its rows."""
    run = conditional_run
    with pytest.raises(ValueError, match="judge its own samples; use ood_method: features"):
        work.check_ood(work.AugmentSettings(ood_method="reconstruction"), run["generator"])
    settings = work.AugmentSettings.from_dict({"inpaint": {"steps": 3}})
    assert settings.ood_filter and settings.ood_method == "features"
    work.check_ood(settings, run["generator"])
    out = str(tmp_path / "judged")
    work.run_batch(run["dataset"], out, run["batch"], run["classifier"], run["generator"], settings, "run-ood")
    rows = existing_rows(out, ["ood_score", "verdict"]).to_pylist()
    threshold = work.ood_scorer(run["dataset"], settings, run["classifier"], run["generator"]).threshold
    assert len(rows) == len(run["batch"]) and all(r["ood_score"] is not None for r in rows)
    for r in rows:
        if "feature z=" in r["verdict"]:
            assert r["ood_score"] > threshold
        elif r["ood_score"] > threshold:
            assert r["verdict"] != "ok"  # an earlier check (removal, quality) said why first


def test_lineage_and_the_report_show_how_a_conditional_row_was_made(conditional_run, capsys):
    run = conditional_run
    sample = run["batch"][0].output_id
    with open_catalog(run["root"]) as catalog:
        chain = lineage(catalog, sample)["chain"]
    assert len(chain) == 1 and chain[0]["origin"] == "conditional" and chain[0]["mask"] is None
    assert chain[0]["generator"]["id"] == run["generator"]["id"]
    assert before_after_png(run["out"], run["dataset"], n=3)[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["lineage", sample, "--root", run["root"]]) == 0
    shown = capsys.readouterr().out
    assert "no real source: sampled from its finding set" in shown and "mask none (the whole image sampled)" in shown
