"""Label model: the vocabulary's published prevalence, calibrated once per vocabulary, and
co-occurrence through a thresholded correlated Gaussian (copula)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Mapping

import numpy as np

from tasks.labels import Vocabulary
from tasks.phantom.checks import resolve_vocab

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


# ----------------------------------------------------------------------------------------------
# label model: normal first, then a thresholded correlated Gaussian conditioned on "any finding"


def sample_labels(rng: np.random.Generator, vocab: Vocabulary) -> np.ndarray:
    """One (K,) float32 0/1 label vector with the vocabulary's published prevalence.

    ``vocab`` may also be a vocabulary name. Cheap: no image is drawn.
    """
    vocab = resolve_vocab(vocab)
    model = label_model(vocab)
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


@dataclass(frozen=True)
class LabelModel:
    p_normal: float
    q: np.ndarray  # P(finding | abnormal)
    chol: np.ndarray  # (K, K) Cholesky factor of the latent correlation
    thresholds: np.ndarray  # (K,)


_CALIBRATION_SAMPLES = 120_000
_CALIBRATION_SEED = 20_171_122


def label_model(vocab: Vocabulary) -> LabelModel:
    key = (vocab.name, vocab.findings, vocab.normal_label,
           tuple(sorted(vocab.counts.items())), vocab.total)
    return _calibrate(key)


@lru_cache(maxsize=16)
def _calibrate(key: tuple) -> LabelModel:
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
    return LabelModel(p_normal=p_normal, q=q, chol=chol, thresholds=thresholds)


def _normal_isf(p: float) -> float:
    """The t with P(Z > t) = p for a standard normal Z (+-inf at 0 and 1)."""
    if p <= 0.0:
        return math.inf
    if p >= 1.0:
        return -math.inf
    return -NormalDist().inv_cdf(p)  # P(Z > t) = P(Z < -t)


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
