"""How a generated row is accepted: the removal check (``verdict``) and its tallies."""

from __future__ import annotations

import numpy as np


def present(labels: np.ndarray, findings: list[str], among: list[str]) -> list[str]:
    """The findings of ``among`` that a label row (1.0 = present) holds, in vocabulary order."""
    return [findings[k] for k in np.nonzero(np.asarray(labels) == 1.0)[0] if findings[k] in among]


def verdict(remove: tuple[str, ...], tail: list[str], findings: list[str], before: np.ndarray, after: np.ndarray,
            thresholds: list[float], tail_margin: float, quality: float, quality_max_z: float,
            ood: tuple | None = None) -> str:
    """"ok" when the removal is verified, else the first reason it is not: the classifier still
    calls a removed class (probability >= its threshold), a tail class it called before falls
    below min(threshold, before - margin), or the image is out of distribution (its nearest
    real image is too far, or its OOD score, ``ood`` = (score, threshold, what), is above the
    threshold calibrated on held-out real images)."""
    for name in remove:
        k = findings.index(name)
        if after[k] >= thresholds[k]:
            return f"removal_unverified: {name} p={after[k]:.2f} >= {thresholds[k]:.2f}"
    for name in tail:
        k = findings.index(name)
        if before[k] >= thresholds[k] and after[k] < min(thresholds[k], before[k] - tail_margin):
            return f"tail_lost: {name} p={before[k]:.2f} -> {after[k]:.2f}"
    if quality > quality_max_z:
        return f"out_of_distribution: z={quality:.1f} > {quality_max_z:g}"
    if ood is not None and ood[0] > ood[1]:
        return f"out_of_distribution: {ood[2]}={ood[0]:.2f} > {ood[1]:.2f}"
    return "ok"


def _by_class(removed: list[tuple[str, ...]], verdicts: list[str]) -> dict[str, list[int]]:
    """Removed class -> [rows written, rows accepted]."""
    out: dict[str, list[int]] = {}
    for names, v in zip(removed, verdicts):
        for name in names:
            entry = out.setdefault(name, [0, 0])
            entry[0] += 1
            entry[1] += v == "ok"
    return out


def _reasons(verdicts: list[str]) -> dict[str, int]:
    """Rejected rows by kind (the text before the colon)."""
    out: dict[str, int] = {}
    for v in verdicts:
        if v != "ok":
            kind = v.split(":", 1)[0]
            out[kind] = out.get(kind, 0) + 1
    return out
