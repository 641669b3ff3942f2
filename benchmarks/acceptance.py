"""Which acceptance rule lets through only rows whose labels are right? Ground truth on the phantom.

The product accepts a generated row when the classifier's probability for each removed class is
below that class's val-tuned threshold (tasks/augment.verdict). A lesion that is still there but
that the classifier misses passes too: the classifier's miss rate at that threshold is the floor
of the wrong labels. This script replays the removal check of every row of a generated set with
stricter thresholds (the same other checks: a stricter removal check can only drop rows), and
reads, from the phantom's ground truth (benchmarks/phantom_truth.judged_lesions, the signed
criterion), how many rows each rule keeps and what share of them carry only right labels.

Rules: ``tuned`` (the product's), ``recall R`` (per class, the highest threshold at which the
classifier finds a share R of the val positives: a lesion left in place is caught with
probability about R), and ``tuned x F`` (the tuned threshold times F). Beside them, how much of
each accepted row's head lesion its mask covered, for the removals that worked and those that did
not (a lesion the mask only partly covers leaves a rest the classifier does not see).

    python -m benchmarks.acceptance --dataset D --generated G --classifier C.pt --out FILE.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.phantom_truth import judged_lesions
from models.classifier import load_checkpoint
from models.training import predict_probs
from tasks import store
from tasks.images import decode_png
from tasks.tensors import load_tensors

RECALLS = (0.9, 0.95, 0.98)
FACTORS = (0.5, 0.25)


def recall_thresholds(probs: np.ndarray, labels: np.ndarray, recall: float, tuned: list[float]) -> np.ndarray:
    """Per class, the highest threshold that keeps ``recall`` of the val positives above it (no
    higher than the tuned one; the tuned one where a class has no val positive)."""
    out = np.array(tuned, dtype=np.float64)
    for k in range(labels.shape[1]):
        positive = np.sort(probs[labels[:, k] == 1.0, k])
        if len(positive):
            out[k] = min(out[k], positive[int(np.floor((1.0 - recall) * len(positive)))])
    return out


def replay(dataset: str, generated: str, classifier_uri: str, tail: list[str]) -> dict:
    rows, lesions = judged_lesions(dataset, generated, tail)
    if rows is None:
        return {"rows": 0}
    model, _, card = load_checkpoint(store.read_bytes(classifier_uri))
    images = np.stack([decode_png(b) for b in rows.column("image").to_pylist()]).astype(np.float32) / 255
    after = predict_probs(model, torch.from_numpy(images)[:, None])
    val = load_tensors(dataset, splits=("val",))
    val_probs, val_labels = predict_probs(model, val.images), val.labels.numpy()
    rules = {"tuned": np.array(card.thresholds)}
    rules |= {f"recall {r:g}": recall_thresholds(val_probs, val_labels, r, card.thresholds) for r in RECALLS}
    rules |= {f"tuned x {f:g}": np.array(card.thresholds) * f for f in FACTORS}
    accepted = np.array(rows.column("accepted").to_pylist(), dtype=bool)
    removed = rows.column("removed_labels").to_pylist()
    wrong = {e["row"] for e in lesions if e["right"] is False}
    wrong_head = {e["row"] for e in lesions if e["right"] is False and e["kind"] == "head"}
    out = {}
    for name, thresholds in rules.items():
        keep = [r for r in range(rows.num_rows) if accepted[r] and
                all(after[r, card.labels.index(c)] < thresholds[card.labels.index(c)] for c in removed[r])]
        out[name] = {"rows": len(keep), "all_labels_right": _share([r not in wrong for r in keep]),
                     "head_labels_right": _share([r not in wrong_head for r in keep]),
                     "thresholds": {c: round(float(thresholds[card.labels.index(c)]), 3)
                                    for c in sorted({c for names in removed for c in names})}}
    head = [e for e in lesions if e["accepted"] and e["kind"] == "head"]
    coverage = {f"{'right' if right else 'wrong'} removals": {
        "lesions": sum(e["right"] is right for e in head),
        "lesion_share_inside_mask": _mean([e["inside"] for e in head if e["right"] is right])}
        for right in (True, False)}
    return {"rows": rows.num_rows, "accepted": int(accepted.sum()), "rules": out, "accepted_head_lesions": coverage}


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def _share(flags: list[bool]) -> float | None:
    return round(float(np.mean(flags)), 3) if flags else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--generated", nargs="+", required=True)
    parser.add_argument("--classifier", required=True, help="the checkpoint that judged the rows")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    tail = json.loads(Path(args.dataset, "dataset.json").read_text())["head_tail"]["tail"]
    result = {g: replay(args.dataset, g, args.classifier, tail) for g in args.generated}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for g, r in result.items():
        print(g, r["accepted"], {k: (v["rows"], v["all_labels_right"]) for k, v in r["rules"].items()})


if __name__ == "__main__":
    main()
