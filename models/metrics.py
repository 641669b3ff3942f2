"""Per-class F1 / AP / AUROC, tuned thresholds, head/tail means and bootstrap CIs (numpy only).

Conventions (all functions take scores first, labels second):
- probs (N, K) in [0, 1]; labels (N, K) with 1 / 0 / NaN (unknown). NaN entries are ignored
  per class: a class is scored on the images where its label is known.
- A prediction is positive when ``prob >= threshold``; F1 at 0.5 is what the paper reports.
- AP is the step-wise sum  sum_n (R_n - R_(n-1)) P_n  over distinct score thresholds (the
  definition of sklearn's ``average_precision_score``, no interpolation).
- AUROC is the Mann-Whitney statistic: the share of (positive, negative) pairs ranked in the
  right order, ties counting one half (equal to the trapezoidal ROC area with tied scores
  grouped).
- A metric is undefined for a class (or a bootstrap resample) without positives or without
  negatives. Low-level functions return NaN there; ``evaluate`` reports the class with an
  explicit status, None values and leaves it out of the means, saying so.

Everything is computed through weighted counts: a percentile bootstrap over images is a
matrix of resampling counts (B, N), so 1,000 resamples cost a few matrix products and one
cumulative sum per class.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METRICS = ("f1_at_0.5", "f1_tuned", "ap", "auroc")
_CI = (2.5, 97.5)  # percentile bounds of the 95% interval
_CELLS_PER_CHUNK = 4_000_000  # bootstrap rows are processed in chunks of about this many cells


def as_inputs(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 copies, both (N, K) (1-D inputs become one column)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.ndim == 1 and y.ndim == 1:  # one class
        p, y = p[:, None], y[:, None]
    if p.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"probs {p.shape} and labels {y.shape} must both be (N, K)")
    if not np.isfinite(p).all():
        raise ValueError("probs hold NaN or inf: score every image")
    known = y[~np.isnan(y)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 1, 0 or NaN (unknown); found {sorted(set(known.tolist()) - {0.0, 1.0})[:5]}")
    return p, y


def thresholds_vector(thresholds, k: int) -> np.ndarray:
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (k,)).copy()
    if not np.all((t >= 0) & (t <= 1)):
        raise ValueError(f"thresholds must lie in [0, 1], got {t}")
    return t


def _weighted_f1(w: np.ndarray, pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """F1 per (resample, class): w (B, N) image weights, pred (N, K) bool, y (N, K) 1/0/NaN -> (B, K)."""
    pos, neg = (y == 1).astype(np.float64), (y == 0).astype(np.float64)  # NaN is neither
    tp = w @ (pred * pos)
    fp = w @ (pred * neg)
    n_pos, n_neg = w @ pos, w @ neg
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * tp / (tp + fp + n_pos)  # 2TP / (2TP + FP + FN), since TP + FN = positives
    f1[(n_pos == 0) | (n_neg == 0)] = np.nan
    return f1


def _weighted_ranking(scores: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP and AUROC per resample for one class: scores (n,), y (n,) in {0, 1}, w (B, n) -> (B,), (B,)."""
    order = np.argsort(-scores, kind="mergesort")
    s, yy, ww = scores[order], y[order], w[:, order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # last index of each tie group
    tp = np.cumsum(ww * yy, axis=1)[:, last]  # (B, G) weighted positives scoring >= group score
    fp = np.cumsum(ww * (1 - yy), axis=1)[:, last]  # (B, G)
    n_pos, n_neg = tp[:, -1], fp[:, -1]
    d_tp = np.diff(tp, axis=1, prepend=0.0)
    d_fp = np.diff(fp, axis=1, prepend=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        ap = (d_tp * precision).sum(axis=1) / n_pos
        auroc = (d_fp * (tp - d_tp + 0.5 * d_tp)).sum(axis=1) / (n_pos * n_neg)
    bad = (n_pos == 0) | (n_neg == 0)
    ap[bad], auroc[bad] = np.nan, np.nan
    return ap, auroc


def _per_class_ranking(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP and AUROC (B, K) for weights w (B, N), each class on its known labels."""
    b, k = w.shape[0], p.shape[1]
    ap, auroc = np.full((b, k), np.nan), np.full((b, k), np.nan)
    for j in range(k):
        known = ~np.isnan(y[:, j])
        if known.any():
            ap[:, j], auroc[:, j] = _weighted_ranking(p[known, j], y[known, j], w[:, known])
    return ap, auroc


def f1_per_class(probs, labels, thresholds=0.5) -> np.ndarray:
    """F1 per class (K,) predicting ``prob >= threshold`` (a scalar or one per class); NaN when undefined."""
    p, y = as_inputs(probs, labels)
    t = thresholds_vector(thresholds, p.shape[1])
    return _weighted_f1(np.ones((1, p.shape[0])), p >= t, y)[0]


def average_precision(scores, labels) -> float:
    """Step-wise average precision of one class (NaN labels ignored); NaN without positives or negatives."""
    p, y = as_inputs(np.ravel(scores), np.ravel(labels))
    return float(_per_class_ranking(p, y, np.ones((1, p.shape[0])))[0][0, 0])


def auroc(scores, labels) -> float:
    """Area under the ROC curve of one class, ties counting one half; NaN without positives or negatives."""
    p, y = as_inputs(np.ravel(scores), np.ravel(labels))
    return float(_per_class_ranking(p, y, np.ones((1, p.shape[0])))[1][0, 0])


def tune_thresholds_with_flags(probs_val, labels_val, default: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-class thresholds (K,) maximising F1 on val, and flags (K,) for classes left at ``default``.

    The threshold is the midpoint between the best cut's score and the next lower distinct score
    (so the val predictions are those of the best cut, with a margin either side); among equal
    F1 the highest cut wins. A class with no known positive in val cannot be tuned: it keeps
    ``default`` and is flagged.
    """
    p, y = as_inputs(probs_val, labels_val)
    k = p.shape[1]
    thresholds, flagged = np.full(k, float(default)), np.zeros(k, dtype=bool)
    for j in range(k):
        known = ~np.isnan(y[:, j])
        s, yy = p[known, j], y[known, j]
        if yy.sum() == 0:
            flagged[j] = True
            continue
        order = np.argsort(-s, kind="mergesort")
        s, yy = s[order], yy[order]
        last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
        tp, fp = np.cumsum(yy)[last], np.cumsum(1 - yy)[last]  # (G,) at each distinct cut
        f1 = 2 * tp / (tp + fp + yy.sum())
        best = int(np.argmax(f1))
        below = s[last[best + 1]] if best + 1 < last.size else 0.0
        thresholds[j] = 0.5 * (s[last[best]] + below)
    return thresholds, flagged


def tune_thresholds(probs_val, labels_val, default: float = 0.5) -> np.ndarray:
    """Per-class thresholds (K,) maximising F1 on val (see ``tune_thresholds_with_flags``)."""
    return tune_thresholds_with_flags(probs_val, labels_val, default)[0]


def all_metrics(p: np.ndarray, y: np.ndarray, w: np.ndarray, thresholds: np.ndarray | None) -> dict[str, np.ndarray]:
    """Every metric as (B, K) for image weights w (B, N)."""
    out = {"f1_at_0.5": _weighted_f1(w, p >= 0.5, y)}
    out["f1_tuned"] = (_weighted_f1(w, p >= thresholds, y) if thresholds is not None
                       else np.full_like(out["f1_at_0.5"], np.nan))
    out["ap"], out["auroc"] = _per_class_ranking(p, y, w)
    return out


def _bootstrap(p, y, thresholds, resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Metrics (B, K) on ``resamples`` percentile-bootstrap resamples of the images (seeded)."""
    n = p.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, _CELLS_PER_CHUNK // max(n, 1))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, resamples, chunk):
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, resamples - start))  # (b, N)
        parts.append(all_metrics(p, y, counts.astype(np.float64), thresholds))
    return {m: np.concatenate([part[m] for part in parts]) for m in METRICS}


def row_nanmean(a: np.ndarray) -> np.ndarray:
    """Mean over the finite entries of each row (B, C) -> (B,); NaN for a row with none."""
    finite = np.isfinite(a)
    count = finite.sum(axis=1)
    total = np.where(finite, a, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def finite_or_none(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def percentile_interval(samples: np.ndarray | None) -> list[float] | None:
    """95% percentile interval of the defined samples, or None when there are none."""
    if samples is None:
        return None
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return None
    lo, hi = np.percentile(samples, _CI)
    return [float(lo), float(hi)]


def evaluate(probs, labels, class_names: Sequence[str], head: Sequence[str] = (), tail: Sequence[str] = (),
             thresholds=None, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Per-class F1 (at 0.5 and at ``thresholds``), AP, AUROC; macro/head/tail means; 95% bootstrap CIs.

    probs (N, K), labels (N, K) 1/0/NaN, class_names (K,). ``thresholds`` (K,) are the ones tuned
    on val (never tune on the split being evaluated); without them f1_tuned is None.
    ``bootstrap`` resamples of the images (0 = no intervals), seeded by ``seed``.
    Returns a JSON-serialisable dict of plain floats, ints, strings and None.
    """
    p, y = as_inputs(probs, labels)
    n, k = p.shape
    names = [str(c) for c in class_names]
    if len(names) != k or len(set(names)) != k:
        raise ValueError(f"class_names must be {k} distinct names (one per column), got {len(names)}")
    for group, members in (("head", head), ("tail", tail)):
        unknown = sorted(set(members) - set(names))
        if unknown:
            raise ValueError(f"{group} classes {unknown} are not in class_names")
    if set(head) & set(tail):
        raise ValueError(f"classes cannot be both head and tail: {sorted(set(head) & set(tail))}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0 resamples, got {bootstrap}")
    t = None if thresholds is None else thresholds_vector(thresholds, k)

    positives, negatives = (y == 1).sum(axis=0), (y == 0).sum(axis=0)
    status = ["no_positives" if positives[j] == 0 else "no_negatives" if negatives[j] == 0 else "ok"
              for j in range(k)]
    point = {m: v[0] for m, v in all_metrics(p, y, np.ones((1, n)), t).items()}  # metric -> (K,)
    boot = _bootstrap(p, y, t, bootstrap, seed) if bootstrap else None  # metric -> (B, K)

    classes = {}
    for j, name in enumerate(names):
        ok = status[j] == "ok"
        entry = {"status": status[j], "positives": int(positives[j]), "negatives": int(negatives[j]),
                 "unknown": int(n - positives[j] - negatives[j]),
                 "threshold": None if t is None else float(t[j])}
        entry.update({m: finite_or_none(point[m][j]) if ok else None for m in METRICS})
        entry["ci95"] = {m: percentile_interval(boot[m][:, j]) if ok and boot is not None and entry[m] is not None else None
                         for m in METRICS}
        classes[name] = entry

    def group(members: Sequence[str]) -> dict:
        idx = [names.index(c) for c in members if status[names.index(c)] == "ok"]
        out: dict = {"classes": [names[j] for j in idx],
                     "excluded": {c: status[names.index(c)] for c in members if status[names.index(c)] != "ok"}}
        for m in METRICS:
            defined = bool(idx) and not (m == "f1_tuned" and t is None)
            out[m] = finite_or_none(float(np.mean(point[m][idx]))) if defined else None
        out["ci95"] = {m: percentile_interval(row_nanmean(boot[m][:, idx])) if out[m] is not None and boot is not None
                       else None for m in METRICS}
        return out

    return {
        "n_images": int(n),
        "classes": classes,
        "means": {"macro": group(names), "head": group(list(head)), "tail": group(list(tail))},
        "excluded": {c: s for c, s in zip(names, status) if s != "ok"},
        "thresholds": None if t is None else [float(v) for v in t],
        "bootstrap": {"resamples": int(bootstrap), "seed": int(seed), "interval": "95% percentile",
                      "unit": "image", "means": "a class undefined in a resample is skipped in that resample's mean"},
    }
