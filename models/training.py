"""Training utilities shared by the classifier and the diffusion model, and the classifier's loop.

Data arrives as in-memory tensors (the tasks layer reads Parquet and hands them over):
images (N, 1, H, W) float in [0, 1], labels (N, K) float with 1 / 0 / NaN (unknown).
For the PIL schedule a caller passes ``epoch_data(n) -> (images, labels)``: the training set of
epoch n (the original data plus a growing prefix of the generated samples).

Augmentation is deliberately mild and never flips: a chest film's left and right are anatomy
(heart on the left, the aortic knob, situs), and findings such as cardiomegaly depend on it.
It uses small translations (border pixels extend) and brightness/contrast jitter, the
variation between radiographs of the same patient.

Longer than ~300 lines: the classifier's one training loop with what it needs beside it (EMA,
augmentation, class-aware order, cRT, prediction); the loop's CPU, CUDA and DDP paths are one
function on purpose.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import distributed
from models.configs import TrainConfig  # noqa: F401  (its home)
from models.device import model_device
from models.losses import NEEDS_COUNTS, make_loss

Batch = tuple[torch.Tensor, torch.Tensor]  # images (N, 1, H, W), labels (N, K)


ON_DEVICE_BYTES = 2 * 1024**3  # a training set at most this large is kept on the GPU while it trains


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). CPU runs are then repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EMA:
    """Exponential moving average of a model's floating-point parameters.

    The decay warms up as min(max_decay, (1 + step) / (10 + step)): a fixed 0.999 over a short run
    keeps a large share of the random initialisation (design doc section 6; 0.999^1500 ~ 0.22).
    Buffers (e.g. BatchNorm statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, max_decay: float = 0.999):
        if not 0.0 <= max_decay < 1.0:
            raise ValueError(f"max_decay must be in [0, 1), got {max_decay}")
        self.max_decay = float(max_decay)
        self.step = 0  # updates done so far
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters() if p.dtype.is_floating_point}
        self.buffers = {k: b.detach().clone() for k, b in model.named_buffers()}

    @property
    def decay(self) -> float:
        """The decay the next update will use."""
        return min(self.max_decay, (1 + self.step) / (10 + self.step))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.decay
        params = dict(model.named_parameters())
        if set(params) & set(self.shadow) != set(self.shadow):
            raise ValueError("EMA.update got a model without the parameters it was created from")
        names = list(self.shadow)  # one fused update over all tensors, not a Python loop of kernels
        torch._foreach_lerp_([self.shadow[k] for k in names],
                             [params[k].detach().to(self.shadow[k].device, self.shadow[k].dtype) for k in names],
                             1.0 - decay)
        for name, buf in model.named_buffers():
            if name in self.buffers:
                self.buffers[name].copy_(buf)
        self.step += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged parameters (and the latest buffers) into ``model``."""
        params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
        for name, avg in self.shadow.items():
            params[name].copy_(avg)
        for name, buf in self.buffers.items():
            buffers[name].copy_(buf)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "max_decay": self.max_decay,
                "shadow": {k: v.clone() for k, v in self.shadow.items()},
                "buffers": {k: v.clone() for k, v in self.buffers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("EMA state does not match this model's parameters")
        self.step, self.max_decay = int(state["step"]), float(state["max_decay"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
        for name, value in state.get("buffers", {}).items():
            if name in self.buffers:
                self.buffers[name].copy_(value)


def _check_data(images: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)):
        raise ValueError(f"{what}: images and labels must be torch tensors")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"{what}: images must be (N, 1, H, W), got {tuple(images.shape)}")
    if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{what}: labels must be (N, K) with N = {images.shape[0]}, got {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{what}: no images")
    if not images.is_floating_point() or images.min() < 0 or images.max() > 1 or not torch.isfinite(images).all():
        raise ValueError(f"{what}: images must be finite floats in [0, 1] (divide 8-bit pixels by 255)")
    known = labels[~torch.isnan(labels)]
    if not ((known == 0) | (known == 1)).all():
        raise ValueError(f"{what}: labels must be 1, 0 or NaN (unknown)")


def augment_batch(images: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Random small translations and brightness/contrast jitter, no flips: (B, 1, H, W) -> same."""
    b = images.shape[0]
    rand = torch.rand(b, 4, generator=generator).to(images.device) * 2 - 1  # (B, 4) in [-1, 1)
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = rand[:, :2] * 2 * config.max_shift  # grid units: the side spans 2
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = (1 + config.intensity_jitter * rand[:, 2]).view(b, 1, 1, 1)
    brightness = (config.intensity_jitter * 0.5 * rand[:, 3]).view(b, 1, 1, 1)
    mean = out.mean(dim=(2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).clamp(0, 1)


@torch.no_grad()
def _counts(config: TrainConfig, labels: torch.Tensor | None, epoch_data) -> dict:
    """{"counts": positives per class} for a loss built from them (class-balanced), from the
    training labels (epoch 0's set when the data changes per epoch, as PIL's does)."""
    if config.loss not in NEEDS_COUNTS:
        return {}
    if labels is None:
        labels = epoch_data(0)[1]
    return {"counts": torch.nan_to_num(labels.float(), nan=0.0).sum(dim=0).tolist()}


@torch.no_grad()
def _mean_loss(model: nn.Module, loss_fn: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               batch_size: int) -> float:
    """Loss over a whole set, weighting each batch by its known labels (eval mode)."""
    device, total, weight = model_device(model), 0.0, 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device)
        y = labels[start:start + batch_size].to(device)
        known = int((~torch.isnan(y)).sum())
        total += float(loss_fn(model(x), y)) * known
        weight += known
    return total / weight if weight else 0.0


def fit_classifier(model: nn.Module, images: torch.Tensor | None, labels: torch.Tensor | None,
                   config: TrainConfig, val: Batch | None = None,
                   progress: Callable[[dict[str, Any]], None] | None = None,
                   epoch_data: Callable[[int], Batch] | None = None, frozen_norms: bool = False) -> dict[str, list]:
    """Train ``model`` in place with AdamW on a NaN-masked multi-label loss; return the history.

    images (N, 1, H, W) in [0, 1], labels (N, K) 1/0/NaN; or ``epoch_data(n)`` giving the
    training set of epoch n (then images/labels may be None). ``val`` = (images, labels) adds
    a val loss per epoch. ``progress`` gets each epoch's history row as a dict. ``frozen_norms``:
    normalisation layers keep their running statistics (eval mode) while the rest trains.
    Deterministic on CPU for a fixed ``config.seed`` and the same initial weights.

    Inside a torch.distributed process group (models/distributed.py) every rank draws and
    augments each whole batch and trains its share of it; the epoch's loss is summed over the
    ranks. BatchNorm statistics are per rank on the CPU and synchronised on CUDA.
    """
    if epoch_data is None:
        if images is None or labels is None:
            raise ValueError("give images and labels, or epoch_data(n) -> (images, labels)")
        _check_data(images, labels, "training data")
    if val is not None:
        _check_data(val[0], val[1], "val data")
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = model_device(model)
    loss_fn = make_loss(config.loss, **_counts(config, labels, epoch_data), **config.loss_kwargs).to(device)
    cuda = device.type == "cuda"
    if cuda:  # NHWC convolutions for the tensor cores; AdamW's fused kernel (both CUDA-only gains)
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=config.lr, weight_decay=config.weight_decay, fused=cuda or None)
    rank, world = distributed.world()
    net = distributed.wrap(model)
    history: dict[str, list] = {"epoch": [], "n_train": [], "lr": [], "train_loss": [], "val_loss": [], "seconds": []}
    source, source_of = None, None  # the training set where batches are gathered, and the set it holds

    for epoch in range(config.epochs):
        started = time.perf_counter()
        if epoch_data is not None:
            images, labels = epoch_data(epoch)
            _check_data(images, labels, f"epoch_data({epoch})")
        lr = config.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if hasattr(loss_fn, "set_epoch"):  # LDAM-DRW re-weights from a later epoch on
            loss_fn.set_epoch(epoch, config.epochs)
        model.train()
        if frozen_norms:
            for layer in model.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.eval()
        order = torch.randperm(images.shape[0], generator=generator)
        # on a GPU a set that fits goes there once (again only when epoch_data gives a new set):
        # batches are gathered where they train
        if source is None or source_of is not images:
            source_of = images
            source = ((images.to(device), labels.to(device))
                      if cuda and images.numel() * images.element_size() <= ON_DEVICE_BYTES else (images, labels))
        # the epoch's loss summed on the device: reading it each step would wait for the device
        total, weight = torch.zeros((), dtype=torch.float64, device=device), torch.zeros((), dtype=torch.long, device=device)
        for start in range(0, order.numel(), config.batch_size):
            idx = order[start:start + config.batch_size]
            if idx.numel() == 1 and config.batch_size > 1 and order.numel() > 1:
                continue  # a lone last image breaks BatchNorm statistics; it is seen next epoch
            shares = [len(s) for s in torch.tensor_split(idx, world)]
            if world > 1 and min(shares) < 2 <= config.batch_size:
                continue  # too few to give every process two: they are seen next epoch
            x, y = source[0][idx.to(source[0].device)], source[1][idx.to(source[1].device)]
            if config.augment:  # the whole batch on every rank: the generator stays in step
                x = augment_batch(x, config, generator)
            mine = slice(sum(shares[:rank]), sum(shares[:rank + 1]))
            x, y = x[mine], y[mine]
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cuda:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = net(x.contiguous(memory_format=torch.channels_last)).float()  # (B, K)
            else:
                logits = net(x)  # (B, K)
            if logits.shape != y.shape:
                raise ValueError(f"the model gives {tuple(logits.shape)} logits for labels {tuple(y.shape)}: "
                                 f"num_classes must match the label vocabulary")
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            known = (~torch.isnan(y)).sum()
            total += loss.detach().double() * known
            weight += known
        model.eval()
        total, weight = float(distributed.sum_over_ranks(total)), int(distributed.sum_over_ranks(weight))
        row = {"epoch": epoch, "n_train": int(images.shape[0]), "lr": lr,
               "train_loss": total / weight if weight else 0.0,
               "val_loss": _mean_loss(model, loss_fn, val[0], val[1], config.batch_size) if val is not None else None,
               "seconds": time.perf_counter() - started}
        for key, value in row.items():
            history[key].append(value)
        if progress is not None:
            progress(row)
    return history


def class_aware_order(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` image indices drawn class-aware (Shen et al., "Relay Backpropagation", the sampler of
    Kang et al.'s cRT): a class uniformly (the images with no known positive form one more
    class: normal films), then one of its images uniformly. Every class is seen about equally
    often, however rare."""
    positive = torch.nan_to_num(labels.float(), nan=0.0) > 0
    groups = [torch.nonzero(positive[:, k]).flatten() for k in range(labels.shape[1])]
    groups.append(torch.nonzero(~positive.any(dim=1)).flatten())
    groups = [g for g in groups if g.numel()]
    which = torch.randint(len(groups), (n,), generator=generator)
    picks = torch.rand(n, generator=generator)
    return torch.stack([groups[g][int(p * groups[g].numel())] for g, p in zip(which.tolist(), picks.tolist())])


def retrain_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
                       val: Batch | None = None, progress: Callable[[dict[str, Any]], None] | None = None
                       ) -> dict[str, list]:
    """Classifier re-training (cRT; Kang et al., "Decoupling Representation and Classifier for
    Long-Tailed Recognition", ICLR 2020): the features stay as trained, the last layer
    (``model.get_classifier()``, timm's) is re-initialised and trained alone for ``config.epochs``
    on class-aware batches (``class_aware_order``). BatchNorm statistics stay frozen (eval mode).
    Returns the history, as fit_classifier does."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        raise ValueError(f"cRT re-trains the last layer, but {type(model).__name__} has no get_classifier() "
                         f"with parameters (timm models have one)")
    _check_data(images, labels, "cRT data")
    seed_everything(config.seed)
    device = model_device(head)
    head.cpu()  # re-initialised from the CPU's generator, as on a CPU host (models/device.py)
    for layer in head.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    head.to(device)
    trainable = {id(p) for p in head.parameters()}
    frozen = [p for p in model.parameters() if id(p) not in trainable and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed)
    order = class_aware_order(labels, images.shape[0] * config.epochs, generator)
    per_epoch = images.shape[0]

    def epoch_data(n: int) -> Batch:
        idx = order[n * per_epoch:(n + 1) * per_epoch]
        return images[idx], labels[idx]

    try:
        return fit_classifier(model, None, None, config, val=val, progress=progress, epoch_data=epoch_data,
                              frozen_norms=True)
    finally:
        for p in frozen:
            p.requires_grad_(True)


@torch.no_grad()
def predict_probs(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Sigmoid probabilities (N, K) as float32 NumPy, in eval mode; the model's mode is restored."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (N, 1, H, W), got {tuple(images.shape)}")
    was_training, device = model.training, model_device(model)
    model.eval()
    try:
        out = [torch.sigmoid(model(images[s:s + batch_size].to(device))).float().cpu()
               for s in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)
