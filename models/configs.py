"""The models' configs as plain dataclasses, without torch: the settings (flows/settings.py)
read their defaults here, so each default is written once and loading the CLI stays light.
models/dit.py, models/training.py and models/classifier.py build and train from them; what
needs torch or timm to check (a loss's arguments, a timm model name) is checked when a config
is made, not when the module is read.
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
class EngineConfig:
    """How the sampler's network calls run (models/engine.py); a row's result does not depend on
    them, so they are not part of a run's recipe."""
    rows: int = 0  # rows per DiT call (the model batch); 0: sized to the device (the CPU: a batch's rows at once)
    compile: bool = False  # torch.compile the DiT's forward (worth it on CUDA), each call padded to a power-of-two row bucket

    def __post_init__(self) -> None:
        if self.rows < 0:
            raise ValueError("engine.rows must be >= 0 (0: sized to the device)")


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


# The paper's five backbones: alias -> timm model name.
PAPER_BACKBONES: dict[str, str] = {
    "resnet50": "resnet50",
    "efficientnet_b0": "efficientnet_b0",
    "convnext_base": "convnext_base",
    "swin_small": "swin_small_patch4_window7_224",
    "vit_base": "vit_base_patch16_224",
}
# The classifier's presets (classifier.preset): its backbone, least compute first. tiny: the phantom's
# and the demo's ResNet-18; small: CheXNet's DenseNet-121 (Rajpurkar et al.); base: the paper's
# ConvNeXt-B.
CLASSIFIER_PRESETS: dict[str, str] = {"tiny": "resnet18", "small": "densenet121", "base": "convnext_base"}
# timm modules whose models are built for one input size and so take ``img_size``.
_IMG_SIZE_MODULES = (
    "vision_transformer", "deit", "swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr",
    "beit", "eva", "maxxvit", "vision_transformer_relpos", "cait", "xcit",
)
_MIN_SIDE = 16  # below this even the padded CNNs end in degenerate feature maps
_MIN_SIDE_BY_MODULE = {"convnext": 32}  # unpadded stem (4) and three stride-2 downsamplers
HEADS = ("linear", "attention")  # "linear": timm's pooled features -> Linear; "attention": models/heads.py
_RESERVED_KWARGS = {"pretrained", "in_chans", "num_classes", "img_size", "drop_rate", "drop_path_rate"}


@dataclass(frozen=True)
class ClassifierConfig:
    backbone: str  # a PAPER_BACKBONES alias or any timm model name (the product's default: classifier.backbone)
    num_classes: int = 14  # K: one sigmoid output per finding of the label vocabulary
    image_size: int = 224  # square input side in pixels; vit/swin are built for exactly this
    drop_rate: float = 0.0  # dropout before the classification head
    drop_path_rate: float = 0.0  # stochastic depth, for families that have it (0 = off)
    # extra timm create_model kwargs (e.g. a tiny swin for tests: embed_dim, depths, num_heads);
    # plain values only, since they are stored in the checkpoint
    model_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    se: bool = False  # squeeze-and-excitation channel weights on the final feature map (Hu et al.)
    head: str = "linear"  # "linear" (pooled features -> K logits) or "attention" (one spatial map per class)
    gcn: bool = False  # class vectors from a GCN over the train split's label co-occurrence (ML-GCN)

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {self.head!r}")
        if not isinstance(self.se, bool) or not isinstance(self.gcn, bool):
            raise ValueError(f"se and gcn must be true or false, got {self.se!r} and {self.gcn!r}")
        import timm  # (with torch: when a config is made, not read)
        from timm.models import is_model_in_modules

        if self.backbone not in PAPER_BACKBONES and not timm.is_model(self.backbone):
            raise ValueError(
                f"unknown backbone {self.backbone!r}; use one of the paper's aliases "
                f"{sorted(PAPER_BACKBONES)} or a timm model name (see timm.list_models())"
            )
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1 (one per finding), got {self.num_classes!r}")
        if not 0.0 <= self.drop_rate < 1.0 or not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_rate and drop_path_rate must lie in [0, 1), got "
                             f"{self.drop_rate} and {self.drop_path_rate}")
        clash = _RESERVED_KWARGS & set(self.model_kwargs)
        if clash:
            raise ValueError(f"model_kwargs may not set {sorted(clash)}: use the config fields instead")
        min_side = max([_MIN_SIDE] + [v for m, v in _MIN_SIDE_BY_MODULE.items()
                                      if is_model_in_modules(self.timm_name, [m])])
        if not isinstance(self.image_size, int) or self.image_size < min_side:
            raise ValueError(f"image_size must be an int >= {min_side} for {self.timm_name}, got {self.image_size!r}")

    @property
    def timm_name(self) -> str:
        """The timm model name the backbone resolves to."""
        return PAPER_BACKBONES.get(self.backbone, self.backbone)

    @property
    def fixed_size(self) -> bool:
        """True when the network is built for exactly ``image_size`` (vit, swin, ...)."""
        from timm.models import is_model_in_modules

        return is_model_in_modules(self.timm_name, list(_IMG_SIZE_MODULES))

    @property
    def plain(self) -> bool:
        """True when no option is on: the network is timm's own."""
        return not self.se and self.head == "linear" and not self.gcn
