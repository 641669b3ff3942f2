"""Measure the learned parts on phantom (truth known) and real NIH images.

    python -m benchmarks.bench_models [--phantom-n 3000] [--dit-steps 800] [--real-dit URI]

1. classifier (resnet18, 64 px) on a phantom dataset and on nih1000: test metrics;
2. Grad-CAM localisation of head lesions on phantom test images against ground-truth masks
   (pointing game, IoU), and on the 9 NIH boxes of nih1000;
3. a DiT trained on phantom normals inpaints head-lesion CAM masks on phantom images: lesion
   contrast against the lesion-free render of the same patient, before and after; the tail lesion
   outside the mask (untouched by construction: checked); classifier probabilities of the removed
   and the tail classes before and after;
4. the same probability check on nih1000 with the DiT trained on real normals;
5. CPU throughput (images/s) of classifier training, CAM and inpainting.
Writes benchmarks/results/models.json and before/after grids.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from benchmarks.common import RESULTS, SHARED_DATA, ingest_nih1000, save
from flows.settings import tailforge_home
from models.cam import removal_masks
from models.gradcam import cam_maps
from models.masks import MaskConfig
from models.classifier import ClassifierConfig, load_checkpoint
from models.dit import DiTConfig, DiTTrainConfig, build_scheduler, load_dit
from models.inpaint import InpaintConfig, inpaint
from models.training import TrainConfig, predict_probs
from tasks import store
from tasks.ingest import ingest_phantom
from tasks.labels import vocabulary
from tasks.phantom import render, sample_labels
from tasks.phantom.stream import draw_split
from benchmarks.grids import grid_png
from tasks.pretrain import train_classifier, train_normal_dit
from tasks.tensors import lesion_masks, load_tensors

INPAINT = InpaintConfig(steps=25, jump_length=5, resample=2)
MASKS = MaskConfig(threshold=0.5, dilate_px=2, max_area=0.35)
SEED = 21


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def clean_render(index: int, labels: np.ndarray, size: int) -> np.ndarray:
    """The same phantom patient rendered with ``labels`` (the stream's rng, replayed)."""
    vocab = vocabulary("nih")
    rng = np.random.default_rng([SEED, index])
    sample_labels(rng, vocab)
    draw_split(rng)
    return render(labels, vocab, 64 if size is None else size, rng)[0]


def localisation(model, images, masks_per_image, labels, findings, head, method: str = "gradcam",
                 layer=None) -> dict:
    """Pointing game (CAM argmax inside the lesion, 2 px tolerance) and IoU of the CAM mask."""
    rows, classes, truths = [], [], []
    for i, truth in enumerate(masks_per_image):
        for name, mask in truth.items():
            if name in head:
                rows.append(i), classes.append(findings.index(name)), truths.append((name, mask))
    maps, seconds = timed(lambda: cam_maps(model, images[rows], classes, method, layer))
    per_class: dict[str, dict] = {}
    for cam, (name, truth) in zip(maps, truths):
        tolerant = torch.nn.functional.max_pool2d(torch.from_numpy(truth).float()[None, None], 5, 1, 2)[0, 0].numpy() > 0
        y, x = np.unravel_index(np.argmax(cam), cam.shape)
        predicted = cam >= 0.5 * cam.max()
        iou = float((predicted & truth).sum() / max(1, (predicted | truth).sum()))
        entry = per_class.setdefault(name, {"n": 0, "hits": 0, "iou": []})
        entry["n"] += 1
        entry["hits"] += int(tolerant[y, x])
        entry["iou"].append(iou)
    out = {name: {"n": e["n"], "pointing_game": round(e["hits"] / e["n"], 3), "iou_mean": round(float(np.mean(e["iou"])), 3)}
           for name, e in sorted(per_class.items())}
    total = sum(e["n"] for e in per_class.values())
    out["_all"] = {"n": total, "pointing_game": round(sum(e["hits"] for e in per_class.values()) / max(1, total), 3),
                   "iou_mean": round(float(np.mean([i for e in per_class.values() for i in e["iou"]])), 3),
                   "cam_images_per_s": round(total / seconds, 1)}
    return out


def nih_boxes(model, dataset: str, findings: list[str]) -> list[dict]:
    data = load_tensors(dataset, columns=("boxes",))
    out = []
    for i, boxes in enumerate(data.table.column("boxes").to_pylist()):
        for box in boxes or []:
            cam = cam_maps(model, data.images[i:i + 1], [findings.index(box["label"])])[0]
            size = cam.shape[0]
            x0, y0 = int(box["x"] * size), int(box["y"] * size)
            x1, y1 = int(np.ceil((box["x"] + box["w"]) * size)), int(np.ceil((box["y"] + box["h"]) * size))
            inside = np.zeros_like(cam, dtype=bool)
            inside[y0:y1, x0:x1] = True
            y, x = np.unravel_index(np.argmax(cam), cam.shape)
            predicted = cam >= 0.5 * cam.max()
            out.append({"sample": data.sample_ids[i][:12], "label": box["label"], "hit": bool(inside[y, x]),
                        "iou": round(float((predicted & inside).sum() / max(1, (predicted | inside).sum())), 3)})
    return out


def phantom_inpainting(classifier_uri: str, dit_uri: str, dataset: str, limit: int) -> tuple[dict, bytes]:
    model, _, card = load_checkpoint(store.read_bytes(classifier_uri))
    dit, dit_config, _ = load_dit(store.read_bytes(dit_uri))
    findings, head, tail = card.labels, set(card.head), set(card.tail)
    data = load_tensors(dataset, splits=("test", "val"), columns=("lesion_masks", "source_uri"))
    truth = lesion_masks(data.table)
    chosen = [i for i, m in enumerate(truth) if any(n in head for n in m)][:limit]
    images = data.images[chosen]
    remove = [[findings.index(n) for n in truth[i] if n in head][:1] for i in chosen]
    masks = removal_masks(model, images, remove, config=MASKS)
    ok = [k for k, m in enumerate(masks) if m.outcome == "ok"]
    outcomes = {o: sum(m.outcome == o for m in masks) for o in ("ok", "empty", "too_large")}
    if not ok:
        return {"images": len(chosen), "masks_ok": 0, "mask_outcomes": outcomes}, None
    mask_tensor = torch.from_numpy(np.stack([masks[k].mask for k in ok])[:, None].astype(np.float32))
    generators = [torch.Generator().manual_seed(k) for k in ok]
    after, seconds = timed(lambda: inpaint(dit, build_scheduler(dit_config), images[ok], mask_tensor, INPAINT, generators))
    p_before, p_after = predict_probs(model, images[ok]), predict_probs(model, after)
    contrast_before, contrast_after, tail_overlap, tail_changed, drop_removed, drop_tail = [], [], [], [], [], []
    for j, k in enumerate(ok):
        i = chosen[k]
        name = findings[remove[k][0]]
        index = int(data.table.column("source_uri")[i].as_py().rsplit("/", 1)[1])
        labels = data.labels[i].numpy().copy()
        labels[remove[k][0]] = 0.0
        clean = clean_render(index, labels, images.shape[-1]).astype(np.float32) / 255
        lesion = truth[i][name]
        before_img, after_img = images[k, 0].numpy(), after[j, 0].numpy()
        contrast_before.append(float(np.abs(before_img - clean)[lesion].mean()))
        contrast_after.append(float(np.abs(after_img - clean)[lesion].mean()))
        drop_removed.append(float(p_before[j, remove[k][0]] - p_after[j, remove[k][0]]))
        for t in (n for n in truth[i] if n in tail):
            t_mask = truth[i][t]
            outside = t_mask & ~masks[k].mask
            tail_overlap.append(float((t_mask & masks[k].mask).sum() / max(1, t_mask.sum())))
            tail_changed.append(float(np.abs(after_img - before_img)[outside].max()) if outside.any() else 0.0)
            drop_tail.append(float(p_before[j, findings.index(t)] - p_after[j, findings.index(t)]))
    grid = torch.cat([torch.cat([images[k:k + 1], mask_tensor[j:j + 1], after[j:j + 1]], dim=3)
                      for j, k in enumerate(ok[:8])])
    result = {
        "images": len(chosen), "masks_ok": len(ok), "mask_outcomes": outcomes,
        "lesion_contrast_before": round(float(np.mean(contrast_before)), 4),
        "lesion_contrast_after": round(float(np.mean(contrast_after)), 4),
        "lesion_contrast_reduction": round(1 - float(np.mean(contrast_after)) / float(np.mean(contrast_before)), 3),
        "tail_lesions_seen": len(tail_overlap), "tail_mask_overlap_mean": round(float(np.mean(tail_overlap)), 3) if tail_overlap else None,
        "tail_max_change_outside_mask": max(tail_changed) if tail_changed else None,
        "removed_class_prob_drop_mean": round(float(np.mean(drop_removed)), 4),
        "tail_class_prob_drop_mean": round(float(np.mean(drop_tail)), 4) if drop_tail else None,
        "inpaint_images_per_s": round(len(ok) / seconds, 2), "inpaint_config": INPAINT.__dict__}
    return result, grid_png(grid, columns=1)


def nih_inpainting(classifier_uri: str, dit_uri: str, dataset: str) -> tuple[dict, bytes]:
    from tasks.knowledge import plan

    model, _, card = load_checkpoint(store.read_bytes(classifier_uri))
    dit, dit_config, _ = load_dit(store.read_bytes(dit_uri))
    _, decisions = plan(dataset, str(tailforge_home() / "bench" / "decisions.duckdb"))
    by_question = {(d.head, d.tail): d for d in decisions}
    data = load_tensors(dataset, splits=("train",))
    findings = card.labels
    picks, remove, keep_tail = [], [], []
    for i, labels in enumerate(data.labels.numpy()):
        present = [findings[k] for k in np.nonzero(labels == 1)[0]]
        q = (tuple(sorted(n for n in present if n in card.head)), tuple(sorted(n for n in present if n in card.tail)))
        d = by_question.get(q)
        if d and d.remove:
            picks.append(i), remove.append([findings.index(n) for n in d.remove]), keep_tail.append(list(q[1]))
    images = data.images[picks]
    masks = removal_masks(model, images, remove, config=MASKS)
    ok = [k for k, m in enumerate(masks) if m.outcome == "ok"]
    if not ok:
        return {"candidates": len(picks), "masks_ok": 0}, None
    mask_tensor = torch.from_numpy(np.stack([masks[k].mask for k in ok])[:, None].astype(np.float32))
    after = inpaint(dit, build_scheduler(dit_config), images[ok], mask_tensor, INPAINT,
                    [torch.Generator().manual_seed(k) for k in ok])
    p_before, p_after = predict_probs(model, images[ok]), predict_probs(model, after)
    drop_removed = [float(p_before[j, r] - p_after[j, r]) for j, k in enumerate(ok) for r in remove[k]]
    drop_tail = [float(p_before[j, findings.index(t)] - p_after[j, findings.index(t)]) for j, k in enumerate(ok)
                 for t in keep_tail[k]]
    grid = torch.cat([torch.cat([images[k:k + 1], mask_tensor[j:j + 1], after[j:j + 1]], dim=3)
                      for j, k in enumerate(ok[:8])])
    return {"candidates": len(picks), "masks_ok": len(ok),
            "removed_class_prob_before": round(float(np.mean([p_before[j, r] for j, k in enumerate(ok) for r in remove[k]])), 4),
            "removed_class_prob_drop_mean": round(float(np.mean(drop_removed)), 4),
            "tail_class_prob_drop_mean": round(float(np.mean(drop_tail)), 4)}, grid_png(grid, columns=1)


PHANTOM_CLASSIFIER = ClassifierConfig("resnet18", 14, 64)  # the phantom classifier cam_sweep and spatial_evidence read


def phantom_classifier(phantom: str, models_uri: str, epochs: int = 8) -> dict:
    """The phantom classifier this script trains (tasks.pretrain reuses it when made before)."""
    return train_classifier(phantom, models_uri, PHANTOM_CLASSIFIER, TrainConfig(epochs=epochs, batch_size=64, seed=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantom-n", type=int, default=3000)
    parser.add_argument("--dit-steps", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--nih-epochs", type=int, default=15)
    parser.add_argument("--real-dit", help="checkpoint URI of the DiT trained on real normals "
                        "(default: benchmarks/results/dit_real.json)")
    args = parser.parse_args()
    home = tailforge_home() / "bench"
    models_uri = str(tailforge_home() / "models")
    results: dict = {"settings": vars(args) | {"masks": MASKS.__dict__, "inpaint": INPAINT.__dict__}}

    phantom = str(home / f"phantom64-{args.phantom_n}-s{SEED}")
    ingest_phantom(phantom, args.phantom_n, size=64, seed=SEED)
    train_images = len(load_tensors(phantom, splits=("train",), limit=None))
    clf, seconds = timed(lambda: phantom_classifier(phantom, models_uri, args.epochs))
    results["phantom_classifier"] = {"test_macro": clf.get("metrics", {}).get("means", {}).get("macro"),
                                     "train_images": train_images,
                                     "train_images_per_s": round(train_images * args.epochs / seconds, 1)}
    model, _, card = load_checkpoint(store.read_bytes(clf["uri"]))
    test = load_tensors(phantom, splits=("test",), columns=("lesion_masks",))
    results["phantom_cam"] = localisation(model, test.images, lesion_masks(test.table), test.labels, card.labels,
                                          set(card.head))
    print(json.dumps(results["phantom_cam"]["_all"]), flush=True)

    normals_config = DiTConfig(image_size=64, patch_size=4, depth=4, num_heads=4, head_dim=32)
    dit_train = DiTTrainConfig(steps=args.dit_steps, batch_size=32, warmup_steps=100)
    dit, seconds = timed(lambda: train_normal_dit([phantom], models_uri, normals_config, dit_train))
    results["phantom_dit"] = {"history": dit["history"], "steps": args.dit_steps, "seconds": round(seconds, 1)}
    results["phantom_inpainting"], grid = phantom_inpainting(clf["uri"], dit["uri"], phantom, 48)
    if grid:
        (RESULTS / "inpaint_phantom.png").write_bytes(grid)
    print(json.dumps(results["phantom_inpainting"]), flush=True)

    nih = SHARED_DATA / "nih1000"
    if (nih / "Data_Entry_2017_v2020.csv").exists():
        nih_uri = ingest_nih1000(str(home / "nih1000"))
        nih_clf = train_classifier(nih_uri, models_uri, ClassifierConfig("resnet18", 14, 64),
                                   TrainConfig(epochs=args.nih_epochs, batch_size=32, seed=0, augment=True))
        results["nih_classifier"] = {"test_macro": nih_clf["metrics"]["means"]["macro"]}
        nih_model, _, nih_card = load_checkpoint(store.read_bytes(nih_clf["uri"]))
        boxes = nih_boxes(nih_model, nih_uri, nih_card.labels)
        results["nih_boxes"] = {"boxes": boxes, "pointing_game": round(float(np.mean([b["hit"] for b in boxes])), 3),
                                "iou_mean": round(float(np.mean([b["iou"] for b in boxes])), 3)}
        record = RESULTS / "dit_real.json"
        real_dit = args.real_dit or (json.loads(record.read_text())["checkpoint"]["uri"] if record.exists() else None)
        if real_dit is None or not store.exists(real_dit):
            print("no DiT trained on real normals (run `python -m benchmarks.train_normal_dit`); NIH inpainting skipped")
            print(f"written: {save('models', results)}")
            return
        results["nih_inpainting_generator"] = real_dit
        results["nih_inpainting"], grid = nih_inpainting(nih_clf["uri"], real_dit, nih_uri)
        if grid:
            (RESULTS / "inpaint_nih.png").write_bytes(grid)
    print(json.dumps({k: v for k, v in results.items() if k != "nih_boxes"}, indent=1, default=str)[:4000])
    print(f"written: {save('models', results)}")


if __name__ == "__main__":
    main()
