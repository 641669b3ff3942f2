"""Grad-CAM maps for the head classes to remove, and maps -> binary inpainting masks.

Maps come from pytorch-grad-cam (Selvaraju et al., "Grad-CAM"; GradCAM++, LayerCAM and
EigenCAM selectable), batched with one target class per row. Target layer: the deepest
stage in timm's ``feature_info`` whose map is at least ``min_side`` pixels wide at the input
size (at 64 px a ResNet's last stage is 2x2; this picks layer2, 8x8). Vision transformers
get a reshape transform from tokens to a grid.

Map -> mask: threshold relative to the map's maximum (or Otsu), dilate, union over the
classes being removed, then check the area: too small is ``empty``, more than ``max_area``
of the image is ``too_large`` (a mask over most of the chest would repaint the tail lesion
too). Both are reported outcomes, not errors.

``placement="random"`` is the control for the method: the same mask, shape and area, moved to
a random place in the image (``relocate``), so a gain from inpainting CAM regions can be told
apart from a gain from repainting any region of that size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import models  # noqa: F401  (torchvision guard before pytorch_grad_cam)
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

CAM_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM, "eigencam": EigenCAM}
OUTCOMES = ("ok", "empty", "too_large")


@dataclass(frozen=True)
class MaskConfig:
    method: str = "relative"  # "relative" (threshold x map max) or "otsu"
    threshold: float = 0.5  # for "relative"
    dilate_px: int = 2  # grow the mask by this many pixels (square structuring element)
    min_area: float = 0.005  # smaller union -> "empty" (fraction of the image)
    max_area: float = 0.35  # larger union -> "too_large"
    placement: str = "cam"  # "cam": where the map is; "random": the same mask moved to a random place (control)

    def __post_init__(self) -> None:
        if self.method not in ("relative", "otsu"):
            raise ValueError("mask method must be 'relative' or 'otsu'")
        if self.placement not in ("cam", "random"):
            raise ValueError("mask placement must be 'cam' or 'random'")
        if not 0 < self.threshold < 1 or not 0 <= self.min_area < self.max_area <= 1 or self.dilate_px < 0:
            raise ValueError("need 0 < threshold < 1, 0 <= min_area < max_area <= 1, dilate_px >= 0")


@dataclass(frozen=True)
class MaskResult:
    mask: np.ndarray  # (H, W) bool, True = regenerate; all False unless outcome == "ok"
    outcome: str  # ok | empty | too_large
    area: float  # fraction of the image the union covered


def default_target_layer(model: torch.nn.Module, image_size: int, min_side: int = 8) -> tuple[str, torch.nn.Module]:
    """(name, module) of the deepest feature stage with a map >= ``min_side`` at ``image_size``."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError("the model has no timm feature_info; pass target_layer explicitly")
    stages = [(f["module"], image_size // f["reduction"]) for f in info]
    wide = [name for name, side in stages if side >= min_side]
    name = wide[-1] if wide else max(stages, key=lambda s: s[1])[0]
    return name, model.get_submodule(name)


def _reshape_transform(model: torch.nn.Module, image_size: int):
    """Tokens (N, T, C) or NHWC maps -> (N, C, h, w) for transformers; None for CNNs."""
    prefix = getattr(model, "num_prefix_tokens", None)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if prefix is not None and patch is not None:  # ViT
        side = image_size // (patch[0] if isinstance(patch, tuple) else patch)

        def tokens_to_grid(x):
            return x[:, prefix:, :].reshape(x.shape[0], side, side, x.shape[-1]).permute(0, 3, 1, 2)
        return tokens_to_grid
    if type(model).__name__.startswith("SwinTransformer"):
        return lambda x: x.permute(0, 3, 1, 2)  # timm swin stages are NHWC
    return None


def cam_maps(model: torch.nn.Module, images: torch.Tensor, classes: list[int], method: str = "gradcam",
             target_layer: torch.nn.Module | None = None) -> np.ndarray:
    """(N, H, W) maps in [0, 1], one row per (image, class) pair; ``images`` is (N, 1, H, W)."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {sorted(CAM_METHODS)}")
    if len(classes) != images.shape[0]:
        raise ValueError("give one target class per image row")
    size = images.shape[-1]
    layer = target_layer if target_layer is not None else default_target_layer(model, size)[1]
    model.eval()
    with CAM_METHODS[method](model=model, target_layers=[layer],
                             reshape_transform=_reshape_transform(model, size)) as cam:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    return np.nan_to_num(np.asarray(maps, dtype=np.float32))  # (N, H, W)


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


def union_mask(maps: list[np.ndarray], shape: tuple[int, int], config: MaskConfig) -> MaskResult:
    """Union of the masks of the classes being removed, with the area check."""
    union = np.zeros(shape, dtype=bool)
    for cam in maps:
        union |= map_to_mask(cam, config)
    area = float(union.mean())
    if area < config.min_area or not union.any():
        return MaskResult(np.zeros(shape, dtype=bool), "empty", area)
    if area > config.max_area:
        return MaskResult(np.zeros(shape, dtype=bool), "too_large", area)
    return MaskResult(union, "ok", area)


def removal_masks(model: torch.nn.Module, images: torch.Tensor, remove: list[list[int]],
                  method: str = "gradcam", config: MaskConfig = MaskConfig(),
                  target_layer: torch.nn.Module | None = None, seeds: list[int] | None = None) -> list[MaskResult]:
    """For each image, the union mask of its classes to remove; one batched CAM call. With
    ``config.placement == "random"`` each mask is moved by ``relocate`` with its image's seed."""
    if len(remove) != images.shape[0]:
        raise ValueError("give one list of classes to remove per image")
    if config.placement == "random" and (seeds is None or len(seeds) != len(remove)):
        raise ValueError("random mask placement needs one seed per image")
    rows = [i for i, classes in enumerate(remove) for _ in classes]
    classes = [c for cs in remove for c in cs]
    shape = tuple(images.shape[-2:])
    maps = cam_maps(model, images[rows], classes, method, target_layer) if rows else np.zeros((0, *shape))
    per_image: list[list[np.ndarray]] = [[] for _ in remove]
    for row, cam in zip(rows, maps):
        per_image[row].append(cam)
    masks = [union_mask(m, shape, config) for m in per_image]
    if config.placement == "random":
        masks = [MaskResult(relocate(m.mask, np.random.default_rng(s)), m.outcome, m.area) for m, s in zip(masks, seeds)]
    return masks


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
