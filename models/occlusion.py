"""Class maps by counterfactual infill: where does filling in the film take the class away?

A window slides over the image; each time, the window is filled in from its surroundings (a
smooth infill, as a lesion-free film would look there) and the classifier scores the result. A
window's evidence for class c is the drop in c's probability; a pixel's map value is the mean
drop over the windows that cover it, smoothed by a Gaussian of half a window step. Unsmoothed,
the map is constant over cells one step wide and its maximum falls on a cell's top-left corner,
up to a step away from the lesion; smoothing raised the pointing game on the phantom
(docs/benchmarks.md, benchmarks/infill_sweep.py). This is occlusion sensitivity (Zeiler & Fergus,
"Visualizing and Understanding Convolutional Networks") with an infill instead of a grey patch,
after FIDO (Chang et al., "Explaining Image Classifiers by Counterfactual Generation", ICLR
2019): a grey patch is itself an out-of-distribution object, an infill asks the question the
factory cares about, "would the classifier still see the lesion if this region were normal?".

The infill is normalised convolution (Knutsson & Westin, "Normalized and Differential
Convolution", 1993) at a quarter of the resolution: the known pixels, blurred, divided by the
blurred known-pixel weight, then upsampled. It needs no model and runs batched.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from models.device import model_device


def _gaussian(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-x**2 / (2 * sigma**2))
    return kernel / kernel.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, h, w) with replicated edges."""
    k = _gaussian(sigma).to(x.device)
    r = len(k) // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def smooth_infill(images: torch.Tensor, masks: torch.Tensor, sigma_frac: float = 0.06) -> torch.Tensor:
    """(B, 1, S, S) images with the region where ``masks`` is 1 filled from its surroundings."""
    size = images.shape[-1]
    factor = 4 if size >= 32 else 1
    known = 1.0 - masks
    low_img = F.avg_pool2d(images * known, factor)  # (B, 1, S/4, S/4)
    low_w = F.avg_pool2d(known, factor)
    sigma = max(0.5, sigma_frac * size / factor)
    fill = _blur(low_img, sigma) / _blur(low_w, sigma).clamp(min=1e-4)
    fill = F.interpolate(fill, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return images * known + fill * masks


def window_step(size: int, window: float, stride: float) -> tuple[int, int]:
    """(side, step) in pixels of the windows ``windows`` lays."""
    side = max(2, int(round(window * size)))
    return side, max(1, int(round(stride * side)))


def windows(size: int, window: float, stride: float) -> list[tuple[int, int, int]]:
    """(top, left, side) of square windows ``window`` x size wide, every ``stride`` x window."""
    side, step = window_step(size, window, stride)
    starts = list(range(0, size - side + 1, step))
    if starts[-1] != size - side:
        starts.append(size - side)
    return [(top, left, side) for top in starts for left in starts]


@torch.inference_mode()
def infill_maps(model: torch.nn.Module, images: torch.Tensor, classes: list[int], window: float, stride: float,
                batch: int = 256, smooth: bool = True) -> np.ndarray:
    """(N, S, S) maps in [0, 1]: per pixel, the mean drop of the class probability over the
    infilled windows that cover it (negative drops count as 0), smoothed by half a window step
    (``smooth=False``: not, for benchmarks/infill_sweep.py). ``window`` and ``stride`` as in
    ``models.cam.LocaliseConfig``, whose defaults are the product's.

    Rows of the same image in a row (one per class) share its infilled windows. Every (image,
    window) pair is scored in batches of ``batch`` across images, and the maps come back in one
    copy (on CUDA the classifier runs under bf16 autocast)."""
    if len(classes) != images.shape[0]:
        raise ValueError("give one target class per image row")
    model.eval()
    device = model_device(model)
    n_rows, size = images.shape[0], images.shape[-1]
    # which rows repeat the row before (compared on the host copy: no device round trip per row)
    host = images.cpu()
    firsts = [n for n in range(n_rows) if n == 0 or not torch.equal(host[n], host[n - 1])]
    owner = torch.tensor(np.searchsorted(firsts, np.arange(n_rows), side="right") - 1, device=device)
    unique = images[firsts].to(device)
    boxes = windows(size, window, stride)
    masks = torch.zeros(len(boxes), 1, size, size, device=device)
    for k, (top, left, side) in enumerate(boxes):
        masks[k, :, top:top + side, left:left + side] = 1.0
    cover = masks.sum(dim=0)[0].clamp(min=1.0)  # (S, S) windows per pixel
    sigma = window_step(size, window, stride)[1] / 2 if smooth else 0.0

    def probs(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return torch.sigmoid(model(x).float())

    base = torch.cat([probs(part) for part in unique.split(batch)])  # (U, K)
    pairs = torch.arange(len(firsts) * len(boxes), device=device)  # pair p: image p // W, window p % W
    scored = torch.cat([probs(smooth_infill(unique[p // len(boxes)], masks[p % len(boxes)]))
                        for p in pairs.split(batch)]).view(len(firsts), len(boxes), -1)  # (U, W, K)
    target = torch.tensor(classes, device=device)
    drop = (base[owner, target][:, None] - scored[owner, :, target]).clamp(min=0)  # (N, W)
    heat = torch.einsum("nw,wij->nij", drop, masks[:, 0]) / cover  # (N, S, S)
    heat = _blur(heat[:, None], sigma)[:, 0] if sigma else heat
    return (heat / heat.amax(dim=(1, 2), keepdim=True).clamp(min=1e-7)).float().cpu().numpy()
