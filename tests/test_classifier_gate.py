"""The classifier gate before augment (tasks/classifier_gate.py): a head class the classifier
cannot tell apart on val is kept, not removed, and the candidates say so."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.augment import AugmentSettings, build_candidates, recipe_id
from tasks.classifier_gate import MIN_POSITIVES, judge
from tasks.dataset import read_manifest
from tasks.ingest import ingest_phantom
from tasks.knowledge import NoGuidanceJudge, plan


def test_a_class_ranked_at_chance_is_weak_and_a_rare_one_unjudged():
    rng = np.random.default_rng(0)
    truth = np.zeros((200, 3), dtype=np.float32)
    truth[:80, 0] = truth[:80, 1] = 1.0
    truth[:MIN_POSITIVES - 1, 2] = 1.0
    probs = np.stack([truth[:, 0] * 0.6 + 0.2, rng.random(200), rng.random(200)], axis=1)
    report = judge(probs, truth, ["sharp", "blind", "rare"], ["sharp", "blind", "rare"], 0.7)
    assert report["val_auroc"]["sharp"] == 1.0 and "sharp" not in report["weak"]
    assert list(report["weak"]) == ["blind"] and report["weak"]["blind"].startswith("val AUROC 0.")
    assert report["unjudged"] == {"rare": f"{MIN_POSITIVES - 1} val positives (< {MIN_POSITIVES})"}
    everyone = np.ones((20, 1), dtype=np.float32)  # no negatives: nothing to rank
    assert judge(np.full((20, 1), 0.9), everyone, ["all"], ["all"], 0.7)["unjudged"] == {"all": "no val negatives"}


def test_the_setting_is_checked():
    with pytest.raises(ValueError, match="min_class_auroc"):
        AugmentSettings(min_class_auroc=1.2)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gate")
    uri = str(folder / "phantom")
    ingest_phantom(uri, 200, size=32, seed=4)
    manifest = read_manifest(uri)
    _, decisions = plan(uri, str(folder / "d.duckdb"), NoGuidanceJudge())
    return uri, manifest, decisions


def test_gated_classes_are_kept_and_only_the_rows_they_touch_change(planned):
    uri, manifest, decisions = planned
    recipe = recipe_id(AugmentSettings(), "c" * 64, "g" * 64)
    args = (uri, manifest["labels"], manifest["head_tail"]["head"], manifest["head_tail"]["tail"], decisions, recipe)
    every = build_candidates(*args)
    weak = max({r for c in every for r in c.remove}, key=lambda r: sum(r in c.remove for c in every))
    gated = build_candidates(*args, not_removed=frozenset({weak}))
    assert all(weak not in c.remove for c in gated)
    untouched = {c.output_id: c for c in every if weak not in c.remove}
    assert {c.output_id: c for c in gated if c.output_id in untouched} == untouched  # same ids, same rows
    lost = [c for c in every if weak in c.remove]
    kept_others = [c for c in lost if len(c.remove) > 1]
    assert len(gated) == len(untouched) + len(kept_others)  # a row left with nothing to remove is dropped
    changed = [c for c in gated if c.output_id not in untouched]
    assert changed and all(weak in c.keep and c.output_id not in {x.output_id for x in lost} for c in changed)
