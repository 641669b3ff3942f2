"""The built-in synthetic chest phantom (tasks/phantom/)."""

from __future__ import annotations

import math
import os
from functools import lru_cache

import numpy as np
import pytest

from tasks.labels import vocabulary
from tasks.phantom import stream
from tasks.phantom.stream import _image
from tasks.phantom import (
    CO_OCCURRENCE,
    LESION_KIND,
    MASK_THRESHOLD,
    PhantomImage,
    phantom_images,
    render,
    sample_labels,
)

VOCABS = ("nih", "chexpert")
ALL_FINDINGS = [(v, f) for v in VOCABS for f in vocabulary(v).findings]


def _same(a: PhantomImage, b: PhantomImage) -> bool:
    return (
        a.index == b.index
        and a.patient_id == b.patient_id
        and a.split == b.split
        and a.image.tobytes() == b.image.tobytes()
        and a.labels.tobytes() == b.labels.tobytes()
        and a.lesion_masks.keys() == b.lesion_masks.keys()
        and all(np.array_equal(a.lesion_masks[k], b.lesion_masks[k]) for k in a.lesion_masks)
    )


# ---------------------------------------------------------------------------------------------
# determinism


def test_same_seed_gives_identical_bytes():
    first = list(phantom_images(8, size=64, seed=3))
    second = list(phantom_images(8, size=64, seed=3))
    assert all(_same(a, b) for a, b in zip(first, second, strict=True))


def test_different_seed_gives_different_images():
    a = list(phantom_images(6, size=64, seed=3))
    b = list(phantom_images(6, size=64, seed=4))
    assert all(x.image.tobytes() != y.image.tobytes() for x, y in zip(a, b))
    assert [x.patient_id for x in a] != [y.patient_id for y in b]


def test_a_shorter_stream_is_a_prefix_of_a_longer_one():
    short = list(phantom_images(10, size=48, seed=11, vocab="chexpert"))
    long = list(phantom_images(25, size=48, seed=11, vocab="chexpert"))
    assert len(short) == 10 and len(long) == 25
    assert all(_same(a, b) for a, b in zip(short, long[:10]))


def test_rendering_in_worker_processes_gives_the_same_stream_in_order():
    one = list(phantom_images(21, size=48, seed=11, vocab="chexpert"))
    pooled = list(phantom_images(21, size=48, seed=11, vocab="chexpert", workers=3))
    assert [x.index for x in pooled] == list(range(21))
    assert all(_same(a, b) for a, b in zip(one, pooled, strict=True))
    with pytest.raises(ValueError, match="workers"):
        phantom_images(3, workers=0)


def _dies_at_five(i, **kwargs):
    if i == 5 and os.getpid() != _PARENT:
        os._exit(3)
    return _image(i, **kwargs)


_PARENT = os.getpid()


def test_a_worker_that_dies_leaves_the_stream_whole_and_in_order(monkeypatch):
    one = list(phantom_images(21, size=32, seed=4))
    monkeypatch.setattr(stream, "_image", _dies_at_five)
    with pytest.warns(UserWarning, match="worker process died"):
        pooled = list(phantom_images(21, size=32, seed=4, workers=3))
    assert [x.index for x in pooled] == list(range(21))
    assert all(_same(a, b) for a, b in zip(one, pooled, strict=True))


def test_one_image_depends_only_on_seed_and_index():
    rng = np.random.default_rng([5, 7])
    labels = sample_labels(rng, vocabulary("nih"))
    item = list(phantom_images(8, size=64, seed=5))[7]
    assert np.array_equal(item.labels, labels)


# ---------------------------------------------------------------------------------------------
# shapes and contract


@pytest.mark.parametrize("vocab_name", VOCABS)
@pytest.mark.parametrize("size", [32, 64, 100])
def test_shapes_dtypes_and_ids(vocab_name, size):
    vocab = vocabulary(vocab_name)
    items = list(phantom_images(12, size=size, seed=2, vocab=vocab_name))
    assert [it.index for it in items] == list(range(12))
    for it in items:
        assert it.patient_id == f"phantom-2-{it.index:06d}"
        assert it.split in {"train", "val", "test"}
        assert it.image.shape == (size, size) and it.image.dtype == np.uint8
        assert it.labels.shape == (len(vocab.findings),) and it.labels.dtype == np.float32
        assert set(np.unique(it.labels)) <= {0.0, 1.0}
        assert list(it.lesion_masks) == vocab.positives(it.labels)
        for mask in it.lesion_masks.values():
            assert mask.shape == (size, size) and mask.dtype == bool
            assert mask.any()
    # the images use the intensity range of a film, not a constant
    stack = np.stack([it.image for it in items])
    assert stack.min() < 40 and stack.max() > 200


def test_vocabulary_object_and_name_give_the_same_stream():
    by_name = list(phantom_images(4, seed=9, vocab="chexpert"))
    by_object = list(phantom_images(4, seed=9, vocab=vocabulary("chexpert")))
    assert all(_same(a, b) for a, b in zip(by_name, by_object))


def test_normal_images_have_no_masks_and_abnormal_ones_have_one_per_finding():
    items = list(phantom_images(60, size=64, seed=21))
    normals = [it for it in items if not it.labels.any()]
    abnormals = [it for it in items if it.labels.any()]
    assert normals and abnormals
    assert all(it.lesion_masks == {} for it in normals)
    for it in abnormals:
        assert sorted(it.lesion_masks) == sorted(vocabulary("nih").positives(it.labels))
        assert all(m.sum() >= 3 for m in it.lesion_masks.values())


def test_every_finding_has_a_lesion_kind():
    for vocab_name in VOCABS:
        assert set(vocabulary(vocab_name).findings) <= set(LESION_KIND)


# ---------------------------------------------------------------------------------------------
# lesions: each finding alone, on the same patient with and without it


@pytest.mark.parametrize(("vocab_name", "finding"), ALL_FINDINGS)
def test_each_finding_renders_alone_inside_its_mask(vocab_name, finding):
    vocab = vocabulary(vocab_name)
    for patient in range(3):
        with_it, masks = render(vocab.vector([finding]), vocab, 64, np.random.default_rng([77, patient]))
        without, none = render(vocab.vector([]), vocab, 64, np.random.default_rng([77, patient]))
        assert none == {}
        assert list(masks) == [finding]
        mask = masks[finding]
        assert mask.sum() >= 3, f"{finding}: mask of {mask.sum()} pixels"
        assert mask.sum() < 0.6 * mask.size
        diff = np.abs(with_it.astype(np.int16) - without.astype(np.int16))
        # the change is concentrated in the mask and is clearly visible there
        assert diff[mask].sum() >= 0.85 * diff.sum()
        assert diff[mask].mean() >= 6
        # outside the mask nothing moves by more than the mask threshold (plus rounding)
        assert diff[~mask].max() <= math.ceil(255 * MASK_THRESHOLD) + 1


@pytest.mark.parametrize(
    ("vocab_name", "erase", "keep"),
    [
        ("nih", "Effusion", "Atelectasis"),
        ("nih", "Edema", "Infiltration"),
        ("nih", "Pneumonia", "Consolidation"),
        ("chexpert", "Lung Opacity", "Edema"),
        ("chexpert", "Support Devices", "Pleural Effusion"),
        ("chexpert", "Cardiomegaly", "Edema"),
    ],
)
def test_removing_one_of_two_findings_changes_only_its_mask(vocab_name, erase, keep):
    vocab = vocabulary(vocab_name)
    for patient in range(3):
        both, masks = render(vocab.vector([erase, keep]), vocab, 64, np.random.default_rng([5, patient]))
        rest, rest_masks = render(vocab.vector([keep]), vocab, 64, np.random.default_rng([5, patient]))
        assert set(masks) == {erase, keep} and set(rest_masks) == {keep}
        diff = np.abs(both.astype(np.int16) - rest.astype(np.int16))
        assert diff[masks[erase]].sum() >= 0.85 * diff.sum()
        assert diff[~masks[erase]].max() <= math.ceil(255 * MASK_THRESHOLD) + 1


def test_co_occurring_findings_can_overlap():
    vocab = vocabulary("chexpert")
    overlaps = 0
    for patient in range(12):
        _, masks = render(vocab.vector(["Edema", "Lung Opacity"]), vocab, 64,
                          np.random.default_rng([8, patient]))
        overlaps += bool((masks["Edema"] & masks["Lung Opacity"]).any())
    assert overlaps >= 3


def test_same_patient_at_two_sizes():
    vocab = vocabulary("nih")
    labels = vocab.vector(["Effusion", "Mass"])
    small, small_masks = render(labels, vocab, 64, np.random.default_rng(4))
    large, large_masks = render(labels, vocab, 128, np.random.default_rng(4))
    pooled = large.astype(np.float64).reshape(64, 2, 64, 2).mean(axis=(1, 3))
    assert np.corrcoef(pooled.ravel(), small.ravel())[0, 1] > 0.95
    for f in ("Effusion", "Mass"):
        pooled_mask = large_masks[f].reshape(64, 2, 64, 2).mean(axis=(1, 3)) > 0.5
        inter = (pooled_mask & small_masks[f]).sum()
        union = (pooled_mask | small_masks[f]).sum()
        assert inter / union > 0.6


# ---------------------------------------------------------------------------------------------
# anatomy


def _box(img: np.ndarray, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    s = img.shape[0]
    return img[int(y0 * s):int(y1 * s), int(x0 * s):int(x1 * s)].astype(np.float64)


@lru_cache(maxsize=None)
def _normals(n: int = 20, size: int = 64) -> tuple[np.ndarray, ...]:
    vocab = vocabulary("nih")
    return tuple(render(vocab.vector([]), vocab, size, np.random.default_rng([31, p]))[0]
                 for p in range(n))


def test_lungs_are_darker_than_mediastinum_and_spine():
    for img in _normals():
        lungs = np.concatenate([_box(img, 0.3, 0.5, 0.2, 0.32).ravel(),
                                _box(img, 0.3, 0.5, 0.68, 0.8).ravel()]).mean()
        centre = _box(img, 0.2, 0.6, 0.47, 0.53).mean()
        below_domes = _box(img, 0.85, 0.95, 0.25, 0.75).mean()
        assert centre - lungs > 50
        assert below_domes - lungs > 40
        # air outside the body is black at the top corners
        assert _box(img, 0.0, 0.04, 0.0, 0.04).mean() < lungs


def _heart_geometry(img: np.ndarray) -> tuple[float, int, int]:
    """(heart width / lung extent, heart extent left of the centre, right of it in pixels).

    Read on the rows through the upper heart (0.52-0.62 of the height): the bright run through
    the image centre is the heart and mediastinum; the lung is what is darker than halfway
    between lung and mediastinum but not the black air outside the body.
    """
    s = img.shape[0]
    lungs = np.concatenate([_box(img, 0.3, 0.5, 0.2, 0.32).ravel(),
                            _box(img, 0.3, 0.5, 0.68, 0.8).ravel()]).mean()
    centre = _box(img, 0.3, 0.6, 0.47, 0.53).mean()
    band = _box(img, 0.52, 0.62, 0.0, 1.0).mean(axis=0)
    bright = band > 0.5 * (lungs + centre)
    c = s // 2
    left = c
    while left > 0 and bright[left - 1]:
        left -= 1
    right = c
    while right < s - 1 and bright[right + 1]:
        right += 1
    lung = np.nonzero(~bright & (band > 0.5 * lungs))[0]
    thorax = lung.max() - lung.min() + 1
    return (right - left + 1) / thorax, c - left, right - c


def test_heart_bulges_to_the_image_right():
    geometry = [_heart_geometry(img) for img in _normals()]
    assert np.mean([g[2] for g in geometry]) > 1.8 * np.mean([g[1] for g in geometry])


def test_right_hemidiaphragm_is_higher():
    def dome_row(img: np.ndarray, x0: float, x1: float) -> float:
        column = _box(img, 0.45, 1.0, x0, x1).mean(axis=1)
        lung = column[:5].mean()
        return float(np.argmax(column > lung + 0.6 * (column.max() - lung)))

    # the patient's right dome (image left) is higher: its edge is met on an earlier row
    image_left = [dome_row(img, 0.17, 0.23) for img in _normals(20, 128)]
    image_right = [dome_row(img, 0.77, 0.83) for img in _normals(20, 128)]
    assert np.mean(image_right) - np.mean(image_left) > 1.5


def test_cardiomegaly_widens_the_heart():
    vocab = vocabulary("chexpert")
    ratios_normal, ratios_big = [], []
    for p, normal in enumerate(_normals()[:12]):
        rng = np.random.default_rng([31, p])  # the same patients as _normals()
        big, _ = render(vocab.vector(["Cardiomegaly"]), vocab, 64, rng)
        (ratio_normal, _, right_normal), (ratio_big, _, right_big) = (
            _heart_geometry(normal), _heart_geometry(big))
        assert ratio_big > ratio_normal + 0.08
        assert right_big > right_normal  # it grows mostly towards the patient's left
        ratios_normal.append(ratio_normal)
        ratios_big.append(ratio_big)
    assert np.mean(ratios_big) > np.mean(ratios_normal) + 0.12


def test_cardiothoracic_ratio_of_the_model():
    from tasks.phantom.anatomy import cardiomegaly, draw_anatomy

    for p in range(50):
        anatomy = draw_anatomy(np.random.default_rng(p))
        assert 0.33 < anatomy.heart_width / anatomy.thorax_width < 0.48
        big = cardiomegaly(anatomy, np.random.default_rng(p + 1000))
        assert big.heart_width / big.thorax_width > 0.53


def test_emphysema_and_pneumothorax_are_lucent_effusion_is_dense():
    vocab = vocabulary("nih")
    for finding, sign in (("Emphysema", -1), ("Pneumothorax", -1), ("Effusion", 1), ("Mass", 1)):
        for p in range(3):
            with_it, masks = render(vocab.vector([finding]), vocab, 64, np.random.default_rng([2, p]))
            without, _ = render(vocab.vector([]), vocab, 64, np.random.default_rng([2, p]))
            mask = masks[finding]
            change = with_it[mask].astype(np.float64).mean() - without[mask].astype(np.float64).mean()
            assert sign * change > 5, (finding, change)


# ---------------------------------------------------------------------------------------------
# labels: prevalence and co-occurrence


N_LABELS = 6000


@lru_cache(maxsize=None)
def _sampled(vocab_name: str) -> np.ndarray:
    vocab = vocabulary(vocab_name)
    rng = np.random.default_rng(123)
    return np.stack([sample_labels(rng, vocab) for _ in range(N_LABELS)])


@pytest.mark.parametrize("vocab_name", VOCABS)
def test_marginal_prevalence_matches_published_counts(vocab_name):
    vocab = vocabulary(vocab_name)
    labels = _sampled(vocab_name)
    assert labels.dtype == np.float32 and set(np.unique(labels)) <= {0.0, 1.0}
    for i, finding in enumerate(vocab.findings):
        target = vocab.counts[finding] / vocab.total
        tolerance = 4 * math.sqrt(target * (1 - target) / N_LABELS) + 0.003
        assert abs(labels[:, i].mean() - target) <= tolerance, finding
    normal_share = (labels.sum(axis=1) == 0).mean()
    assert abs(normal_share - vocab.counts["No Finding"] / vocab.total) <= 0.03


def test_normal_share_differs_between_vocabularies():
    assert (_sampled("nih").sum(axis=1) == 0).mean() > 0.5
    assert (_sampled("chexpert").sum(axis=1) == 0).mean() < 0.15


REQUIRED_PAIRS = {
    "nih": [("Effusion", "Atelectasis"), ("Effusion", "Cardiomegaly"), ("Edema", "Effusion"),
            ("Edema", "Cardiomegaly"), ("Consolidation", "Pneumonia"),
            ("Infiltration", "Effusion"), ("Mass", "Nodule")],
    "chexpert": [("Lung Opacity", "Pneumonia"), ("Lung Opacity", "Consolidation"),
                 ("Lung Opacity", "Edema"), ("Lung Opacity", "Atelectasis"),
                 ("Support Devices", "Pleural Effusion"), ("Pleural Effusion", "Atelectasis"),
                 ("Consolidation", "Pneumonia")],
}


@pytest.mark.parametrize("vocab_name", VOCABS)
def test_correlated_pairs_have_positive_phi(vocab_name):
    vocab = vocabulary(vocab_name)
    table = {frozenset((a, b)) for a, b, _ in CO_OCCURRENCE[vocab_name]}
    assert {frozenset(p) for p in REQUIRED_PAIRS[vocab_name]} <= table
    phi = np.corrcoef(_sampled(vocab_name).T)
    index = {f: i for i, f in enumerate(vocab.findings)}
    listed = []
    for a, b, _ in CO_OCCURRENCE[vocab_name]:
        value = phi[index[a], index[b]]
        assert value > 0.0, (a, b, value)
        listed.append(value)
    unlisted = [phi[i, j] for i in range(len(vocab)) for j in range(i + 1, len(vocab))
                if frozenset((vocab.findings[i], vocab.findings[j])) not in table]
    assert np.mean(listed) > np.mean(unlisted) + 0.07


def test_splits_are_about_70_10_20():
    splits = [it.split for it in phantom_images(1000, size=32, seed=17)]
    shares = {name: splits.count(name) / len(splits) for name in ("train", "val", "test")}
    assert abs(shares["train"] - 0.7) < 0.05
    assert abs(shares["val"] - 0.1) < 0.035
    assert abs(shares["test"] - 0.2) < 0.045


# ---------------------------------------------------------------------------------------------
# argument checks


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": -1},
        {"n": 2.5},
        {"n": True},
        {"size": 31},
        {"size": 1025},
        {"size": 64.0},
        {"seed": -3},
        {"seed": "0"},
        {"vocab": "padchest"},
        {"vocab": 14},
    ],
)
def test_bad_arguments_raise_value_error_at_the_call(kwargs):
    args = {"n": 2, "size": 64, "seed": 0, "vocab": "nih"} | kwargs
    with pytest.raises(ValueError):
        phantom_images(**args)  # not only at the first next()


def test_zero_images_is_an_empty_stream():
    assert list(phantom_images(0)) == []


def test_bad_render_arguments_raise_value_error():
    vocab = vocabulary("nih")
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        render(np.zeros(13, dtype=np.float32), vocab, 64, rng)
    with pytest.raises(ValueError):
        render(np.full(14, 0.5, dtype=np.float32), vocab, 64, rng)
    with pytest.raises(ValueError):
        render(np.full(14, np.nan, dtype=np.float32), vocab, 64, rng)
    with pytest.raises(ValueError):
        render(vocab.vector([]), vocab, 16, rng)
    with pytest.raises(ValueError):
        sample_labels(rng, "padchest")
