"""TRCGL-Net's classifier parts (issue 16) on the phantom: does each part help, and where do
the class-attention maps point?

    nice -n 19 python -m benchmarks.bench_heads [--n 3000] [--epochs 6] [--size 64]

A resnet18 per variant (linear, se, attention, gcn, se+attention+gcn), same data, seed and
training (tasks.pretrain.train_classifier), scored on the test split: macro/head/tail AUROC
with 95% bootstrap intervals (models.metrics.evaluate). Then, on every visible head lesion of
the test split, the pointing game and IoU (benchmarks/fidelity_measures.py) of the 'attention'
maps against Grad-CAM (deepest stage >= 8 cells wide) of the same and of the linear classifier;
no location prior, no gate. Writes benchmarks/results/bench_heads.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import models  # noqa: F401  (torchvision guard)
from benchmarks import fidelity_measures as fm
from benchmarks.common import RESULTS, save
from benchmarks.fidelity import head_lesions
from flows.settings import tailforge_home
from models.cam import LocaliseConfig, raw_maps
from models.masks import MaskConfig, map_to_mask
from models.classifier import ClassifierConfig, load_checkpoint
from models.training import TrainConfig
from tasks import store
from tasks.ingest import ingest_phantom
from tasks.pretrain import train_classifier
from tasks.tensors import lesion_masks, load_tensors

SEED = 21  # the phantom seed of bench_models / fidelity
VARIANTS = {"linear": {}, "se": {"se": True}, "attention": {"head": "attention"}, "gcn": {"gcn": True},
            "se+attention+gcn": {"se": True, "head": "attention", "gcn": True}}
NO_PRIOR = LocaliseConfig(prior_weight=0.0, gate=False)
MASK = MaskConfig()  # the product's mask threshold, for IoU


def scores(metrics: dict) -> dict:
    """Macro/head/tail AUROC and their 95% intervals, rounded."""
    out = {}
    for group in ("macro", "head", "tail"):
        entry = metrics["means"][group]
        out[group] = {"auroc": round(entry["auroc"], 4), "ci95": [round(v, 4) for v in entry["ci95"]["auroc"]]}
    return out


def pointing(model, test, lesions, findings: list[str], method: str) -> dict:
    images = test.images[[i for i, *_ in lesions]]
    classes = [findings.index(name) for _, name, *_ in lesions]
    started = time.perf_counter()
    maps = raw_maps(model, images, classes, NO_PRIOR, method)
    seconds = time.perf_counter() - started
    rows = [(name, fm.localisation_row(m, map_to_mask(m, MASK), lesion, every))
            for m, (_, name, lesion, every) in zip(maps, lesions)]
    summary = fm.summarise(rows)
    return {"pointing_game": summary["_all"]["pointing_game"], "iou": summary["_all"]["iou"],
            "n": summary["_all"]["n"], "seconds_per_lesion": round(seconds / max(1, len(lesions)), 4)}


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [f"# TRCGL-Net classifier parts on the phantom at {s['size']} px", "",
             f"Command: `{r['command']}` (commit {r['commit']}, {r['machine']['cpu']}, "
             f"{r['machine']['cores']} cores). resnet18, {s['n']} phantom images (seed {SEED}), "
             f"{s['epochs']} epochs, batch 64, seed 0; test split, {r['test_images']} images; "
             "AUROC means over classes with 95% bootstrap intervals (200 image resamples). "
             "'train s' is wall time on a shared machine, not a speed comparison.", "",
             "| variant | macro AUROC | head AUROC | tail AUROC | train s |", "|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        cells = [f"{v['auroc'][g]['auroc']:.3f} [{v['auroc'][g]['ci95'][0]:.3f}, {v['auroc'][g]['ci95'][1]:.3f}]"
                 for g in ("macro", "head", "tail")]
        lines.append(f"| {name} | {' | '.join(cells)} | {v['seconds']:.0f} |")
    lines += ["", f"Localisation of {r['lesions']} visible head lesions (test split; pointing game with 2 px "
              "tolerance; IoU of the map thresholded at half its maximum; no prior, no gate):", "",
              "| classifier | map | pointing game | IoU | s / lesion |", "|---|---|---|---|---|"]
    for row in r["localisation"]:
        lines.append(f"| {row['classifier']} | {row['map']} | {row['pointing_game']:.3f} | {row['iou']:.3f} | "
                     f"{row['seconds_per_lesion']} |")
    lines += ["", f"A uniformly random point scores {r['random_point']:.3f} in the pointing game.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="phantom images")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--home", default=str(tailforge_home() / "bench-heads"), help="datasets and checkpoints")
    args = parser.parse_args()
    dataset, models_uri = str(Path(args.home) / f"phantom{args.size}-{args.n}-s{SEED}"), str(Path(args.home) / "models")
    ingest_phantom(dataset, args.n, size=args.size, seed=SEED)
    train = TrainConfig(epochs=args.epochs, batch_size=64, seed=0)
    test = load_tensors(dataset, splits=("test",), columns=("lesion_masks",))
    results = {"command": " ".join(["nice -n 19 .venv/bin/python -m benchmarks.bench_heads", *sys.argv[1:]]),
               "settings": {k: v for k, v in vars(args).items() if k != "home"}, "test_images": len(test),
               "variants": {}, "localisation": []}
    handles = {}
    for name, options in VARIANTS.items():
        started = time.perf_counter()
        handles[name] = train_classifier(dataset, models_uri, ClassifierConfig("resnet18", 14, args.size, **options),
                                         train)
        results["variants"][name] = {"auroc": scores(handles[name]["metrics"]),
                                     "seconds": round(time.perf_counter() - started, 1)}
        print(name, results["variants"][name], flush=True)
    card = load_checkpoint(store.read_bytes(handles["linear"]["uri"]))[2]
    lesions = head_lesions(lesion_masks(test.table), card.head, test.images.shape[-2:])
    results["lesions"] = len(lesions)
    results["random_point"] = fm.random_point_pointing([(name, m) for _, name, m, _ in lesions])["_all"]
    for name, method in (("linear", "gradcam"), ("attention", "gradcam"), ("attention", "attention"),
                         ("se+attention+gcn", "gradcam"), ("se+attention+gcn", "attention")):
        model = load_checkpoint(store.read_bytes(handles[name]["uri"]))[0]
        row = {"classifier": name, "map": method, **pointing(model, test, lesions, card.labels, method)}
        results["localisation"].append(row)
        print(row, flush=True)
    path = save("bench_heads", results)
    write_markdown(path)
    print(f"wrote {path} and bench_heads.md")


def write_markdown(path: Path = RESULTS / "bench_heads.json") -> None:
    (RESULTS / "bench_heads.md").write_text(markdown(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
