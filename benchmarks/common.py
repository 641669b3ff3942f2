"""Helpers shared by the benchmark scripts: machine record, repeats, results files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]  # the checkout: child processes run `python -m benchmarks.X` there
RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def ingest_nih1000(uri: str) -> str:
    """../shared/data/nih1000 with NIH's labels and its fixed split, ingested into ``uri`` (rows
    already there are kept); returns ``uri``."""
    from tasks import sources
    from tasks.ingest import ingest

    root = SHARED_DATA / "nih1000"
    source = sources.read_nih(str(root / "Data_Entry_2017_v2020.csv"))
    sources.apply_split_csv(source, str(root / "split.csv"))
    ingest(source, str(root / "images"), uri)
    return uri


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": _gpu(), "python": platform.python_version(),
            "platform": platform.platform()}


def _gpu() -> str | None:
    """The GPU the models run on (models/device.py resolves $TAILFORGE_DEVICE), None on the CPU."""
    import torch

    from models.device import resolve_device

    device = resolve_device()
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def described(machine_: dict) -> str:
    """A results file's machine, in words: "<cpu> (<n> cores, <gpu or no GPU>)"."""
    return f"{machine_['cpu']} ({machine_['cores']} cores, {machine_.get('gpu') or 'no GPU'})"


def commit() -> str:
    """The commit measured: $TAILFORGE_COMMIT when set (a copied tree on a lent machine, whose
    git, if any, may describe another commit), else git's short HEAD."""
    if os.environ.get("TAILFORGE_COMMIT"):
        return os.environ["TAILFORGE_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def timed(fn: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    """Wall seconds of ``repeats`` calls, and the last call's result."""
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def rate(items: int, seconds: list[float]) -> dict:
    median = statistics.median(seconds)
    return {"items": items, "repeats": len(seconds), "median_s": round(median, 4),
            "images_per_s": round(items / median, 1), "all_s": [round(s, 4) for s in seconds]}


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"commit": commit(), "machine": machine(), **payload}, indent=2) + "\n")
    return path
