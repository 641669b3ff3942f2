"""Several fine-tuning settings, each trained with several seeds, scored on the same test
images with paired bootstrap intervals: the comparison every experiment table reports
(benchmarks/experiment.py, benchmarks/paper.py). The product's report scores one run
(models.metrics.evaluate); the per-image metric math is shared from there.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from models.metrics import (METRICS, all_metrics, as_inputs, finite_or_none, percentile_interval, row_nanmean,
                            thresholds_vector)


def compare_settings(runs: dict[str, list[tuple[np.ndarray, np.ndarray | None]]], labels, class_names: Sequence[str],
                     head: Sequence[str] = (), tail: Sequence[str] = (), baseline: str | None = None,
                     bootstrap: int = 1000, seed: int = 0, progress: Callable[[str], None] | None = None) -> dict:
    """Several settings, each trained with several seeds, scored on the same test images.

    ``runs`` maps a setting to one (probs (N, K), val-tuned thresholds (K,) or None) per seed.
    Each metric is the mean over the seeds. 95% intervals come from one bootstrap of the test
    images shared by every setting and seed, so the gain of a setting over ``baseline`` (the
    difference of the seed means) gets a paired interval. ``seed_sd`` is the spread over seeds
    (sample standard deviation). Classes without test positives or negatives are left out of
    the means, as in ``evaluate``. ``gain_seed_sd`` is the spread over seeds of the per-seed gain
    (seed i of a setting against seed i of the baseline): the intervals do not include it.
    ``progress``, if given, gets a line after each setting is scored.
    """
    if not runs or any(not seeds for seeds in runs.values()):
        raise ValueError("give at least one seed's (probs, thresholds) for every setting")
    if baseline is not None and baseline not in runs:
        raise ValueError(f"baseline {baseline!r} is not one of the settings {sorted(runs)}")
    y = as_inputs(next(iter(runs.values()))[0][0], labels)[1]
    n, k = y.shape
    names = [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"class_names must have {k} names, got {len(names)}")
    ok = [j for j in range(k) if (y[:, j] == 1).any() and (y[:, j] == 0).any()]
    groups = {"macro": ok, "head": [j for j in ok if names[j] in set(head)],
              "tail": [j for j in ok if names[j] in set(tail)]}
    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones((1, n)), rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap)])  # row 0: point

    def scored(probs, thresholds) -> dict[str, np.ndarray]:  # metric -> (1 + B, K)
        p = as_inputs(probs, y)[0]
        t = None if thresholds is None else thresholds_vector(thresholds, k)
        return all_metrics(p, y, weights, t)

    # a resample in which a class has no positives or no negatives cannot score it; a group mean's
    # interval uses only the resamples where every class of the group is defined, so the mean is
    # over the same classes in every resample (a mean that silently drops a rare class is biased)
    defined = (weights @ (y == 1) > 0) & (weights @ (y == 0) > 0)  # (1 + B, K)
    usable = {g: np.concatenate([[True], defined[1:, idx].all(axis=1)]) if idx else np.ones(1 + bootstrap, bool)
              for g, idx in groups.items()}
    per_seed = {}
    for done, (s, seeds) in enumerate(runs.items(), start=1):
        per_seed[s] = [scored(p, t) for p, t in seeds]
        if progress:  # a large test set with many resamples takes minutes
            progress(f"scored {s} ({done}/{len(runs)} settings, {len(seeds)} seeds, {n} images, {bootstrap} resamples)")
    mean = {s: {m: np.mean([r[m] for r in rs], axis=0) for m in METRICS} for s, rs in per_seed.items()}

    def summary(values: np.ndarray, seeds: list[np.ndarray], base: np.ndarray | None,
                keep: np.ndarray | None = None, base_seeds: list[np.ndarray] | None = None) -> dict:
        """values (1 + B,) seed means; seeds: (1 + B,) per seed; base, base_seeds: the baseline's;
        keep (1 + B,): the resamples the interval may use."""
        if keep is not None:
            values, seeds = values[keep], [v[keep] for v in seeds]
            base = None if base is None else base[keep]
        out = {"value": finite_or_none(values[0]), "ci95": percentile_interval(values[1:]) if bootstrap else None,
               "seed_sd": finite_or_none(float(np.std([v[0] for v in seeds], ddof=1))) if len(seeds) > 1 else None}
        if base is not None:
            out["gain"] = finite_or_none(values[0] - base[0])
            out["gain_ci95"] = percentile_interval(values[1:] - base[1:]) if bootstrap else None
            if base_seeds is not None and len(seeds) == len(base_seeds) > 1:  # seed i against baseline seed i
                out["gain_seed_sd"] = finite_or_none(float(np.std([v[0] - b[0] for v, b in zip(seeds, base_seeds)], ddof=1)))
        return out

    result: dict = {}
    for s in runs:
        base = mean[baseline] if baseline is not None and s != baseline else None
        base_runs = per_seed[baseline] if base is not None else None
        classes = {names[j]: {m: summary(mean[s][m][:, j], [r[m][:, j] for r in per_seed[s]],
                                         None if base is None else base[m][:, j], None,
                                         None if base is None else [r[m][:, j] for r in base_runs])
                              for m in METRICS} for j in ok}
        means = {}
        for group, idx in groups.items():
            means[group] = {m: summary(row_nanmean(mean[s][m][:, idx]), [row_nanmean(r[m][:, idx]) for r in per_seed[s]],
                                       None if base is None else row_nanmean(base[m][:, idx]), usable[group],
                                       None if base is None else [row_nanmean(r[m][:, idx]) for r in base_runs])
                            if idx and not (m == "f1_tuned" and runs[s][0][1] is None) else None for m in METRICS}
        result[s] = {"seeds": len(runs[s]), "classes": classes, "means": means}
    return {"settings": result, "baseline": baseline, "n_images": int(n),
            "excluded": {names[j]: "no_positives" if not (y[:, j] == 1).any() else "no_negatives"
                         for j in range(k) if j not in ok},
            "groups": {g: [names[j] for j in idx] for g, idx in groups.items()},
            "bootstrap": {"resamples": int(bootstrap), "seed": int(seed), "interval": "95% percentile",
                          "unit": "test image, shared by every setting and seed (paired gains)",
                          "group_resamples_used": {g: int(keep[1:].sum()) for g, keep in usable.items()},
                          "group_means": "resamples where a class of the group is undefined are left out"}}
