"""The models' configs as plain dataclasses, without torch: the settings (flows/settings.py)
read their defaults here, so each default is written once and loading the CLI stays light.
models/dit.py and models/training.py build and train from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

CONDITIONINGS = ("none", "mask", "labels")
PREDICTIONS = ("epsilon", "sample")


@dataclass(frozen=True)
class DiTConfig:
    image_size: int = 64  # side in pixels; pixel space (no VAE)
    patch_size: int = 4  # tokens = (image_size / patch_size) ** 2
    depth: int = 6  # transformer blocks
    num_heads: int = 4
    head_dim: int = 32  # width = num_heads * head_dim
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # cosine schedule
    conditioning: str = "none"  # "none": x_t only; "mask": also the known image and the mask (inpainting); "labels"
    num_labels: int = 0  # conditioning "labels": the finding vocabulary's size K
    # what the network outputs: "epsilon" (the noise) or "sample" (the clean image). The default is what a
    # checkpoint written before this field means; the product's choice is the setting generator.prediction
    prediction: str = "epsilon"

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, not {self.conditioning!r}")
        if (self.conditioning == "labels") != (self.num_labels > 0):
            raise ValueError("a DiT conditioned on labels needs num_labels >= 1 (the vocabulary's size), "
                             "and only it takes num_labels")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, not {self.prediction!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if min(self.depth, self.num_heads, self.head_dim, self.patch_size) < 1:
            raise ValueError("depth, num_heads, head_dim and patch_size must be positive")


@dataclass(frozen=True)
class DiTTrainConfig:
    steps: int = 2000  # optimiser steps
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int | None = None  # linear learning-rate warm-up; None: a tenth of the steps, at most 200
    ema_decay: float = 0.999  # upper bound; warmed up as min(decay, (1+s)/(10+s))
    seed: int = 0
    grad_clip: float = 1.0
    full_mask_share: float = 0.1  # conditioning "mask": training masks that cover everything (free sampling)
    label_dropout: float = 0.1  # conditioning "labels": training rows that see no labels (for guidance)

    def __post_init__(self) -> None:
        if self.warmup_steps is None:  # resolved here: the checkpoint's card records the number used
            object.__setattr__(self, "warmup_steps", min(200, max(1, self.steps // 10)))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int  # passes over the (per-epoch) training set (the product's: classifier.epochs, finetune.epochs)
    batch_size: int = 32  # images per optimisation step
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    lr_schedule: str = "cosine"  # "cosine" (per epoch, to 0 after the last) or "constant"
    loss: str = "bce"  # "bce" | "focal" | "asl" | "cb" (class-balanced) | "ldam_drw" (models/losses.py)
    loss_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)  # e.g. {"gamma": 2.0}
    seed: int = 0  # seeds init-independent randomness: shuffling, augmentation, dropout
    augment: bool = False  # small shifts + intensity jitter; never flips (see module doc)
    max_shift: float = 0.05  # largest translation, as a share of the image side
    intensity_jitter: float = 0.1  # largest relative brightness/contrast change
    grad_clip: float | None = 1.0  # max global grad norm; None = no clipping

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if not 0 <= self.max_shift < 0.5 or not 0 <= self.intensity_jitter < 1:
            raise ValueError(f"max_shift must be in [0, 0.5) and intensity_jitter in [0, 1), "
                             f"got {self.max_shift}, {self.intensity_jitter}")
        from models.losses import NEEDS_COUNTS, make_loss  # (torch: when a config is made, not read)

        counts = {"counts": [1.0]} if self.loss in NEEDS_COUNTS else {}  # the real ones come with the data
        make_loss(self.loss, **counts, **self.loss_kwargs)  # unknown loss or bad kwargs fail here

    def lr_at(self, epoch: int) -> float:
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / self.epochs))
