"""Shape and noise primitives on the pixel grid: smooth indicators, distances, splines, value
noise (all float32, coordinates in [0, 1])."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


# ----------------------------------------------------------------------------------------------
# small vectorised drawing helpers (all arrays float32, coordinates in [0, 1])

F32 = np.float32


def sstep(x: np.ndarray) -> np.ndarray:
    """Smoothstep: 0 below 0, 1 above 1, C1-smooth in between."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def inside(d: np.ndarray, w: float) -> np.ndarray:
    """Soft indicator of ``d > 0`` for a signed distance ``d``; ramp ``w`` wide, compact."""
    return sstep(d / w + 0.5)


def bump(r2: np.ndarray) -> np.ndarray:
    """(1 - r^2)^2 for r^2 < 1, else 0: a smooth compact blob."""
    t = np.clip(1.0 - r2, 0.0, 1.0)
    return t * t


def ellipse_distance(du: np.ndarray, dv: np.ndarray, ru: float, rv: float) -> np.ndarray:
    """First-order signed distance to the ellipse boundary (positive inside)."""
    f = (du / ru) ** 2 + (dv / rv) ** 2
    grad = 2.0 * np.sqrt((du / (ru * ru)) ** 2 + (dv / (rv * rv)) ** 2) + 1e-6
    return (1.0 - f) / grad


def polyline_distance(u: np.ndarray, v: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance from every pixel to a polyline through ``points`` (P, 2) in (u, v)."""
    a = points[:-1].astype(F32)
    b = points[1:].astype(F32)
    d = b - a
    len2 = np.maximum((d * d).sum(axis=1), 1e-12)
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    dx, dy = d[:, 0, None, None], d[:, 1, None, None]
    t = np.clip(((u - ax) * dx + (v - ay) * dy) / len2[:, None, None], 0.0, 1.0)
    ex = u - ax - t * dx
    ey = v - ay - t * dy
    return np.sqrt((ex * ex + ey * ey).min(axis=0))


def spline(points: list[tuple[float, float]], n: int = 6) -> np.ndarray:
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


def value_noise(rng: np.random.Generator, cells: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth random field in [0, 1] with ``cells`` lattice cells across the unit square."""
    grid = rng.random((cells + 1, cells + 1)).astype(F32)
    x = np.clip(u, 0.0, 1.0) * cells
    y = np.clip(v, 0.0, 1.0) * cells
    i = np.minimum(x.astype(np.intp), cells - 1)
    j = np.minimum(y.astype(np.intp), cells - 1)
    fx = sstep(x - i)
    fy = sstep(y - j)
    top = grid[j, i] * (1 - fx) + grid[j, i + 1] * fx
    bottom = grid[j + 1, i] * (1 - fx) + grid[j + 1, i + 1] * fx
    return top * (1 - fy) + bottom * fy


def lattice_noise(rng: np.random.Generator, nx: int, ny: int, x: np.ndarray, y: np.ndarray
                  ) -> np.ndarray:
    """Value noise on an ``nx`` x ``ny`` lattice at lattice coordinates (x, y), wrapping around."""
    grid = rng.random((ny, nx)).astype(F32)
    xf, yf = np.floor(x), np.floor(y)
    fx, fy = sstep(x - xf), sstep(y - yf)
    i0 = xf.astype(np.intp) % nx
    j0 = yf.astype(np.intp) % ny
    i1, j1 = (i0 + 1) % nx, (j0 + 1) % ny
    top = grid[j0, i0] * (1 - fx) + grid[j0, i1] * fx
    bottom = grid[j1, i0] * (1 - fx) + grid[j1, i1] * fx
    return top * (1 - fy) + bottom * fy


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=F32) + 0.5) / size
    y, x = np.meshgrid(c, c, indexing="ij")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y
