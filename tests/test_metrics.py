"""Per-class metrics, thresholds, bootstrap intervals and head/tail means (models/metrics.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from benchmarks.comparison import compare_settings
from models.metrics import (METRICS, auroc, average_precision, evaluate, f1_per_class,
                            tune_thresholds, tune_thresholds_with_flags)

NAN = np.nan


def _random_split(n=212, k=14, seed=0):
    """Noisy but informative scores; rarer classes to the left, 10% unknown labels."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, k)) < np.linspace(0.05, 0.5, k)).astype(float)
    labels[rng.random((n, k)) < 0.1] = NAN
    probs = np.clip(0.35 * np.nan_to_num(labels) + 0.65 * rng.random((n, k)), 0, 1)
    return probs, labels


def test_f1_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.6], [0.3, 0.7], [0.2, 0.4]])
    labels = np.array([[1, 0], [0, 1], [1, NAN], [0, 1]])
    # class 0 at 0.5: TP 1, FP 1, FN 1 -> 2/4. class 1 (row 3 unknown): TP 1, FP 0, FN 1 -> 2/3
    assert f1_per_class(probs, labels) == pytest.approx([0.5, 2 / 3])
    # per-class thresholds, positive when prob >= threshold: class 0 at 0.3 -> TP 2, FP 1 -> 4/5
    assert f1_per_class(probs, labels, [0.3, 0.1]) == pytest.approx([0.8, 2 * 2 / (2 * 2 + 1)])


def test_tuned_threshold_by_hand():
    probs = np.array([[0.9], [0.8], [0.3], [0.2]])
    labels = np.array([[1], [0], [1], [0]])
    # cuts 0.9 / 0.8 / 0.3 / 0.2 give F1 2/3, 1/2, 4/5, 2/3: the best cut is 0.3; midpoint to 0.2
    assert tune_thresholds(probs, labels) == pytest.approx([0.25])
    assert f1_per_class(probs, labels, tune_thresholds(probs, labels)) == pytest.approx([0.8])


def test_tuning_ignores_nan_and_flags_classes_without_positives():
    probs = np.array([[0.9, 0.7, 0.2], [0.1, 0.6, 0.9], [0.4, 0.2, 0.3]])
    labels = np.array([[1, 0, NAN], [NAN, 0, 1], [0, 0, NAN]])
    thresholds, flagged = tune_thresholds_with_flags(probs, labels)
    assert flagged.tolist() == [False, True, False]
    assert thresholds[1] == 0.5
    assert thresholds[0] == pytest.approx(0.65)  # 0.9 positive, 0.4 negative; 0.1 unknown
    assert thresholds[2] == pytest.approx(0.45)  # the only known entry: 0.9, everything below kept out


def test_tuned_f1_is_never_below_f1_at_half_on_val():
    probs, labels = _random_split(seed=3)
    tuned = f1_per_class(probs, labels, tune_thresholds(probs, labels))
    assert np.all(tuned >= f1_per_class(probs, labels) - 1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_ap_and_auroc_agree_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 80))
    labels = (rng.random(n) < 0.3).astype(float)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(n), 1 + seed % 3)  # coarse rounding makes ties
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_f1_agrees_with_sklearn():
    probs, labels = _random_split(seed=1)
    mine = f1_per_class(probs, labels, 0.4)
    for k in range(labels.shape[1]):
        known = ~np.isnan(labels[:, k])
        assert mine[k] == pytest.approx(f1_score(labels[known, k], probs[known, k] >= 0.4))


def test_undefined_single_class_metrics_are_nan():
    assert np.isnan(auroc([0.2, 0.8], [0, 0])) and np.isnan(average_precision([0.2, 0.8], [NAN, 1]))


def test_evaluate_reports_classes_without_positives_or_negatives_explicitly():
    probs, labels = _random_split(n=60, k=4, seed=2)
    labels[:, 1] = np.where(np.isnan(labels[:, 1]), NAN, 0)  # no positives
    labels[:, 2] = 1.0  # no negatives
    names = ["a", "b", "c", "d"]
    report = evaluate(probs, labels, names, head=["a", "b"], tail=["c", "d"], bootstrap=50)
    assert report["classes"]["b"]["status"] == "no_positives"
    assert report["classes"]["c"]["status"] == "no_negatives"
    for name in ("b", "c"):
        entry = report["classes"][name]
        assert all(entry[m] is None for m in METRICS) and all(v is None for v in entry["ci95"].values())
    assert report["excluded"] == {"b": "no_positives", "c": "no_negatives"}
    assert report["means"]["head"]["classes"] == ["a"] and report["means"]["head"]["excluded"] == {"b": "no_positives"}
    assert report["means"]["tail"]["classes"] == ["d"]
    assert report["means"]["macro"]["ap"] == pytest.approx(np.mean([report["classes"][c]["ap"] for c in "ad"]))


def test_evaluate_is_plain_json_and_means_use_the_right_classes():
    probs, labels = _random_split()
    names = [f"c{k}" for k in range(14)]
    head, tail = names[7:], names[:7]
    report = evaluate(probs, labels, names, head=head, tail=tail, thresholds=np.full(14, 0.45), bootstrap=200)
    json.dumps(report, allow_nan=False)  # no NaN, no numpy types
    classes = report["classes"]
    for group, members in (("head", head), ("tail", tail), ("macro", names)):
        means = report["means"][group]
        assert means["classes"] == members
        for m in METRICS:
            assert means[m] == pytest.approx(np.mean([classes[c][m] for c in members]))
    assert report["means"]["head"]["ap"] > report["means"]["tail"]["ap"]  # head classes are more frequent here
    entry = classes["c3"]
    assert entry["positives"] + entry["negatives"] + entry["unknown"] == 212
    assert entry["f1_at_0.5"] == pytest.approx(f1_per_class(probs, labels)[3])
    assert entry["f1_tuned"] == pytest.approx(f1_per_class(probs, labels, 0.45)[3])


def test_evaluate_without_thresholds_or_bootstrap():
    probs, labels = _random_split(n=40, k=3)
    report = evaluate(probs, labels, ["a", "b", "c"], bootstrap=0)
    assert report["thresholds"] is None and report["means"]["macro"]["f1_tuned"] is None
    assert report["classes"]["a"]["ci95"]["ap"] is None and report["means"]["head"]["ap"] is None


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_data():
    names = [f"c{k}" for k in range(4)]
    widths = []
    for n in (100, 1600):
        probs, labels = _random_split(n=n, k=4, seed=5)
        report = evaluate(probs, labels, names, bootstrap=300, seed=1)
        for entry in [*report["classes"].values(), report["means"]["macro"]]:
            for m in ("f1_at_0.5", "ap", "auroc"):
                lo, hi = entry["ci95"][m]
                assert lo <= entry[m] <= hi, (m, lo, entry[m], hi)
        lo, hi = report["means"]["macro"]["ci95"]["auroc"]
        widths.append(hi - lo)
    assert widths[1] < 0.5 * widths[0]
    again = evaluate(*_random_split(n=1600, k=4, seed=5), names, bootstrap=300, seed=1)
    assert again["means"]["macro"]["ci95"] == report["means"]["macro"]["ci95"]  # seeded


def test_evaluate_rejects_bad_inputs():
    probs, labels = _random_split(n=10, k=2)
    with pytest.raises(ValueError, match="not in class_names"):
        evaluate(probs, labels, ["a", "b"], head=["x"])
    with pytest.raises(ValueError, match="1, 0 or NaN"):
        evaluate(probs, labels * 2 - 1, ["a", "b"])
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        evaluate(probs[:, :1], labels, ["a", "b"])
    with pytest.raises(ValueError, match="2 distinct names"):
        evaluate(probs, labels, ["a"])


# ---------------------------------------------------------------- settings x seeds, paired gains
NAMES = [f"c{j}" for j in range(14)]


def test_compare_one_seed_equals_evaluate():
    probs, labels = _random_split(seed=3)
    thresholds = tune_thresholds(*_random_split(seed=4))
    single = evaluate(probs, labels, NAMES, NAMES[:7], NAMES[7:], thresholds=thresholds, bootstrap=0)
    compared = compare_settings({"only": [(probs, thresholds)]}, labels, NAMES, NAMES[:7], NAMES[7:], bootstrap=50)
    row = compared["settings"]["only"]
    for m in METRICS:
        assert row["means"]["macro"][m]["value"] == pytest.approx(single["means"]["macro"][m])
        assert row["means"]["tail"][m]["value"] == pytest.approx(single["means"]["tail"][m])
        assert row["classes"]["c5"][m]["value"] == pytest.approx(single["classes"]["c5"][m])
        assert row["means"]["macro"][m]["seed_sd"] is None and "gain" not in row["means"]["macro"][m]
    lo, hi = row["means"]["macro"]["auroc"]["ci95"]
    assert lo <= row["means"]["macro"]["auroc"]["value"] <= hi


def test_compare_means_over_seeds_and_pairs_the_gains():
    probs, labels = _random_split(seed=5)
    rng = np.random.default_rng(0)
    noise = [np.clip(probs + rng.normal(0, 0.05, probs.shape), 0, 1) for _ in range(3)]
    better = [np.clip(0.6 * np.nan_to_num(labels) + 0.4 * p, 0, 1) for p in noise]  # clearly more informative
    runs = {"base": [(p, None) for p in noise], "same": [(p, None) for p in noise], "better": [(p, None) for p in better]}
    out = compare_settings(runs, labels, NAMES, NAMES[:7], NAMES[7:], baseline="base", bootstrap=200)
    per_seed = [evaluate(p, labels, NAMES, bootstrap=0)["means"]["macro"]["ap"] for p in noise]
    base = out["settings"]["base"]["means"]["macro"]["ap"]
    assert base["value"] == pytest.approx(np.mean(per_seed))
    assert base["seed_sd"] == pytest.approx(np.std(per_seed, ddof=1))
    same = out["settings"]["same"]["means"]["macro"]["ap"]
    assert same["gain"] == 0 and same["gain_ci95"] == [0.0, 0.0]  # identical runs: the pairing cancels exactly
    assert same["gain_seed_sd"] == 0.0
    gain = out["settings"]["better"]["means"]["tail"]["auroc"]
    assert gain["gain"] > 0.1 and gain["gain_ci95"][0] > 0  # a real improvement's interval excludes 0
    assert out["settings"]["base"]["means"]["macro"]["f1_tuned"] is None  # no thresholds given


def test_compare_leaves_out_undefined_classes_and_checks_inputs():
    probs, labels = _random_split(seed=6)
    labels[:, 0] = 0.0  # no positives
    out = compare_settings({"a": [(probs, None)]}, labels, NAMES, bootstrap=10)
    assert out["excluded"] == {"c0": "no_positives"} and "c0" not in out["settings"]["a"]["classes"]
    assert "c0" not in out["groups"]["macro"]
    with pytest.raises(ValueError, match="baseline"):
        compare_settings({"a": [(probs, None)]}, labels, NAMES, baseline="b")
    with pytest.raises(ValueError, match="at least one seed"):
        compare_settings({"a": []}, labels, NAMES)


def test_compare_group_intervals_use_resamples_where_every_class_is_defined():
    probs, labels = _random_split(n=120, seed=7)
    labels[:, 1] = 0.0
    labels[5, 1] = 1.0  # one positive: undefined in about a third of the resamples
    out = compare_settings({"a": [(probs, None)]}, labels, NAMES, NAMES[:7], NAMES[7:], bootstrap=300)
    used = out["bootstrap"]["group_resamples_used"]
    assert 150 < used["head"] < 250 and used["tail"] == 300  # class 1 is head; tail classes are common
    for group in ("macro", "head", "tail"):
        e = out["settings"]["a"]["means"][group]["auroc"]
        assert e["ci95"][0] <= e["value"] <= e["ci95"][1]
