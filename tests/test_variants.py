"""Several generated images per parent (augment.variants): more rows from the same parents,
each with its own seed, and variant 0 exactly the row a run without variants makes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tasks.augment import AugmentSettings, prepare
from tasks.dataset import read_manifest
from tasks.ingest import ingest_phantom
from tasks.knowledge import NoGuidanceJudge, plan


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("variants") / "phantom")
    ingest_phantom(uri, 200, size=32, seed=4)
    return uri


def test_variants_add_rows_with_their_own_seeds_and_keep_the_first(phantom, tmp_path):
    manifest = read_manifest(phantom)
    _, decisions = plan(phantom, str(tmp_path / "d.duckdb"), NoGuidanceJudge())
    no_gate = AugmentSettings(min_class_auroc=0)  # no classifier here (tests/test_classifier_gate.py)
    one = prepare(phantom, str(tmp_path / "one"), manifest, decisions, {"id": "c" * 64}, "g" * 64, no_gate)
    three = prepare(phantom, str(tmp_path / "three"), manifest, decisions, {"id": "c" * 64}, "g" * 64,
                    replace(no_gate, variants=3))
    assert len(one.candidates) >= 5 and len(three.candidates) == 3 * len(one.candidates)
    assert {c.output_id for c in one.candidates} < {c.output_id for c in three.candidates}
    assert len({c.seed for c in three.candidates}) == len(three.candidates)
    parents = {}
    for c in three.candidates:
        parents.setdefault(c.parent_id, []).append(c)
    assert all(len(v) == 3 and len({(c.remove, c.decision_id) for c in v}) == 1 for v in parents.values())
    assert one.recipe == three.recipe  # a rerun with more variants adds to the same output
    with pytest.raises(ValueError, match="variants must be at least 1"):
        AugmentSettings(variants=0)
