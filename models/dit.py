"""The normal-X-ray diffusion model: a diffusers DiT in pixel space, trained only on normals.

DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers") over 1-channel images in
[-1, 1], DDPM epsilon objective (Ho et al., "Denoising Diffusion Probabilistic Models",
eq. 14), cosine noise schedule (Nichol & Dhariwal, "Improved DDPM"). Unconditional: every
image gets class label 0. The checkpoint carries the config that made it.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiTTransformer2DModel

from models.training import EMA, seed_everything


@dataclass(frozen=True)
class DiTConfig:
    image_size: int = 64  # side in pixels; pixel space (no VAE)
    patch_size: int = 4  # tokens = (image_size / patch_size) ** 2
    depth: int = 6  # transformer blocks
    num_heads: int = 4
    head_dim: int = 32  # width = num_heads * head_dim
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # cosine schedule

    def __post_init__(self) -> None:
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
    warmup_steps: int = 100  # linear learning-rate warm-up
    ema_decay: float = 0.999  # upper bound; warmed up as min(decay, (1+s)/(10+s))
    seed: int = 0
    grad_clip: float = 1.0


def build_dit(config: DiTConfig) -> DiTTransformer2DModel:
    return DiTTransformer2DModel(
        num_attention_heads=config.num_heads, attention_head_dim=config.head_dim, in_channels=1,
        num_layers=config.depth, sample_size=config.image_size, patch_size=config.patch_size,
        norm_num_groups=1, num_embeds_ada_norm=1)


def build_scheduler(config: DiTConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                         prediction_type="epsilon", clip_sample=True)


def predict_noise(model: DiTTransformer2DModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """epsilon_theta(x_t, t); ``x`` is (N, 1, H, W), ``t`` is (N,) long. On CUDA the transformer
    runs under bf16 autocast (attention is PyTorch's fused scaled_dot_product_attention, the
    diffusers default); the sampler's arithmetic stays in float32."""
    labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # one class: normal
    if x.is_cuda:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(x, timestep=t.to(x.device), class_labels=labels).sample.float()
    return model(x, timestep=t, class_labels=labels).sample  # (N, 1, H, W)


def diffusion_loss(model, scheduler: DDPMScheduler, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """DDPM simple loss: || eps - eps_theta(sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t) ||^2 (eq. 14)."""
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                      device=x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    return F.mse_loss(predict_noise(model, noisy, t), noise)


def to_model_range(images01: torch.Tensor) -> torch.Tensor:
    return images01 * 2.0 - 1.0


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1.0) / 2.0)


def train_dit(images01: torch.Tensor, config: DiTConfig, train: DiTTrainConfig,
              progress: Callable[[int, float], None] | None = None) -> tuple[DiTTransformer2DModel, EMA, dict]:
    """Train on (N, 1, S, S) normals in [0, 1]. Returns the raw model, its EMA and the history."""
    if images01.ndim != 4 or images01.shape[1:] != (1, config.image_size, config.image_size):
        raise ValueError(f"expected (N, 1, {config.image_size}, {config.image_size}) images, got {tuple(images01.shape)}")
    if images01.shape[0] < 2:
        raise ValueError("need at least 2 training images")
    seed_everything(train.seed)
    generator = torch.Generator().manual_seed(train.seed)
    model, scheduler = build_dit(config), build_scheduler(config)
    ema = EMA(model, max_decay=train.ema_decay)
    optimiser = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / max(1, train.warmup_steps)))
    data = to_model_range(images01.float())
    losses, started = [], time.perf_counter()
    model.train()
    for step in range(train.steps):
        index = torch.randint(0, data.shape[0], (train.batch_size,), generator=generator)
        loss = diffusion_loss(model, scheduler, data[index], generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimiser.step()
        warmup.step()
        ema.update(model)
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, losses[-1])
    model.eval()
    history = {"loss": losses, "seconds": time.perf_counter() - started,
               "parameters": sum(p.numel() for p in model.parameters())}
    return model, ema, history


def save_dit(model: DiTTransformer2DModel, config: DiTConfig, extra: dict | None = None) -> bytes:
    """Checkpoint bytes: weights and the config that made them (plus e.g. training-data ids)."""
    buffer = io.BytesIO()
    torch.save({"kind": "normal-dit", "config": asdict(config), "state_dict": model.state_dict(),
                "extra": extra or {}}, buffer)
    return buffer.getvalue()


def load_dit(data: bytes) -> tuple[DiTTransformer2DModel, DiTConfig, dict]:
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if payload.get("kind") != "normal-dit":
        raise ValueError("not a normal-DiT checkpoint")
    config = DiTConfig(**payload["config"])
    model = build_dit(config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, config, payload["extra"]


@torch.no_grad()
def sample(model, scheduler: DDPMScheduler, n: int, image_size: int, steps: int = 50,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Free samples by deterministic DDIM (Song et al., "Denoising Diffusion Implicit Models",
    eq. 12 with eta = 0). Returns (n, 1, S, S) in [0, 1]."""
    from models.inpaint import ddim_timesteps, ddim_step

    x = torch.randn((n, 1, image_size, image_size), generator=generator)
    times = ddim_timesteps(scheduler, steps)
    for i, t in enumerate(times):
        t_prev = times[i + 1] if i + 1 < len(times) else -1
        eps = predict_noise(model, x, torch.full((n,), t, dtype=torch.long))
        x = ddim_step(scheduler, x, eps, t, t_prev)
    return to_unit_range(x)
