"""The sampler's network calls, decoupled from the caller's batch: rows go through the DiT in
chunks of the model batch (``EngineConfig.rows``, or sized to the device's free memory), not in
the Prefect batch a task happens to hold; with ``compile`` each chunk is padded up to a
power-of-two bucket, so a compiled forward (torch.compile) meets a handful of shapes and never
recompiles per removal round. A row's result does not depend on its chunk, its padding or its
neighbours (each image is attended to alone; tests/test_diffusion.py checks it).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from models.configs import EngineConfig
from models.device import model_device

MOST_ROWS = 1024  # the largest chunk sized to the device (beyond it a call gains nothing measurable)
MEMORY_SHARE = 0.5  # of the device's free memory, for one chunk's activations
COMPILE_BACKEND = "inductor"
Call = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class _Engine:
    """A model's engine: its config, its chunk size (sized once: a trajectory's calls keep one)
    and its compiled forward, made on the first call that needs it."""
    config: EngineConfig
    rows: int | None
    compiled: torch.nn.Module | None = None


_ENGINES: "weakref.WeakKeyDictionary[torch.nn.Module, _Engine]" = weakref.WeakKeyDictionary()


def use_engine(model: torch.nn.Module, config: EngineConfig | None) -> torch.nn.Module:
    """``model`` (a DiT) runs its sampling calls by ``config`` from now on (None: one call each); returned."""
    if config is None:
        _ENGINES.pop(model, None)
    elif model not in _ENGINES or _ENGINES[model].config != config:
        _ENGINES[model] = _Engine(config, chunk_rows(model, config))
    return model


def bytes_per_row(model: torch.nn.Module) -> int:
    """A generous bound on one row's activations in an inference forward (one block's tokens x
    width, its attention, its 4x MLP and their float32 copies: about 100 bytes per token-channel)."""
    c = model.config
    tokens = (c.sample_size // c.patch_size) ** 2
    return 100 * tokens * c.num_attention_heads * c.attention_head_dim


def chunk_rows(model: torch.nn.Module, config: EngineConfig) -> int | None:
    """Rows per call: the configured model batch; on CUDA by default as many as fit in
    ``MEMORY_SHARE`` of free memory (a power of two, at most ``MOST_ROWS``); None (all at once)
    elsewhere."""
    if config.rows:
        return config.rows
    device = model_device(model)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    fit = max(1, int(MEMORY_SHARE * free) // bytes_per_row(model))
    return min(MOST_ROWS, 1 << (fit.bit_length() - 1))


def bucket(n: int, most: int) -> int:
    """The power of two at or above ``n``, at most ``most``."""
    return min(most, 1 << max(0, n - 1).bit_length())


def run(model: torch.nn.Module, call: Call, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor
        ) -> torch.Tensor:
    """``call(model, x, t, labels)`` over all rows, by the model's engine (``use_engine``; without
    one, one call)."""
    engine = _ENGINES.get(model)
    if engine is None:
        return call(model, x, t, labels)
    config, rows = engine.config, engine.rows or x.shape[0]
    net = model
    if config.compile:
        if engine.compiled is None:
            engine.compiled = torch.compile(model, backend=COMPILE_BACKEND, dynamic=False)
        net = engine.compiled
    out = []
    for start in range(0, x.shape[0], rows):
        part = slice(start, start + rows)
        xs, ts, ls = x[part], t[part], labels[part]
        n, size = xs.shape[0], bucket(xs.shape[0], rows)
        if config.compile and size > n:  # repeat the last row: padding is a row like any other
            xs, ts, ls = (torch.cat([a, a[-1:].expand(size - n, *a.shape[1:])]) for a in (xs, ts, ls))
        out.append(call(net, xs, ts, ls)[:n])
    return torch.cat(out)
