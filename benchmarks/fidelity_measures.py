"""Ground-truth measures of sample fidelity on the phantom (pure functions, no I/O).

Localisation (per head lesion): pointing game (the map's maximum inside the lesion, 2 px
tolerance, as in bench_models.localisation), IoU of the mask with the lesion, the share of the
lesion the mask covers, and the share of the mask that lies outside every lesion of the image.

Removal, fairly: a sampler never sees the pixels under the mask, so it cannot reproduce *this*
patient's hidden texture; an absolute-error criterion punishes any plausible texture (pasted
real tissue passed only 44%). What removing a lesion means is that its *signal* is gone:
- ``signed``: the mean signed difference from the lesion-free render of the same patient over
  the lesion (the lesion's contrast, a bias) falls to at most half of what it was; texture
  that averages out does not count against a fill, a leftover opacity does;
- ``judge``: an independent classifier (trained on another phantom seed, never used for masks)
  no longer calls the removed class (probability below its val-tuned threshold); COIN,
  arXiv 2404.12832, uses the same idea of a separate classifier to check counterfactuals;
- ``absolute``: the old criterion (mean |difference| over the lesion falls to at most half),
  kept so that results stay comparable with benchmarks/results/experiment_phantom.md.
Retention of a tail lesion: its signed contrast against the render without it keeps at least
half of what it had in the ideal image.

Generator fidelity: Fréchet distance (Heusel et al., "GANs trained by a two time-scale update
rule", FID) and kernel distance (Bińkowski et al., "Demystifying MMD GANs", KID, cubic
polynomial kernel, unbiased) between feature sets from a locally trained encoder.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

HALF = 0.5


def tolerant(mask: np.ndarray, px: int = 2) -> np.ndarray:
    """The mask grown by ``px`` pixels (square)."""
    grown = F.max_pool2d(torch.from_numpy(mask).float()[None, None], 2 * px + 1, 1, px)[0, 0]
    return grown.numpy() > 0


def localisation_row(cam: np.ndarray, mask: np.ndarray, lesion: np.ndarray, all_lesions: np.ndarray) -> dict:
    """One head lesion: pointing hit, IoU, lesion coverage and mask share outside every lesion."""
    y, x = np.unravel_index(np.argmax(cam), cam.shape)
    union = (mask | lesion).sum()
    return {"hit": bool(tolerant(lesion)[y, x]) if cam.max() > 0 else False,
            "iou": float((mask & lesion).sum() / union) if union else 0.0,
            "coverage": float((mask & lesion).sum() / max(1, lesion.sum())),
            "outside": float((mask & ~all_lesions).sum() / mask.sum()) if mask.any() else 0.0}


def summarise(rows: list[tuple[str, dict]]) -> dict:
    """Per class and over all: pointing game, IoU, coverage, outside share (means), n."""
    by_class: dict[str, list[dict]] = {}
    for name, row in rows:
        by_class.setdefault(name, []).append(row)

    def means(entries: list[dict]) -> dict:
        return {"n": len(entries), "pointing_game": round(float(np.mean([e["hit"] for e in entries])), 3),
                **{k: round(float(np.mean([e[k] for e in entries])), 3) for k in ("iou", "coverage", "outside")}}
    out = {name: means(entries) for name, entries in sorted(by_class.items())}
    if rows:
        out["_all"] = means([r for _, r in rows])
    return out


def random_point_pointing(lesions: list[tuple[str, np.ndarray]]) -> dict:
    """Expected pointing game of a uniformly random point: the tolerant lesion's area share."""
    by_class: dict[str, list[float]] = {}
    for name, lesion in lesions:
        by_class.setdefault(name, []).append(float(tolerant(lesion).mean()))
    out = {name: round(float(np.mean(v)), 3) for name, v in sorted(by_class.items())}
    out["_all"] = round(float(np.mean([v for vs in by_class.values() for v in vs])), 3) if by_class else None
    return out


def removal(original: np.ndarray, new: np.ndarray, ideal: np.ndarray, lesion: np.ndarray) -> dict | None:
    """Signed and absolute removal of one lesion; None where the lesion draws nothing visible."""
    before_signed = float((original - ideal)[lesion].mean())
    before_abs = float(np.abs(original - ideal)[lesion].mean())
    if before_abs <= 1e-3:
        return None
    after_signed = float((new - ideal)[lesion].mean())
    return {"signed": abs(after_signed) <= HALF * abs(before_signed),
            "absolute": float(np.abs(new - ideal)[lesion].mean()) <= HALF * before_abs,
            "residual": round(after_signed / before_signed, 4) if abs(before_signed) > 1e-6 else 0.0}


def retention(new: np.ndarray, ideal: np.ndarray, without: np.ndarray, lesion: np.ndarray) -> bool | None:
    """A tail lesion keeps at least half of its signed contrast (against the render without it)."""
    reference = float((ideal - without)[lesion].mean())
    if abs(reference) <= 1e-3:
        return None
    return float((new - without)[lesion].mean()) / reference >= HALF


def rate(flags: list) -> float | None:
    flags = [f for f in flags if f is not None]
    return round(float(np.mean(flags)), 3) if flags else None


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two (n, d) feature sets: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = scipy.linalg.sqrtm(cov_a @ cov_b, disp=False)
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def kernel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3 (KID)."""
    d = a.shape[1]
    kaa, kbb, kab = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
    m, n = len(a), len(b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * kab.mean())


def features(encoder, images: torch.Tensor) -> np.ndarray:
    """A timm classifier's pooled penultimate features (the FID/KID encoder), 64 images at a time."""
    with torch.no_grad():
        return torch.cat([encoder.forward_head(encoder.forward_features(images[i:i + 64]), pre_logits=True)
                          for i in range(0, len(images), 64)]).double().numpy()


def distances(encoder, a: torch.Tensor, b: torch.Tensor) -> dict:
    """FID and KID of two image sets in ``encoder``'s feature space, and the set sizes."""
    fa, fb = features(encoder, a), features(encoder, b)
    return {"fid": round(frechet_distance(fa, fb), 3), "kid": round(kernel_distance(fa, fb), 5),
            "n": [len(a), len(b)]}
