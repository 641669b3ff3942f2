"""Multi-label losses over logits (N, K) and labels (N, K) with NaN = unknown.

Unknown entries contribute nothing: each loss is the mean over the known entries only. A batch
with no known entry gives a zero loss that is still attached to the graph (backward runs and
yields zero gradients), so a training loop needs no special case for it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _known(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of known entries, labels with unknown entries zero-filled), both (N, K)."""
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must have the same (N, K) shape")
    labels = labels.to(logits.dtype)
    mask = ~torch.isnan(labels)  # (N, K)
    return mask, torch.where(mask, labels, torch.zeros_like(labels))


def masked_mean(elementwise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``elementwise`` (N, K) over ``mask`` (N, K); 0 (with a graph) when the mask is empty."""
    total = torch.where(mask, elementwise, torch.zeros_like(elementwise)).sum()
    return total / mask.sum().clamp(min=1)


class MaskedBCE(nn.Module):
    """Binary cross-entropy with logits, averaged over known entries."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mask, y = _known(logits, labels)
        return masked_mean(F.binary_cross_entropy_with_logits(logits, y, reduction="none"), mask)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., "Focal Loss for Dense Object Detection", eq. 5):
    FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t). gamma=0, alpha=None is plain BCE."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal alpha must be in [0, 1] or None, got {alpha}")
        self.gamma, self.alpha = float(gamma), alpha

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mask, y = _known(logits, labels)
        ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # -log(p_t), (N, K)
        loss = ce
        if self.gamma:
            p = torch.sigmoid(logits)
            p_t = p * y + (1 - p) * (1 - y)
            loss = loss * (1 - p_t).clamp(min=1e-12).pow(self.gamma)  # clamp: finite grads for gamma < 1
        if self.alpha is not None:
            loss = loss * (self.alpha * y + (1 - self.alpha) * (1 - y))
        return masked_mean(loss, mask)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", eq. 7):
    L+ = (1 - p)^gamma_pos log(p),  L- = p_m^gamma_neg log(1 - p_m),  p_m = max(p - clip, 0)
    (the probability margin discards very easy negatives). gamma_neg=gamma_pos=clip=0 is BCE."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8):
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0 or not 0.0 <= clip < 1.0:
            raise ValueError(f"ASL needs gamma_neg, gamma_pos >= 0 and clip in [0, 1), got "
                             f"{gamma_neg}, {gamma_pos}, {clip}")
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = float(gamma_neg), float(gamma_pos), float(clip), eps

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mask, y = _known(logits, labels)
        p = torch.sigmoid(logits)  # (N, K)
        log_p = F.logsigmoid(logits)  # stable log(p)
        if self.clip > 0:
            p_m = (p - self.clip).clamp(min=0)
            log_not_p_m = torch.log((1 - p_m).clamp(min=self.eps))
        else:
            p_m, log_not_p_m = p, F.logsigmoid(-logits)  # stable log(1 - p)
        pos = log_p * (1 - p).clamp(min=self.eps).pow(self.gamma_pos) if self.gamma_pos else log_p
        neg = log_not_p_m * p_m.clamp(min=self.eps).pow(self.gamma_neg) if self.gamma_neg else log_not_p_m
        return masked_mean(-(y * pos + (1 - y) * neg), mask)


def class_balanced_weights(counts, beta: float) -> torch.Tensor:
    """Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", eq. 3: class k
    weighs (1 - beta) / (1 - beta^n_k), n_k its positive count; scaled to sum to K. beta = 0
    gives every class 1."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class-balanced beta must be in [0, 1), got {beta}")
    n = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1)  # a class never seen: as if once
    effective = (1 - torch.pow(torch.tensor(beta, dtype=torch.float64), n)) / (1 - beta) if beta else n / n
    weights = 1.0 / effective
    return (weights * len(weights) / weights.sum()).float()


class ClassBalancedBCE(nn.Module):
    """Class-balanced loss (Cui et al., eq. 3 with the sigmoid loss): class k's binary
    cross-entropy is weighted by ``class_balanced_weights``. Rare classes weigh more; beta = 0 is
    plain BCE. ``counts`` (K,) come from the training set (models.training.fit_classifier passes them)."""

    def __init__(self, counts, beta: float = 0.999):
        super().__init__()
        self.register_buffer("weights", class_balanced_weights(counts, beta))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mask, y = _known(logits, labels)
        if logits.shape[1] != self.weights.numel():
            raise ValueError(f"{logits.shape[1]} classes, but counts for {self.weights.numel()}")
        ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        return masked_mean(ce * self.weights.to(logits.dtype), mask)


class LDAMDRW(nn.Module):
    """LDAM-DRW (Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin
    Loss", NeurIPS 2019) in its multi-label sigmoid form, the long-tail baseline of the
    NIH-CXR-LT benchmark (Holste et al., "Long-Tailed Classification of Thorax Diseases on Chest
    X-Ray", 2022; balanced accuracy 0.289 against 0.115 for plain softmax there).

    LDAM: a positive logit of class k is lowered by the margin C / n_k^(1/4) before the loss
    (C makes the rarest class's margin ``max_margin``), so a rare class must clear a wider margin;
    logits are multiplied by ``scale`` (the paper uses 30 with a cosine classifier; 1 with the
    plain linear heads here). DRW (deferred re-weighting): from epoch ``drw_share`` x epochs on,
    class k's term is weighted by the class-balanced weights (beta ``drw_beta``); before, all
    classes weigh 1. The training loop calls ``set_epoch`` (models.training.fit_classifier)."""

    def __init__(self, counts, max_margin: float = 0.5, scale: float = 1.0, drw_share: float = 0.8,
                 drw_beta: float = 0.9999):
        super().__init__()
        if max_margin < 0 or scale <= 0 or not 0.0 <= drw_share <= 1.0:
            raise ValueError(f"LDAM-DRW needs max_margin >= 0, scale > 0 and drw_share in [0, 1], got "
                             f"{max_margin}, {scale}, {drw_share}")
        n = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1)
        margins = n.pow(-0.25)
        self.register_buffer("margins", (margins * (max_margin / margins.max())).float())
        self.register_buffer("drw_weights", class_balanced_weights(counts, drw_beta))
        self.scale, self.drw_share, self.reweight = float(scale), float(drw_share), drw_share == 0.0

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Re-weighting is on from epoch floor(drw_share x epochs) (drw_share 1: never)."""
        self.reweight = self.drw_share < 1.0 and epoch >= int(self.drw_share * epochs)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mask, y = _known(logits, labels)
        if logits.shape[1] != self.margins.numel():
            raise ValueError(f"{logits.shape[1]} classes, but counts for {self.margins.numel()}")
        shifted = self.scale * (logits - y * self.margins.to(logits.dtype))  # margin on positives only
        ce = F.binary_cross_entropy_with_logits(shifted, y, reduction="none")
        if self.reweight:
            ce = ce * self.drw_weights.to(logits.dtype)
        return masked_mean(ce, mask)


LOSSES: dict[str, type[nn.Module]] = {"bce": MaskedBCE, "focal": FocalLoss, "asl": AsymmetricLoss,
                                      "cb": ClassBalancedBCE, "ldam_drw": LDAMDRW}
NEEDS_COUNTS = ("cb", "ldam_drw")  # losses built from the training set's positive counts per class


def make_loss(name: str, **kwargs: Any) -> nn.Module:
    """A NaN-masked multi-label loss by name: "bce" (default), "focal", "asl", "cb" or "ldam_drw"
    (the last two need ``counts``, the positive count per class in the training labels)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    try:
        return LOSSES[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for loss {name!r}: {err}") from err
