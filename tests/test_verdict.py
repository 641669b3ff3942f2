"""The removal check that decides whether a generated row is accepted."""

import numpy as np
import torch

from models.masks import MaskResult
from tasks.augment import Candidate, totals, verdict
from tasks.augment.batch import _mask_reason
from tasks.augment.verdict import _by_class

FINDINGS = ["Effusion", "Hernia", "Mass"]
CUT = [0.5, 0.3, 0.4]


def _v(before, after, remove=("Effusion",), tail=("Hernia",), quality=0.0):
    return verdict(remove, list(tail), FINDINGS, np.array(before), np.array(after), CUT, 0.1, quality, 3.0)


def test_accepted_only_when_removed_class_is_gone_and_tail_kept():
    assert _v([0.9, 0.6, 0.1], [0.2, 0.55, 0.1]) == "ok"
    assert _v([0.9, 0.6, 0.1], [0.7, 0.6, 0.1]).startswith("removal_unverified: Effusion")
    assert _v([0.9, 0.6, 0.1], [0.2, 0.25, 0.1]).startswith("tail_lost: Hernia")  # below its cut and dropped 0.35
    assert _v([0.9, 0.6, 0.1], [0.2, 0.52, 0.1]) == "ok"  # dropped 0.08: within the margin, still above its cut
    assert _v([0.9, 0.2, 0.1], [0.2, 0.05, 0.1]) == "ok"  # a tail class the classifier never called is not judged
    assert _v([0.9, 0.6, 0.1], [0.2, 0.6, 0.1], quality=7.5).startswith("out_of_distribution")


def test_acceptance_per_class_and_totals():
    per = _by_class([("Effusion",), ("Effusion", "Mass")], ["ok", "removal_unverified: Mass p=0.50 >= 0.40"])
    assert per == {"Effusion": [2, 1], "Mass": [1, 0]}
    batch = {"written": 2, "accepted": 1, "model_seconds": 1.0, "quarantined": {"mask_empty": 1},
             "rejected": {"removal_unverified": 1}, "by_class": per}
    summed = totals([batch, batch])
    assert summed["by_class"] == {"Effusion": [4, 2], "Mass": [2, 0]}
    assert summed["rejected"] == {"removal_unverified": 2} and summed["quarantined"] == {"mask_empty": 2}


def test_a_mask_left_empty_by_the_findings_kept_says_which_they_are():
    c = Candidate("out", "parent", "shard", ("Effusion",), (), "decision", 0)
    kept = torch.tensor([0.0, 1.0, 1.0])
    reason = _mask_reason(c, MaskResult(np.zeros((4, 4), bool), "on_kept", 0.001), FINDINGS, kept)
    assert "Effusion" in reason and "(Hernia, Mass)" in reason and "augment.mask.protect" in reason
    assert _mask_reason(c, MaskResult(np.zeros((4, 4), bool), "too_large", 0.4), FINDINGS, kept) == \
        "CAM mask for Effusion is too_large (area 0.400)"
