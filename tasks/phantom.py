"""The built-in synthetic chest phantom: chest-X-ray-like images that need nothing from outside.

Every image is a frontal PA film of one synthetic patient, drawn with vectorised numpy in
continuous patient coordinates normalised to [0, 1] (``u`` across, image-left to image-right;
``v`` down), so any size from 32 to 1024 pixels renders the same anatomy. The picture is built
as a map of attenuation ("density": soft tissue ~1, aerated lung ~0.25, bone and metal more)
that is turned into brightness the way a film does it, ``1 - exp(-mu * density)`` followed by a
per-patient window and gamma: bright = dense (bone, fluid), dark = air.

As on a real PA film the patient's left is on the image's RIGHT: the heart bulges to the image
right, the aortic knob and the gastric bubble sit on the image right, and the right
hemidiaphragm (image left) is a little higher than the left one.

Each present finding adds its own density change (a lesion) drawn where it occurs on a frontal
film; three findings change the anatomy itself (Cardiomegaly, Enlarged Cardiomediastinum,
Emphysema) and their change is the difference between the anatomy with and without them. A
finding's ground-truth mask is the set of pixels whose noise-free brightness the finding moves
by more than ``MASK_THRESHOLD`` (on the 0..1 scale), given everything else in the image.

Labels follow the published class frequencies of the vocabulary (``counts`` / ``total``): an
image is normal with probability ``counts["No Finding"] / total``; an abnormal image thresholds a
correlated latent Gaussian (the pairs in ``CO_OCCURRENCE``) whose thresholds are calibrated
once per vocabulary so that every finding's overall frequency matches its published one.

Determinism: image ``i`` of ``phantom_images(seed=s)`` uses only ``np.random.default_rng([s, i])``
(labels, split, anatomy, lesions, noise), so a stream's prefix never depends on its length.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Iterator, Mapping

import numpy as np

from tasks.labels import Vocabulary, vocabulary

__all__ = [
    "CO_OCCURRENCE",
    "LESION_KIND",
    "MASK_THRESHOLD",
    "MAX_SIZE",
    "MIN_SIZE",
    "PhantomImage",
    "SPLIT_SHARES",
    "phantom_images",
    "render",
    "sample_labels",
]

MIN_SIZE, MAX_SIZE = 32, 1024
MASK_THRESHOLD = 0.02  # brightness change (0..1 scale, ~5 grey levels) that puts a pixel in a mask
SPLIT_SHARES: tuple[tuple[str, float], ...] = (("train", 0.7), ("val", 0.1), ("test", 0.2))

# Latent (Gaussian) correlation of pairs of findings that co-occur on real films. Data, not code:
# pairs naming a finding outside the vocabulary are skipped, so one table serves both.
CO_OCCURRENCE: Mapping[str, tuple[tuple[str, str, float], ...]] = {
    "nih": (
        ("Effusion", "Atelectasis", 0.45),
        ("Effusion", "Cardiomegaly", 0.40),
        ("Edema", "Effusion", 0.45),
        ("Edema", "Cardiomegaly", 0.35),
        ("Consolidation", "Pneumonia", 0.45),
        ("Infiltration", "Effusion", 0.30),
        ("Mass", "Nodule", 0.40),
        ("Infiltration", "Pneumonia", 0.35),
        ("Infiltration", "Atelectasis", 0.25),
        ("Consolidation", "Atelectasis", 0.30),
        ("Consolidation", "Effusion", 0.25),
        ("Edema", "Infiltration", 0.30),
        ("Emphysema", "Pneumothorax", 0.30),
        ("Fibrosis", "Pleural_Thickening", 0.35),
        ("Mass", "Pleural_Thickening", 0.30),
    ),
    "chexpert": (
        ("Lung Opacity", "Pneumonia", 0.50),
        ("Lung Opacity", "Consolidation", 0.45),
        ("Lung Opacity", "Edema", 0.35),
        ("Lung Opacity", "Atelectasis", 0.35),
        ("Support Devices", "Pleural Effusion", 0.30),
        ("Pleural Effusion", "Atelectasis", 0.40),
        ("Pleural Effusion", "Cardiomegaly", 0.30),
        ("Edema", "Pleural Effusion", 0.40),
        ("Edema", "Cardiomegaly", 0.35),
        ("Enlarged Cardiomediastinum", "Cardiomegaly", 0.45),
        ("Consolidation", "Pneumonia", 0.40),
        ("Support Devices", "Pneumothorax", 0.25),
        ("Support Devices", "Edema", 0.20),
        ("Pleural Other", "Pleural Effusion", 0.30),
        ("Fracture", "Pneumothorax", 0.20),
        ("Lung Lesion", "Pleural Other", 0.30),
    ),
}

# finding name (both vocabularies) -> how it is drawn
LESION_KIND: Mapping[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Effusion": "effusion",
    "Pleural Effusion": "effusion",
    "Infiltration": "infiltration",
    "Lung Opacity": "lung_opacity",
    "Mass": "mass",
    "Nodule": "nodule",
    "Lung Lesion": "lung_lesion",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Emphysema": "emphysema",
    "Fibrosis": "fibrosis",
    "Pleural_Thickening": "pleural_thickening",
    "Pleural Other": "pleural_thickening",
    "Hernia": "hernia",
    "Enlarged Cardiomediastinum": "enlarged_cardiomediastinum",
    "Fracture": "fracture",
    "Support Devices": "support_devices",
}


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
    n: int, size: int = 64, seed: int = 0, vocab: str | Vocabulary = "nih"
) -> Iterator[PhantomImage]:
    """Stream ``n`` phantom images; image ``i`` depends only on ``(seed, i)``, ``size``, ``vocab``.

    Arguments are checked here (not at the first ``next``): ValueError on a bad one.
    """
    n = _check_int("n", n, lo=0)
    size = _check_size(size)
    seed = _check_int("seed", seed, lo=0)
    voc = _resolve_vocab(vocab)
    _label_model(voc)  # calibrate now so the first image is not the slow one
    return _stream(n, size, seed, voc)


def _stream(n: int, size: int, seed: int, voc: Vocabulary) -> Iterator[PhantomImage]:
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        labels = sample_labels(rng, voc)
        split = _draw_split(rng)
        image, masks = render(labels, voc, size, rng)
        yield PhantomImage(
            index=i,
            patient_id=f"phantom-{seed}-{i:06d}",
            split=split,
            image=image,
            labels=labels,
            lesion_masks=masks,
        )


def sample_labels(rng: np.random.Generator, vocab: Vocabulary) -> np.ndarray:
    """One (K,) float32 0/1 label vector with the vocabulary's published prevalence.

    ``vocab`` may also be a vocabulary name. Cheap: no image is drawn.
    """
    vocab = _resolve_vocab(vocab)
    model = _label_model(vocab)
    k = len(vocab.findings)
    out = np.zeros(k, dtype=np.float32)
    if rng.random() < model.p_normal:
        return out
    for _ in range(10_000):  # P(no finding in a draw) is far below 1: ends after a few tries
        z = model.chol @ rng.standard_normal(k)
        hit = z > model.thresholds
        if hit.any():
            out[hit] = 1.0
            return out
    out[int(np.argmax(model.q))] = 1.0  # unreachable in practice; keeps the contract
    return out


def render(
    labels: np.ndarray, vocab: Vocabulary, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw one patient with the findings in ``labels``: ``(uint8 image, {finding: bool mask})``.

    The generator's draws do not depend on ``labels`` (anatomy first, then one seed per finding
    and one for noise), so the same generator state renders the same patient with or without
    any finding: the two images differ only where that finding lies.
    """
    vocab = _resolve_vocab(vocab)
    size = _check_size(size)
    labels = _check_labels(labels, vocab)

    base = _draw_anatomy(rng)
    lesion_seed, noise_seed = (int(s) for s in rng.integers(0, 2**63 - 1, size=2))
    present = [f for f, value in zip(vocab.findings, labels) if value == 1.0]

    def lesion_rng(finding: str) -> np.random.Generator:
        return np.random.default_rng([lesion_seed, zlib.crc32(finding.encode("utf-8"))])

    modifiers = [f for f in present if LESION_KIND[f] in _MODIFIERS]

    def modified(skip: str | None) -> _Anatomy:
        anat = base
        for f in modifiers:
            if f != skip:
                anat = _MODIFIERS[LESION_KIND[f]](anat, lesion_rng(f))
        return anat

    scene = _Scene(size, modified(None))
    deltas: dict[str, np.ndarray] = {}
    for f in present:
        if f in modifiers:
            deltas[f] = scene.density - _Scene(size, modified(f)).density
    total = scene.density.copy()
    for f in present:
        if f not in modifiers:
            deltas[f] = _LESIONS[LESION_KIND[f]](scene, lesion_rng(f)).astype(np.float32, copy=False)
            total += deltas[f]

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


# ----------------------------------------------------------------------------------------------
# argument checks


def _check_int(name: str, value: object, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ValueError(f"{name} must be in [{lo_s}, {hi_s}], got {value}")
    return value


def _check_size(size: object) -> int:
    return _check_int("size", size, lo=MIN_SIZE, hi=MAX_SIZE)


def _resolve_vocab(vocab: str | Vocabulary) -> Vocabulary:
    if isinstance(vocab, Vocabulary):
        voc = vocab
    elif isinstance(vocab, str):
        voc = vocabulary(vocab)  # ValueError on an unknown name
    else:
        raise ValueError(f"vocab must be a name or a Vocabulary, got {type(vocab).__name__}")
    _check_kinds(voc)
    return voc


def _check_kinds(voc: Vocabulary) -> None:
    unknown = [f for f in voc.findings if f not in LESION_KIND]
    if unknown:
        raise ValueError(f"the phantom cannot draw {unknown} (vocabulary {voc.name!r})")


def _check_labels(labels: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    arr = np.asarray(labels, dtype=np.float32)
    if arr.shape != (len(vocab.findings),):
        raise ValueError(f"labels must have shape ({len(vocab.findings)},), got {arr.shape}")
    if not np.all((arr == 0.0) | (arr == 1.0)):
        raise ValueError("labels must be 0 or 1 (no NaN, no uncertain values) to be rendered")
    return arr


def _draw_split(rng: np.random.Generator) -> str:
    u = rng.random()
    acc = 0.0
    for name, share in SPLIT_SHARES:
        acc += share
        if u < acc:
            return name
    return SPLIT_SHARES[-1][0]


# ----------------------------------------------------------------------------------------------
# label model: normal first, then a thresholded correlated Gaussian conditioned on "any finding"


@dataclass(frozen=True)
class _LabelModel:
    p_normal: float
    q: np.ndarray  # P(finding | abnormal)
    chol: np.ndarray  # (K, K) Cholesky factor of the latent correlation
    thresholds: np.ndarray  # (K,)


_CALIBRATION_SAMPLES = 120_000
_CALIBRATION_SEED = 20_171_122


def _label_model(vocab: Vocabulary) -> _LabelModel:
    key = (vocab.name, vocab.findings, vocab.normal_label,
           tuple(sorted(vocab.counts.items())), vocab.total)
    return _calibrate(key)


@lru_cache(maxsize=16)
def _calibrate(key: tuple) -> _LabelModel:
    name, findings, normal_label, counts_items, total = key
    counts = dict(counts_items)
    k = len(findings)
    if total <= 0:
        raise ValueError(f"vocabulary {name!r} has no published total to sample prevalence from")
    p = np.array([counts.get(f, 0) / total for f in findings], dtype=np.float64)
    p_normal = float(np.clip(counts.get(normal_label, 0) / total, 0.0, 1.0))
    if p.sum() <= 0.0:
        p_normal = 1.0
    q = np.clip(p / max(1.0 - p_normal, 1e-12), 0.0, 1.0)

    corr = np.eye(k)
    index = {f: i for i, f in enumerate(findings)}
    for a, b, rho in CO_OCCURRENCE.get(name, ()):
        if a in index and b in index:
            corr[index[a], index[b]] = corr[index[b], index[a]] = rho
    chol = _cholesky_shrunk(corr)

    rng = np.random.default_rng(_CALIBRATION_SEED)
    z = rng.standard_normal((_CALIBRATION_SAMPLES, k)) @ chol.T

    def thresholds_for(share_any: float) -> np.ndarray:
        # P(z_k > t_k) = q_k * P(any): then P(finding | any) = q_k exactly (finding => any)
        return np.array([_normal_isf(float(t)) for t in np.clip(q * share_any, 0.0, 1.0)])

    def share_any(a: float) -> float:
        return float((z > thresholds_for(a)).any(axis=1).mean())

    # solve A = P(any | thresholds(A)) by bisection: A - P(any) is negative for small A
    lo, hi = 1e-6, 1.0
    if share_any(hi) >= hi - 1e-9:
        lo = hi
    for _ in range(30):
        if hi - lo < 1e-5:
            break
        mid = 0.5 * (lo + hi)
        if share_any(mid) > mid:
            lo = mid
        else:
            hi = mid
    thresholds = thresholds_for(0.5 * (lo + hi))
    return _LabelModel(p_normal=p_normal, q=q, chol=chol, thresholds=thresholds)


def _normal_isf(p: float) -> float:
    """The t with P(Z > t) = p for a standard normal Z (bisection on erfc; +-inf at 0 and 1)."""
    if p <= 0.0:
        return math.inf
    if p >= 1.0:
        return -math.inf
    lo, hi = -40.0, 40.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(mid / math.sqrt(2.0)) > p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _cholesky_shrunk(corr: np.ndarray) -> np.ndarray:
    """Cholesky factor of ``corr``; off-diagonals shrink until it is positive definite."""
    eye = np.eye(len(corr))
    for step in range(60):
        scale = 0.95**step
        try:
            return np.linalg.cholesky(eye + scale * (corr - eye))
        except np.linalg.LinAlgError:
            continue
    return eye


# ----------------------------------------------------------------------------------------------
# small vectorised drawing helpers (all arrays float32, coordinates in [0, 1])

_F = np.float32


def _sstep(x: np.ndarray) -> np.ndarray:
    """Smoothstep: 0 below 0, 1 above 1, C1-smooth in between."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _inside(d: np.ndarray, w: float) -> np.ndarray:
    """Soft indicator of ``d > 0`` for a signed distance ``d``; ramp ``w`` wide, compact."""
    return _sstep(d / w + 0.5)


def _bump(r2: np.ndarray) -> np.ndarray:
    """(1 - r^2)^2 for r^2 < 1, else 0: a smooth compact blob."""
    t = np.clip(1.0 - r2, 0.0, 1.0)
    return t * t


def _ellipse_distance(du: np.ndarray, dv: np.ndarray, ru: float, rv: float) -> np.ndarray:
    """First-order signed distance to the ellipse boundary (positive inside)."""
    f = (du / ru) ** 2 + (dv / rv) ** 2
    grad = 2.0 * np.sqrt((du / (ru * ru)) ** 2 + (dv / (rv * rv)) ** 2) + 1e-6
    return (1.0 - f) / grad


def _polyline_distance(u: np.ndarray, v: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance from every pixel to a polyline through ``points`` (P, 2) in (u, v)."""
    a = points[:-1].astype(_F)
    b = points[1:].astype(_F)
    d = b - a
    len2 = np.maximum((d * d).sum(axis=1), 1e-12)
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    dx, dy = d[:, 0, None, None], d[:, 1, None, None]
    t = np.clip(((u - ax) * dx + (v - ay) * dy) / len2[:, None, None], 0.0, 1.0)
    ex = u - ax - t * dx
    ey = v - ay - t * dy
    return np.sqrt((ex * ex + ey * ey).min(axis=0))


def _spline(points: list[tuple[float, float]], n: int = 6) -> np.ndarray:
    """A smooth curve through ``points`` (Catmull-Rom), ``n`` samples per span."""
    p = np.asarray(points, dtype=np.float64)
    p = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
    t2, t3 = t * t, t * t * t
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                          + (3 * p1 - p0 - 3 * p2 + p3) * t3))
    out.append(p[-2][None])
    return np.vstack(out)


def _value_noise(rng: np.random.Generator, cells: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth random field in [0, 1] with ``cells`` lattice cells across the unit square."""
    grid = rng.random((cells + 1, cells + 1)).astype(_F)
    x = np.clip(u, 0.0, 1.0) * cells
    y = np.clip(v, 0.0, 1.0) * cells
    i = np.minimum(x.astype(np.intp), cells - 1)
    j = np.minimum(y.astype(np.intp), cells - 1)
    fx = _sstep(x - i)
    fy = _sstep(y - j)
    top = grid[j, i] * (1 - fx) + grid[j, i + 1] * fx
    bottom = grid[j + 1, i] * (1 - fx) + grid[j + 1, i + 1] * fx
    return top * (1 - fy) + bottom * fy


def _lattice_noise(rng: np.random.Generator, nx: int, ny: int, x: np.ndarray, y: np.ndarray
                   ) -> np.ndarray:
    """Value noise on an ``nx`` x ``ny`` lattice at lattice coordinates (x, y), wrapping around."""
    grid = rng.random((ny, nx)).astype(_F)
    xf, yf = np.floor(x), np.floor(y)
    fx, fy = _sstep(x - xf), _sstep(y - yf)
    i0 = xf.astype(np.intp) % nx
    j0 = yf.astype(np.intp) % ny
    i1, j1 = (i0 + 1) % nx, (j0 + 1) % ny
    top = grid[j0, i0] * (1 - fx) + grid[j0, i1] * fx
    bottom = grid[j1, i0] * (1 - fx) + grid[j1, i1] * fx
    return top * (1 - fy) + bottom * fy


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=_F) + 0.5) / size
    y, x = np.meshgrid(c, c, indexing="ij")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


# ----------------------------------------------------------------------------------------------
# anatomy parameters: one patient, both hemithoraces

_SIGNS = (-1.0, 1.0)  # side 0: image left (patient right), side 1: image right (patient left)


@dataclass(frozen=True)
class _Side:
    sign: float
    a_c: float  # lung ellipse centre, lateral distance from the midline
    r_a: float  # lung ellipse half-width
    v_c: float
    r_v: float
    dome_a: float  # diaphragm: v = dome_v + dome_k * (a - dome_a)^2
    dome_v: float
    dome_k: float
    med: float  # superior mediastinal half-width towards this side
    hilum_a: float
    hilum_v: float
    rib_v0: float  # first posterior rib at the spine
    rib_step: float
    rib_b: float
    rib_c: float
    rib_thick: float
    clav_v: float
    clav_rise: float
    vessel_phase: float
    vessel_n: int

    def dome(self, a):
        return self.dome_v + self.dome_k * (a - self.dome_a) ** 2

    @property
    def a_lat(self) -> float:
        return self.a_c + self.r_a


@dataclass(frozen=True)
class _Anatomy:
    rot: float
    shift_u: float
    shift_v: float
    scale: float
    sides: tuple[_Side, _Side]
    body_w: float
    neck_w: float
    shoulder_v: float
    heart_u: float
    heart_v: float
    heart_rl: float  # heart extent towards the image left
    heart_rr: float  # ... and towards the image right
    heart_ry: float
    knob_v: float
    knob_r: float
    spine_w: float
    spine_phase: float
    trachea_w: float
    trachea_u: float
    carina_v: float
    air: float
    markings: float
    mu: float
    lo: float
    hi: float
    gamma: float
    noise: float
    texture_seed: int

    @property
    def thorax_width(self) -> float:
        return self.sides[0].a_lat + self.sides[1].a_lat

    @property
    def heart_width(self) -> float:
        return self.heart_rl + self.heart_rr


_N_ANATOMY_DRAWS = 96


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    draws = iter(rng.random(_N_ANATOMY_DRAWS).tolist())  # a fixed number of draws

    def U(lo: float, hi: float) -> float:
        return lo + (hi - lo) * next(draws)

    apex = U(0.09, 0.135)
    dome0 = U(0.63, 0.68)
    domes = (dome0, dome0 + U(0.015, 0.045))  # the right hemidiaphragm (image left) is higher
    rib_v0 = U(0.085, 0.11)
    rib_step = U(0.056, 0.064)
    sides = []
    for s, sign in enumerate(_SIGNS):
        r_v = U(0.5, 0.56)
        top = apex + U(-0.01, 0.01)
        sides.append(_Side(
            sign=sign,
            a_c=U(0.19, 0.215), r_a=U(0.18, 0.2), v_c=top + r_v, r_v=r_v,
            dome_a=U(0.16, 0.21), dome_v=domes[s], dome_k=U(1.6, 2.3),
            med=U(0.045, 0.06),
            hilum_a=U(0.08, 0.105), hilum_v=U(0.4, 0.45) - 0.02 * s,
            rib_v0=rib_v0 + U(-0.005, 0.005), rib_step=rib_step, rib_b=U(0.45, 0.55),
            rib_c=U(1.6, 1.9), rib_thick=U(0.022, 0.028),
            clav_v=U(0.15, 0.185), clav_rise=U(0.03, 0.06),
            vessel_phase=U(0.0, 2 * math.pi), vessel_n=int(U(18, 24)),
        ))
    heart_ry = U(0.13, 0.16)
    return _Anatomy(
        rot=math.radians(U(-3.0, 3.0)), shift_u=U(-0.02, 0.02), shift_v=U(-0.02, 0.025),
        scale=U(0.95, 1.04),
        sides=(sides[0], sides[1]),
        body_w=U(0.46, 0.5), neck_w=U(0.1, 0.13), shoulder_v=U(0.1, 0.15),
        heart_u=0.5 + U(0.02, 0.04), heart_v=domes[1] - U(0.05, 0.08),
        heart_rl=U(0.1, 0.125), heart_rr=U(0.19, 0.22), heart_ry=heart_ry,
        knob_v=U(0.25, 0.3), knob_r=U(0.025, 0.035),
        spine_w=U(0.034, 0.042), spine_phase=U(0.0, 1.0),
        trachea_w=U(0.014, 0.019), trachea_u=0.5 + U(-0.006, 0.006), carina_v=U(0.3, 0.34),
        air=U(0.63, 0.7), markings=U(0.11, 0.15),
        mu=U(1.1, 1.35), lo=U(0.03, 0.08), hi=U(0.93, 0.99), gamma=U(1.05, 1.35),
        noise=U(0.008, 0.016),
        texture_seed=int(next(draws) * 2**31),
    )


# ----------------------------------------------------------------------------------------------
# the scene: coordinates, anatomy density and the pieces lesions need

_EDGE = 0.006  # anatomy edge softness (normalised units)


class _Scene:
    def __init__(self, size: int, anat: _Anatomy):
        self.size = size
        self.anat = anat
        x, y = _pixel_grid(size)
        c, s = math.cos(anat.rot), math.sin(anat.rot)
        dx, dy = x - 0.5, y - 0.5
        self.u = (0.5 + (c * dx + s * dy) / anat.scale - anat.shift_u).astype(_F)
        self.v = (0.5 + (-s * dx + c * dy) / anat.scale - anat.shift_v).astype(_F)
        self.du = self.u - 0.5
        self.lung: list[np.ndarray] = []
        self.vessels: list[np.ndarray] = []
        self.density = self._build()

    # -- geometry ------------------------------------------------------------------------------
    def lateral(self, side: int) -> np.ndarray:
        """Distance from the midline towards ``side`` (negative on the other side)."""
        return self.anat.sides[side].sign * self.du

    def heart_mask(self) -> np.ndarray:
        an = self.anat
        hu = self.u - an.heart_u
        rx = np.where(hu < 0, _F(an.heart_rl), _F(an.heart_rr))
        return _inside(_ellipse_distance(hu, self.v - an.heart_v, rx, an.heart_ry), _EDGE)

    def medial_limit(self, side: int) -> np.ndarray:
        sd = self.anat.sides[side]
        lim = sd.med + 0.01 * np.clip((self.v - 0.2) / 0.3, 0.0, 1.0)
        if side == 1:  # aortic knob on the patient's left
            lim = lim + self.anat.knob_r * _bump(((self.v - self.anat.knob_v) / 0.045) ** 2)
        return lim

    def hemithorax(self, side: int) -> np.ndarray:
        """Lung space of one side before the heart is cut out (soft mask)."""
        sd = self.anat.sides[side]
        a = self.lateral(side)
        d_ell = _ellipse_distance(a - sd.a_c, self.v - sd.v_c, sd.r_a, sd.r_v)
        d_dome = sd.dome(a) - self.v
        d_med = a - self.medial_limit(side)
        return _inside(np.minimum(np.minimum(d_ell, d_dome), d_med), _EDGE)

    def wall_distance(self, side: int) -> np.ndarray:
        sd = self.anat.sides[side]
        return _ellipse_distance(self.lateral(side) - sd.a_c, self.v - sd.v_c, sd.r_a, sd.r_v)

    def inside_lung_point(self, side: int, a: float, v: float, margin: float) -> bool:
        """Whether the point (lateral a, v) lies in the visible lung of ``side``, with a margin."""
        an = self.anat
        sd = an.sides[side]
        e = ((a - sd.a_c) / (sd.r_a - margin)) ** 2 + ((v - sd.v_c) / (sd.r_v - margin)) ** 2
        if e >= 1.0 or v > sd.dome(a) - margin or a < sd.med + 0.01 + margin:
            return False
        u = 0.5 + sd.sign * a
        hu = u - an.heart_u
        rx = (an.heart_rl if hu < 0 else an.heart_rr) + margin
        return (hu / rx) ** 2 + ((v - an.heart_v) / (an.heart_ry + margin)) ** 2 >= 1.0

    def lung_point(self, rng: np.random.Generator, side: int, margin: float,
                   v_range: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
        """A random point in the visible lung of ``side`` (lateral a, v)."""
        sd = self.anat.sides[side]
        for _ in range(60):
            a = rng.uniform(sd.a_c - sd.r_a, sd.a_lat)
            v = rng.uniform(max(sd.v_c - sd.r_v, v_range[0]), min(sd.dome_v + 0.08, v_range[1]))
            if self.inside_lung_point(side, a, v, margin):
                return a, v
        return sd.a_c + 0.06, sd.v_c - 0.25 * sd.r_v

    def to_u(self, side: int, a: float) -> float:
        return 0.5 + self.anat.sides[side].sign * a

    def brightness(self, density: np.ndarray) -> np.ndarray:
        an = self.anat
        film = 1.0 - np.exp(-an.mu * density)
        return np.clip((film - an.lo) / (an.hi - an.lo), 0.0, 1.0) ** an.gamma

    # -- anatomy -------------------------------------------------------------------------------
    def _rib_density(self, side: int, v0) -> np.ndarray:
        """Posterior ribs of ``side`` starting at the spine at heights ``v0`` (R, 1, 1) or map."""
        sd = self.anat.sides[side]
        a = self.lateral(side)
        v = self.v
        # upper ribs are tighter arcs, lower ribs flatter and more oblique
        curve = sd.rib_c * (1.25 - 0.5 * np.clip((v0 - sd.rib_v0) / (9 * sd.rib_step), 0.0, 1.0))
        centre = v0 - sd.rib_b * a + curve * a * a
        dist = np.abs(v - centre)
        half = sd.rib_thick / 2
        band = _inside(half - dist, 0.006)
        cortex = _inside(0.0045 - np.abs(dist - half + 0.003), 0.004)
        envelope = (_inside(_ellipse_distance(a - sd.a_c, v - sd.v_c, sd.r_a + 0.03, sd.r_v + 0.05),
                            0.02)
                    * _sstep((a - 0.03) / 0.05))
        return (0.1 * band + 0.035 * cortex) * envelope

    def _build(self) -> np.ndarray:
        an = self.anat
        u, v, du = self.u, self.v, self.du
        adu = np.abs(du)
        texture_rng = np.random.default_rng(an.texture_seed)

        # body outline and soft-tissue thickness (thicker in the middle)
        half = an.neck_w + (an.body_w - an.neck_w) * _sstep((v + 0.02) / an.shoulder_v)
        half = half - 0.03 * np.clip(v - 0.75, 0.0, 1.0)
        thick = np.sqrt(np.clip(1.0 - (du / half) ** 2, 0.0, 1.0)) ** 0.5
        body = _inside(half - adu, 0.01)
        t = (thick * body).astype(_F)
        self.thickness = t

        heart = self.heart_mask()
        self.heart = heart
        lungs = np.zeros_like(u)  # air thickness: lung masks weighted by the lungs' depth
        self.lung = []
        for side in (0, 1):
            sd = an.sides[side]
            lung = self.hemithorax(side) * (1.0 - heart)
            self.lung.append(lung)
            e2 = ((self.lateral(side) - sd.a_c) / sd.r_a) ** 2 + ((v - sd.v_c) / sd.r_v) ** 2
            lungs += lung * (0.55 + 0.45 * np.sqrt(np.clip(1.0 - e2, 0.0, 1.0)))
        # aerated lung is darkest in its middle: apices (soft tissue of the neck and shoulders)
        # and bases (breasts, posterior recesses) lie under more tissue
        overlay = (0.1 * _sstep((v - 0.45) / 0.35) + 0.12 * _sstep((0.22 - v) / 0.12))
        above = 1.0 - _inside(v - an.sides[1].dome(self.lateral(1)), 0.03)
        density = t * (1.0 - an.air * lungs * (1.0 - overlay)) + 0.12 * heart * above * t

        # abdomen below the domes (liver under the right dome), gastric bubble under the left
        for side in (0, 1):
            sd = an.sides[side]
            a = self.lateral(side)
            below = _inside(v - sd.dome(a), 0.012) * _sstep(a / 0.02 + 0.5)
            density += (0.1 if side == 0 else 0.05) * below * t
        sd1 = an.sides[1]
        gb_a = sd1.dome_a + 0.01
        gb_v = sd1.dome(gb_a) + 0.035
        bubble = _inside(_ellipse_distance(self.lateral(1) - gb_a, v - gb_v, 0.05, 0.024), 0.012)
        bubble *= _inside((gb_v + 0.006) - v, 0.004)  # gas on top of a flat fluid level
        density -= 0.32 * bubble * t

        # spine: vertebral bodies with disc spaces, pedicles, visible through the mediastinum
        spine = _inside(an.spine_w - adu, 0.008)
        period = 0.058
        phase = (v / period + an.spine_phase) % 1.0
        vert = _sstep(np.abs(phase - 0.5) * -8.0 + 3.6)  # 1 inside a body, 0 in a disc space
        pedicle = _bump(((adu - 0.65 * an.spine_w) / 0.011) ** 2 + ((phase - 0.32) / 0.14) ** 2)
        density += spine * (0.12 + 0.07 * vert) + 0.08 * pedicle * spine

        # trachea and main bronchi (air: darker)
        tr = _inside(an.trachea_w - np.abs(u - an.trachea_u), 0.006)
        tr *= _inside(an.carina_v - v, 0.01)
        bronchi = 0.0
        for side in (0, 1):
            sd = an.sides[side]
            pts = np.array([[an.trachea_u, an.carina_v - 0.005],
                            [0.5 + sd.sign * 0.07, an.carina_v + 0.055 + 0.01 * side]])
            bronchi = bronchi + _inside(0.008 - _polyline_distance(u, v, pts), 0.006)
        density -= 0.22 * np.clip(tr + bronchi, 0.0, 1.0) * t

        # ribs (posterior: curved arcs from the spine; anterior: faint, descending medially),
        # clavicles, humeral heads
        n_ribs = 10
        k = np.arange(n_ribs, dtype=_F)[:, None, None]
        for side in (0, 1):
            sd = an.sides[side]
            a = self.lateral(side)
            v0 = sd.rib_v0 + k * sd.rib_step
            density += self._rib_density(side, v0).sum(axis=0)
            # anterior ribs: lateral at v1, descending medially with slope ~0.45
            ka = np.arange(6, dtype=_F)[:, None, None]
            v1 = sd.rib_v0 + 0.06 + ka * (sd.rib_step * 1.05)
            centre = v1 + 0.45 * (sd.a_lat - a) - 0.8 * (sd.a_lat - a) ** 2
            ant = _inside(0.012 - np.abs(v - centre), 0.008)
            ant_env = _sstep((a - 0.1) / 0.06) * _inside(sd.a_lat + 0.01 - a, 0.02)
            density += 0.05 * (ant * ant_env).sum(axis=0)
            # clavicle: medial end near the manubrium, lateral end higher
            ca = np.clip(a - 0.035, 0.0, None)
            centre = sd.clav_v - sd.clav_rise * (ca / 0.27) + 0.012 * np.sin(ca / 0.27 * 2 * math.pi)
            clav = _inside(0.013 + 0.004 * (0.3 - a) / 0.3 - np.abs(v - centre), 0.006)
            clav *= _sstep((a - 0.035) / 0.02) * _inside(0.31 - a, 0.02)
            clav_cortex = _inside(0.004 - np.abs(np.abs(v - centre) - 0.009), 0.004)
            density += (0.2 * clav + 0.08 * clav_cortex * (clav > 0))
            # humeral head in the upper outer corner
            head = _inside(_ellipse_distance(a - (an.body_w + 0.05), v - 0.15, 0.075, 0.09), 0.015)
            density += 0.25 * head
            # lateral border of the scapula: a faint oblique line over the outer upper lung
            sc_c = 0.36 - 0.28 * (v - 0.15)
            scap = _inside(0.01 - np.abs(a - sc_c), 0.008) * _inside(0.42 - v, 0.06)
            scap *= _inside(v - 0.14, 0.02)
            density += 0.05 * scap

        # lung markings: vessels radiating from the hila, tapering outwards; hilar shadows
        self.vessels = []
        # streaks elongated along rays from the hilum: value noise on a (angle, radius) lattice
        tex = _value_noise(texture_rng, 9, u, v)
        warp = _value_noise(texture_rng, 6, u, v)
        for side in (0, 1):
            sd = an.sides[side]
            a = self.lateral(side)
            da, dv = a - sd.hilum_a, v - sd.hilum_v
            r = np.sqrt(da * da + dv * dv) + 1e-4
            theta = (np.arctan2(dv, da) + math.pi) / (2 * math.pi)  # 0..1
            streak = _lattice_noise(texture_rng, sd.vessel_n * 2, 6,
                                    theta * (sd.vessel_n * 2) + 1.5 * warp, r * 12.0)
            fine = _lattice_noise(texture_rng, sd.vessel_n * 4, 10,
                                  theta * (sd.vessel_n * 4) + 3.0 * warp, r * 25.0)
            cut = 0.52 + 0.18 * np.clip(r / 0.35, 0.0, 1.0)  # vessels taper outwards
            lines = _sstep((streak - cut) / 0.12) + 0.6 * _sstep((fine - cut - 0.04) / 0.1)
            fade = (1.0 - _sstep((r - 0.06) / 0.34)) * _sstep((r - 0.035) / 0.05)
            hilum = _bump((da / 0.055) ** 2 + (dv / 0.08) ** 2)
            vessels = self.lung[side] * (an.markings * lines * fade
                                         + 0.14 * hilum + 0.06 * (tex - 0.5))
            self.vessels.append(vessels)
            density += vessels
        return density.astype(_F)


# ----------------------------------------------------------------------------------------------
# findings that change the anatomy: new anatomy from the old one


def _cardiomegaly(an: _Anatomy, rng: np.random.Generator) -> _Anatomy:
    width = rng.uniform(0.55, 0.64) * an.thorax_width  # cardiothoracic ratio > 0.5
    left_share = rng.uniform(0.3, 0.36)
    return replace(an, heart_rl=width * left_share, heart_rr=width * (1 - left_share),
                   heart_ry=an.heart_ry * rng.uniform(1.08, 1.18))


def _enlarged_cardiomediastinum(an: _Anatomy, rng: np.random.Generator) -> _Anatomy:
    f = rng.uniform(1.7, 2.2)
    sides = tuple(replace(sd, med=sd.med * f) for sd in an.sides)
    return replace(an, sides=sides, knob_r=an.knob_r * rng.uniform(1.3, 1.6))


def _emphysema(an: _Anatomy, rng: np.random.Generator) -> _Anatomy:
    drop = rng.uniform(0.05, 0.08)
    flat = rng.uniform(0.15, 0.35)
    grow = rng.uniform(0.005, 0.015)
    sides = tuple(replace(sd, dome_v=sd.dome_v + drop, dome_k=sd.dome_k * flat,
                          r_v=sd.r_v + drop, v_c=sd.v_c + drop, r_a=sd.r_a + grow)
                  for sd in an.sides)
    narrow = rng.uniform(0.8, 0.9)
    return replace(an, sides=sides, air=min(0.9, an.air + rng.uniform(0.08, 0.11)),
                   markings=an.markings * rng.uniform(0.3, 0.5),
                   heart_rl=an.heart_rl * narrow, heart_rr=an.heart_rr * narrow,
                   heart_v=an.heart_v + 0.8 * drop)


_MODIFIERS: Mapping[str, Callable[[_Anatomy, np.random.Generator], _Anatomy]] = {
    "cardiomegaly": _cardiomegaly,
    "enlarged_cardiomediastinum": _enlarged_cardiomediastinum,
    "emphysema": _emphysema,
}


# ----------------------------------------------------------------------------------------------
# findings drawn on top of the anatomy: each returns a density change map


def _blob(scene: _Scene, u0: float, v0: float, radius: float, rng: np.random.Generator,
          lobulation: float) -> tuple[np.ndarray, np.ndarray]:
    """(signed distance to a lobulated circle, normalised radius) around (u0, v0)."""
    du, dv = scene.u - u0, scene.v - v0
    r = np.sqrt(du * du + dv * dv)
    phi = np.arctan2(dv, du)
    p = rng.uniform(0.0, 2 * math.pi, size=3)
    wobble = (lobulation * np.cos(3 * phi + p[0]) + 0.6 * lobulation * np.cos(5 * phi + p[1])
              + 0.4 * lobulation * np.cos(2 * phi + p[2]))
    reff = radius * (1.0 + wobble)
    return reff - r, r / reff


def _nodule(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(2))
    radius = rng.uniform(0.018, 0.03)
    a, v = scene.lung_point(rng, side, margin=radius + 0.01)
    d, rn = _blob(scene, scene.to_u(side, a), v, radius, rng, 0.05)
    return rng.uniform(0.32, 0.45) * _inside(d, 0.006) * (1.0 - 0.3 * rn * rn)


def _mass(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(2))
    radius = rng.uniform(0.045, 0.075)
    a, v = scene.lung_point(rng, side, margin=0.6 * radius)
    d, rn = _blob(scene, scene.to_u(side, a), v, radius, rng, 0.12)
    body = np.sqrt(np.clip(1.0 - np.clip(rn, 0.0, 1.0) ** 2, 0.0, 1.0))
    return rng.uniform(0.45, 0.6) * _inside(d, 0.012) * (0.55 + 0.45 * body)


def _lung_lesion(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    return _nodule(scene, rng) if rng.random() < 0.5 else _mass(scene, rng)


def _both_lungs(scene: _Scene) -> np.ndarray:
    return scene.lung[0] + scene.lung[1]


def _consolidation(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(2))
    radius = rng.uniform(0.06, 0.1)
    a, v = scene.lung_point(rng, side, margin=0.03, v_range=(0.3, 1.0))
    u0 = scene.to_u(side, a)
    d, _ = _blob(scene, u0, v, radius, rng, 0.2)
    patch = _inside(d, 0.035) * (0.8 + 0.2 * _value_noise(rng, 16, scene.u, scene.v))
    # air bronchograms: a few dark branches running towards the hilum
    sd = scene.anat.sides[side]
    hu = scene.to_u(side, sd.hilum_a)
    pts = np.array([[u0 + 0.6 * radius * (1 if side else -1), v + 0.4 * radius],
                    [u0, v], [0.5 * (u0 + hu), 0.5 * (v + sd.hilum_v)]])
    bronch = _inside(0.006 - _polyline_distance(scene.u, scene.v, pts), 0.005)
    density = rng.uniform(0.48, 0.6)
    return (density * patch - 0.12 * bronch * patch) * scene.lung[side]


def _pneumonia(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Lobar consolidation: upper lobe (sharp fissure below), middle lobe or lower lobe."""
    lobe = ("upper", "middle", "lower")[int(rng.integers(3))]
    side = 0 if lobe == "middle" else int(rng.integers(2))
    sd = scene.anat.sides[side]
    v, a = scene.v, scene.lateral(side)
    fissure = sd.hilum_v + rng.uniform(-0.04, 0.0)
    if lobe == "upper":
        region = _inside(fissure - v, 0.006 if side == 0 else 0.03)
    elif lobe == "middle":
        oblique = sd.a_c + 0.08 - 0.6 * (v - fissure)  # the major fissure runs down-medially
        region = (_inside(v - fissure, 0.006) * _inside(sd.dome(a) - 0.02 - v, 0.04)
                  * _inside(oblique - a, 0.07))
    else:
        top = sd.dome(sd.a_c) - rng.uniform(0.16, 0.24)
        region = _inside(v - top, 0.05)
    mottle = 0.8 + 0.2 * _value_noise(rng, 12, scene.u, v)
    return rng.uniform(0.45, 0.6) * region * mottle * scene.lung[side]


def _patchy(scene: _Scene, rng: np.random.Generator, density: tuple[float, float]) -> np.ndarray:
    """Patchy, ill-defined opacities in one or two zones (Infiltration, Lung Opacity)."""
    envelope = np.zeros_like(scene.u)
    zones = 1 + int(rng.random() < 0.4)
    for _ in range(zones):
        side = int(rng.integers(2))
        a, v0 = scene.lung_point(rng, side, margin=0.02, v_range=(0.25, 1.0))
        radius = rng.uniform(0.1, 0.17)
        du, dv = scene.u - scene.to_u(side, a), scene.v - v0
        envelope = np.maximum(envelope, _bump((du * du + dv * dv) / (radius * radius)))
    field = envelope * (0.25 + 0.75 * _value_noise(rng, 18, scene.u, scene.v))
    lungs = _both_lungs(scene)
    peak = float((field * lungs).max())
    if peak > 0:
        field = field * (0.9 / peak)
    patches = _sstep((field - 0.2) / 0.45)
    return rng.uniform(*density) * patches * lungs


def _infiltration(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    return _patchy(scene, rng, (0.3, 0.42))


def _lung_opacity(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    return _patchy(scene, rng, (0.34, 0.48))


def _edema(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Bilateral perihilar (bat-wing) haze with a few septal lines at the bases."""
    radius = rng.uniform(0.17, 0.23)
    fluff = 0.7 + 0.3 * _value_noise(rng, 10, scene.u, scene.v)
    out = np.zeros_like(scene.u)
    density = rng.uniform(0.26, 0.36)
    for side in (0, 1):
        sd = scene.anat.sides[side]
        a = scene.lateral(side)
        da, dv = a - (sd.hilum_a + 0.03), scene.v - (sd.hilum_v + 0.02)
        haze = _bump((da * da) / (radius * radius) + (dv * dv) / ((1.2 * radius) ** 2))
        # Kerley B lines: short horizontal lines at the lateral lung bases
        kv = sd.dome(sd.a_lat - 0.03) - 0.03 - 0.022 * np.arange(4, dtype=_F)[:, None, None]
        kerley = (_inside(0.004 - np.abs(scene.v - kv), 0.004)
                  * _inside(a - (sd.a_lat - 0.05), 0.01)).sum(axis=0)
        out += scene.lung[side] * (density * haze * fluff + 0.15 * kerley)
    return out


def _atelectasis(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Basal plate-like (linear) band, or a wedge of collapsed lung pointing at the hilum."""
    side = int(rng.integers(2))
    sd = scene.anat.sides[side]
    a, v = scene.lateral(side), scene.v
    if rng.random() < 0.5:
        am, vm = scene.lung_point(rng, side, margin=0.03, v_range=(sd.dome_v - 0.15, 1.0))
        length = rng.uniform(0.1, 0.16)
        angle = rng.uniform(-0.3, 0.3)
        thick = rng.uniform(0.016, 0.024)
        ca, sa = math.cos(angle), math.sin(angle)
        along = (a - am) * ca + (v - vm) * sa
        across = -(a - am) * sa + (v - vm) * ca
        shape = _inside(thick / 2 - np.abs(across), 0.006) * _inside(length / 2 - np.abs(along), 0.02)
        return rng.uniform(0.45, 0.6) * shape * scene.lung[side]
    apex_a, apex_v = sd.hilum_a + 0.02, sd.hilum_v + 0.03
    ta, tv = scene.lung_point(rng, side, margin=0.03, v_range=(sd.hilum_v + 0.1, 1.0))
    direction = math.atan2(tv - apex_v, ta - apex_a)
    spread = rng.uniform(0.16, 0.26)
    da, dv = a - apex_a, v - apex_v
    r = np.sqrt(da * da + dv * dv)
    off = np.abs((np.arctan2(dv, da) - direction + math.pi) % (2 * math.pi) - math.pi)
    wedge = _inside(spread - off, 0.06) * _sstep((r - 0.04) / 0.04)
    return rng.uniform(0.35, 0.5) * wedge * scene.lung[side]


def _fibrosis(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Reticular (net-like) lines, peripheral and upper zones, usually both lungs."""
    n = _value_noise(rng, 18, scene.u, scene.v) + 0.5 * _value_noise(rng, 37, scene.u, scene.v)
    g = n * 3.0
    dist = np.abs(g - np.rint(g))
    net = 1.0 - _sstep(dist / 0.14)
    both = rng.random() < 0.8
    first = int(rng.integers(2))
    out = np.zeros_like(scene.u)
    density = rng.uniform(0.22, 0.32)
    for side in (0, 1):
        if not both and side != first:
            continue
        sd = scene.anat.sides[side]
        a = scene.lateral(side)
        peripheral = _sstep((a - (sd.a_lat - 0.13)) / 0.07)
        upper = _sstep(((sd.hilum_v + 0.02) - scene.v) / 0.1)
        out += density * net * np.maximum(peripheral, upper) * scene.lung[side]
    return out


def _pleural_thickening(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """A thin bright band along the lateral chest wall or over the apex."""
    side = int(rng.integers(2))
    sd = scene.anat.sides[side]
    a, v = scene.lateral(side), scene.v
    wall = scene.wall_distance(side)
    width = rng.uniform(0.016, 0.028)
    band = _inside(wall + 0.003, 0.004) * _inside(width - wall, 0.006)
    if rng.random() < 0.6:
        top = rng.uniform(sd.v_c - 0.7 * sd.r_v, sd.dome_v - 0.2)
        extent = _inside(v - top, 0.03) * _inside(top + rng.uniform(0.12, 0.22) - v, 0.03)
        extent = extent * _sstep((a - sd.a_c) / 0.05)
    else:
        extent = _inside((sd.v_c - sd.r_v + rng.uniform(0.06, 0.1)) - v, 0.03)
    extent = extent * _inside(sd.dome(a) - v, 0.01)
    return rng.uniform(0.5, 0.7) * band * extent


def _effusion(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Fluid at a base: blunts the costophrenic angle, meniscus rising along the lateral wall."""
    first = int(rng.integers(2))
    sides = [first] + ([1 - first] if rng.random() < 0.3 else [])
    out = np.zeros_like(scene.u)
    for n_side, side in enumerate(sides):
        sd = scene.anat.sides[side]
        a, v = scene.lateral(side), scene.v
        height = rng.uniform(0.07, 0.18) * (0.6 if n_side else 1.0)
        cp = sd.dome(sd.a_lat)  # costophrenic angle level
        a0 = sd.med + 0.02
        t = np.clip((a - a0) / (sd.a_lat - a0), 0.0, 1.0)
        level = cp - height * (0.35 + 0.65 * t * t)  # meniscus: higher laterally
        fluid = _inside(v - level, 0.02) * (0.85 + 0.15 * np.clip((v - level) / 0.05, 0.0, 1.0))
        hemi = scene.hemithorax(side) * (1.0 - 0.7 * scene.heart)
        out += 0.92 * scene.anat.air * scene.thickness * fluid * hemi
    return out


def _pneumothorax(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Apical/lateral lucency without lung markings, bounded by a thin visceral pleural line."""
    side = int(rng.integers(2))
    sd = scene.anat.sides[side]
    v = scene.v
    depth = rng.uniform(0.03, 0.075)
    wall = scene.wall_distance(side)
    lowest = sd.hilum_v + rng.uniform(0.0, 0.2)
    extent = _inside(lowest - v, 0.06)
    lung = scene.lung[side]
    space = _inside(depth - wall, 0.004) * extent * lung
    line = _inside(0.0045 - np.abs(wall - depth), 0.003) * extent * lung
    an = scene.anat
    lucent = scene.vessels[side] + (0.9 - an.air) * scene.thickness
    return -space * lucent + 0.2 * line


def _hernia(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Hiatal hernia: a round retrocardiac density at the base with an air-fluid level."""
    an = scene.anat
    u0 = 0.5 + rng.uniform(0.0, 0.05)
    v0 = min(an.sides[0].dome_v, an.sides[1].dome_v) - rng.uniform(0.0, 0.04)
    rx = rng.uniform(0.05, 0.07)
    ry = rx * rng.uniform(0.8, 1.0)
    d = _ellipse_distance(scene.u - u0, scene.v - v0, rx, ry)
    inside = _inside(d, 0.008)
    level = v0 - rng.uniform(0.0, 0.4) * ry
    gas = inside * _inside(level - scene.v, 0.004) * _inside(d - 0.008, 0.006)
    return 0.35 * inside - 0.85 * gas


def _fracture(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """A displaced rib fracture: gap and a step in one posterior rib, laterally."""
    side = int(rng.integers(2))
    sd = scene.anat.sides[side]
    k = int(rng.integers(3, 8))
    v0 = sd.rib_v0 + k * sd.rib_step
    a_f = rng.uniform(0.21, 0.32)
    step = rng.uniform(0.6, 1.0) * sd.rib_thick * (1 if rng.random() < 0.5 else -1)
    gap = rng.uniform(0.008, 0.014)
    a = scene.lateral(side)
    beyond = _sstep((a - a_f) / 0.004 + 0.5)
    moved_v0 = v0 + step * beyond + rng.uniform(-0.06, 0.06) * np.clip(a - a_f, 0.0, None)
    broken = scene._rib_density(side, moved_v0) * (1.0 - _inside(gap / 2 - np.abs(a - a_f), 0.003))
    return broken - scene._rib_density(side, np.full_like(a, v0))


def _support_devices(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Tubes/lines (bright lines) and a device box (pacemaker/port) with its lead."""
    an = scene.anat
    u, v = scene.u, scene.v
    sd1 = an.sides[1]
    out = np.zeros_like(u)
    if rng.random() < 0.6:  # endotracheal tube ending above the carina
        tip = an.carina_v - rng.uniform(0.03, 0.07)
        pts = _spline([(an.trachea_u + 0.012, -0.05), (an.trachea_u + 0.004, 0.1),
                       (an.trachea_u, tip)], 4)
        out += 0.6 * _inside(0.008 - _polyline_distance(u, v, pts), 0.004)
    else:  # right jugular central line into the superior vena cava
        pts = _spline([(0.36, -0.03), (0.43, 0.1), (0.455, 0.2),
                       (0.46, an.carina_v + rng.uniform(0.0, 0.06))], 4)
        out += 0.4 * _inside(0.004 - _polyline_distance(u, v, pts), 0.004)
    if rng.random() < 0.4:  # nasogastric tube down the oesophagus to the stomach
        stomach_a = sd1.dome_a + 0.02
        sv = sd1.dome(stomach_a) + 0.06
        pts = _spline([(0.505, -0.05), (0.51, 0.35), (0.52, sd1.dome_v + 0.02),
                       (0.5 + 0.6 * stomach_a, sv + 0.01), (0.5 + stomach_a, sv)], 4)
        out += 0.35 * _inside(0.004 - _polyline_distance(u, v, pts), 0.004)
    # device box under the left clavicle; its lead runs medially along the subclavian vein,
    # down the superior vena cava, through the right atrium to the right ventricular apex
    bu, bv = 0.5 + rng.uniform(0.2, 0.27), rng.uniform(0.17, 0.22)
    bw, bh = rng.uniform(0.026, 0.034), rng.uniform(0.018, 0.024)
    box = _inside(bw - np.abs(u - bu), 0.004) * _inside(bh - np.abs(v - bv), 0.004)
    apex_u = an.heart_u + 0.45 * an.heart_rr
    lead = _spline([(bu - bw, bv + 0.005), (0.56, bv + 0.01), (0.47, an.carina_v - 0.02),
                    (0.465, an.heart_v - 0.6 * an.heart_ry), (0.51, an.heart_v - 0.15 * an.heart_ry),
                    (apex_u, an.heart_v - 0.2 * an.heart_ry)], 4)
    wire = _inside(0.0035 - _polyline_distance(u, v, lead), 0.003)
    out += 1.6 * box + 0.5 * wire * (1.0 - box)
    return out


_LESIONS: Mapping[str, Callable[[_Scene, np.random.Generator], np.ndarray]] = {
    "atelectasis": _atelectasis,
    "effusion": _effusion,
    "infiltration": _infiltration,
    "lung_opacity": _lung_opacity,
    "mass": _mass,
    "nodule": _nodule,
    "lung_lesion": _lung_lesion,
    "pneumonia": _pneumonia,
    "pneumothorax": _pneumothorax,
    "consolidation": _consolidation,
    "edema": _edema,
    "fibrosis": _fibrosis,
    "pleural_thickening": _pleural_thickening,
    "hernia": _hernia,
    "fracture": _fracture,
    "support_devices": _support_devices,
}

assert set(LESION_KIND.values()) == set(_LESIONS) | set(_MODIFIERS)
