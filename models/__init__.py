"""Pure PyTorch/NumPy models. No Prefect, no storage, no network (a test checks the imports)."""

from models.compat import ensure_torchvision_importable

ensure_torchvision_importable()
