"""Pure PyTorch/NumPy models. No Prefect, no storage, no network (a test checks the imports).

``import models`` installs the torchvision guard (models/compat.py) as an import hook: it runs
just before torchvision is first imported (by timm or pytorch-grad-cam), so a module that needs
only the configs (models/configs.py: the settings read their defaults there) loads no torch.
"""

import sys


class _TorchvisionGuard:
    """A meta path entry that prepares ``import torchvision`` once, then steps aside."""

    def __init__(self) -> None:
        self.done = False

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" and not self.done:
            self.done = True  # first: the guard looks torchvision up itself
            from models.compat import ensure_torchvision_importable

            ensure_torchvision_importable()
        return None  # the usual finders import it


if not any(isinstance(finder, _TorchvisionGuard) for finder in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionGuard())
