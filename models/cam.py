"""Class maps for the head classes to remove, and maps -> binary inpainting masks.

Maps (``class_maps``, configured by ``LocaliseConfig``):
- Grad-CAM family from pytorch-grad-cam (Selvaraju et al., "Grad-CAM"; HiResCAM, GradCAM++,
  LayerCAM, EigenCAM), batched with one target class per row, at one or more layers. The
  default layer is the deepest stage in timm's ``feature_info`` at least ``min_side`` cells
  wide. Maps are computed at the layer's resolution and placed where the layer's cells really
  look (``receptive_centre``): pytorch-grad-cam's cv2.resize shifts a ResNet's maps half a
  stride down-right. Vision transformers get a reshape transform from tokens to a grid.
- ``infill`` (models/occlusion.py): where does filling the film in take the class away?
  Measured on the phantom (benchmarks/results/fidelity_*.md) it localises head lesions far
  better than any Grad-CAM variant here, so it is the product's default.
- ``attention``: the class-attention head's own map (models/heads.py), for a classifier built
  with ``head="attention"``; at the final feature map's resolution, placed like Grad-CAM's.
A classifier with TRCGL-Net's parts (models/heads.HeadedClassifier) keeps its timm network under
``backbone``: layers are named and found there, as for the bare network.
Then: the film's border optionally zeroed, the map weighted by the class location prior the
classifier card carries (the mean training lesion mask, when the data had masks), and a gate:
no mask for a class the classifier does not call (CheXlocalize's practice), ``not_detected``.

Map -> mask: threshold relative to the map's maximum (or Otsu), dilate, union over the
classes being removed, then check the area: too small is ``empty``, more than ``max_area``
of the image is ``too_large`` (a mask over most of the chest would repaint the tail lesion
too). These are reported outcomes, not errors.

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

import models  # noqa: F401  (torchvision guard before pytorch_grad_cam)

from models.device import model_device
from models.heads import class_attention_maps
from models.training import predict_probs

# pytorch_grad_cam's class for each name; imported when a Grad-CAM map is made (its import, with
# matplotlib and scipy, takes seconds that every command would pay)
CAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM", "layercam": "LayerCAM",
               "eigencam": "EigenCAM"}
# infill: counterfactual occlusion maps (models/occlusion.py); attention: the class-attention head's maps
MAP_METHODS = (*CAM_METHODS, "infill", "attention")
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
class LocaliseConfig:
    """How a class map is made from the classifier (measured in benchmarks/fidelity.py)."""
    layers: tuple[str, ...] = ()  # target layers by name; () = the deepest stage >= 8 cells wide; several: mean
    border: float = 0.0  # share of each side zeroed in the map (film edges, markers)
    prior_weight: float = 0.5  # map x prior ** weight when the classifier card has a class location prior
    gate: bool = True  # no mask for a class the classifier does not call (probability < its threshold)
    window: float = 0.125  # method "infill": window side as a share of the image side
    stride: float = 0.5  # method "infill": window step as a share of the window side

    def __post_init__(self) -> None:
        if not 0 <= self.border < 0.5 or self.prior_weight < 0:
            raise ValueError("need 0 <= border < 0.5 and prior_weight >= 0")
        if not 0 < self.window <= 1 or not 0 < self.stride <= 1:
            raise ValueError("need 0 < window <= 1 and 0 < stride <= 1")
        object.__setattr__(self, "layers", tuple(self.layers))


@dataclass(frozen=True)
class MaskResult:
    mask: np.ndarray  # (H, W) bool, True = regenerate; all False unless outcome == "ok"
    outcome: str  # one of OUTCOMES: not_detected = the gate (the classifier calls no class to remove);
    # on_kept = the mask lay on findings the image keeps and too little was left once they were taken out
    area: float  # fraction of the image the union covered
    protected: np.ndarray | None = None  # (H, W) bool: where the findings the image keeps are (never repainted)


def timm_network(model: torch.nn.Module) -> torch.nn.Module:
    """The timm network whose layers the maps use: a HeadedClassifier's ``backbone``, else the model."""
    return getattr(model, "backbone", model)


def default_target_layer(model: torch.nn.Module, image_size: int, min_side: int = 8) -> tuple[str, torch.nn.Module]:
    """(name, module) of the deepest feature stage with a map >= ``min_side`` at ``image_size``."""
    model = timm_network(model)
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError("the model has no timm feature_info; pass target_layer explicitly")
    stages = [(f["module"], image_size // f["reduction"]) for f in info]
    wide = [name for name, side in stages if side >= min_side]
    name = wide[-1] if wide else max(stages, key=lambda s: s[1])[0]
    return name, model.get_submodule(name)


def _reshape_transform(model: torch.nn.Module, image_size: int):
    """Tokens (N, T, C) or NHWC maps -> (N, C, h, w) for transformers; None for CNNs."""
    model = timm_network(model)
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


def receptive_centre(model: torch.nn.Module, layer: torch.nn.Module, image_size: int) -> tuple[float, float]:
    """(offset, stride): feature cell k of a CNN ``layer`` is centred at input pixel offset + k * stride.

    Measured, not assumed: the centroid of |d activation(cell) / d input| for the middle cell.
    A padded ResNet centres cell k at k * stride; an unpadded stem (ConvNeXt) at
    (k + 0.5) * stride - 0.5. pytorch-grad-cam's cv2.resize assumes the latter for every model,
    which shifts ResNet maps stride / 2 down-right. (Transformers attend globally, so the
    gradient centroid says little: ``cam_maps`` uses their patch geometry instead.)
    """
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    probe = torch.rand(1, 1, image_size, image_size, generator=torch.Generator().manual_seed(0))
    probe = probe.to(model_device(model)).requires_grad_(True)
    try:
        with torch.enable_grad():
            model(probe)
            act = captured[0]  # (1, C, h, w)
            h, w = act.shape[-2:]
            act[0, :, h // 2, w // 2].sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    weight = probe.grad[0, 0].abs().double().cpu()  # (S, S)
    rows = (weight.sum(1) * torch.arange(image_size)).sum() / weight.sum()
    stride = image_size / h
    return float(rows) - (h // 2) * stride, stride


def upsample_aligned(maps: np.ndarray, offset: float, stride: float, size: int) -> np.ndarray:
    """(N, h, w) feature-resolution maps -> (N, size, size), cell k placed at pixel offset + k * stride
    (bilinear between cell centres, edge values held beyond the outermost centres), each map
    rescaled to max 1."""
    small = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]  # (N, 1, h, w)
    h, w = small.shape[-2:]
    cells = (torch.arange(size, dtype=torch.float32) - offset) / stride  # pixel -> cell coordinate
    gy = 2 * cells / max(h - 1, 1) - 1 if h > 1 else torch.zeros(size)
    gx = 2 * cells / max(w - 1, 1) - 1 if w > 1 else torch.zeros(size)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (size, size, 2): (x, y)
    out = F.grid_sample(small, grid[None].expand(small.shape[0], -1, -1, -1), mode="bilinear",
                        padding_mode="border", align_corners=True)[:, 0]  # (N, size, size)
    top = out.flatten(1).max(dim=1).values.clamp(min=1e-7)[:, None, None]
    return (out / top).numpy()


def cam_maps(model: torch.nn.Module, images: torch.Tensor, classes: list[int], method: str = "gradcam",
             target_layer: torch.nn.Module | None = None) -> np.ndarray:
    """(N, H, W) maps in [0, 1], one row per (image, class) pair; ``images`` is (N, 1, H, W).
    Maps are computed at the layer's resolution and placed on the image where the layer's cells
    really look (``receptive_centre``), not where cv2.resize would put them."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {sorted(CAM_METHODS)}")
    if len(classes) != images.shape[0]:
        raise ValueError("give one target class per image row")
    size = images.shape[-1]
    layer = target_layer if target_layer is not None else default_target_layer(model, size)[1]
    reshape = _reshape_transform(model, size)
    model.eval()
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = getattr(pytorch_grad_cam, CAM_METHODS[method])
    with cam_class(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        cam.get_target_width_height = lambda _input: None  # keep maps at the layer's resolution
        small = cam(input_tensor=images.to(model_device(model)), targets=[ClassifierOutputTarget(int(c)) for c in classes])  # (N, h, w)
    small = np.nan_to_num(np.asarray(small, dtype=np.float32))
    if reshape is not None:  # patch tokens: token k covers pixels k*p .. k*p + p - 1
        stride = size / small.shape[-1]
        offset = (stride - 1) / 2
    else:
        offset, stride = receptive_centre(model, layer, size)
    return upsample_aligned(small, offset, stride, size)


def attention_maps(model: torch.nn.Module, images: torch.Tensor, classes: list[int]) -> np.ndarray:
    """(N, H, W) maps in [0, 1]: row i is the class-attention map of class ``classes[i]`` on image i,
    its cells placed where the final stage's cells look (as ``cam_maps`` places a layer's)."""
    if len(classes) != images.shape[0]:
        raise ValueError("give one target class per image row")
    small = class_attention_maps(model, images)[torch.arange(len(classes)), torch.as_tensor(classes)]  # (N, h, w)
    size = images.shape[-1]
    if _reshape_transform(model, size) is not None:  # patch tokens: token k covers pixels k*p .. k*p + p - 1
        stride = size / small.shape[-1]
        offset = (stride - 1) / 2
    else:
        net = timm_network(model)
        offset, stride = receptive_centre(model, net.get_submodule(net.feature_info[-1]["module"]), size)
    return upsample_aligned(small.numpy(), offset, stride, size)


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


def resize_prior(prior: np.ndarray, size: int) -> np.ndarray:
    """A class location prior stored at any resolution -> (size, size), max 1."""
    t = torch.as_tensor(np.asarray(prior, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].clamp(min=0)
    return (out / out.max().clamp(min=1e-7)).numpy()


def raw_maps(model: torch.nn.Module, images: torch.Tensor, classes: list[int], config: LocaliseConfig,
             method: str = "gradcam") -> np.ndarray:
    """(N, H, W) maps in [0, 1] before border, prior and gate: CAM at each configured layer
    (aligned, averaged), or the infill map (``method="infill"``)."""
    if method not in MAP_METHODS:
        raise ValueError(f"unknown map method {method!r}; choose one of {list(MAP_METHODS)}")
    if method == "infill":
        from models.occlusion import infill_maps
        return infill_maps(model, images, classes, config.window, config.stride)
    if method == "attention":
        return attention_maps(model, images, classes)
    layers = [timm_network(model).get_submodule(name) for name in config.layers] or [None]
    return np.mean([cam_maps(model, images, classes, method, layer) for layer in layers], axis=0)


def refine(maps: np.ndarray, classes: list[int], config: LocaliseConfig,
           priors: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """The film's border zeroed, then each map times its class location prior ** prior_weight
    (where ``priors`` has the class); each map rescaled to max 1."""
    size = maps.shape[-1]
    if config.border > 0:
        edge = int(round(config.border * size))
        frame = np.zeros((size, size), np.float32)
        frame[edge:size - edge, edge:size - edge] = 1.0
        maps = maps * frame
    if priors and config.prior_weight > 0:
        resized = {c: resize_prior(p, size) ** config.prior_weight for c, p in priors.items()}
        maps = np.stack([m * resized[c] if c in resized else m for m, c in zip(maps, classes)])
    top = maps.reshape(len(maps), -1).max(axis=1).clip(min=1e-7)[:, None, None]
    return (maps / top).astype(np.float32)


def class_maps(model: torch.nn.Module, images: torch.Tensor, classes: list[int], config: LocaliseConfig,
               method: str = "gradcam", priors: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """(N, H, W) class maps in [0, 1]: ``raw_maps``, then ``refine``."""
    return refine(raw_maps(model, images, classes, config, method), classes, config, priors)


def removal_masks(model: torch.nn.Module, images: torch.Tensor, remove: list[list[int]],
                  method: str = "gradcam", config: MaskConfig = MaskConfig(),
                  target_layer: torch.nn.Module | None = None, seeds: list[int] | None = None,
                  localise: LocaliseConfig | None = None, priors: dict[int, np.ndarray] | None = None,
                  thresholds: list[float] | None = None, probs: np.ndarray | None = None,
                  keep: list[list[int]] | None = None) -> list[MaskResult]:
    """For each image, the union mask of its classes to remove; one batched CAM call. With
    ``localise``, maps come from ``class_maps`` and, when it gates, a class whose probability is
    below ``thresholds`` adds nothing (an image left with no class is ``not_detected``);
    ``probs`` (N, K) are the classifier's probabilities on ``images`` when the caller has them.
    ``keep[i]`` are the classes image i keeps (its other findings): their maps, ungated (a
    finding the classifier under-calls is still there), mark the ``protected_region`` that
    the mask leaves out (``MaskConfig.protect``).
    With ``config.placement == "random"`` each mask is moved by ``relocate`` with its image's seed."""
    if len(remove) != images.shape[0]:
        raise ValueError("give one list of classes to remove per image")
    if config.placement == "random" and (seeds is None or len(seeds) != len(remove)):
        raise ValueError("random mask placement needs one seed per image")
    called = [list(cs) for cs in remove]
    if localise is not None and localise.gate:
        if probs is None:
            probs = predict_probs(model, images) if len(images) else np.zeros((0, 0))
        cut = thresholds or [0.5] * (probs.shape[1] if probs.size else 0)
        called = [[c for c in cs if probs[i, c] >= cut[c]] for i, cs in enumerate(remove)]
    kept = [list(keep[i]) if keep and called[i] and config.protect > 0 else [] for i in range(len(remove))]
    rows = [i for i, classes in enumerate(called) for _ in classes + kept[i]]  # an image's rows side by side
    classes = [c for i, cs in enumerate(called) for c in cs + kept[i]]
    shape = tuple(images.shape[-2:])
    if not rows:
        maps = np.zeros((0, *shape))
    elif localise is not None:
        maps = class_maps(model, images[rows], classes, localise, method, priors)
    else:
        maps = cam_maps(model, images[rows], classes, method, target_layer)
    per_image: list[list[np.ndarray]] = [[] for _ in remove]
    for row, cam in zip(rows, maps):
        per_image[row].append(cam)
    masks = []
    for i, m in enumerate(per_image):
        n = len(called[i])
        if not m and remove[i]:
            masks.append(MaskResult(np.zeros(shape, bool), "not_detected", 0.0))
        else:
            masks.append(union_mask(m[:n], shape, config,
                                    protected_region(m[n:], shape, config, m[:n]) if kept[i] else None))
    if config.placement == "random":
        masks = [MaskResult(relocate(m.mask, np.random.default_rng(s)), m.outcome, m.area, m.protected)
                 for m, s in zip(masks, seeds)]
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
