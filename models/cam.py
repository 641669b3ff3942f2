"""Where a class is on a film: class maps for the head classes to remove, and the masks they make.

Map methods (``MAP_MAKERS``, one entry each; ``augment.cam_method`` names one):
- the Grad-CAM family (models/gradcam.py) at one or more layers (``LocaliseConfig.layers``);
- ``infill`` (models/occlusion.py): where does filling the film in take the class away?
  Measured on the phantom (benchmarks/results/fidelity_*.md) it localises head lesions far
  better than any Grad-CAM variant here, so it is the product's default;
- ``attention``: the class-attention head's own map (models/heads.py), for a classifier built
  with ``head="attention"``; at the final feature map's resolution, placed like Grad-CAM's.
A new method: one module in models/maps/ that registers its function (models/registry.py), and a test.
Then (``refine``): the film's border optionally zeroed, the map weighted by the class location
prior the classifier card carries (the mean training lesion mask, when the data had masks),
and a gate: no mask for a class the classifier does not call (CheXlocalize's practice),
``not_detected``. ``removal_masks`` turns the maps into masks (models/masks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from models.gradcam import CAM_METHODS, cam_maps, receptive_centre, reshape_transform, timm_network, upsample_aligned
from models.heads import class_attention_maps
from models.masks import MaskConfig, MaskResult, protected_region, relocate, union_mask
from models.registry import Registry
from models.training import predict_probs

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


def attention_maps(model: torch.nn.Module, images: torch.Tensor, classes: list[int]) -> np.ndarray:
    """(N, H, W) maps in [0, 1]: row i is the class-attention map of class ``classes[i]`` on image i,
    its cells placed where the final stage's cells look (as ``cam_maps`` places a layer's)."""
    if len(classes) != images.shape[0]:
        raise ValueError("give one target class per image row")
    small = class_attention_maps(model, images)[torch.arange(len(classes)), torch.as_tensor(classes)]  # (N, h, w)
    size = images.shape[-1]
    if reshape_transform(model, size) is not None:  # patch tokens: token k covers pixels k*p .. k*p + p - 1
        stride = size / small.shape[-1]
        offset = (stride - 1) / 2
    else:
        net = timm_network(model)
        offset, stride = receptive_centre(model, net.get_submodule(net.feature_info[-1]["module"]), size)
    return upsample_aligned(small.numpy(), offset, stride, size)


def resize_prior(prior: np.ndarray, size: int) -> np.ndarray:
    """A class location prior stored at any resolution -> (size, size), max 1."""
    t = torch.as_tensor(np.asarray(prior, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].clamp(min=0)
    return (out / out.max().clamp(min=1e-7)).numpy()


def _grad_cam(method: str) -> Callable:
    def maps(model, images, classes, config: LocaliseConfig) -> np.ndarray:
        layers = [timm_network(model).get_submodule(name) for name in config.layers] or [None]
        return np.mean([cam_maps(model, images, classes, method, layer) for layer in layers], axis=0)
    return maps


def _infill(model, images, classes, config: LocaliseConfig) -> np.ndarray:
    from models.occlusion import infill_maps  # (its own module: the product's default method)
    return infill_maps(model, images, classes, config.window, config.stride)


# map method -> maps(model, images (N, 1, H, W), classes (one per row), LocaliseConfig) -> (N, H, W);
# then the methods models/maps/ registers
MAP_MAKERS: Registry = Registry("models.maps", {
    **{name: _grad_cam(name) for name in CAM_METHODS},  # at each configured layer, aligned, averaged
    "infill": _infill,
    "attention": lambda model, images, classes, config: attention_maps(model, images, classes),
})


def raw_maps(model: torch.nn.Module, images: torch.Tensor, classes: list[int], config: LocaliseConfig,
             method: str = "gradcam") -> np.ndarray:
    """(N, H, W) maps in [0, 1] before border, prior and gate, by the method ``MAP_MAKERS`` names."""
    if method not in MAP_MAKERS:
        raise ValueError(f"unknown map method {method!r}; choose one of {list(MAP_MAKERS)}")
    return MAP_MAKERS[method](model, images, classes, config)


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
