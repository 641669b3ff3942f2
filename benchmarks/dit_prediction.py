"""The DiT predicting the noise vs the clean image, same network, data, steps and seed.

    python -m benchmarks.dit_prediction [--steps 800] [--size 128]

Trains the fidelity benchmark's DiT (patch 8 at 128 px, depth 6, width 128) on the phantom's
normal training images (the dataset benchmarks/fidelity.py makes, seed 21) twice, once per
``DiTConfig.prediction``, and draws 16 free samples of each (DDIM, 50 steps, seed 0). Writes
benchmarks/results/dit_<size>_prediction.png (top two rows: epsilon; bottom two: sample) and
dit_<size>_prediction.json (loss at the end, seconds).
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image

from benchmarks.common import RESULTS, save
from flows.settings import tailforge_home
from models.dit import DiTConfig, DiTTrainConfig, build_scheduler, train_dit
from models.sampling import sample
from tasks.ingest import ingest_phantom
from benchmarks.grids import grid_png
from tasks.pretrain import load_normals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    uri = str(tailforge_home() / "bench" / f"phantom{args.size}-3000-s21")  # fidelity.py's main dataset
    ingest_phantom(uri, 3000, size=args.size, seed=21)
    images, _ = load_normals([uri], args.size)
    record, sheets = {"train_images": int(images.shape[0]), "steps": args.steps}, []
    for prediction in ("epsilon", "sample"):
        config = DiTConfig(image_size=args.size, patch_size=4 if args.size <= 64 else 8, depth=6, num_heads=4,
                           head_dim=32, prediction=prediction)
        started = time.perf_counter()
        model, ema, history = train_dit(images, config, DiTTrainConfig(steps=args.steps, batch_size=32, warmup_steps=100))
        ema.copy_to(model)
        drawn = sample(model, build_scheduler(config), 16, args.size, 50, torch.Generator().manual_seed(0))
        record[prediction] = {"last_loss": float(np.mean(history["loss"][-50:])),
                              "seconds": round(time.perf_counter() - started, 1)}
        sheets.append(np.asarray(Image.open(io.BytesIO(grid_png(drawn)))))
        print(prediction, record[prediction], flush=True)
    gap = np.full((8, sheets[0].shape[1]), 255, dtype=np.uint8)
    Image.fromarray(np.concatenate([sheets[0], gap, sheets[1]])).save(RESULTS / f"dit_{args.size}_prediction.png")
    print(f"written: {save(f'dit_{args.size}_prediction', record)}")


if __name__ == "__main__":
    main()
