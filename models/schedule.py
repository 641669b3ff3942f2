"""Progressive Incremental Learning (PIL): the share of generated samples per epoch.

The method fine-tunes on D = D_o + D_i * (1 - exp(-beta * n)), n the epoch index: a fixed
random order of the generated set D_i, of which a growing prefix joins the original set D_o,
so head classes are not forgotten while tail samples are added.
"""

from __future__ import annotations

import math

import numpy as np


def pil_share(epoch: int, beta: float) -> float:
    """1 - exp(-beta * n): 0 at epoch 0, rising towards 1."""
    if epoch < 0 or beta < 0:
        raise ValueError("epoch and beta must be >= 0")
    return 1.0 - math.exp(-beta * epoch)


def pil_prefix(epoch: int, beta: float, generated: int) -> int:
    """How many generated samples (a prefix of the fixed order) epoch ``epoch`` uses."""
    return int(math.floor(pil_share(epoch, beta) * generated))


def fixed_order(generated: int, seed: int) -> np.ndarray:
    """The fixed random order of the generated samples (same seed, same order)."""
    return np.random.default_rng(seed).permutation(generated)


def epoch_indices(epoch: int, beta: float, generated: int, seed: int) -> np.ndarray:
    """Indices of the generated samples in epoch ``epoch``: a prefix of ``fixed_order``."""
    return fixed_order(generated, seed)[: pil_prefix(epoch, beta, generated)]
