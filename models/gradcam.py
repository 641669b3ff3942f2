"""Grad-CAM family maps from pytorch-grad-cam (Selvaraju et al., "Grad-CAM"; HiResCAM,
GradCAM++, LayerCAM, EigenCAM), batched with one target class per row, placed where the layer's
cells really look.

The default layer is the deepest stage in timm's ``feature_info`` at least ``min_side`` cells
wide. Maps are computed at the layer's resolution and placed by ``receptive_centre``:
pytorch-grad-cam's cv2.resize shifts a ResNet's maps half a stride down-right. Vision
transformers get a reshape transform from tokens to a grid. A classifier with TRCGL-Net's parts
(models/heads.HeadedClassifier) keeps its timm network under ``backbone``: layers are named and
found there, as for the bare network.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
import torch.nn.functional as F

import models  # noqa: F401  (torchvision guard before pytorch_grad_cam)

from models.device import model_device

# pytorch_grad_cam's class for each name; imported when a Grad-CAM map is made (its import, with
# matplotlib and scipy, takes seconds that every command would pay)
CAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM", "layercam": "LayerCAM",
               "eigencam": "EigenCAM"}


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


def reshape_transform(model: torch.nn.Module, image_size: int):
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
    Measured once per layer and image size (a backward pass; the geometry does not change).
    """
    known = _CENTRES.setdefault(layer, {})
    if image_size not in known:
        known[image_size] = _measured_centre(model, layer, image_size)
    return known[image_size]


_CENTRES: "weakref.WeakKeyDictionary[torch.nn.Module, dict[int, tuple[float, float]]]" = weakref.WeakKeyDictionary()


def _measured_centre(model: torch.nn.Module, layer: torch.nn.Module, image_size: int) -> tuple[float, float]:
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
    reshape = reshape_transform(model, size)
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
