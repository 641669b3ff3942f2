import math

import numpy as np
import pytest

from tasks.labels import (BlankPolicy, UncertainPolicy, UnknownLabelError, chexpert_vector, cross_map,
                          head_tail_split, parse_label_list, positive_counts, vocabulary)

PAPER_CHEXPERT_TAIL = {"Consolidation", "Enlarged Cardiomediastinum", "Lung Lesion", "Fracture",
                       "Pneumonia", "Pleural Other"}


def test_vocabularies_have_the_published_classes():
    nih, chx = vocabulary("nih"), vocabulary("chexpert")
    assert len(nih) == 14 and len(chx) == 13
    assert nih.normal_label == chx.normal_label == "No Finding"
    assert "No Finding" not in nih.findings and "No Finding" not in chx.findings
    assert vocabulary("mimic") == chx
    assert sum(nih.counts[f] for f in nih.findings) > nih.total - nih.counts["No Finding"]  # multi-label


def test_unknown_vocabulary_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of"):
        vocabulary("padchest")


def test_synonyms_map_per_source():
    nih = vocabulary("nih")
    assert nih.canonical("Infiltrate") == "Infiltration"  # NIH's box table spelling
    assert nih.canonical("Pleural Effusion") == "Effusion"
    assert vocabulary("chexpert").canonical("Effusion") == "Pleural Effusion"
    with pytest.raises(UnknownLabelError, match="Foo"):
        nih.canonical("Foo")


def test_cross_map_between_vocabularies():
    nih, chx = vocabulary("nih"), vocabulary("chexpert")
    forward = cross_map(nih, chx)
    assert forward["Effusion"] == ("Pleural Effusion", "same")
    assert forward["Pleural_Thickening"] == ("Pleural Other", "narrower")
    assert forward["Infiltration"] == ("Lung Opacity", "narrower")
    assert forward["Hernia"] == (None, "none")
    assert set(forward) == set(nih.findings)
    backward = cross_map(chx, nih)
    assert backward["Pleural Effusion"] == ("Effusion", "same")
    assert backward["Lung Opacity"] == (None, "none")  # only "same" relations invert


def test_parse_nih_label_list():
    nih = vocabulary("nih")
    vector = parse_label_list("Cardiomegaly|Emphysema", nih)
    assert vector.dtype == np.float32 and vector.sum() == 2
    assert nih.positives(vector) == ["Cardiomegaly", "Emphysema"]
    assert parse_label_list("No Finding", nih).sum() == 0
    for bad in ("", "Cardiomegaly|Foo", "No Finding|Mass"):
        with pytest.raises(UnknownLabelError):
            parse_label_list(bad, nih)


@pytest.mark.parametrize("uncertain,expected", [("ignore", math.nan), ("ones", 1.0), ("zeros", 0.0)])
def test_chexpert_uncertain_policy(uncertain, expected):
    chx = vocabulary("chexpert")
    row = {"Edema": "-1.0", "Cardiomegaly": "1.0", "Pneumonia": "0.0"}
    vector = chexpert_vector(row, chx, UncertainPolicy(uncertain))
    edema = vector[chx.index("Edema")]
    assert (math.isnan(edema) if math.isnan(expected) else edema == expected)
    assert vector[chx.index("Cardiomegaly")] == 1.0 and vector[chx.index("Pneumonia")] == 0.0
    assert math.isnan(vector[chx.index("Fracture")])  # blank -> NaN by default


def test_chexpert_blank_policy_and_no_finding_rule():
    chx = vocabulary("chexpert")
    assert (chexpert_vector({"Edema": "1"}, chx, blank=BlankPolicy.ZEROS).sum() == 1.0)
    normal = chexpert_vector({"No Finding": "1.0", "Support Devices": "1.0"}, chx)
    assert normal[chx.index("Support Devices")] == 1.0
    assert np.nansum(normal) == 1.0 and not np.isnan(normal).any()  # blanks of a normal row are 0
    with pytest.raises(ValueError, match="not one of"):
        chexpert_vector({"Edema": "2"}, chx)


def test_below_median_rule_reproduces_the_papers_six_chexpert_tail_classes():
    chx = vocabulary("chexpert")
    split = head_tail_split({f: chx.counts[f] for f in chx.findings}, chx)
    assert set(split.tail) == PAPER_CHEXPERT_TAIL
    assert len(split.head) == 7 and split.rule == "below-median-train-frequency"


def test_head_tail_from_labels_and_explicit_override():
    nih = vocabulary("nih")
    labels = np.zeros((40, 14), np.float32)
    for k in range(14):
        labels[: k + 1, k] = 1.0  # class k has k+1 positives
    labels[0, 0] = np.nan
    counts = positive_counts(labels, nih)
    assert counts[nih.findings[0]] == 0 and counts[nih.findings[13]] == 14
    split = head_tail_split(counts, nih)
    assert split.tail == nih.findings[:7] and split.head == nih.findings[7:]
    explicit = head_tail_split(counts, nih, ["Hernia", "Pleural Thickening"])
    assert explicit.tail == ("Pleural_Thickening", "Hernia") and explicit.rule == "explicit"
    assert explicit.from_json(explicit.to_json()) == explicit


def test_no_labelled_train_rows_make_no_head_and_no_tail():
    """Issue 15: `info` on an empty dataset listed every class as head."""
    nih = vocabulary("nih")
    split = head_tail_split({}, nih)
    assert split.head == () and split.tail == () and split.rule.startswith("none")
