"""The sampler's network calls, decoupled from the caller's batch: rows go through the DiT in
chunks of the model batch (``EngineConfig.rows``, or sized to the device's free memory), not in
the Prefect batch a task happens to hold; with ``compile`` each chunk is padded up to a
power-of-two bucket, so a compiled forward (torch.compile) meets a handful of shapes and never
recompiles per removal round. A row's result does not depend on its chunk, its padding or its
neighbours (each image is attended to alone; tests/test_diffusion.py checks it).

Calls from several threads on one model pool their rows (``Pool``, continuous batching as LLM
servers do it): each inpainting job stands at its own step of its own schedule, and each tick makes
one network call over every waiting job's rows, each row with its own timestep. A removal round
that refills a few films thus rides along with another task's first round instead of running
the device nearly empty. The thread that holds the model's call lock ticks for everyone; a job
added between ticks joins the next one.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from models.configs import EngineConfig
from models.device import model_device

MOST_ROWS = 1024  # the largest chunk sized to the device (beyond it a call gains nothing measurable)
# The smallest compiled call: buckets 16..1024 are 7 shapes, under torch.compile's limit of 8 per
# function (past it dynamo runs every new shape eager, the largest calls included; seen on torch 2.13).
LEAST_BUCKET = 16
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


class Job(Protocol):
    """A sampling job's rows, one denoising call at a time (models/inpaint.Inpainting)."""
    rows: int

    def next_call(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """The next call's (x, its (N,) timesteps, cond), the same until ``take`` answers it; None
        when the job is done."""

    def take(self, eps: torch.Tensor) -> None: ...


Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]  # (x, t, cond) -> eps


class Pool:
    """One model's jobs from every thread, ticked together (module docstring). ``calls`` is the
    model's call lock: one network call at a time on the model, whoever makes it."""

    def __init__(self) -> None:
        self.calls = threading.RLock()
        self._guard = threading.Lock()
        self._jobs: list[Job] = []
        self._ended: dict[int, BaseException | None] = {}

    def run(self, job: Job, predict: Predict) -> None:
        """Until ``job`` has made every call: tick whenever the call lock is free (so waiting
        is bounded by the ticks of jobs already running). ``predict`` is the model's noise
        prediction (the same for every job of the pool: they share its model). An error in a
        job's own step, or in its rows' call, ends that job alone and its owner raises it."""
        with self._guard:
            self._jobs.append(job)
        try:
            while id(job) not in self._ended:
                with self.calls:
                    if id(job) not in self._ended:
                        self._tick(predict)
        finally:
            with self._guard:
                if job in self._jobs:  # left by an interrupt: no one ticks it on
                    self._jobs.remove(job)
                error = self._ended.pop(id(job), None)
        if error is not None:
            raise error

    def _end(self, job: Job, error: BaseException | None) -> None:
        with self._guard:
            if job in self._jobs:  # not if its owner left it on an interrupt
                self._jobs.remove(job)
                self._ended[id(job)] = error

    def _tick(self, predict: Predict) -> None:
        """Each job's next call; one network call per kind of row (shape, dtype) over them all."""
        with self._guard:
            jobs = list(self._jobs)
        kinds: dict[tuple, list] = {}
        for job in jobs:
            try:
                call = job.next_call()
            except Exception as exc:  # noqa: BLE001  (the job's owner raises it)
                self._end(job, exc)
                continue
            if call is None:
                self._end(job, None)
            else:
                kinds.setdefault((tuple(call[0].shape[1:]), call[0].dtype), []).append((job, call))
        try:
            for calls in kinds.values():
                self._call(predict, calls)
        except BaseException as exc:  # an interrupt: every job of this tick ends with it, and it goes on up
            for job in jobs:
                self._end(job, exc)
            raise

    def _call(self, predict: Predict, calls: list) -> None:
        """One network call over ``calls``' rows. Should it fail, each job is called alone, so a
        job fails on its own rows only (one too many rows for the device's memory, say)."""
        try:
            eps = predict(*_joined([call for _, call in calls]))
        except Exception as exc:  # noqa: BLE001
            if len(calls) == 1:
                self._end(calls[0][0], exc)
                return
            for one in calls:
                self._call(predict, [one])
            return
        for (job, _), part in zip(calls, eps.split([job.rows for job, _ in calls])):
            try:
                job.take(part)
            except Exception as exc:  # noqa: BLE001
                self._end(job, exc)


def _joined(calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> tuple:
    """The calls' (x, t, cond), their rows one after another."""
    x, t, cond = zip(*calls)
    return torch.cat(x), torch.cat(t), None if cond[0] is None else torch.cat(cond)


_POOLS: "weakref.WeakKeyDictionary[torch.nn.Module, Pool]" = weakref.WeakKeyDictionary()
_POOLS_GUARD = threading.Lock()


def pool(model: torch.nn.Module) -> Pool:
    """``model``'s pool (made on first use)."""
    with _POOLS_GUARD:
        return _POOLS.setdefault(model, Pool())


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
    """The power of two at or above ``n`` and ``LEAST_BUCKET``, at most ``most``."""
    return min(most, max(LEAST_BUCKET, 1 << max(0, n - 1).bit_length()))


def run(model: torch.nn.Module, call: Call, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor
        ) -> torch.Tensor:
    """``call(model, x, t, labels)`` over all rows, by the model's engine (``use_engine``; without
    one, one call)."""
    with pool(model).calls:
        return _run(model, call, x, t, labels)


def _run(model: torch.nn.Module, call: Call, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor
         ) -> torch.Tensor:
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
