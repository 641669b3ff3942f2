"""The evaluation's cost: `evaluate` with a 1000-draw bootstrap on a test split of the size the
fine-tune flow scores (212 images, 14 classes). Was a timed test; timing belongs here.

    python -m benchmarks.bench_metrics [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from benchmarks.common import save, timed
from models.metrics import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=212)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = (rng.random((args.n, 14)) < np.linspace(0.05, 0.5, 14)).astype(float)
    labels[rng.random(labels.shape) < 0.1] = np.nan
    probs = np.clip(0.35 * np.nan_to_num(labels) + 0.65 * rng.random(labels.shape), 0, 1)
    seconds, _ = timed(lambda: evaluate(probs, labels, [f"c{k}" for k in range(14)], thresholds=np.full(14, 0.5),
                                        bootstrap=args.bootstrap), args.repeats)
    path = save("bench_metrics", {"settings": vars(args), "seconds": seconds, "median_s": statistics.median(seconds)})
    print(f"evaluate, {args.bootstrap} bootstrap draws, {args.n} x 14: median {statistics.median(seconds):.2f} s "
          f"({path})")


if __name__ == "__main__":
    main()
