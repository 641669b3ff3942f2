"""Make torchvision importable on CPU-only torch (design doc, section 6).

The torchvision 0.28.0 wheel's compiled ops need a CUDA build of torch. When they fail to
load, ``import torchvision`` dies registering fake kernels for ``torchvision::nms`` and
``torchvision::qnms``, and timm and pytorch-grad-cam (which import torchvision) die with it.
Defining those two op schemas first lets torchvision's pure-Python parts import; the ops
themselves stay unavailable (tailforge never calls them). Where the compiled ops load, the
guard does nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_fallback_library: torch.library.Library | None = None


def _ops_library_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision absent: nothing to guard
    for folder in spec.submodule_search_locations:
        for name in os.listdir(folder):
            if name.startswith("_C") and name.endswith((".so", ".pyd")):
                try:
                    torch.ops.load_library(os.path.join(folder, name))
                    return True
                except (OSError, RuntimeError):
                    return False
    return False


def ensure_torchvision_importable() -> bool:
    """Prepare ``import torchvision``; True when its compiled ops are available."""
    global _fallback_library
    if "torchvision" in sys.modules or _fallback_library is not None:
        return _fallback_library is None
    if _ops_library_loads():
        return True
    _fallback_library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        _fallback_library.define(schema)
    return False
