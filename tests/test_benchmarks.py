"""The experiment's ground-truth measures (benchmarks/phantom_truth.py) on hand-made outcomes:
a perfect removal, no removal, and a removal that also wipes the tail lesion."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.phantom_truth import _replay, entanglement_error, lesion_outcomes
from tasks.dataset import ShardWriter, existing_rows, read_manifest, sample_schema
from tasks.images import encode_mask, encode_png
from tasks.ingest import ingest_phantom
from tasks.knowledge import NoGuidanceJudge, RulesJudge, plan
from tasks.tensors import lesion_masks, load_tensors


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("truth") / "phantom")
    ingest_phantom(uri, 300, size=32, seed=3)
    return uri


def _parents(phantom, limit=6):
    """(row, removed head findings, tail findings) of images with a visible head and tail lesion."""
    manifest = read_manifest(phantom)
    head, tail = set(manifest["head_tail"]["head"]), set(manifest["head_tail"]["tail"])
    data = load_tensors(phantom, columns=("lesion_masks", "source_uri"))
    masks = lesion_masks(data.table)
    chosen = []
    for i, m in enumerate(masks):
        heads = [n for n in m if n in head and m[n].sum() >= 4]
        tails = [n for n in m if n in tail and m[n].sum() >= 4]
        if heads and tails and not any((m[h] & m[t]).any() for h in heads for t in tails):
            chosen.append((i, heads, tails))
    return data, masks, chosen[:limit]


def _write(phantom, out, outcome):
    data, masks, chosen = _parents(phantom)
    assert len(chosen) >= 3, "the phantom should hold images with separate head and tail lesions"
    accepted = {i for i, _, _ in chosen[::2]}  # every other row passed the product's checks
    writer = ShardWriter(out, sample_schema())
    for i, heads, tails in chosen:
        source = data.table.column("source_uri")[i].as_py()
        labels = data.labels[i].numpy().copy()
        for h in heads:
            labels[data.findings.index(h)] = 0.0
        region = np.any([masks[i][h] for h in heads], axis=0)
        image = data.images[i, 0].numpy()
        if outcome in ("perfect", "tail_lost"):
            image = _replay(source, np.nan_to_num(labels), "nih", 32)
        if outcome == "tail_lost":
            without = labels.copy()
            for t in tails:
                without[data.findings.index(t)] = 0.0
            image = _replay(source, np.nan_to_num(without), "nih", 32)
            region = region | np.any([masks[i][t] for t in tails], axis=0)
        writer.add({"sample_id": f"{outcome}-{i}", "image": encode_png(np.round(image * 255).astype(np.uint8)),
                    "labels": [float(v) for v in labels], "parent_id": data.sample_ids[i],
                    "removed_labels": heads, "mask": encode_mask(region), "accepted": i in accepted})
    writer.close()
    Path(out, "dataset.json").write_text(Path(phantom, "dataset.json").read_text())  # the vocabulary
    return out


@pytest.mark.parametrize("outcome,removed,retained", [("perfect", 1.0, 1.0), ("untouched", 0.0, 1.0),
                                                      ("tail_lost", 1.0, 0.0)])
def test_lesion_outcomes_on_known_results(phantom, tmp_path, outcome, removed, retained):
    out = _write(phantom, str(tmp_path / outcome), outcome)
    tail = read_manifest(phantom)["head_tail"]["tail"]
    result = lesion_outcomes(phantom, out, tail)
    assert result["images"] == existing_rows(out, ["sample_id"]).num_rows
    assert result["head_lesions"] >= 3 and result["tail_lesions"] >= 3
    assert result["head_removal_rate"] == removed and result["tail_retention_rate"] == retained
    assert result["head_lesion_mask_coverage_mean"] == 1.0  # the masks were the lesions themselves
    audit = result["audit"]
    assert audit["all"]["rows"] == result["images"] and audit["accepted"]["rows"] == (result["images"] + 1) // 2
    assert audit["all"]["removed_signed"] == audit["accepted"]["removed_signed"] == removed
    assert audit["accepted"]["retained_signed"] == retained
    assert audit["accepted"]["rows_all_labels_right"] == (1.0 if removed and retained else 0.0)
    assert 0 < audit["accepted"]["head_lesions"] < audit["all"]["head_lesions"]
    precision = audit["accepted"]["label_precision"]
    assert any(label.endswith("(0)") for label in precision) and any(label.endswith("(1)") for label in precision)
    assert {entry["right"] for entry in precision.values()} <= {removed, retained}


def test_the_copies_and_relabel_controls_hold_the_accepted_rows_parents(phantom, tmp_path):
    """Issue 33: +copies adds each accepted row's parent with its own labels, +relabel with the
    generated row's labels; pixels are the parent's in both, and their ids differ (the fine-tune key)."""
    from benchmarks import paper
    out = _write(phantom, str(tmp_path / "perfect"), "perfect")
    original = load_tensors(phantom)
    generated = load_tensors(out, columns=("parent_id", "accepted"))
    accepted = [i for i, a in enumerate(generated.table.column("accepted").to_pylist()) if a]
    copies = paper.parents_of(out, original, "copies")
    relabel = paper.parents_of(out, original, "relabel")
    assert len(copies) == len(relabel) == len(accepted) >= 2
    parents = [original.sample_ids.index(generated.table.column("parent_id")[i].as_py()) for i in accepted]
    assert torch.equal(copies.images, original.images[parents]) and torch.equal(relabel.images, copies.images)
    assert torch.equal(copies.labels.nan_to_num(-1), original.labels[parents].nan_to_num(-1))
    assert torch.equal(relabel.labels.nan_to_num(-1), generated.labels[accepted].nan_to_num(-1))
    assert not torch.equal(relabel.labels.nan_to_num(-1), copies.labels.nan_to_num(-1))  # head findings dropped
    assert set(copies.sample_ids).isdisjoint(relabel.sample_ids)
    assert {paper.SETTINGS[s][0] for s in ("+copies", "+relabel")} <= set(paper.CONTROLS)
    assert paper.generated_sets(["+copies", "+relabel+cb"]) == {"all-cam"}


def test_the_shortcut_probe_finds_a_marked_inpainting_and_not_an_untouched_one(phantom, tmp_path):
    from benchmarks.shortcut import probe
    from models.classifier import ClassifierCard, ClassifierConfig, build_classifier, save_checkpoint
    manifest = read_manifest(phantom)
    torch.manual_seed(0)
    config = ClassifierConfig(backbone="test_resnet", num_classes=len(manifest["labels"]), image_size=32)
    card = ClassifierCard(labels=manifest["labels"], head=manifest["head_tail"]["head"],
                          tail=manifest["head_tail"]["tail"], thresholds=[0.5] * len(manifest["labels"]),
                          train_shards_sha256=[], seed=0, metrics={})
    (tmp_path / "c.pt").write_bytes(save_checkpoint(build_classifier(config), config, card))
    data = load_tensors(phantom, limit=40)
    scores = {}
    for outcome in ("untouched", "marked"):  # the parent again, or with a bright corner: a cue a network can learn
        writer = ShardWriter(str(tmp_path / outcome), sample_schema())
        for i, sid in enumerate(data.sample_ids):
            image = data.images[i, 0].numpy().copy()
            if outcome == "marked":
                image[:6, :6] = 1.0
            writer.add({"sample_id": f"{outcome}-{i}", "image": encode_png(np.round(image * 255).astype(np.uint8)),
                        "labels": [float(v) for v in data.labels[i]], "parent_id": sid, "accepted": True})
        writer.close()
        Path(tmp_path, outcome, "dataset.json").write_text(Path(phantom, "dataset.json").read_text())
        scores[outcome] = probe(str(tmp_path / "c.pt"), phantom, str(tmp_path / outcome))
    assert scores["untouched"]["pairs"] == scores["marked"]["pairs"] == 40
    assert scores["untouched"]["roc_auc"] <= 0.6 and scores["marked"]["roc_auc"] >= 0.9


def test_entanglement_error_counts_against_true_overlap(phantom, tmp_path):
    manifest = read_manifest(phantom)
    head, tail = manifest["head_tail"]["head"], manifest["head_tail"]["tail"]
    _, none = plan(phantom, tmp_path / "d.duckdb", NoGuidanceJudge())
    keep_nothing = entanglement_error(phantom, none, head, tail)
    assert keep_nothing["kept"] == 0 and keep_nothing["recall"] == 0.0
    assert keep_nothing["error_rate"] == round(keep_nothing["true_overlaps"] / keep_nothing["pairs"], 3)
    _, rules = plan(phantom, tmp_path / "d.duckdb", RulesJudge())
    by_rules = entanglement_error(phantom, rules, head, tail)
    assert by_rules["pairs"] == keep_nothing["pairs"] > 0
    assert by_rules["tp"] + by_rules["fp"] + by_rules["fn"] + by_rules["tn"] == by_rules["pairs"]


def test_reliability_hostile_section_and_its_report(tmp_path):
    """One piece of benchmarks/reliability.py, small: the hostile corpus gets every reason."""
    from benchmarks.reliability import markdown, parse, totals
    from benchmarks.reliability_sections import section_hostile

    result = section_hostile(parse(["--size", "32"]), tmp_path)
    assert result["hostile_kinds"] >= 30 and result["hangs"] == result["crashes"] == result["leaks"] == 0
    assert result["survived"] == result["trials"], [d for d in result["details"] if not d["ok"]]
    payload = {"commit": "x", "machine": {"cores": 2}, "seconds": 1.0, "sections": {"hostile": result},
               "settings": {"argv": [], "n": 0, "size": 32, "shard_rows": 32}, "totals": totals({"hostile": result})}
    assert "| hostile | " in markdown(payload)


def _experiment(settings, baseline_probs, seeds=(0, 1)):
    """A saved-run payload (benchmarks/experiment.py's shape) with these settings' test probabilities."""
    return {"test_sample_ids": ["a", "b"], "config": {"seeds": list(seeds), "settings": list(settings), "augment": {}},
            "commit": "c0ffee", "machine": {}, "seconds": 60.0, "command": "python -m benchmarks.experiment",
            "per_seed": [{"seed": s, "generated": {}, "finetune": {
                name: {"test_probs": baseline_probs if name == "baseline" else [[0.9], [0.1]], "thresholds": [0.5]}
                for name in settings}} for s in seeds]}


def test_rows_are_added_to_a_saved_experiment_only_when_its_baseline_reproduces():
    from benchmarks.experiment_results import ADD_TOLERANCE, add_rows
    saved = _experiment(["baseline", "cb"], [[0.2], [0.7]])
    new = _experiment(["baseline", "conditional"], [[0.2 + ADD_TOLERANCE / 2], [0.7]])
    new["config"]["seeds"] = (0, 1)  # a fresh run's config holds a tuple, the saved one a list
    new["per_seed"][1]["generated"] = {"lkg-conditional": {"accepted": 3}}
    merged = add_rows(saved, new)
    assert merged["config"]["settings"] == ["baseline", "cb", "conditional"]
    assert merged["per_seed"][1]["finetune"]["conditional"]["test_probs"] == [[0.9], [0.1]]
    assert merged["per_seed"][1]["generated"] == {"lkg-conditional": {"accepted": 3}}
    assert merged["per_seed"][0]["finetune"]["baseline"]["test_probs"] == [[0.2], [0.7]]  # the saved one stays
    assert merged["added"][0]["settings"] == ["conditional"]
    assert merged["added"][0]["baseline_max_difference"][0] == pytest.approx(ADD_TOLERANCE / 2)
    again = _experiment(["baseline", "conditional"], [[0.2], [0.7]])  # the row made anew: it replaces the first
    again["commit"] = "beef"
    again["per_seed"][0]["finetune"]["conditional"]["test_probs"] = [[0.4], [0.6]]
    merged = add_rows(merged, again)
    assert merged["config"]["settings"] == ["baseline", "cb", "conditional"]
    assert merged["per_seed"][0]["finetune"]["conditional"]["test_probs"] == [[0.4], [0.6]]
    assert [a.get("replaced_at") for a in merged["added"]] == ["beef", None]

    drifted = _experiment(["baseline", "conditional"], [[0.2], [0.7 - 2 * ADD_TOLERANCE]])
    with pytest.raises(SystemExit, match="seed 0's baseline does not reproduce"):
        add_rows(_experiment(["baseline", "cb"], [[0.2], [0.7]]), drifted)
    with pytest.raises(SystemExit, match="seeds differ"):
        add_rows(_experiment(["baseline"], [[0.2], [0.7]]), _experiment(["baseline", "cb"], [[0.2], [0.7]], seeds=(0,)))


def test_seeds_join_a_saved_experiment_only_when_everything_but_the_seeds_is_the_same():
    from benchmarks.experiment import added_line
    from benchmarks.experiment_results import add_seeds
    saved = _experiment(["baseline", "cb"], [[0.2], [0.7]], seeds=(0, 2))
    saved["generator"] = {"id": "dit-a"}
    new = _experiment(["baseline", "cb"], [[0.3], [0.6]], seeds=(1, 3))
    new["config"]["seeds"], new["generator"], new["commit"] = (1, 3), {"id": "dit-a"}, "beef"
    merged = add_seeds(saved, new)
    assert merged["config"]["seeds"] == [0, 1, 2, 3] and [r["seed"] for r in merged["per_seed"]] == [0, 1, 2, 3]
    assert merged["per_seed"][1]["finetune"]["baseline"]["test_probs"] == [[0.3], [0.6]]
    assert merged["per_seed"][2]["finetune"]["baseline"]["test_probs"] == [[0.2], [0.7]]
    assert merged["added"] == [{"seeds": [1, 3], "commit": "beef", "machine": {}, "seconds": 60.0,
                                "command": "python -m benchmarks.experiment"}]
    assert "Seeds [1, 3] added at commit `beef`" in added_line({**merged["added"][0], "machine": {"cpu": "x", "cores": 2}})

    def refused(change, match, seeds=(5,)):
        base = _experiment(["baseline", "cb"], [[0.2], [0.7]])
        base["generator"] = {"id": "dit-a"}
        other = _experiment(["baseline", "cb"], [[0.2], [0.7]], seeds=seeds)
        other["generator"] = {"id": "dit-a"}
        change(other)
        with pytest.raises(SystemExit, match=match):
            add_seeds(base, other)
    refused(lambda r: None, r"seeds \[1\] are in the saved run already", seeds=(1, 5))
    refused(lambda r: r["config"].update(settings=["baseline"]), "must run the saved settings")
    refused(lambda r: r["config"].update(augment={"max_images": 16}), "augment differ")
    refused(lambda r: r["config"].update(augment={"variants": 4}), "augment differ")
    first = _experiment(["baseline", "cb"], [[0.2], [0.7]], seeds=(0, 2))
    later = _experiment(["baseline", "cb"], [[0.2], [0.7]], seeds=(7,))  # a setting added since, at its default
    first["generator"], later["generator"], later["config"]["augment"] = {"id": "dit-a"}, {"id": "dit-a"}, {"variants": 1}
    assert add_seeds(first, later)["config"]["seeds"] == [0, 2, 7]
    refused(lambda r: r.update(generator={"id": "dit-b"}), "generator differ")
    refused(lambda r: r.update(test_sample_ids=["a", "c"]), "test split differs")


def test_saved_test_probabilities_keep_the_ranking_near_0_and_1(tmp_path):
    """AUROC and AP rank the scores: saved probabilities must not tie scores that were distinct (the
    4-decimal JSON of earlier runs turned a sharp long-tail loss's 0.99991 and 0.99996 into one value)."""
    from benchmarks.experiment_results import load_saved, write_json
    probs = np.array([[1 - 4e-5, 1e-9], [1 - 9e-5, 3e-9], [0.5, 1 - 1e-12], [1e-7, 1 - 3e-12]])
    payload = {"findings": ["A", "B"], "test_sample_ids": ["s0", "s1", "s2", "s3"], "config": {"seeds": [0]},
               "per_seed": [{"seed": 0, "finetune": {"baseline": {"test_probs": probs.tolist(), "thresholds": [0.5, 0.5]},
                                                      "cb": {"test_probs": (1 - probs).tolist(), "thresholds": [0.5, 0.5]}}}]}
    write_json(tmp_path, "toy", payload)
    assert payload["test_probs_file"] == "experiment_toy_probs.parquet"
    saved = load_saved("toy", tmp_path)["per_seed"][0]["finetune"]
    for setting, expected in (("baseline", probs), ("cb", 1 - probs)):
        got = np.asarray(saved[setting]["test_probs"])
        assert got.shape == expected.shape and np.allclose(got, expected, rtol=1e-5, atol=1e-12)
        for j in range(2):
            assert list(np.argsort(got[:, j])) == list(np.argsort(expected[:, j]))
            assert len(set(got[:, j])) == 4  # no ties where there were none


def test_every_augmented_row_is_compared_with_the_strongest_long_tail_baseline():
    from benchmarks.experiment import versus_best_longtail
    from benchmarks.comparison import compare_settings
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 2)) < 0.4).astype(np.float32)
    noise = lambda: rng.random((60, 2))  # noqa: E731
    runs = {"baseline": [(noise(), np.full(2, 0.5))], "cb": [(noise(), np.full(2, 0.5))],
            "ldam-drw": [(0.8 * labels + 0.1, np.full(2, 0.5))],  # the strongest: near-perfect
            "+inpainting": [(0.3 * labels + 0.7 * noise(), np.full(2, 0.5))]}
    payload = {"findings": ["A", "B"], "head": ["A"], "tail": ["B"], "comparison": compare_settings(
        runs, labels, ["A", "B"], ["A"], ["B"], baseline="baseline", bootstrap=50)}
    versus = versus_best_longtail(payload, runs, labels, bootstrap=50)
    assert versus["baseline"] == "ldam-drw" and set(versus["tail_f1"]) == {"cb", "ldam-drw"}
    comparison = versus["comparison"]
    assert comparison["baseline"] == "ldam-drw" and list(comparison["settings"]) == ["ldam-drw", "+inpainting"]
    tail = comparison["settings"]["+inpainting"]["means"]["tail"]["f1_tuned"]
    assert tail["gain"] < 0 and tail["gain_ci95"][0] <= tail["gain"] <= tail["gain_ci95"][1]
    assert versus_best_longtail(payload, {s: runs[s] for s in ("baseline", "+inpainting")}, labels, 50) is None


def test_the_llm_row_asks_the_fake_messages_server_and_leaves_the_environment_as_it_was(monkeypatch):
    import os

    from benchmarks.experiment import llm_judge
    from tasks.knowledge import AnthropicJudge, LLMSettings
    from tasks.knowledge.decision import Question
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "the user's")
    notes: list[str] = []
    with llm_judge(["baseline", "+LKG-llm"], notes):
        assert os.environ["ANTHROPIC_BASE_URL"].startswith("http://127.0.0.1:")
        decision = AnthropicJudge(LLMSettings(max_retries=0)).decide(Question.of(["Effusion"], ["Edema"]),
                                                                      ["Effusion", "Edema"])
    assert decision.source == "llm" and decision.keep == ("Effusion",)
    assert "ANTHROPIC_BASE_URL" not in os.environ and os.environ["ANTHROPIC_API_KEY"] == "the user's"
    assert len(notes) == 1 and "1 requests" in notes[0]
    with llm_judge(["baseline", "+LKG"], notes):  # no anthropic-judged row: no server, no note
        assert "ANTHROPIC_BASE_URL" not in os.environ
    assert len(notes) == 1


def test_a_fine_tune_result_is_reused_only_for_the_same_inputs(tmp_path):
    from dataclasses import replace

    from benchmarks import paper
    from models.classifier import ClassifierConfig
    from models.training import TrainConfig
    from tasks.finetune import FinetuneSettings
    from tasks.pretrain import train_classifier
    dataset = str(tmp_path / "ph")
    ingest_phantom(dataset, 90, size=32, seed=3)
    classifier = train_classifier(dataset, str(tmp_path / "models"), ClassifierConfig("resnet18", 14, 32),
                                  TrainConfig(epochs=1))
    train, val, test = (load_tensors(dataset, splits=(s,)) for s in ("train", "val", "test"))
    options, folder = FinetuneSettings(epochs=1, seed=0), tmp_path / "finetune"
    first = paper.fine_tune("baseline", train, None, classifier, val, test, options, folder)
    assert not first.get("reused") and len(first["test_probs"]) == len(test)
    again = paper.fine_tune("baseline", train, None, classifier, val, test, options, folder)
    assert again["reused"] and again["test_probs"] == first["test_probs"] and again["thresholds"] == first["thresholds"]
    other = paper.fine_tune("baseline", train, None, classifier, val, test, replace(options, seed=1), folder)
    assert not other.get("reused") and len(list(folder.glob("*.json"))) == 2
    generated = load_tensors(dataset, splits=("train",))
    assert paper.finetune_key(classifier["id"], "augmented", options, generated) != \
        paper.finetune_key(classifier["id"], "augmented", options, None)


def test_a_separate_test_stream_replaces_the_test_split_only_with_the_same_labels(phantom, tmp_path):
    from benchmarks.paper import test_set

    own = test_set(phantom)
    assert len(own) and set(own.table.column("split").to_pylist()) == {"test"}
    other = str(tmp_path / "stream")
    ingest_phantom(other, 40, size=32, seed=4)
    held_out = test_set(phantom, other)
    assert len(held_out) == 40 and not set(held_out.sample_ids) & set(own.sample_ids)  # every row, other patients
    chexpert = str(tmp_path / "chexpert")
    ingest_phantom(chexpert, 10, size=32, seed=4, vocab="chexpert")
    with pytest.raises(ValueError, match="does not have the labels"):
        test_set(phantom, chexpert)


def _saved_run(dataset, seed, generator="dit-a"):
    """A run of one seed as benchmarks/experiment.py saves it, scored on ``dataset``'s test split."""
    from benchmarks.paper import test_set
    manifest, test = read_manifest(dataset), test_set(dataset)
    rng = np.random.default_rng(seed)
    k = len(manifest["labels"])
    return {"commit": f"c{seed}", "machine": {"cpu": "toy", "cores": 16, "gpu": "toy GPU"}, "part": "toy",
            "data": {"source": "toy", "normals": "toy normals"}, "seconds": 60.0, "command": "python -m benchmarks.experiment --seeds 0",
            "dataset": dataset, "test_dataset": None, "findings": manifest["labels"],
            "head": manifest["head_tail"]["head"], "tail": manifest["head_tail"]["tail"],
            "split": {"train": 0, "val": 0, "test": len(test)}, "test_sample_ids": test.sample_ids,
            "generator": {"id": generator}, "label_generator": None, "notes": [],
            "config": {"seeds": [seed], "settings": ["baseline", "ldam-drw", "+inpainting"], "bootstrap": 0,
                       "augment": {}},
            "per_seed": [{"seed": seed, "generated": {}, "finetune": {
                s: {"test_probs": rng.random((len(test), k)).tolist(), "thresholds": [0.5] * k}
                for s in ("baseline", "ldam-drw", "+inpainting")}}]}


def test_seeds_made_apart_are_joined_into_one_run_with_one_bootstrap(phantom, tmp_path, capsys):
    from benchmarks.experiment import join
    from benchmarks.experiment_results import load_saved, write_json
    folders = []
    for seed in (1, 0):
        folders.append(tmp_path / f"seed{seed}")
        folders[-1].mkdir()
        write_json(folders[-1], "toy", _saved_run(phantom, seed))
    join("toy", folders, tmp_path / "joined", bootstrap=30, note="Made apart.")
    assert "scored +inpainting (3/3 settings, 2 seeds" in capsys.readouterr().out  # progress of a long join
    joined = load_saved("toy", tmp_path / "joined")
    assert joined["config"]["seeds"] == [0, 1] and joined["config"]["bootstrap"] == 30
    assert [r["seed"] for r in joined["per_seed"]] == [0, 1] and joined["added"][0]["seeds"] == [1]
    gain = joined["comparison"]["settings"]["+inpainting"]["means"]["macro"]["auroc"]
    assert joined["comparison"]["bootstrap"]["resamples"] == 30 and gain["gain_ci95"] is not None
    assert joined["versus_best_longtail"]["baseline"] == "ldam-drw"
    report = (tmp_path / "joined" / "experiment_toy.md").read_text()
    assert "toy (16 cores, toy GPU)" in report and "Made apart." in report and "Seeds [1] added" in report
    other = tmp_path / "other"
    other.mkdir()
    write_json(other, "toy", _saved_run(phantom, 2, generator="dit-b"))
    with pytest.raises(SystemExit, match="generator differ"):
        join("toy", [folders[0], other], tmp_path / "refused", bootstrap=30)
    assert not (tmp_path / "refused").exists()
    with pytest.raises(SystemExit, match="no saved toy run"):
        join("toy", [folders[0], tmp_path / "seed0.log"], tmp_path / "refused", bootstrap=30)


def test_a_phantom_ingested_before_is_not_rendered_again(tmp_path, monkeypatch):
    from benchmarks import experiment
    uri = str(tmp_path / "p")
    experiment.ingest_once(uri, 20, 32, 5)
    assert len(existing_rows(uri, ["sample_id"])) == 20
    monkeypatch.setattr(experiment, "ingest_phantom", lambda *a, **k: pytest.fail("rendered again"))
    experiment.ingest_once(uri, 20, 32, 5)
    rendered = []
    monkeypatch.setattr(experiment, "ingest_phantom", lambda *a, **k: rendered.append(a))
    experiment.ingest_once(uri, 30, 32, 5)  # another size of stream: ingested
    assert rendered == [(uri, 30)]


def test_a_run_made_on_another_machine_finds_its_phantom_here_by_name_and_checks_the_images():
    from benchmarks.experiment import test_labels
    from benchmarks.paper import test_set
    from flows.settings import tailforge_home
    here = str(tailforge_home() / "bench" / "ph-12-s3")
    ingest_phantom(here, 12, size=32, seed=3)
    test = test_set(here)
    ids = list(reversed(test.sample_ids))
    run = {"part": "toy", "dataset": "/tmp/elsewhere/bench/ph-12-s3", "test_dataset": None, "test_sample_ids": ids}
    assert np.array_equal(test_labels(run), test.labels.numpy()[::-1])
    with pytest.raises(SystemExit, match="lacks 1 of the"):
        test_labels({**run, "test_sample_ids": [*ids[:-1], "not-this-image"]})
    with pytest.raises(SystemExit, match="is not on this machine"):
        test_labels({**run, "dataset": "/tmp/elsewhere/bench/ph-99-s3"})


def _means(tail_f1, tail_auroc, head_f1):
    """compare_settings-shaped means with these (gain, interval low, interval high)."""
    entry = lambda g: {"gain": g[0], "gain_ci95": [g[1], g[2]]}  # noqa: E731
    return {"tail": {"f1_tuned": entry(tail_f1), "auroc": entry(tail_auroc)}, "head": {"f1_tuned": entry(head_f1)}}


def test_the_regime_map_calls_a_win_only_on_the_issues_terms():
    from benchmarks.regime_map import regime_row, verdict
    assert verdict(_means((0.02, 0.001, 0.04), (0.01, 0.002, 0.02), (-0.005, -0.01, 0.0)))["wins"]
    assert not verdict(_means((0.02, -0.001, 0.04), (0.01, 0.002, 0.02), (0.0, -0.01, 0.01)))["wins"]  # F1 CI has 0
    assert not verdict(_means((0.02, 0.001, 0.04), (0.01, -0.002, 0.02), (0.0, -0.01, 0.01)))["wins"]  # AUROC
    assert not verdict(_means((0.02, 0.001, 0.04), (0.01, 0.002, 0.02), (-0.02, -0.03, 0.0)))["wins"]  # head drop
    won, lost = _means((0.02, 0.001, 0.04), (0.01, 0.002, 0.02), (0.0, -0.01, 0.01)), _means(
        (0.0, -0.01, 0.01), (0.01, 0.002, 0.02), (0.0, -0.01, 0.01))
    payload = {"commit": "c0ffee", "config": {"seeds": [0]}, "data": {"regime": {"tail_contrast": 0.5,
                                                                                  "tail_with_head": 0.9}},
               "versus_best_longtail": {"baseline": "cb",
                                        "comparison": {"settings": {"+inpainting+cb": {"means": won}}}},
               "versus_controls": {"+inpainting+cb": {"+copies+cb": lost}},
               "comparison": {"settings": {name: {"means": {"tail": {"f1_tuned": {"value": f1}, "auroc": {"value": au}}}}
                                           for name, f1, au in (("cb", 0.4, 0.85), ("+inpainting+cb", 0.45, 0.8))}}}
    row = regime_row(payload)
    assert row["against"]["cb"]["wins"] and not row["against"]["+copies+cb"]["wins"] and not row["wins_all"]
    assert row["tail"] == {"cb": {"f1_tuned": 0.4, "auroc": 0.85}, "+inpainting+cb": {"f1_tuned": 0.45, "auroc": 0.8}}
    assert regime_row({**payload, "versus_best_longtail": None}) is None


def test_staleness_counts_the_code_commits_since_each_result(tmp_path):
    import subprocess

    from benchmarks.staleness import ROOT, staleness

    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("needs the checkout's git history")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=ROOT, capture_output=True,
                           text=True).stdout.split()[0]
    (tmp_path / "now.json").write_text(json.dumps({"commit": head}))
    (tmp_path / "then.md").write_text(f"# A result\n\nCommit `{first[:7]}`, somewhere.\n")
    (tmp_path / "unnamed.json").write_text("{}")
    rows = {Path(r["result"]).name: r["code_commits_since"] for r in staleness(tmp_path)}
    assert rows["now.json"] == 0 and rows["then.md"] > 0 and "unnamed.json" not in rows


def test_the_paste_control_takes_donor_pixels_inside_the_mask_only():
    from benchmarks.fidelity import paste_fill
    image, donor = torch.zeros(1, 1, 24, 24), torch.ones(1, 1, 24, 24)
    mask = torch.zeros(1, 1, 24, 24)
    mask[..., 6:14, 8:18] = 1.0
    assert torch.equal(paste_fill(image, mask, donor), mask)
    with pytest.raises(ValueError):
        paste_fill(image, mask, donor[..., :10])


def test_the_shipped_generators_card_is_what_card_renders_from_its_record():
    """One card template for `make weights` and the GPU script: it re-renders the shipped 128 px
    card byte for byte from the committed record."""
    from benchmarks.train_normal_dit import card
    from models.dit import load_dit_config

    root = Path(__file__).resolve().parents[1]
    data = (root / "weights" / "normal_dit_128.safetensors").read_bytes()
    record = json.loads((root / "benchmarks" / "results" / "dit_real_128.json").read_text())
    train = record["settings"]["train"]
    text = card("normal_dit_128", load_dit_config(data), data, record["train_images"], train,
                f"{record['history']['seconds'] / 60:.0f} min on a 2-core CPU machine (AMD EPYC, no GPU), commit `4023bd6`",
                f"`python -m benchmarks.train_normal_dit --source real --size 128 --steps {train['steps']} --ship` "
                "(`make weights`)", record["fid_kid"], record["fidelity"]["ratio"],
                "benchmarks/results/dit_real_128_samples.png; real: dit_real_128_real.png")
    assert text == (root / "weights" / "normal_dit_128.md").read_text()


def test_what_a_gpu_run_carries_counts_tracked_untracked_and_carried_files_not_ignored_ones(tmp_path):
    import subprocess

    from benchmarks.gpu_carry import carried_bytes

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("ignored/\n.whl/\n")
    (tmp_path / "tracked.txt").write_bytes(b"x" * 100)
    subprocess.run(["git", "-C", str(tmp_path), "add", "tracked.txt", ".gitignore"], check=True)
    (tmp_path / "untracked.txt").write_bytes(b"x" * 10)
    for folder, size in (("ignored", 1000), (".whl", 7)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "f").write_bytes(b"x" * size)
    base = len("ignored/\n.whl/\n") + 100 + 10
    assert carried_bytes(tmp_path, ()) == base
    assert carried_bytes(tmp_path, (".whl",)) == base + 7
