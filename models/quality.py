"""Sample fidelity and a quality/out-of-distribution score for generated images.

Both rest on nearest-real-neighbour distance: images are block-averaged to a small side,
standardised per image (mean 0, std 1, so exposure does not dominate), and compared by RMS
difference. A generated image far from every real normal is out of distribution; a sample
set whose distances match held-out real images' distances is faithful; distances far *below*
held-out ones would mean copying the training set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def embed(images01: torch.Tensor, side: int = 32) -> torch.Tensor:
    """(N, 1, S, S) in [0, 1] -> (N, side*side) standardised thumbnails."""
    small = F.adaptive_avg_pool2d(images01.float(), side).flatten(1)  # (N, side*side)
    small = small - small.mean(dim=1, keepdim=True)
    return small / small.std(dim=1, keepdim=True).clamp(min=1e-6)


def nn_distances(queries: torch.Tensor, reference: torch.Tensor, side: int = 32, chunk: int = 512) -> np.ndarray:
    """RMS distance of each query to its nearest reference image (embedded)."""
    q, r = embed(queries, side), embed(reference, side)
    out = []
    for start in range(0, q.shape[0], chunk):
        d2 = torch.cdist(q[start:start + chunk], r).pow(2) / q.shape[1]  # (n, M) mean squared difference
        out.append(d2.min(dim=1).values.sqrt())
    return torch.cat(out).numpy() if out else np.zeros(0)


def fidelity(samples: torch.Tensor, held_out: torch.Tensor, train: torch.Tensor, side: int = 32) -> dict:
    """NN distance to the training normals: of the samples vs of held-out real normals."""
    sample_d = nn_distances(samples, train, side)
    real_d = nn_distances(held_out, train, side)
    return {"samples_nn_mean": float(sample_d.mean()), "held_out_nn_mean": float(real_d.mean()),
            "ratio": float(sample_d.mean() / max(real_d.mean(), 1e-9)),
            "samples_nn_median": float(np.median(sample_d)), "held_out_nn_median": float(np.median(real_d))}


@dataclass
class QualityScorer:
    """Robust z-score of an image's NN distance against real-to-real NN distances. Fit on real
    normals (or the dataset's real images); the cut-off is the augment verdict's
    (tasks/augment, ``quality_max_z``)."""

    reference: torch.Tensor  # (M, 1, S, S) real images
    side: int = 32

    def __post_init__(self) -> None:
        if self.reference.shape[0] < 3:
            raise ValueError("a quality reference needs at least 3 real images")
        half = self.reference.shape[0] // 2
        baseline = nn_distances(self.reference[:half], self.reference[half:], self.side)
        self.median = float(np.median(baseline))
        q75, q25 = np.percentile(baseline, [75, 25])
        self.scale = float(max(q75 - q25, 1e-6))

    def score(self, images01: torch.Tensor) -> np.ndarray:
        return (nn_distances(images01, self.reference, self.side) - self.median) / self.scale
