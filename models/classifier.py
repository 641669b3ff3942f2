"""The multi-label lesion classifier: a timm backbone with one input channel and K logits.

Weights are never downloaded (``pretrained=False`` always). Images enter as (N, 1, H, W) floats
in [0, 1] without mean/std normalisation: with no pretrained statistics to match, the first
normalisation layer absorbs the scale.

Sizes measured on CPU with timm 1.0.31 (tests/test_classifier.py keeps them honest):
- resnet50, efficientnet_b0: any side >= 16 (timm pads; 32 px gives a 1x1 last stage).
- convnext_base: side >= 32 (its stem and downsamplers are unpadded stride-2/4 convs).
- vit_base: side a multiple of the patch (16); 32 px gives 2x2 tokens. The model is built
  for exactly ``image_size`` and refuses other sizes.
- swin_small: runs at 64 px and at 32 px (timm shrinks the 7x7 window to the feature map and
  pads sides that are not multiples of it). Also built for exactly ``image_size``.

Options (TRCGL-Net's classifier parts, models/heads.py): ``se`` (squeeze-and-excitation on the
final feature map), ``head="attention"`` (one spatial attention map per class) and ``gcn``
(class vectors from a GCN over the train split's label co-occurrence, ML-GCN). With all of them
off the network is timm's own, so checkpoints made before the options existed still load.

A checkpoint is self-describing bytes: the state dict, the ``ClassifierConfig`` that builds the
network, and a ``ClassifierCard`` (label vocabulary, head/tail split, tuned thresholds, the
training shards' hashes, seed, metrics). Everything but the tensors is stored as plain
dicts/lists/str/numbers so that ``torch.load(weights_only=True)`` reads it (the format both
models share: models/checkpoint.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import timm
import torch
from timm.models import is_model_in_modules
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from models import checkpoint
from models.device import model_device
from models.heads import HeadedClassifier

IN_CHANS = 1  # chest films are single-channel
CHECKPOINT_FORMAT = "tailforge.classifier/1"

# The paper's five backbones: alias -> timm model name.
PAPER_BACKBONES: dict[str, str] = {
    "resnet50": "resnet50",
    "efficientnet_b0": "efficientnet_b0",
    "convnext_base": "convnext_base",
    "swin_small": "swin_small_patch4_window7_224",
    "vit_base": "vit_base_patch16_224",
}
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
        return is_model_in_modules(self.timm_name, list(_IMG_SIZE_MODULES))

    @property
    def plain(self) -> bool:
        """True when no option is on: the network is timm's own."""
        return not self.se and self.head == "linear" and not self.gcn


def build_classifier(config: ClassifierConfig, cooccurrence: torch.Tensor | None = None) -> nn.Module:
    """A randomly initialised network: (N, 1, S, S) in [0, 1] -> logits (N, K). timm's own when no
    option is on, else a ``HeadedClassifier``. ``cooccurrence`` (K, K), the train split's label
    co-occurrence (models.heads.cooccurrence), is needed when ``config.gcn`` and unused otherwise."""
    if config.gcn and cooccurrence is None:
        raise ValueError("gcn=True needs the train split's label co-occurrence: "
                         "build_classifier(config, models.heads.cooccurrence(train_labels))")
    kwargs: dict[str, Any] = dict(config.model_kwargs)
    if config.fixed_size:
        kwargs["img_size"] = config.image_size
    if config.drop_path_rate > 0:
        kwargs["drop_path_rate"] = config.drop_path_rate
    model = timm.create_model(config.timm_name, pretrained=False, in_chans=IN_CHANS,
                              num_classes=config.num_classes, drop_rate=config.drop_rate, **kwargs)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if isinstance(model, VisionTransformer) and patch is not None:
        if config.image_size % patch[0]:
            raise ValueError(f"{config.timm_name} cuts {config.image_size} px images into {patch[0]} px "
                             f"patches and would drop the border: use a multiple of {patch[0]}")
    if config.plain:
        return model
    return HeadedClassifier(model, config.num_classes, se=config.se, attention=config.head == "attention",
                            cooccurrence=cooccurrence if config.gcn else None, drop_rate=config.drop_rate)


@torch.no_grad()
def stage_features(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> list[torch.Tensor]:
    """(N, 1, S, S) -> one (N, C_i) tensor per stage of the backbone (timm's
    ``forward_intermediates``): each stage's feature map averaged over its positions, from the
    early stages that see texture (block edges, noise) to the last that sees findings. In eval mode."""
    net = model.backbone if isinstance(model, HeadedClassifier) else model
    was_training = model.training
    model.eval()
    try:
        device = model_device(model)
        batches = [[f.float().mean(dim=(2, 3)).cpu() for f in net.forward_intermediates(
            images[i:i + batch_size].float().to(device), intermediates_only=True)]
            for i in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return [torch.cat([b[k] for b in batches]) for k in range(len(batches[0]))] if batches else []


@dataclass
class ClassifierCard:
    labels: list[str]  # ordered label vocabulary; logit k is labels[k]
    head: list[str] = field(default_factory=list)  # head (frequent) classes, a subset of labels
    tail: list[str] = field(default_factory=list)  # tail (rare) classes, disjoint from head
    thresholds: list[float] = field(default_factory=list)  # per class, tuned on val; empty -> 0.5 each
    train_shards_sha256: list[str] = field(default_factory=list)  # the shards the weights saw
    seed: int = 0  # the training seed
    metrics: dict[str, Any] = field(default_factory=dict)  # free-form, plain JSON-like values only
    # class -> (s, s) mean training lesion mask (where the class usually lies), when the data had masks
    location_prior: dict[str, list[list[float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = [str(x) for x in self.labels]
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be a non-empty list of distinct names, got {self.labels}")
        unknown = sorted((set(self.head) | set(self.tail)) - set(self.labels))
        if unknown:
            raise ValueError(f"head/tail name classes that are not in labels: {unknown}")
        both = sorted(set(self.head) & set(self.tail))
        if both:
            raise ValueError(f"classes cannot be both head and tail: {both}")
        self.thresholds = [float(t) for t in self.thresholds] or [0.5] * len(self.labels)
        if len(self.thresholds) != len(self.labels) or not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be {len(self.labels)} probabilities (one per label), "
                             f"got {self.thresholds}")
        self.metrics = checkpoint.to_plain(self.metrics, "card.metrics")
        unknown_prior = sorted(set(self.location_prior) - set(self.labels))
        if unknown_prior:
            raise ValueError(f"location_prior names classes that are not in labels: {unknown_prior}")


def save_checkpoint(model: nn.Module, config: ClassifierConfig, card: ClassifierCard) -> bytes:
    """Serialise weights + config + card into bytes (models/checkpoint.py; deterministic for identical inputs)."""
    if len(card.labels) != config.num_classes:
        raise ValueError(f"card has {len(card.labels)} labels but the config has {config.num_classes} classes")
    return checkpoint.save(CHECKPOINT_FORMAT, config, model.state_dict(), card=asdict(card))


def load_checkpoint(data: bytes, map_location: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, ClassifierConfig, ClassifierCard]:
    """Rebuild the network from checkpoint bytes (``weights_only=True``; no code is unpickled)."""
    blob = checkpoint.load(data, CHECKPOINT_FORMAT, map_location=map_location)
    config = checkpoint.from_dict(ClassifierConfig, blob["config"])
    card = checkpoint.from_dict(ClassifierCard, blob["card"])
    placeholder = torch.zeros(config.num_classes, config.num_classes)  # the GCN's buffer, loaded next
    model = build_classifier(config, placeholder if config.gcn else None)
    model.load_state_dict(blob["state_dict"])
    return model, config, card
