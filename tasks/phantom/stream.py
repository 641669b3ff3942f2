"""The public entry points: the stream of phantom images and ``render``, which draws one patient
with its findings, ground-truth masks and film grain."""

from __future__ import annotations

import multiprocessing
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import numpy as np

from tasks.labels import Vocabulary
from tasks.phantom.anatomy import MODIFIERS, Anatomy, draw_anatomy
from tasks.phantom.checks import check_int, check_labels, check_size, resolve_vocab
from tasks.phantom.lesions import LESIONS, LESION_KIND
from tasks.phantom.prevalence import label_model
from tasks.phantom.regime import Regime, draw_labels, tail_findings
from tasks.phantom.scene import Scene

MASK_THRESHOLD = 0.02  # brightness change (0..1 scale, ~5 grey levels) that puts a pixel in a mask
SPLIT_SHARES: tuple[tuple[str, float], ...] = (("train", 0.7), ("val", 0.1), ("test", 0.2))


@dataclass(frozen=True)
class PhantomImage:
    index: int  # position in the stream, 0..n-1
    patient_id: str  # f"phantom-{seed}-{index:06d}" (one image per synthetic patient)
    split: str  # "train" | "val" | "test"
    image: np.ndarray  # (size, size) uint8, one channel, frontal PA view
    labels: np.ndarray  # (K,) float32 0/1 aligned to vocab.findings
    lesion_masks: dict[str, np.ndarray]  # present finding -> (size, size) bool mask


# ----------------------------------------------------------------------------------------------
# public entry points


def phantom_images(
    n: int, size: int = 64, seed: int = 0, vocab: str | Vocabulary = "nih", workers: int = 1,
    regime: Regime = Regime(),
) -> Iterator[PhantomImage]:
    """Stream ``n`` phantom images; image ``i`` depends only on ``(seed, i)``, ``size``, ``vocab``
    and ``regime`` (tasks/phantom/regime.py; a normal image not on the regime).
    ``workers`` > 1 renders them in that many forked processes, in the same order (rendering is
    ~16 ms per 128 px image on one core).

    Arguments are checked here (not at the first ``next``): ValueError on a bad one.
    """
    n = check_int("n", n, lo=0)
    size = check_size(size)
    seed = check_int("seed", seed, lo=0)
    workers = check_int("workers", workers, lo=1)
    voc = resolve_vocab(vocab)
    if not isinstance(regime, Regime):
        raise ValueError(f"regime must be a tasks.phantom.regime.Regime, got {type(regime).__name__}")
    label_model(voc)  # calibrate now so the first image is not the slow one (and workers inherit it)
    if workers > 1 and n > 1:
        return _pooled(n, size, seed, voc, workers, regime)
    return (_image(i, seed, size, voc, regime) for i in range(n))


def _image(i: int, seed: int, size: int, voc: Vocabulary, regime: Regime = Regime()) -> PhantomImage:
    rng = np.random.default_rng([seed, i])
    labels = draw_labels(rng, voc, regime)
    split = draw_split(rng)
    image, masks = render(labels, voc, size, rng, regime.tail_contrast)
    return PhantomImage(
        index=i,
        patient_id=f"phantom-{seed}-{i:06d}",
        split=split,
        image=image,
        labels=labels,
        lesion_masks=masks,
    )


def _pooled(n: int, size: int, seed: int, voc: Vocabulary, workers: int, regime: Regime) -> Iterator[PhantomImage]:
    # fork: the workers need only NumPy and this module, and inherit the calibrated label model.
    # A worker that dies (a fork of a many-threaded parent can) breaks the pool instead of
    # leaving a wait without end (multiprocessing.Pool loses that worker's tasks); the images not
    # yet given are then drawn here: the stream stays whole and in order.
    one = partial(_image, seed=seed, size=size, voc=voc, regime=regime)
    done = 0
    pool = ProcessPoolExecutor(min(workers, n), mp_context=multiprocessing.get_context("fork"))
    try:
        for item in pool.map(one, range(n), chunksize=8):
            yield item
            done += 1
    except BrokenProcessPool as exc:
        warnings.warn(f"phantom rendering: a worker process died ({exc}); drawing images {done}..{n - 1} in this process")
        yield from (one(i) for i in range(done, n))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def render(
    labels: np.ndarray, vocab: Vocabulary, size: int, rng: np.random.Generator, tail_contrast: float = 1.0
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw one patient with the findings in ``labels``: ``(uint8 image, {finding: bool mask})``;
    a tail finding's density change is ``tail_contrast`` times its usual one (a ``Regime``'s).

    The generator's draws do not depend on ``labels`` (anatomy first, then one seed per finding
    and one for noise), so the same generator state renders the same patient with or without
    any finding: the two images differ only where that finding lies.
    """
    vocab = resolve_vocab(vocab)
    size = check_size(size)
    labels = check_labels(labels, vocab)

    base = draw_anatomy(rng)
    lesion_seed, noise_seed = (int(s) for s in rng.integers(0, 2**63 - 1, size=2))
    present = [f for f, value in zip(vocab.findings, labels) if value == 1.0]

    def lesion_rng(finding: str) -> np.random.Generator:
        return np.random.default_rng([lesion_seed, zlib.crc32(finding.encode("utf-8"))])

    modifiers = [f for f in present if LESION_KIND[f] in MODIFIERS]

    def modified(skip: str | None) -> Anatomy:
        anat = base
        for f in modifiers:
            if f != skip:
                anat = MODIFIERS[LESION_KIND[f]](anat, lesion_rng(f))
        return anat

    scene = Scene(size, modified(None))
    deltas: dict[str, np.ndarray] = {}
    for f in present:
        if f in modifiers:
            deltas[f] = scene.density - Scene(size, modified(f)).density
    total = scene.density.copy()
    for f in present:
        if f not in modifiers:
            deltas[f] = LESIONS[LESION_KIND[f]](scene, lesion_rng(f)).astype(np.float32, copy=False)
            total += deltas[f]
    if tail_contrast != 1.0:  # each tail finding's change scaled, the anatomy's included
        for f in set(present) & tail_findings(vocab):
            total += (tail_contrast - 1.0) * deltas[f]
            deltas[f] = tail_contrast * deltas[f]

    bright = scene.brightness(total)
    masks: dict[str, np.ndarray] = {}
    for f in present:
        change = np.abs(bright - scene.brightness(total - deltas[f]))
        mask = change > MASK_THRESHOLD
        if not mask.any() and change.max() > 0:  # tiny films: keep the most changed pixel
            mask = change >= change.max()
        masks[f] = mask

    noise_rng = np.random.default_rng(noise_seed)
    grain = noise_rng.standard_normal((size, size), dtype=np.float32)
    image = bright + scene.anat.noise * grain
    image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return image, masks


def draw_split(rng: np.random.Generator) -> str:
    u = rng.random()
    acc = 0.0
    for name, share in SPLIT_SHARES:
        acc += share
        if u < acc:
            return name
    return SPLIT_SHARES[-1][0]
