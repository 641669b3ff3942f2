"""Contact sheets of images and free samples of a DiT, for the benchmarks' figures."""

import io

import numpy as np
import torch
from PIL import Image

from models.dit import DiTConfig, build_scheduler
from models.sampling import sample


def grid_png(images01: torch.Tensor, columns: int = 8) -> bytes:
    """(N, 1, H, W) in [0, 1] -> one PNG contact sheet."""
    n, _, height, width = images01.shape
    rows = (n + columns - 1) // columns
    sheet = np.zeros((rows * height, columns * width), dtype=np.uint8)
    for i, image in enumerate((images01[:, 0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)):
        r, c = divmod(i, columns)
        sheet[r * height:(r + 1) * height, c * width:(c + 1) * width] = image
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_grid(model, config: DiTConfig, n: int = 16, steps: int = 50, seed: int = 0) -> torch.Tensor:
    return sample(model, build_scheduler(config), n, config.image_size, steps, torch.Generator().manual_seed(seed))
