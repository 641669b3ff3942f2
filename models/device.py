"""Where the models compute: the host's accelerator when it has one, else the CPU.

A worker's device is a property of its host, not of a run: the same YAML drives a CPU worker
and a GPU worker, so the device comes from ``$TAILFORGE_DEVICE`` on the host (``auto``, the
default: ``cuda`` when torch sees one, else ``cpu``; or ``cpu``, ``cuda``, ``cuda:N``). dask-cuda
gives each worker one visible GPU, so ``cuda`` is that GPU.

The convention the models keep: data stays on the CPU (it comes from Parquet and goes back to
it); a function that runs a model moves its inputs to the model's device and returns CPU
tensors or NumPy arrays. The noise the samplers, the DiT loss and the classifier's augmentation
draw comes from the caller's seeded CPU generator and is then moved, so a seed gives the same
noise on every device; models (cRT's re-initialised head too) are initialised on the CPU.
Dropout, drop-path and the DiT's label dropout use the device's own generator, and CUDA's
arithmetic (bf16 autocast for the DiT, TF32 convolutions) differs from the CPU's: a GPU run
does not repeat a CPU run to the bit.
"""

from __future__ import annotations

import os

import torch

DEVICE_VARIABLE = "TAILFORGE_DEVICE"


def resolve_device(name: str | None = None) -> torch.device:
    """The device ``name`` means (default: ``$TAILFORGE_DEVICE``, else ``auto``); a clear error
    for a name torch does not know or a CUDA device this host does not have."""
    name = (name if name is not None else os.environ.get(DEVICE_VARIABLE) or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{DEVICE_VARIABLE}={name!r} is not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"{DEVICE_VARIABLE}={name!r}: tailforge runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"{DEVICE_VARIABLE}={name!r} but torch sees no CUDA device on this host "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                         f"set {DEVICE_VARIABLE}=cpu or auto, or run this stage on a GPU worker")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{DEVICE_VARIABLE}={name!r} but this host has {torch.cuda.device_count()} CUDA device(s)")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s weights (the CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def on_device(model: torch.nn.Module, device: torch.device | None = None) -> torch.nn.Module:
    """``model`` moved to ``device`` (default: ``resolve_device()``), in place, returned."""
    return model.to(device if device is not None else resolve_device())


def describe_device(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200)``: where a run's models ran, for its record."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
