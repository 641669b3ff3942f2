"""The normal-X-ray diffusion model: a diffusers DiT in pixel space, trained only on normals.

DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers") over 1-channel images in
[-1, 1], DDPM epsilon objective (Ho et al., "Denoising Diffusion Probabilistic Models",
eq. 14), cosine noise schedule (Nichol & Dhariwal, "Improved DDPM"). Every image gets class
label 0 (one class: normal). The checkpoint carries the config that made it.

``prediction="sample"`` makes the network output the clean image instead of the noise
(x-prediction, as in Li & He, "Back to Basics: Let Denoising Generative Models Denoise", 2025):
with 8 x 8 patches each token must emit 64 pixel values; noise in 64 dimensions is more than a
small transformer can carry, a clean patch lies near a low-dimensional set, so the noise
predictor paints 8 x 8 blocks where the clean-image predictor paints tissue. It is trained with
the v-loss of its prediction, |x0_hat - x0|^2 / (1 - ab_t) with 1 - ab_t floored at
``V_LOSS_FLOOR`` (their choice), and reaches the samplers as the noise it implies, so DDIM,
RePaint and the OOD score are the same code for both.

``conditioning="mask"`` makes it an inpainting model, as the inpainting checkpoints of Stable
Diffusion are trained (Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion
Models", the inpainting variant): besides x_t it sees the known image (zero inside the mask)
and the mask, two more input channels, and learns on normals with random lesion-like masks
(``random_masks``) to fill a hole from its surroundings. A share ``full_mask_share`` of the
training masks cover the whole image, so the same model also samples freely. Unconditioned
(``"none"``), the sampler joins the model's region to the known one RePaint-style instead.

``conditioning="labels"`` is the other way to make tail-class images, the paper's DfT-Caption
baseline (its Table 3) and the generator of TRCGL-Net: a DiT trained on the labelled train
split, conditioned on the image's finding set (a multi-hot vector, through
``LabelSetEmbedding`` in place of DiT's one-class table) and sampled from noise for a chosen
set. A share ``label_dropout`` of training rows see no labels, so the same model is also the
unconditional one that classifier-free guidance (Ho & Salimans) steers away from.

Longer than ~300 lines: the DiT, its presets and FLOPs, its loss and its training loop, which
share the config and the noise schedule; sampling and inpainting are their own modules.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from diffusers import DDPMScheduler, DiTTransformer2DModel
from torch import nn

from models import checkpoint, distributed, engine
from models.configs import CONDITIONINGS, PREDICTIONS, DiTConfig, DiTTrainConfig  # noqa: F401  (their home)
from models.device import model_device, on_device
from models.training import EMA, seed_everything


V_LOSS_FLOOR = 0.05  # prediction "sample": the v-loss weight 1 / (1 - ab_t) is capped at 1 / this


# DiT sizes by name (Peebles & Xie, "Scalable Diffusion Models with Transformers", table 1: DiT-S
# and DiT-B); "tiny" is the size this project trains on a CPU. The patch follows the image size
# so that every preset sees 256 tokens (16 x 16), as DiT's /2 models do on 32 x 32 latents.
PRESETS = {
    "tiny": {"depth": 6, "num_heads": 4, "head_dim": 32},  # width 128
    "small": {"depth": 12, "num_heads": 6, "head_dim": 64},  # width 384, DiT-S
    "base": {"depth": 12, "num_heads": 12, "head_dim": 64},  # width 768, DiT-B
}
PRESET_TOKENS_PER_SIDE = 16


def preset_sizes(preset: str, image_size: int) -> dict:
    """The DiTConfig sizes of ``preset`` at ``image_size`` px: depth, heads, width per head, patch."""
    if preset not in PRESETS:
        raise ValueError(f"unknown generator preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if image_size % PRESET_TOKENS_PER_SIDE:
        raise ValueError(f"a preset needs an image size divisible by {PRESET_TOKENS_PER_SIDE}, got {image_size}")
    return {**PRESETS[preset], "patch_size": max(1, image_size // PRESET_TOKENS_PER_SIDE)}


def flops_per_call(config: DiTConfig) -> int:
    """Floating-point operations of one network call on one image (a multiply-add counts 2): per
    block the qkv, output and MLP (4x) projections, 24 T W^2, attention's two products, 4 T^2 W,
    and the adaLN modulation, 12 W^2; then the patch embedding and the output layer (T tokens of
    width W, patch p). torch's FlopCounterMode agrees except for attention on the CPU, which it
    does not count (a test compares them)."""
    tokens, width = (config.image_size // config.patch_size) ** 2, config.num_heads * config.head_dim
    pixels = config.patch_size ** 2
    channels_in = 3 if config.conditioning == "mask" else 1
    block = 24 * tokens * width ** 2 + 4 * tokens ** 2 * width + 12 * width ** 2
    return config.depth * block + 2 * tokens * pixels * width * (channels_in + 1) + 4 * width ** 2


class LabelSetEmbedding(nn.Module):
    """A finding set -> the vector DiT adds to its timestep embedding (each block's class
    embedder). Input (N, K + 1): the multi-hot set and a last 'no labels' flag (``label_input``)."""

    def __init__(self, num_labels: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(num_labels + 1, dim)

    def forward(self, labels: torch.Tensor, force_drop_ids=None) -> torch.Tensor:
        return self.proj(labels.to(self.proj.weight.dtype))


def label_input(labels: torch.Tensor, dropped: torch.Tensor | None = None) -> torch.Tensor:
    """(N, K) finding sets (1 = present; 0 or NaN = not) and which rows see none -> (N, K + 1)."""
    present = (torch.nan_to_num(labels.float(), nan=0.0) > 0.5).float()
    dropped = torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device) if dropped is None else dropped
    return torch.cat([present * ~dropped[:, None], dropped[:, None].float()], dim=1)


def build_dit(config: DiTConfig) -> DiTTransformer2DModel:
    model = DiTTransformer2DModel(
        num_attention_heads=config.num_heads, attention_head_dim=config.head_dim,
        in_channels=3 if config.conditioning == "mask" else 1, out_channels=1,
        num_layers=config.depth, sample_size=config.image_size, patch_size=config.patch_size,
        norm_num_groups=1, num_embeds_ada_norm=1)
    for block in model.transformer_blocks:  # block 0's also conditions the output layer
        if config.conditioning == "labels":
            block.norm1.emb.class_embedder = LabelSetEmbedding(config.num_labels, config.num_heads * config.head_dim)
        else:  # one class ("normal"): diffusers' 10% label dropout would train a null label no sampler
            # uses, drawn from the process-wide RNG (so a batch split over processes drew other drops)
            block.norm1.emb.class_embedder.dropout_prob = 0.0
    # what predict_noise needs to turn a clean-image prediction into epsilon (plain attributes,
    # not weights: the checkpoint's config rebuilds them)
    model.prediction = config.prediction
    model.alphas_cumprod = build_scheduler(config).alphas_cumprod
    return model


def is_conditioned(model: DiTTransformer2DModel) -> bool:
    """An inpainting model (conditioning "mask"): it needs ``condition`` in predict_noise."""
    return model.config.in_channels == 3


def label_count(model: DiTTransformer2DModel) -> int:
    """K for a label-conditioned DiT (conditioning "labels"), else 0."""
    embedder = model.transformer_blocks[0].norm1.emb.class_embedder
    return embedder.proj.in_features - 1 if isinstance(embedder, LabelSetEmbedding) else 0


def condition(known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inpainting model's extra channels: the known image in [-1, 1], zero where ``mask`` is
    1 (regenerate), and the mask. Both (N, 1, H, W); returns (N, 2, H, W)."""
    return torch.cat([known * (1 - mask), mask], dim=1)


def random_masks(n: int, size: int, generator: torch.Generator, full_share: float = 0.1) -> torch.Tensor:
    """(n, 1, size, size) training masks in {0, 1}: one to three rotated ellipses each (centres
    in the middle 70% of the film, semi-axes 4-25% of the side: the scale of the lesions the
    product masks), and a share ``full_share`` of all-ones masks."""
    centres = (0.15 + 0.7 * torch.rand(n, 3, 2, generator=generator)) * size  # (n, ellipse, y/x)
    axes = (0.04 + 0.21 * torch.rand(n, 3, 2, generator=generator)) * size
    angle = torch.rand(n, 3, generator=generator) * torch.pi
    count = torch.randint(1, 4, (n,), generator=generator)
    full = torch.rand(n, generator=generator) < full_share
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dy = grid.view(1, 1, size, 1) - centres[..., 0, None, None]  # (n, 3, size, 1)
    dx = grid.view(1, 1, 1, size) - centres[..., 1, None, None]  # (n, 3, 1, size)
    cos, sin = angle.cos()[..., None, None], angle.sin()[..., None, None]
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    inside = (u / axes[..., 1, None, None]) ** 2 + (v / axes[..., 0, None, None]) ** 2 <= 1  # (n, 3, size, size)
    used = torch.arange(3).view(1, 3) < count.view(n, 1)
    masks = (inside & used[..., None, None]).any(dim=1, keepdim=True) | full.view(n, 1, 1, 1)
    return masks.float()


def build_scheduler(config: DiTConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                         prediction_type="epsilon", clip_sample=True)


def network_output(model: DiTTransformer2DModel, x: torch.Tensor, t: torch.Tensor,
                   cond: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                   net: nn.Module | None = None) -> torch.Tensor:
    """What the network itself predicts at (x_t, t[, cond][, labels]): the noise, or for a
    clean-image model (prediction "sample") x0. ``x`` is (N, 1, H, W), ``t`` is (N,) long,
    ``cond`` the inpainting model's (N, 2, H, W) ``condition`` (None for an unconditioned model),
    ``labels`` a label-conditioned model's (N, K + 1) ``label_input`` (None: no labels, the
    unconditional model); ``net``: what runs the forward pass when it is not ``model`` itself
    (its DistributedDataParallel wrapper). On CUDA the transformer runs under bf16 autocast (attention is
    PyTorch's fused scaled_dot_product_attention, the diffusers default); the sampler's
    arithmetic stays in float32."""
    if is_conditioned(model) != (cond is not None):
        raise ValueError("an inpainting DiT needs cond (the known image and the mask); a plain one takes none")
    device = model_device(model)
    x, t = x.to(device), t.to(device)  # models/device.py: inputs go to the model
    if cond is not None:
        x = torch.cat([x, cond.to(x.device, x.dtype)], dim=1)
    k = label_count(model)
    if labels is not None and labels.shape != (x.shape[0], k + 1):
        raise ValueError(f"labels must be label_input rows (N, {k + 1}) for this DiT, got {tuple(labels.shape)}"
                         if k else "this DiT is not conditioned on labels")
    if k:
        nothing = torch.zeros(x.shape[0], k, device=x.device)
        labels = label_input(nothing, torch.ones(x.shape[0], dtype=torch.bool, device=x.device)) \
            if labels is None else labels.to(x.device)
    else:
        labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # one class: normal
    if net is not None:  # training (its data-parallel wrapper)
        return _forward(net, x, t, labels)
    return engine.run(model, _forward, x, t, labels)  # sampling: in the model's chunks (models/engine.py)


def _forward(net: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if x.is_cuda:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return net(x, timestep=t, class_labels=labels).sample.float()
    return net(x, timestep=t, class_labels=labels).sample  # (N, 1, H, W)


def predict_noise(model: DiTTransformer2DModel, x: torch.Tensor, t: torch.Tensor,
                  cond: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
    """epsilon_theta(x_t, t[, cond][, labels]), what the samplers step with (arguments as
    ``network_output``). A clean-image model's x0 is returned as the noise it implies,
    (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)."""
    out = network_output(model, x, t, cond, labels)
    if model.prediction == "epsilon":
        return out
    x, t = x.to(out.device), t.to(out.device)
    if model.alphas_cumprod.device != x.device:  # moved once, not on every call
        model.alphas_cumprod = model.alphas_cumprod.to(x.device)
    ab = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    return (x - ab.sqrt() * out) / (1 - ab).sqrt()


def diffusion_loss(model, scheduler: DDPMScheduler, x0: torch.Tensor, generator: torch.Generator,
                   masks: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                   part: slice = slice(None), net: nn.Module | None = None) -> torch.Tensor:
    """DDPM simple loss: || eps - eps_theta(sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t) ||^2 (eq. 14);
    for a clean-image model (prediction "sample") the v-loss of its x0 (module docstring).
    An inpainting model also sees ``condition(x0, masks)`` and is scored inside the masks only:
    where x0 is given, eps follows from x_t by a formula, and those pixels (most of the film)
    would drown the hole's signal (measured: a full-image loss removed 0.47 of oracle-masked
    lesions at 64 px against 0.82 for the plain DiT). ``labels``: a label-conditioned model's
    (N, K + 1) ``label_input``. ``part``: the rows this process scores of the batch (all of
    them; a share under data parallelism, models/distributed.py), the noise being drawn for
    the whole batch; ``net`` as in ``network_output``."""
    noise = torch.randn(x0.shape, generator=generator)[part].to(x0.device)  # drawn on the CPU (models/device.py)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator)[part]
    t = t.to(x0.device)
    x0 = x0[part]
    masks = None if masks is None else masks[part]
    labels = None if labels is None else labels[part]
    noisy = scheduler.add_noise(x0, noise, t)
    cond = None if masks is None else condition(x0, masks.to(x0.device))
    out = network_output(model, noisy, t, cond, labels, net)
    if model.prediction == "epsilon":
        error = (out - noise) ** 2
    else:  # the v-loss of the clean-image prediction: |x0_hat - x0|^2 / (1 - ab_t), capped (JiT)
        ab = scheduler.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)
        error = (out - x0) ** 2 / (1 - ab).clamp(min=V_LOSS_FLOOR)
    if masks is None:
        return error.mean()
    masks = masks.to(x0.device)
    return (error * masks).sum() / masks.sum().clamp(min=1.0)


def to_model_range(images01: torch.Tensor) -> torch.Tensor:
    return images01 * 2.0 - 1.0


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1.0) / 2.0)


def train_dit(images01: torch.Tensor, config: DiTConfig, train: DiTTrainConfig,
              progress: Callable[[int, torch.Tensor], None] | None = None,
              labels: torch.Tensor | None = None, device: torch.device | None = None,
              resume: dict | None = None, save: Callable[[dict], None] | None = None, save_every: int = 200
              ) -> tuple[DiTTransformer2DModel, EMA, dict]:
    """Train on (N, 1, S, S) images in [0, 1] (normals; for conditioning "labels" any images
    with their (N, K) ``labels``) on ``device`` (default: ``models.device.resolve_device()``).
    Returns the raw model, its EMA and the history.

    Inside a torch.distributed process group each process trains its share of every batch
    (models/distributed.py). ``progress(step, loss)`` gets the loss as a tensor (reading it
    waits for the device: do that only when showing it). ``save(state)`` is handed the
    whole training state every ``save_every`` steps (on rank 0 only); ``resume`` continues
    from such a state: the rest of the run is the run that was not stopped (the generator's
    state is in it)."""
    if images01.ndim != 4 or images01.shape[1:] != (1, config.image_size, config.image_size):
        raise ValueError(f"expected (N, 1, {config.image_size}, {config.image_size}) images, got {tuple(images01.shape)}")
    if images01.shape[0] < 2:
        raise ValueError("need at least 2 training images")
    if (config.conditioning == "labels") != (labels is not None):
        raise ValueError("a DiT conditioned on labels trains on images with their labels; the others on images alone")
    if labels is not None and labels.shape != (images01.shape[0], config.num_labels):
        raise ValueError(f"labels must be (N, {config.num_labels}) for {images01.shape[0]} images, "
                         f"got {tuple(labels.shape)}")
    part = distributed.share(train.batch_size)
    seed_everything(train.seed)
    generator = torch.Generator().manual_seed(train.seed)
    model, scheduler = on_device(build_dit(config), device), build_scheduler(config)
    ema = EMA(model, max_decay=train.ema_decay)
    optimiser = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay,
                                  fused=model_device(model).type == "cuda" or None)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / max(1, train.warmup_steps)))
    curve, pending, first = [], [], 0  # the loss per step (mean over ranks), and this rank's not yet averaged
    if resume is not None:
        model.load_state_dict(resume["model"])
        ema.load_state_dict(resume["ema"])
        optimiser.load_state_dict(resume["optimiser"])
        warmup.load_state_dict(resume["warmup"])
        generator.set_state(resume["generator"])
        curve, first = list(resume["loss"]), int(resume["step"])
    net = distributed.wrap(model)
    data = to_model_range(images01.float()).to(model_device(model))
    started = time.perf_counter()
    model.train()
    for step in range(first, train.steps):
        index = torch.randint(0, data.shape[0], (train.batch_size,), generator=generator)
        masks = (random_masks(train.batch_size, config.image_size, generator, train.full_mask_share)
                 if config.conditioning == "mask" else None)
        vectors = None
        if labels is not None:
            dropped = torch.rand(train.batch_size, generator=generator) < train.label_dropout
            vectors = label_input(labels[index], dropped).to(data.device)
        loss = diffusion_loss(model, scheduler, data[index.to(data.device)], generator, masks, vectors, part, net)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimiser.step()
        warmup.step()
        ema.update(model)
        pending.append(loss.detach())
        if progress:
            progress(step + 1, pending[-1])
        if save and (step + 1) % save_every == 0 and step + 1 < train.steps:
            curve, pending = curve + distributed.mean_over_ranks(torch.stack(pending)).tolist(), []
            if distributed.is_main():
                save({"model": model.state_dict(), "ema": ema.state_dict(), "optimiser": optimiser.state_dict(),
                      "warmup": warmup.state_dict(), "generator": generator.get_state(), "step": step + 1,
                      "loss": curve})
    if pending:
        curve += distributed.mean_over_ranks(torch.stack(pending)).tolist()
    model.eval()
    history = {"loss": curve, "seconds": time.perf_counter() - started,
               "parameters": sum(p.numel() for p in model.parameters())}
    return model, ema, history


DIT_FORMAT = "tailforge.dit/1"  # models/checkpoint.py; files from before it say "normal-dit"


def save_dit(model: DiTTransformer2DModel, config: DiTConfig, extra: dict | None = None) -> bytes:
    """Checkpoint bytes: weights and the config that made them (plus e.g. training-data ids)."""
    return checkpoint.save(DIT_FORMAT, config, model.state_dict(), extra=extra or {})


def save_dit_safetensors(model: DiTTransformer2DModel, config: DiTConfig, extra: dict | None = None) -> bytes:
    """``save_dit`` as a safetensors file (shipped weights); ``load_dit`` reads both."""
    return checkpoint.save_safetensors(DIT_FORMAT, config, model.state_dict(), extra=extra or {})


def load_dit_config(data: bytes) -> DiTConfig:
    """The config of checkpoint bytes, without building the network (what a generator is, read
    where its weights are not needed)."""
    return checkpoint.from_dict(DiTConfig, checkpoint.load(data, DIT_FORMAT, aliases=("normal-dit",))["config"])


def load_dit(data: bytes) -> tuple[DiTTransformer2DModel, DiTConfig, dict]:
    blob = checkpoint.load(data, DIT_FORMAT, aliases=("normal-dit",))
    config = checkpoint.from_dict(DiTConfig, blob["config"])
    model = build_dit(config)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, config, blob.get("extra", {})
