"""DDIM sampling for the normal-X-ray DiT: the timestep spacing, one deterministic (or
stochastic) step, the forward chain used to re-noise, and free samples. The inpainting loop
(models/inpaint.py) builds on these steps.

DDIM: Song et al., "Denoising Diffusion Implicit Models", eq. 12. Noise comes from one
generator or one per image, so an image's result does not depend on the batch it was in.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from diffusers import DDPMScheduler

from models.device import model_device
from models.dit import condition, is_conditioned, label_input, predict_noise, to_unit_range

class NoiseTape:
    """Every noise tensor a sampling loop will draw, drawn up front on the CPU from the same
    generator(s) in the same order (so the numbers are those of drawing step by step) and moved
    to the device in one copy from pinned memory: the loop then takes them in turn, with no
    host round trip per step. Pass it wherever a loop takes ``generator``."""

    def __init__(self, generator: "Generators", shape: torch.Size, draws: int, device: torch.device | str):
        device = torch.device(device)
        tape = torch.stack([_draw(shape, generator) for _ in range(draws)]) if draws else torch.empty(0, *shape)
        if device.type == "cuda":
            tape = tape.pin_memory()
        self.tape, self.shape, self.taken = tape.to(device, non_blocking=True), torch.Size(shape), 0

    def take(self, shape: torch.Size, device: torch.device | str) -> torch.Tensor:
        if torch.Size(shape) != self.shape or self.taken >= self.tape.shape[0]:
            raise RuntimeError(f"noise tape of {self.tape.shape[0]} draws of {tuple(self.shape)} asked for draw "
                               f"{self.taken + 1} of {tuple(shape)}: the loop draws more than it counted")
        self.taken += 1
        return self.tape[self.taken - 1].to(device)


Generators = Union[torch.Generator, Sequence[torch.Generator], NoiseTape, None]


def _draw(shape: torch.Size, generator: Generators) -> torch.Tensor:
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(shape[1:], generator=g) for g in generator])


def randn(shape: torch.Size, generator: Generators, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise on ``device``, drawn on the CPU (models/device.py: a seed gives the
    same noise on every device); with one generator per row, each row depends only on its own
    generator, so an image's result does not depend on the batch it was in. A ``NoiseTape``
    gives its next draw."""
    if isinstance(generator, NoiseTape):
        return generator.take(shape, device)
    return _draw(shape, generator).to(device)


def ddim_timesteps(scheduler, steps: int) -> list[int]:
    """``steps`` training timesteps, high to low, evenly spaced (always ending at 0)."""
    total = scheduler.config.num_train_timesteps
    steps = min(steps, total)
    return sorted({int(round(x)) for x in torch.linspace(total - 1, 0, steps).tolist()}, reverse=True)


def _alpha_bar(scheduler, t: int) -> torch.Tensor:
    return scheduler.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)


def ddim_step(scheduler, x: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, eta: float = 0.0,
              generator: Generators = None) -> torch.Tensor:
    """x_t -> x_{t_prev} (DDIM, Song et al. eq. 12); t_prev = -1 returns the x0 estimate."""
    ab, ab_prev = _alpha_bar(scheduler, t), _alpha_bar(scheduler, t_prev)
    x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)  # predicted x0
    if t_prev < 0:
        return x0
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
    direction = (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
    noise = randn(x.shape, generator, x.device) if eta > 0 else 0.0
    return ab_prev.sqrt() * x0 + direction + sigma * noise


def renoise(scheduler, x: torch.Tensor, t_from: int, t_to: int, generator: Generators) -> torch.Tensor:
    """Forward chain q(x_{t_to} | x_{t_from}) for t_to > t_from (RePaint's jump back)."""
    ratio = _alpha_bar(scheduler, t_to) / _alpha_bar(scheduler, t_from)
    return ratio.sqrt() * x + (1 - ratio).sqrt() * randn(x.shape, generator, x.device)


def noised_known(scheduler, x0: torch.Tensor, t: int, generator: Generators) -> torch.Tensor:
    """The known image at noise level t (RePaint eq. 8); t = -1 is the clean image."""
    if t < 0:
        return x0
    ab = _alpha_bar(scheduler, t)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * randn(x0.shape, generator, x0.device)


@torch.inference_mode()
def sample(model, scheduler: DDPMScheduler, n: int, image_size: int, steps: int = 50,
           generator: Generators = None, labels: torch.Tensor | None = None,
           guidance: float = 1.0) -> torch.Tensor:
    """Free samples by deterministic DDIM (Song et al., "Denoising Diffusion Implicit Models",
    eq. 12 with eta = 0). Returns (n, 1, S, S) in [0, 1]. A label-conditioned DiT samples the
    (n, K) finding sets ``labels`` (None: unconditionally), with classifier-free guidance
    (Ho & Salimans): eps = eps_free + guidance (eps_set - eps_free); 1 is the conditional model alone."""
    x = randn(torch.Size((n, 1, image_size, image_size)), generator, model_device(model))
    cond = condition(torch.zeros_like(x), torch.ones_like(x)) if is_conditioned(model) else None  # all unknown
    vectors = label_input(labels.to(x.device)) if labels is not None else None
    times = ddim_timesteps(scheduler, steps)
    guided = vectors is not None and guidance != 1.0
    if guided:  # the conditional and the free prediction in one batched pass
        free = label_input(torch.zeros_like(labels, device=x.device), torch.ones(n, dtype=torch.bool, device=x.device))
        vectors = torch.cat([vectors, free])
        cond = None if cond is None else torch.cat([cond, cond])
    for i, t in enumerate(times):
        t_prev = times[i + 1] if i + 1 < len(times) else -1
        now = torch.full((2 * n if guided else n,), t, dtype=torch.long)
        eps = predict_noise(model, torch.cat([x, x]) if guided else x, now, cond, vectors)
        if guided:
            given, free_eps = eps.chunk(2)
            eps = free_eps + guidance * (given - free_eps)
        x = ddim_step(scheduler, x, eps, t, t_prev)
    return to_unit_range(x).cpu()
