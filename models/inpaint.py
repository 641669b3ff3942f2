"""Masked inpainting with the normal-X-ray DiT: our own RePaint-style sampling loop.

Mask convention: ``mask`` is (N, 1, H, W) in {0, 1}, **1 = regenerate**, 0 = keep.

Each step follows RePaint (Lugmayr et al., "RePaint: Inpainting using Denoising Diffusion
Probabilistic Models", Alg. 1): the known region is the input noised to the current level
(eq. 8: x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps), the unknown region comes from the model,
the two are joined by the mask, and the model takes one DDIM step (Song et al., eq. 12).
Every ``jump_length`` steps the sample is pushed back up by the same number of steps with
fresh noise (q(x_t | x_s), the forward chain) and denoised again, ``resample`` times, so the
generated region can agree with its surroundings. With ``init="harmonic"`` the sampler starts
from the harmonic fill of the mask (models/fill.py) noised to the level ``strength`` of the
schedule (SDEdit, Meng et al., "SDEdit: Guided Image Synthesis and Editing with Stochastic
Differential Equations"): the fill fixes the region's mean, which is what removes a lesion's
opacity, and the DiT adds the texture a smooth fill lacks. At the end the known pixels are pasted back,
so unmasked pixels equal the input exactly. An optional feather blends the generated region
into the original over a few pixels *inside* the mask; outside it nothing changes. An
inpainting DiT (models/dit.py, ``conditioning="mask"``) also gets the known image and the mask
at every step, so it paints from the surroundings instead of only being joined to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from models.device import model_device
from models.engine import pool
from models.dit import condition, is_conditioned, predict_noise, to_model_range, to_unit_range
from models.sampling import Generators, NoiseTape, ddim_step, ddim_timesteps, noised_known, randn, renoise


INITS = ("noise", "harmonic")  # inpaint.init: from pure noise, or from the harmonic fill noised (SDEdit)


@dataclass(frozen=True)
class InpaintConfig:
    steps: int = 25  # DDIM steps on the respaced schedule
    jump_length: int = 5  # RePaint: steps per resampling block
    resample: int = 2  # RePaint: passes over each block (1 = plain masked DDIM)
    eta: float = 0.0  # DDIM stochasticity (0 = deterministic transitions)
    feather_px: int = 0  # width of the blend ramp inside the mask; 0 = hard edge
    init: Literal[INITS] = "noise"  # "noise": start from pure noise; "harmonic": from the harmonic fill, noised (SDEdit)
    strength: float = 1.0  # with init "harmonic": the share of the schedule run (1 = from pure noise)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.jump_length < 1 or self.resample < 1:
            raise ValueError("steps, jump_length and resample must be at least 1")
        if self.init not in INITS or not 0 < self.strength <= 1:
            raise ValueError(f"init must be one of {INITS}, and 0 < strength <= 1")
        if self.feather_px < 0:
            raise ValueError("feather_px must be >= 0")


def jump_schedule(n_steps: int, jump_length: int, resample: int) -> list[tuple[int, int]]:
    """Moves over step indices 0..n_steps: (i, i+1) denoises, (i+1, i) re-noises."""
    moves, start = [], 0
    while start < n_steps:
        end = min(start + jump_length, n_steps)
        for r in range(resample):
            moves += [(i, i + 1) for i in range(start, end)]
            if r < resample - 1:  # jump back to the block's start (from the clean estimate too)
                moves += [(i, i - 1) for i in range(end, start, -1)]
        start = end
    return moves


def feather_weights(mask: torch.Tensor, feather_px: int) -> torch.Tensor:
    """Blend weight in [0, 1]: 0 outside the mask, ramping to 1 ``feather_px`` pixels inside."""
    if feather_px == 0:
        return mask
    inside = mask.clone()
    weight = torch.zeros_like(mask)
    for _ in range(feather_px):  # erode one pixel at a time: weight grows with depth inside
        weight = weight + inside
        inside = -F.max_pool2d(-inside, kernel_size=3, stride=1, padding=1)
    return (weight / feather_px).clamp(max=1.0) * mask


def draws(moves: list[tuple[int, int]], times: list[int], eta: float) -> int:
    """How many noise tensors ``inpaint`` draws: the start, one known-region noising per
    denoising move (and its DDIM noise when eta > 0, but not on the last step), one per jump back."""
    return 1 + sum(1 + (eta > 0 and times[j] >= 0) if j > i else 1 for i, j in moves)


class Inpainting:
    """One ``inpaint`` call's rows on their way through the RePaint moves, a network call at a
    time: ``next_call`` makes the jumps back (no network) and returns the next denoising call's
    inputs, ``take`` finishes that step with the network's noise, ``result`` gives the images.
    The rows of several of these can share each network call (models/engine.Pool: each row keeps
    its own timestep), and a row's numbers are those of running it alone."""

    def __init__(self, model, scheduler, images: torch.Tensor, mask: torch.Tensor, config: InpaintConfig,
                 generator: Generators, tape: bool | None):
        if images.shape != mask.shape or images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images {tuple(images.shape)} and mask {tuple(mask.shape)} must both be (N, 1, H, W)")
        device, self.home, self.scheduler, self.config = model_device(model), images.device, scheduler, config
        self.images, self.mask = images.to(device), (mask > 0.5).to(device, images.dtype)
        self.x0 = to_model_range(self.images)
        times = ddim_timesteps(scheduler, config.steps) + [-1]  # index k -> timestep; last = clean
        if config.init == "harmonic":
            limit = config.strength * (scheduler.config.num_train_timesteps - 1)
            times = [t for t in times[:-1] if t <= limit] + [-1]
        self.times, self.moves, self.done = times, jump_schedule(len(times) - 1, config.jump_length, config.resample), 0
        if tape if tape is not None else device.type == "cuda":
            generator = NoiseTape(generator, self.x0.shape, draws(self.moves, times, config.eta), device)
        self.generator = generator
        if config.init == "harmonic":
            from models.fill import harmonic_fill

            fill = harmonic_fill(self.images.cpu(), self.mask.cpu()).to(device)
            self.x = noised_known(scheduler, to_model_range(fill), times[0], generator)
        else:
            self.x = randn(self.x0.shape, generator, device)
        # an inpainting DiT sees the known image
        self.cond = condition(self.x0, self.mask) if is_conditioned(model) else None
        self.pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    @property
    def rows(self) -> int:
        return self.x.shape[0]

    def next_call(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """The next denoising step's network inputs (x, its (N,) timesteps, cond), after any jumps
        back before it (asked again before ``take``, the same call: its noise is drawn once);
        None when every move is made."""
        if self.pending is not None:
            return self.pending
        while self.done < len(self.moves):
            i, j = self.moves[self.done]
            t = self.times[i]
            if j > i:  # denoise one step, with the known region at the current noise level
                known = noised_known(self.scheduler, self.x0, t, self.generator)
                self.x = self.mask * self.x + (1 - self.mask) * known
                self.pending = self.x, torch.full((self.rows,), t, dtype=torch.long), self.cond
                return self.pending
            # jump back up one step; t = -1 (clean) works: alpha_bar(-1) = 1
            self.x = renoise(self.scheduler, self.x, t, self.times[j], self.generator)
            self.done += 1
        return None

    def take(self, eps: torch.Tensor) -> None:
        """The DDIM step of the call ``next_call`` returned, with the network's noise."""
        i, j = self.moves[self.done]
        x = ddim_step(self.scheduler, self.x, eps, self.times[i], self.times[j], self.config.eta, self.generator)
        self.x, self.done, self.pending = x, self.done + 1, None

    def result(self) -> torch.Tensor:
        generated = to_unit_range(self.x)
        weight = feather_weights(self.mask, self.config.feather_px)
        return torch.where(self.mask > 0, weight * generated + (1 - weight) * self.images, self.images).to(self.home)


@torch.inference_mode()
def inpaint(model, scheduler, images: torch.Tensor, mask: torch.Tensor, config: InpaintConfig = InpaintConfig(),
            generator: Generators = None, tape: bool | None = None) -> torch.Tensor:
    """Regenerate the masked region of (N, 1, H, W) images in [0, 1]; returns [0, 1], with
    every pixel where ``mask`` is 0 equal to the input exactly. ``generator`` is one
    generator, or one per image (then each result is independent of its batch-mates).
    ``tape``: draw the whole run's noise first (models/sampling.NoiseTape; the same numbers),
    by default on CUDA, where a copy per step would wait for the host. Calls from several
    threads on one model share its network calls (models/engine.Pool)."""
    job = Inpainting(model, scheduler, images, mask, config, generator, tape)
    pool(model).run(job, lambda x, t, cond: predict_noise(model, x, t, cond))
    return job.result()
