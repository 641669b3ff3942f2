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
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from models import checkpoint
from models.configs import HEADS, PAPER_BACKBONES, ClassifierConfig  # noqa: F401  (their home)
from models.device import model_device
from models.heads import HeadedClassifier

IN_CHANS = 1  # chest films are single-channel
CHECKPOINT_FORMAT = "tailforge.classifier/1"

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
