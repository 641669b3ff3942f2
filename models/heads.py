"""TRCGL-Net's classifier parts, as options on a timm backbone.

- ``SqueezeExcite``: channel weights from the final feature map's mean (Hu et al.,
  "Squeeze-and-Excitation Networks", reduction 16).
- ``ClassAttention``: one spatial softmax map per class over the final feature map; class k's
  feature is its map's weighted mean of the cells, so the map is where the logit came from
  (class-specific attention pooling, in the spirit of CSRA: Zhu and Wu, "Residual Attention: A
  Simple but Effective Method for Multi-Label Recognition").
- ``LabelGraph``: the class vectors come from a two-layer GCN over the train split's label
  co-occurrence (Chen et al., "Multi-Label Image Recognition with Graph Convolutional
  Networks", ML-GCN). With no word embeddings for chest findings, node k starts as the one-hot
  vector e_k, so the first layer's weight is a learned embedding per class.

``HeadedClassifier`` runs the backbone's ``forward_features``, then SE, then the head. The
features are handled as tokens (N, T, C) whatever the family gives: CNNs (N, C, h, w), Swin
(N, h, w, C), ViT (N, prefix + h*w, C) with its class token(s) first.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.device import model_device

GCN_HIDDEN = 256  # width of the GCN's middle layer
TAU, P_NEIGHBOURS = 0.4, 0.2  # ML-GCN's binarisation threshold and neighbour share (its values)


def cooccurrence(labels: torch.Tensor) -> torch.Tensor:
    """(N, K) labels (1 / 0 / NaN unknown) -> (K, K) counts: [i, j] = images positive for both i
    and j, [i, i] = images positive for i. Unknown counts as absent."""
    positive = torch.nan_to_num(torch.as_tensor(labels, dtype=torch.float32), nan=0.0).eq(1).float()
    return positive.T @ positive


def correlation_matrix(counts: torch.Tensor, tau: float = TAU, p: float = P_NEIGHBOURS) -> torch.Tensor:
    """ML-GCN's re-weighted correlation matrix, normalised D^-1/2 A' D^-1/2 (Kipf and Welling).

    P(j | i) = counts[i, j] / counts[i, i] is binarised at ``tau``; each class keeps 1 - p of
    the weight for itself and shares p among its neighbours (ML-GCN's re-weighting). A class with no
    neighbour (or never positive) keeps only its own 1 - p."""
    k = counts.shape[0]
    seen = counts.diagonal().clamp(min=1)[:, None]  # (K, 1); never-positive rows are all 0 anyway
    neighbours = ((counts / seen) >= tau).float() * (1 - torch.eye(k, device=counts.device))
    share = p * neighbours / neighbours.sum(1, keepdim=True).clamp(min=1)
    reweighted = share + (1 - p) * torch.eye(k, device=counts.device)  # (K, K)
    scale = reweighted.sum(1).rsqrt()
    return scale[:, None] * reweighted * scale[None, :]


class SqueezeExcite(nn.Module):
    """Channel reweighting: weights (N, C) in (0, 1) from the mean over the spatial tokens,
    applied to every token (a ViT's class token too)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.down = nn.Linear(channels, hidden)
        self.up = nn.Linear(hidden, channels)

    def forward(self, tokens: torch.Tensor, prefix: int = 0) -> torch.Tensor:  # (N, T, C) -> (N, T, C)
        squeezed = tokens[:, prefix:].mean(1)  # (N, C)
        weights = torch.sigmoid(self.up(F.relu(self.down(squeezed))))  # (N, C)
        return tokens * weights[:, None, :]


class ClassAttention(nn.Module):
    """One softmax map per class over the spatial tokens; class k's feature is the map-weighted
    mean of the tokens."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.score = nn.Linear(channels, num_classes, bias=False)  # a bias would cancel in the softmax

    def maps(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, T, C) -> (N, K, T), each row sums to 1
        return self.score(tokens).transpose(1, 2).softmax(dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, T, C) -> (N, K, C)
        return self.maps(tokens) @ tokens


class LabelGraph(nn.Module):
    """Class vectors (K, C) from a GCN over the label co-occurrence (ML-GCN). The counts are a
    buffer, so a checkpoint carries the graph it was trained with."""

    def __init__(self, counts: torch.Tensor, channels: int, hidden: int = GCN_HIDDEN):
        super().__init__()
        counts = torch.as_tensor(counts, dtype=torch.float32)
        if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
            raise ValueError(f"the label co-occurrence must be a square (K, K) matrix, got {tuple(counts.shape)}")
        self.register_buffer("cooccurrence", counts.clone())  # (K, K) train-split counts
        self.embed = nn.Linear(counts.shape[0], hidden, bias=False)  # layer 1 on one-hot nodes: W1 (K, hidden)
        self.out = nn.Linear(hidden, channels, bias=False)  # layer 2: W2 (hidden, C)

    def forward(self) -> torch.Tensor:  # () -> (K, C)
        adjacency = correlation_matrix(self.cooccurrence)  # (K, K)
        hidden = F.leaky_relu(adjacency @ self.embed.weight.T, 0.2)  # A I W1: (K, hidden)
        return adjacency @ self.out(hidden)  # A H W2: (K, C)


class ClassHead(nn.Module):
    """Logits from pooled features (N, C), or, with class attention, from spatial tokens
    (N, T, C). Its parameters are the classification layers (``get_classifier``): the attention
    scores and the class vectors, a Linear (K x C and a bias) or the label graph's GCN."""

    def __init__(self, channels: int, num_classes: int, attention: bool, graph: LabelGraph | None,
                 drop_rate: float = 0.0):
        super().__init__()
        self.attention = ClassAttention(channels, num_classes) if attention else None
        self.drop = nn.Dropout(drop_rate) if attention else nn.Identity()  # timm's head drops the pooled features
        self.graph = graph
        self.fc = nn.Linear(channels, num_classes) if graph is None else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (N, C) or (N, T, C) -> (N, K)
        weight, bias = (self.graph(), None) if self.graph is not None else (self.fc.weight, self.fc.bias)  # (K, C)
        if self.attention is None:
            return F.linear(features, weight, bias)
        logits = (self.drop(self.attention(features)) * weight).sum(-1)  # (N, K, C) . (K, C) -> (N, K)
        return logits if bias is None else logits + bias


class Tokens(NamedTuple):
    """Final features as tokens, whatever the family gives."""
    x: torch.Tensor  # (N, T, C)
    prefix: int  # leading non-spatial tokens (a ViT's class token)
    grid: tuple[int, int]  # (h, w) of the spatial tokens
    layout: str  # what forward_features gave: "NCHW" (CNN), "NHWC" (Swin) or "NLC" (ViT)

    @property
    def spatial(self) -> torch.Tensor:  # (N, h*w, C)
        return self.x[:, self.prefix:]


def to_tokens(features: torch.Tensor, backbone: nn.Module) -> Tokens:
    """``forward_features`` output -> ``Tokens``."""
    if features.ndim == 3:  # ViT: (N, prefix + h*w, C)
        prefix = getattr(backbone, "num_prefix_tokens", 0)
        cells = features.shape[1] - prefix
        side = int(round(cells ** 0.5))
        grid = tuple(getattr(getattr(backbone, "patch_embed", None), "grid_size", None) or (side, side))
        if grid[0] * grid[1] != cells:
            raise ValueError(f"{type(backbone).__name__} gives {cells} spatial tokens, not a {grid} grid: "
                             f"build it for a fixed square image_size")
        return Tokens(features, prefix, grid, "NLC")
    if getattr(backbone, "output_fmt", "NCHW") == "NHWC":  # Swin: (N, h, w, C)
        n, h, w, c = features.shape
        return Tokens(features.reshape(n, h * w, c), 0, (h, w), "NHWC")
    n, c, h, w = features.shape  # CNN: (N, C, h, w)
    return Tokens(features.flatten(2).transpose(1, 2), 0, (h, w), "NCHW")


def from_tokens(tokens: Tokens) -> torch.Tensor:
    """The inverse of ``to_tokens``: the layout the backbone's ``forward_head`` takes."""
    n, _, c = tokens.x.shape
    if tokens.layout == "NLC":
        return tokens.x
    if tokens.layout == "NHWC":
        return tokens.x.reshape(n, *tokens.grid, c)
    return tokens.x.transpose(1, 2).reshape(n, c, *tokens.grid)


class HeadedClassifier(nn.Module):
    """A timm backbone with TRCGL-Net's parts: (N, 1, S, S) in [0, 1] -> logits (N, K).

    The backbone keeps its own pooling (and a ConvNeXt its norm, all their dropout); only its
    last Linear goes. Grad-CAM finds its layers under ``backbone`` (models/gradcam.py)."""

    def __init__(self, backbone: nn.Module, num_classes: int, se: bool = False, attention: bool = False,
                 cooccurrence: torch.Tensor | None = None, drop_rate: float = 0.0):
        super().__init__()
        backbone.reset_classifier(0)  # forward_head now ends in the pooled features (N, C)
        channels = backbone.num_features
        self.backbone = backbone
        self.se = SqueezeExcite(channels) if se else None
        graph = LabelGraph(cooccurrence, channels) if cooccurrence is not None else None
        if graph is not None and graph.cooccurrence.shape[0] != num_classes:
            raise ValueError(f"the label co-occurrence is {tuple(graph.cooccurrence.shape)}, "
                             f"expected ({num_classes}, {num_classes})")
        self.head = ClassHead(channels, num_classes, attention, graph, drop_rate)
        # a head that normalises after pooling (ConvNeXt's) normalises each cell for the attention instead
        self.norm_cells = attention and isinstance(getattr(getattr(backbone, "head", None), "norm", None), nn.Module)

    def get_classifier(self) -> nn.Module:
        """The classification layers (what classifier re-training re-initialises and trains)."""
        return self.head

    def features(self, x: torch.Tensor) -> Tokens:
        """The backbone's final features as tokens, after SE."""
        features = self.backbone.forward_features(x)
        if self.norm_cells:
            features = self.backbone.head.norm(features)
        tokens = to_tokens(features, self.backbone)
        return tokens if self.se is None else tokens._replace(x=self.se(tokens.x, tokens.prefix))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, S, S) -> (N, K)
        tokens = self.features(x)
        if self.head.attention is not None:
            return self.head(tokens.spatial)
        return self.head(self.backbone.forward_head(from_tokens(tokens)))  # timm's pooling: (N, C)


@torch.no_grad()
def class_attention_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 1, S, S) -> (N, K, h, w): each class's attention over the final feature map (sums to 1)."""
    head = getattr(model, "head", None)
    if not isinstance(model, HeadedClassifier) or head.attention is None:
        raise ValueError("map method 'attention' needs a classifier trained with the class-attention head "
                         "(classifier.head: attention); use a Grad-CAM method or 'infill' for this one")
    was_training = model.training
    model.eval()
    try:
        tokens = model.features(images.to(model_device(model)))
        maps = head.attention.maps(tokens.spatial)  # (N, K, h*w)
    finally:
        model.train(was_training)
    return maps.reshape(*maps.shape[:2], *tokens.grid).float().cpu()
