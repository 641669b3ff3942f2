"""An augment that produced 0 samples (issue 12, defect 5): fine-tune runs the baseline only,
and the report says why, instead of failing with "... has no samples"."""

import logging
import shutil

import pytest

from models.classifier import ClassifierConfig
from models.training import TrainConfig
from tasks import finetune as work
from tasks import store
from tasks.dataset import finish_manifest, read_manifest
from tasks.ingest import ingest_phantom
from tasks.pretrain import train_classifier
from tasks.report import write_report


@pytest.fixture(scope="module")
def empty_run(tmp_path_factory):
    """A phantom dataset, a tiny classifier, and an augment output with a manifest and no samples."""
    root = tmp_path_factory.mktemp("empty-augment")
    dataset, augmented = str(root / "ph"), str(root / "run" / "augmented")
    ingest_phantom(dataset, 120, size=32, seed=2)
    classifier = train_classifier(dataset, str(root / "models"), ClassifierConfig("resnet18", 14, 32),
                                  TrainConfig(epochs=1))
    manifest = read_manifest(dataset)
    finish_manifest(augmented, name="augmented", kind="augmented", vocab_name="nih", image_size=32,
                    source={"kind": "augment"},
                    run_id="run-empty", explicit_tail=manifest["head_tail"]["tail"])
    return {"root": root, "dataset": dataset, "augmented": augmented, "classifier": classifier}


def test_settings_to_run_without_generated_samples_or_with_a_pil_schedule_that_adds_none():
    every = work.FinetuneSettings()
    assert work.settings_to_run(every, 12) == (("baseline", "augmented", "pil"), {})
    run, skipped = work.settings_to_run(every, 0)
    assert run == ("baseline",) and set(skipped) == {"augmented", "pil"}
    assert work.settings_to_run(work.FinetuneSettings(settings=("pil",)), 0)[0] == ("baseline",)
    for never in (work.FinetuneSettings(epochs=1), work.FinetuneSettings(beta=0.0)):  # epoch 0 adds 1 - e^0 = 0
        run, skipped = work.settings_to_run(never, 12)
        assert run == ("baseline", "augmented") and list(skipped) == ["pil"]
        assert "would be the baseline again" in skipped["pil"] and work.skip_warnings(skipped) == [skipped["pil"]]
    assert work.settings_to_run(work.FinetuneSettings(epochs=2, beta=0.5), 12)[0][-1] == "pil"  # epoch 1 adds 4
    # enough epochs, too few samples (seen: 1 accepted sample, 5 epochs, advice to use 2 epochs)
    run, skipped = work.settings_to_run(work.FinetuneSettings(epochs=5, beta=0.5), 1)
    assert "pil" not in run and "under one sample: that takes at least 2 accepted samples" in skipped["pil"]
    assert "use at least 2 epochs" not in skipped["pil"]


def test_empty_augment_gives_a_baseline_only_finetune_and_a_report_that_says_so(empty_run, caplog):
    assert work.load_generated(empty_run["augmented"], accepted_only=True) is None
    settings = work.FinetuneSettings(epochs=1, bootstrap=10)
    with caplog.at_level(logging.WARNING, logger="tasks.finetune"):
        result = work.finetune(empty_run["dataset"], empty_run["augmented"], empty_run["classifier"]["uri"], settings)
    assert set(result["results"]) == {"baseline"} and result["generated"] == 0
    assert set(result["skipped"]) == {"augmented", "pil"} and result["warnings"] == [work.NO_GENERATED]
    assert "only the baseline" in caplog.text

    report_uri = str(empty_run["root"] / "run" / "report")
    written = write_report(report_uri, result, empty_run["augmented"], empty_run["dataset"], {"generated": 0})
    assert "**Warning**: no generated samples" in written["markdown"]
    assert [r["setting"] for r in written["rows"]] == ["baseline"]
    assert store.exists(written["uris"]["f1_chart"]) and "samples" not in written["uris"]


def test_each_dataset_is_decoded_once_per_run(empty_run, monkeypatch, tmp_path):
    """The flow runs one task per setting and looks at the generated set first: the data is
    decoded once for all of them (issue 13), and again only when the dataset changes."""
    calls = []

    def counting(uri, *args, **kwargs):
        calls.append((uri, kwargs.get("splits")))
        return real(uri, *args, **kwargs)

    real = work.load_tensors
    monkeypatch.setattr(work, "load_tensors", counting)
    work._decoded_dataset.cache_clear()
    settings = work.FinetuneSettings(epochs=1, bootstrap=10, settings=("baseline",))
    work.load_data(empty_run["dataset"], empty_run["augmented"], True)  # the flow's look at the generated set
    for _ in range(3):  # one task per setting
        work.finetune(empty_run["dataset"], empty_run["augmented"], empty_run["classifier"]["uri"], settings)
    assert sorted(calls, key=str) == sorted([(empty_run["dataset"], ("train",)), (empty_run["dataset"], ("val",)),
                                             (empty_run["dataset"], ("test",))], key=str)
    grown = str(tmp_path / "grown")
    shutil.copytree(empty_run["dataset"], grown)
    work.load_data(grown, None, True)
    ingest_phantom(grown, 130, size=32, seed=2)  # ten more images: new shards, decoded again
    work.load_data(grown, None, True)
    work.load_data(grown, None, True)
    assert len(calls) == 9
