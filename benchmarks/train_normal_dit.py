"""Train the normal-X-ray DiT and measure it: loss curve, sample grid, fidelity.

    python benchmarks/train_normal_dit.py --source real --steps 3000      # ../shared/data/normals (adult)
    python benchmarks/train_normal_dit.py --source phantom --steps 1500   # phantom normals

The checkpoint goes to $TAILFORGE_HOME/models (not committed); the grids, the loss curve and
benchmarks/results/dit_<source>.json (fidelity against held-out normals, settings, timing) are
the record. Fidelity: nearest-real-neighbour distance of 64 free samples to the training
normals, against the same distance for held-out (test-split) real normals (ratio near 1 is good).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, SHARED_DATA, save  # noqa: E402
from flows.settings import tailforge_home  # noqa: E402
from models.dit import DiTConfig, DiTTrainConfig, load_dit  # noqa: E402
from models.quality import fidelity  # noqa: E402
from tasks import sources, store  # noqa: E402
from tasks.ingest import IngestOptions, ingest, ingest_phantom  # noqa: E402
from tasks.pretrain import grid_png, load_normals, sample_grid, train_normal_dit  # noqa: E402


def dataset(source: str, size: int, phantom_n: int) -> str:
    home = tailforge_home() / "bench"
    if source == "real":
        uri = str(home / f"normals{size}")
        ingest(sources.read_folder(str(SHARED_DATA / "normals" / "normals.csv")), str(SHARED_DATA / "normals"),
               uri, IngestOptions(size=size, shard_rows=4096))
    else:
        uri = str(home / f"phantom{size}-{phantom_n}")
        ingest_phantom(uri, phantom_n, size=size, seed=11)
    return uri


def loss_plot(losses: list[float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(losses, alpha=0.25, label="step")
    ax.plot(range(window - 1, len(losses)), smooth, label=f"mean of {window}")
    ax.set_xlabel("step"), ax.set_ylabel("DDPM loss"), ax.set_yscale("log"), ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["real", "phantom"], default="real")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--phantom-n", type=int, default=4000)
    args = parser.parse_args()
    config = DiTConfig(image_size=args.size, patch_size=4, depth=6, num_heads=4, head_dim=32)
    train = DiTTrainConfig(steps=args.steps, batch_size=args.batch, lr=3e-4, warmup_steps=200, seed=0)
    uri = dataset(args.source, args.size, args.phantom_n)
    models_uri = str(tailforge_home() / "models")
    started = time.perf_counter()

    def progress(step: int, loss: float) -> None:
        if step % 100 == 0 or step == 1:
            print(f"step {step}/{args.steps} loss {loss:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)

    handle = train_normal_dit([uri], models_uri, config, train, progress=progress)
    model, _, _ = load_dit(store.read_bytes(handle["uri"]))
    samples = sample_grid(model, config, n=64, steps=50, seed=1)
    train_images, _ = load_normals([uri], args.size, splits=("train",))
    held_out, _ = load_normals([uri], args.size, splits=("test",))
    fid = fidelity(samples, held_out[:512], train_images)
    noise = fidelity(torch.rand_like(samples), held_out[:512], train_images)
    tag = f"dit_{args.source}"
    (RESULTS / f"{tag}_samples.png").write_bytes(grid_png(samples[:32]))
    (RESULTS / f"{tag}_real.png").write_bytes(grid_png(held_out[:32]))
    if "loss" in handle:  # a reused checkpoint (same data and settings) keeps its earlier plot
        loss_plot(handle["loss"], RESULTS / f"{tag}_loss.png")
    path = save(tag, {"settings": {"source": args.source, "dataset": uri, "config": config.__dict__,
                                   "train": train.__dict__, "adult_only": True},
                      "checkpoint": {"id": handle["id"], "uri": handle["uri"]},
                      "train_images": int(train_images.shape[0]), "held_out_images": int(held_out.shape[0]),
                      "history": handle["history"], "fidelity": fid, "fidelity_of_uniform_noise": noise})
    print(json.dumps({"history": handle["history"], "fidelity": fid, "noise": noise}, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
