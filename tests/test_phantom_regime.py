"""The phantom's regimes (tasks/phantom/regime.py): tail conspicuity and how often a tail finding
has a head finding beside it change the abnormal films only, as stated, and a row's source URI
re-renders its own regime."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.phantom_truth import _replay
from tasks.dataset import existing_rows, read_manifest
from benchmarks.experiment import phantom_ingested
from tasks.ingest import ingest_phantom
from tasks.labels import vocabulary
from tasks.phantom import Regime, phantom_images, render
from tasks.phantom.regime import draw_labels, split_source_uri, tail_findings
from tasks.images import decode_png

NIH = vocabulary("nih")
FAINT, TOGETHER = Regime(tail_contrast=0.5), Regime(tail_with_head=0.9)


def test_the_tail_is_the_published_rarer_half():
    assert tail_findings(NIH) == {"Cardiomegaly", "Edema", "Emphysema", "Fibrosis", "Hernia", "Pleural_Thickening",
                                  "Pneumonia"}


def test_default_regime_draws_the_phantom_as_before():
    plain, default = phantom_images(30, size=32, seed=3), phantom_images(30, size=32, seed=3, regime=Regime())
    for a, b in zip(plain, default):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)


@pytest.mark.parametrize("regime", [FAINT, TOGETHER])
def test_a_regime_changes_abnormal_films_only(regime):
    base, other = list(phantom_images(80, size=32, seed=7)), list(phantom_images(80, size=32, seed=7, regime=regime))
    normals = [i for i, item in enumerate(base) if not item.labels.any()]
    assert len(normals) > 20
    for i in normals:  # the same normal images: one normal-image generator serves every regime
        assert np.array_equal(base[i].image, other[i].image) and not other[i].labels.any()
    assert any(not np.array_equal(base[i].image, other[i].image) for i in range(80) if i not in normals)


def test_tail_contrast_scales_the_tail_finding_and_nothing_else():
    for patient in range(4):
        images = {}
        for contrast in (0.5, 1.0):
            for findings in (["Effusion", "Edema"], ["Effusion"]):
                image, masks = render(NIH.vector(findings), NIH, 64, np.random.default_rng([9, patient]), contrast)
                images[contrast, len(findings)] = image.astype(np.int16), masks
        # the head finding alone is drawn the same whatever the tail's contrast
        assert np.array_equal(images[0.5, 1][0], images[1.0, 1][0])
        faint = np.abs(images[0.5, 2][0] - images[0.5, 1][0]).sum()
        full = np.abs(images[1.0, 2][0] - images[1.0, 1][0]).sum()
        assert 0.3 * full < faint < 0.7 * full  # about half the visible change
        assert images[0.5, 2][1]["Edema"].sum() <= images[1.0, 2][1]["Edema"].sum()


def test_tail_with_head_sets_the_share_and_keeps_the_tail():
    head = [NIH.index(f) for f in NIH.findings if f not in tail_findings(NIH)]
    tail = [NIH.index(f) for f in tail_findings(NIH)]
    draws = {}
    for share in (None, 0.1, 0.9):
        regime = Regime(tail_with_head=share)  # one generator per film, as the stream draws them
        draws[share] = np.stack([draw_labels(np.random.default_rng([0, i]), NIH, regime) for i in range(20_000)])
    for share in (0.1, 0.9):
        labels = draws[share]
        with_tail = labels[:, tail].any(axis=1)
        assert abs(labels[with_tail][:, head].any(axis=1).mean() - share) < 0.02
        # tail findings and normal films are as the label model draws them
        assert np.array_equal(labels[:, tail], draws[None][:, tail])
        assert np.array_equal(labels.any(axis=1), draws[None].any(axis=1))


@pytest.mark.parametrize("text", ["contrast=2", "tail_contrast", "tail_contrast=x", "tail_contrast=0",
                                  "tail_with_head=1.5", "tail_contrast=nan"])
def test_a_bad_regime_is_refused_by_name(text):
    with pytest.raises(ValueError, match="phantom regime"):
        Regime.parse(text)


def test_a_regime_round_trips_through_its_text():
    regime = Regime.parse("tail_contrast=0.5,tail_with_head=0.9")
    assert regime == Regime(0.5, 0.9) and Regime.parse(regime.query()) == regime
    assert Regime().query() == "" and Regime().suffix() == ""
    assert regime.suffix() == "-tail_contrast0.5-tail_with_head0.9"


def test_an_ingested_regime_is_named_and_its_rows_render_again(tmp_path):
    uri = str(tmp_path / "faint")
    ingest_phantom(uri, 24, size=32, seed=4, regime=FAINT)
    assert read_manifest(uri)["source"]["regime"] == {"tail_contrast": 0.5, "tail_with_head": None}
    assert phantom_ingested(uri, 24, size=32, seed=4, regime=FAINT)
    assert not phantom_ingested(uri, 24, size=32, seed=4)  # the default regime is other images
    rows = existing_rows(uri, ["source_uri", "image", "labels"]).to_pylist()
    assert all(r["source_uri"].endswith("?tail_contrast=0.5") for r in rows)
    assert split_source_uri(rows[0]["source_uri"])[2] == FAINT
    for row in rows:  # lineage is enough to draw the same film again
        again = _replay(row["source_uri"], np.array(row["labels"], dtype=np.float32), "nih", 32)
        assert np.array_equal(np.rint(again * 255).astype(np.uint8), decode_png(row["image"]))
