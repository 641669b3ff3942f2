"""Model-free fills of a masked region: the floors a generator must beat, and a smooth start
for the diffusion sampler.

- ``harmonic_fill``: the masked pixels solve Laplace's equation with the surrounding pixels as
  boundary values (Dirichlet problem on the 4-neighbour grid): the smoothest surface that meets
  the edge. No texture, but no bias either where the hidden tissue is smooth.

Mask convention as in ``models.inpaint``: (N, 1, H, W), 1 = regenerate. Pixels outside the
mask are returned unchanged.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch


def _harmonic_one(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """One (H, W) image: solve  4 u_p - sum_{q ~ p, q in mask} u_q = sum_{q ~ p, q outside} f_q."""
    out = image.astype(np.float64).copy()
    inside = np.argwhere(mask)
    if not len(inside):
        return out.astype(image.dtype)
    h, w = mask.shape
    index = -np.ones(mask.shape, dtype=np.int64)
    index[mask] = np.arange(len(inside))
    rows, cols, vals = [], [], []
    rhs = np.zeros(len(inside))
    for k, (y, x) in enumerate(inside):
        degree = 0
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            ny, nx = y + dy, x + dx
            if not (0 <= ny < h and 0 <= nx < w):
                continue  # the film's edge: a free (Neumann) boundary
            degree += 1
            if mask[ny, nx]:
                rows.append(k), cols.append(index[ny, nx]), vals.append(-1.0)
            else:
                rhs[k] += out[ny, nx]
        rows.append(k), cols.append(k), vals.append(float(degree))
    system = sp.csr_matrix((vals, (rows, cols)), shape=(len(inside), len(inside)))
    out[mask] = spla.spsolve(system, rhs)
    return out.astype(image.dtype)


def harmonic_fill(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) images with the masked region replaced by the harmonic interpolant of its edge.
    A mask that covers a whole image has no edge; that image is filled with its mean."""
    if images.shape != mask.shape or images.ndim != 4:
        raise ValueError(f"images {tuple(images.shape)} and mask {tuple(mask.shape)} must both be (N, 1, H, W)")
    out = []
    for image, m in zip(images[:, 0].numpy(), (mask[:, 0] > 0.5).numpy()):
        if m.all():
            out.append(np.full_like(image, image.mean()))
        else:
            out.append(_harmonic_one(image, m))
    return torch.from_numpy(np.stack(out))[:, None].to(images.dtype)
