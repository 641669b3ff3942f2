"""Class maps -> binary inpainting masks.

Threshold relative to the map's maximum (or Otsu), dilate, union over the classes being
removed, then check the area: too small is ``empty``, more than ``max_area`` of the image is
``too_large`` (a mask over most of the chest would repaint the tail lesion too). These are
reported outcomes, not errors. The findings an image keeps mark a ``protected_region`` the mask
leaves out.

``placement="random"`` is the control for the method: the same mask, shape and area, moved to
a random place in the image (``relocate``), so a gain from inpainting CAM regions can be told
apart from a gain from repainting any region of that size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

OUTCOMES = ("ok", "empty", "too_large", "not_detected", "on_kept")
MASK_METHODS = ("relative", "otsu")  # mask.method: threshold x the map's max, or Otsu's threshold
PLACEMENTS = ("cam", "random")  # mask.placement: where the map is, or moved to a random place (control)


@dataclass(frozen=True)
class MaskConfig:
    method: Literal[MASK_METHODS] = "relative"  # "relative" (threshold x map max) or "otsu"
    threshold: float = 0.5  # for "relative"
    dilate_px: int = 6  # grow the mask by this many pixels (square structuring element)
    min_area: float = 0.005  # smaller union -> "empty" (fraction of the image)
    max_area: float = 0.35  # larger union -> "too_large"
    placement: Literal[PLACEMENTS] = "cam"  # "cam": where the map is; "random": the same mask moved to a random place (control)
    protect: float = 0.2  # a finding the image keeps: where its map is >= this x its max is never repainted (0: off)

    def __post_init__(self) -> None:
        if self.method not in MASK_METHODS or self.placement not in PLACEMENTS:
            raise ValueError(f"mask method must be one of {MASK_METHODS} and placement one of {PLACEMENTS}")
        if not 0 < self.threshold < 1 or not 0 <= self.min_area < self.max_area <= 1 or self.dilate_px < 0:
            raise ValueError("need 0 < threshold < 1, 0 <= min_area < max_area <= 1, dilate_px >= 0")
        if not 0 <= self.protect < 1:
            raise ValueError("need 0 <= protect < 1 (0: kept findings are not protected)")


@dataclass(frozen=True)
class MaskResult:
    mask: np.ndarray  # (H, W) bool, True = regenerate; all False unless outcome == "ok"
    outcome: str  # one of OUTCOMES: not_detected = the gate (the classifier calls no class to remove);
    # on_kept = the mask lay on findings the image keeps and too little was left once they were taken out
    area: float  # fraction of the image the union covered
    protected: np.ndarray | None = None  # (H, W) bool: where the findings the image keeps are (never repainted)


def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold (max between-class variance) of values in [0, 1]."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * centres)
    total, grand = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (grand * weight - total * mean) ** 2 / (weight * (total - weight))
    return float(centres[int(np.nanargmax(np.nan_to_num(between, nan=-1)))])


def map_to_mask(cam: np.ndarray, config: MaskConfig) -> np.ndarray:
    """One (H, W) map -> thresholded, dilated bool mask (no area check)."""
    top = float(cam.max())
    if top <= 0:
        return np.zeros(cam.shape, dtype=bool)
    level = config.threshold * top if config.method == "relative" else otsu_threshold(cam / top) * top
    mask = torch.from_numpy(cam >= level).float()[None, None]  # (1, 1, H, W)
    if config.dilate_px:
        k = 2 * config.dilate_px + 1
        mask = F.max_pool2d(mask, kernel_size=k, stride=1, padding=config.dilate_px)
    return mask[0, 0].numpy() > 0.5


def protected_region(maps: list[np.ndarray], shape: tuple[int, int], config: MaskConfig,
                     removed: list[np.ndarray] = ()) -> np.ndarray:
    """Where the findings an image keeps are: the strongest of the kept classes' maps (each
    relative to its own maximum) >= ``config.protect`` (nothing when protection is off); a pixel
    where the strongest map of the classes being removed (``removed``) is stronger still is
    theirs: without that second rule a wider protection kept the tail lesions but cost the head
    removal beside them (the phantom's retention set, benchmarks/fidelity.py; docs/benchmarks.md)."""
    if config.protect <= 0 or not maps:
        return np.zeros(shape, dtype=bool)
    kept = _strongest(maps)
    region = kept >= config.protect
    return region & (kept > _strongest(removed)) if len(removed) else region


def _strongest(maps: list[np.ndarray]) -> np.ndarray:
    """Per pixel, the largest of the maps, each divided by its own maximum."""
    return np.max([m / m.max() if m.max() > 0 else m for m in maps], axis=0)


def union_mask(maps: list[np.ndarray], shape: tuple[int, int], config: MaskConfig,
               protected: np.ndarray | None = None) -> MaskResult:
    """Union of the masks of the classes being removed, less the ``protected`` region (the
    findings the image keeps), with the area check."""
    union = np.zeros(shape, dtype=bool)
    for cam in maps:
        union |= map_to_mask(cam, config)
    if protected is not None and protected.any():
        before = float(union.mean())
        union &= ~protected
        if before >= config.min_area and union.mean() < config.min_area:
            return MaskResult(np.zeros(shape, dtype=bool), "on_kept", float(union.mean()), protected)
    area = float(union.mean())
    if area < config.min_area or not union.any():
        return MaskResult(np.zeros(shape, dtype=bool), "empty", area, protected)
    if area > config.max_area:
        return MaskResult(np.zeros(shape, dtype=bool), "too_large", area, protected)
    return MaskResult(union, "ok", area, protected)


def relocate(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same mask (shape and pixel count) moved so its bounding box lies at a uniformly
    random position inside the image."""
    if not mask.any():
        return mask.copy()
    rows, cols = np.nonzero(mask)
    crop = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    top = int(rng.integers(0, mask.shape[0] - crop.shape[0] + 1))
    left = int(rng.integers(0, mask.shape[1] - crop.shape[1] + 1))
    moved = np.zeros_like(mask)
    moved[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    return moved
