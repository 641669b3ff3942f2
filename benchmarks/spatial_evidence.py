"""Spatial evidence for entanglement (issue: LKG, "beyond the paper"): on phantom images, does
"the head class's CAM mask overlaps the tail class's CAM region" catch the overlaps that
ground truth shows, better than the rules judge's prior?

    python -m benchmarks.spatial_evidence     (after bench_models.py: reuses its phantom classifier)

For every test/val image with a head and a tail lesion, for each (head, tail) pair:
truth = the ground-truth masks touch (dilated 2 px); rules = the rules table says entangled;
spatial = CAM(head) mask covers more than `--min-overlap` of CAM(tail) mask. Precision and
recall of "overlap" for each predictor. Writes benchmarks/results/spatial_evidence.json.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.bench_models import MASKS, SEED, phantom_classifier
from benchmarks.common import save
from flows.settings import tailforge_home
from models.gradcam import cam_maps
from models.masks import map_to_mask
from models.classifier import load_checkpoint
from tasks import store
from tasks.knowledge.rules import entangled
from tasks.tensors import lesion_masks, load_tensors


def scores(predicted: list[bool], truth: list[bool]) -> dict:
    p, t = np.array(predicted), np.array(truth)
    tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
    return {"precision": round(tp / max(1, tp + fp), 3), "recall": round(tp / max(1, tp + fn), 3),
            "tp": tp, "fp": fp, "fn": fn, "tn": int((~p & ~t).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-overlap", type=float, default=0.1)
    args = parser.parse_args()
    phantom = str(tailforge_home() / "bench" / f"phantom64-3000-s{SEED}")
    handle = phantom_classifier(phantom, str(tailforge_home() / "models"))  # bench_models' (reused), needs its phantom
    model, _, card = load_checkpoint(store.read_bytes(handle["uri"]))
    data = load_tensors(phantom, splits=("test", "val"), columns=("lesion_masks",))
    truth_masks = lesion_masks(data.table)
    pairs = []  # (image, head, tail)
    for i, masks in enumerate(truth_masks):
        heads = [n for n in masks if n in card.head]
        tails = [n for n in masks if n in card.tail]
        pairs += [(i, h, t) for h in heads for t in tails]
    rows = [i for i, h, t in pairs for _ in (0, 1)]
    classes = [card.labels.index(name) for _, h, t in pairs for name in (h, t)]
    maps = cam_maps(model, data.images[rows], classes)
    grow = lambda m: torch.nn.functional.max_pool2d(torch.from_numpy(m).float()[None, None], 5, 1, 2)[0, 0].numpy() > 0  # noqa: E731
    truth, rules, spatial = [], [], []
    for k, (i, h, t) in enumerate(pairs):
        truth.append(bool((grow(truth_masks[i][h]) & truth_masks[i][t]).any()))
        rules.append(entangled(h, t))
        head_mask, tail_mask = map_to_mask(maps[2 * k], MASKS), map_to_mask(maps[2 * k + 1], MASKS)
        spatial.append(bool((head_mask & tail_mask).sum() > args.min_overlap * max(1, tail_mask.sum())))
    combined = [r or s for r, s in zip(rules, spatial)]
    result = {"pairs": len(pairs), "true_overlaps": int(sum(truth)), "min_overlap": args.min_overlap,
              "rules": scores(rules, truth), "spatial": scores(spatial, truth), "rules_or_spatial": scores(combined, truth)}
    print(result)
    print(f"written: {save('spatial_evidence', result)}")


if __name__ == "__main__":
    main()
