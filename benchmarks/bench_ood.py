"""Does the OOD post-selection filter catch broken samples that today's quality score passes?
(issue 16: a sample whose top 10 rows were noise passed with quality 1.21, limit 6.0)

    python -m benchmarks.bench_ood [--size 64] [--n 200]

On the phantom of benchmarks/fidelity.py (its dataset and normal DiT, trained when absent):
real held-out images (test split) against the same images broken five ways inside a
lesion-sized box or band: uniform noise, the film's top rows as noise, a blank (mid-grey) patch,
a black patch, and a patch of another patient pasted at a different place (wrong anatomy).
Two scores: today's quality (models/quality.py: robust z of the nearest-real distance, cut-off
``augment.quality_max_z``) and the diffusion reconstruction score (models/ood.py, calibrated on
val-split real images at 5% false rejection). Per kind: ROC-AUC (broken vs real) and the share
rejected at each score's cut-off. Results: benchmarks/results/bench_ood.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from benchmarks.common import RESULTS, save
from benchmarks.fidelity import prepare
from models.dit import build_scheduler, load_dit
from models.metrics import auroc
from models.ood import OODConfig, OODScorer
from models.quality import QualityScorer
from tasks import store
from tasks.augment import AugmentSettings
from tasks.tensors import load_tensors

KINDS = ("noise_patch", "noise_top_rows", "blank_patch", "black_patch", "misplaced_paste")


def broken(images: torch.Tensor, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """The images with one region broken as ``kind`` says (a box of 20-35% of the side, or the
    top tenth of the film)."""
    out = images.clone()
    n, _, side, _ = images.shape
    for i in range(n):
        box = int(side * rng.uniform(0.2, 0.35))
        top, left = rng.integers(side // 8, side - box - side // 8, size=2)
        region = (slice(None), slice(top, top + box), slice(left, left + box))
        if kind == "noise_patch":
            out[i][region] = torch.rand(1, box, box)
        elif kind == "noise_top_rows":
            out[i][:, : side // 10, :] = torch.rand(1, side // 10, side)
        elif kind == "blank_patch":
            out[i][region] = 0.5
        elif kind == "black_patch":
            out[i][region] = 0.0
        elif kind == "misplaced_paste":  # another patient's pixels from somewhere else on the film
            j = (i + 1 + int(rng.integers(n - 1))) % n
            src_top, src_left = rng.integers(0, side - box, size=2)
            out[i][region] = images[j][:, src_top:src_top + box, src_left:src_left + box]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=200, help="real test images (and as many broken per kind)")
    parser.add_argument("--phantom-n", type=int, default=3000)
    parser.add_argument("--dit-steps", type=int, default=600)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(0)
    prep = prepare(args.size, args.phantom_n, args.dit_steps)
    uri = prep["main"]["dataset"]
    model, config, _ = load_dit(store.read_bytes(prep["dit"]["uri"]))
    model.eval()
    scheduler = build_scheduler(config)
    train_normals = load_tensors(uri, splits=("train",), normal_only=True).images
    calibration = load_tensors(uri, splits=("val",), limit=args.n).images
    real = load_tensors(uri, splits=("test",), limit=args.n).images
    ood_config = OODConfig()
    ood = OODScorer(model, scheduler, calibration, ood_config)
    quality = QualityScorer(train_normals)
    quality_cut = AugmentSettings().quality_max_z
    scores = {"real": {"ood": ood.score(real), "quality": quality.score(real)}}
    rng = np.random.default_rng(0)
    for kind in KINDS:
        images = broken(real, kind, rng)
        scores[kind] = {"ood": ood.score(images), "quality": quality.score(images)}
    table = {}
    for kind in KINDS:
        row = {}
        for name, cut in (("ood", ood.threshold), ("quality", quality_cut)):
            neg, pos = scores["real"][name], scores[kind][name]
            row[name] = {"auroc": round(auroc(np.r_[neg, pos], np.r_[np.zeros(len(neg)), np.ones(len(pos))]), 4),
                         "rejected": round(float((pos > cut).mean()), 4)}
        table[kind] = row
    real_rejected = {"ood": round(float((scores["real"]["ood"] > ood.threshold).mean()), 4),
                     "quality": round(float((scores["real"]["quality"] > quality_cut).mean()), 4)}
    report = {"command": " ".join(["python -m benchmarks.bench_ood", *(argv or sys.argv[1:])]),
              "size": args.size, "dit": prep["dit"], "images": int(real.shape[0]),
              "calibration_images": int(calibration.shape[0]), "ood_config": ood_config.__dict__,
              "ood_threshold": round(ood.threshold, 3), "quality_cut": quality_cut,
              "real_rejected": real_rejected, "by_kind": table, "seconds": round(time.perf_counter() - started, 1)}
    save("bench_ood", report)
    (RESULTS / "bench_ood.md").write_text(markdown(report))
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = [f"# OOD post-selection on the phantom at {report['size']} px", "",
             f"Command: `{report['command']}`. {report['images']} real test images, as many broken per kind; "
             f"the diffusion score calibrated on {report['calibration_images']} val images at "
             f"{report['ood_config']['false_rejection']:.0%} false rejection (levels {report['ood_config']['levels']}, "
             f"{report['ood_config']['steps']} DDIM steps back).", "",
             f"Real test images rejected: diffusion score {report['real_rejected']['ood']:.1%}, "
             f"quality (z > {report['quality_cut']}) {report['real_rejected']['quality']:.1%}.", "",
             "| broken how | diffusion ROC-AUC | diffusion rejects | quality ROC-AUC | quality rejects |",
             "|---|---|---|---|---|"]
    for kind, row in report["by_kind"].items():
        lines.append(f"| {kind} | {row['ood']['auroc']} | {row['ood']['rejected']:.1%} | "
                     f"{row['quality']['auroc']} | {row['quality']['rejected']:.1%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
