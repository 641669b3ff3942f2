"""What the phantom's ground truth says about a run: CAM localisation of head lesions, how
many head lesions the inpainting removed, how many tail lesions it kept, and the entanglement
decisions' error against true overlap.

The phantom renders the same patient with any subset of its findings (tasks/phantom/stream.py:
the generator's draws do not depend on the labels), so for a generated image whose parent had
labels L and lost the head findings R, the ideal result is render(L - R) of that patient:
- a removed head lesion counts as removed when the mean absolute difference from the ideal
  over its ground-truth mask falls to at most half of what the parent had there;
- a tail lesion t counts as kept when its signal over its mask, measured against
  render(L - R - t), is at least half of the ideal's.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import torch

from benchmarks.bench_models import localisation
from benchmarks.fidelity_measures import HALF, rate, removal, retention
from models.classifier import load_checkpoint
from tasks import store
from tasks.dataset import existing_rows
from tasks.images import decode_mask, decode_png
from tasks.knowledge import Decision
from tasks.labels import vocabulary
from tasks.phantom import render
from tasks.phantom.regime import draw_labels, split_source_uri
from tasks.phantom.stream import draw_split
from tasks.tensors import lesion_masks, load_tensors

def cam_localisation(classifier_uri: str, dataset: str) -> dict:
    """Pointing game and IoU of the classifier's Grad-CAM for the head lesions of test images."""
    model, _, card = load_checkpoint(store.read_bytes(classifier_uri))
    test = load_tensors(dataset, splits=("test",), columns=("lesion_masks",))
    return localisation(model, test.images, lesion_masks(test.table), test.labels, card.labels, set(card.head))


def _replay(source_uri: str, labels: np.ndarray, vocab_name: str, size: int) -> np.ndarray:
    """The phantom patient behind ``phantom://seed/index[?regime]`` rendered with ``labels``, in [0, 1]."""
    seed, index, regime = split_source_uri(source_uri)
    vocab = vocabulary(vocab_name)
    rng = np.random.default_rng([seed, index])
    draw_labels(rng, vocab, regime)
    draw_split(rng)
    return render(labels, vocab, size, rng, regime.tail_contrast)[0].astype(np.float32) / 255


def lesion_outcomes(dataset: str, generated: str, tail: list[str], vocab_name: str = "nih") -> dict:
    """Head-lesion removal and tail-lesion retention over every generated image of ``generated``
    (the absolute criterion: the keys the committed results have), and ``audit``: the same lesions
    under both of benchmarks/fidelity_measures.py's criteria, for every row, the accepted rows (what
    fine-tuning reads) and the accepted rows whose mask touches the lesion, with the label precision
    per class (a removed head class's 0 is right when its lesion is gone by the signed criterion, a
    tail class's 1 when its lesion keeps half its signed contrast) and the share of rows whose labels
    are all right."""
    rows, lesions = judged_lesions(dataset, generated, tail, vocab_name)
    if rows is None:
        return {"images": 0}
    head = [e for e in lesions if e["kind"] == "head"]
    kept = [e for e in lesions if e["kind"] == "tail"]
    accepted = [e for e in lesions if e["accepted"]]
    return {"images": rows.num_rows,
            "head_lesions": len(head), "head_removal_rate": rate([e["absolute"] for e in head]),
            "head_lesion_mask_coverage_mean": _mean([e["inside"] for e in head]),
            "tail_lesions": len(kept), "tail_retention_rate": rate([e["absolute"] for e in kept]),
            "tail_lesion_share_inside_mask_mean": _mean([e["inside"] for e in kept]),
            "audit": {"all": _audit(lesions, rows.num_rows),
                      "accepted": _audit(accepted, sum(bool(a) for a in rows.column("accepted").to_pylist())),
                      "accepted_masked": _audit([e for e in accepted if e["kind"] == "tail" or e["inside"] > 0])}}


def judged_lesions(dataset: str, generated: str, tail: list[str], vocab_name: str = "nih"):
    """(the generated rows, one entry per judged lesion of a row: its row index, acceptance, kind
    ("head": a removed class, "tail": a kept tail class), class, ``right`` by the signed criterion,
    ``absolute`` and the share of the lesion inside the row's mask); (None, []) when none."""
    rows = existing_rows(generated, ["parent_id", "image", "mask", "labels", "removed_labels", "accepted"])
    if rows is None:
        return None, []
    parents = load_tensors(dataset, where=pc.is_in(pc.field("sample_id"), rows.column("parent_id").unique()),
                           columns=("lesion_masks", "source_uri"))
    by_id = {sid: i for i, sid in enumerate(parents.sample_ids)}
    truth = lesion_masks(parents.table)
    findings = parents.findings
    lesions: list[dict] = []  # one per (row, judged lesion): the row's acceptance, the class, the outcome
    for r, row in enumerate(rows.to_pylist()):
        i = by_id[row["parent_id"]]
        original = parents.images[i, 0].numpy()
        new = decode_png(row["image"]).astype(np.float32) / 255
        mask = decode_mask(row["mask"])
        after = np.asarray(row["labels"], dtype=np.float32)
        source = parents.table.column("source_uri")[i].as_py()
        ideal = _replay(source, np.nan_to_num(after), vocab_name, original.shape[-1])
        common = {"row": r, "accepted": bool(row["accepted"])}
        for name in row["removed_labels"]:
            lesion = truth[i].get(name)
            outcome = removal(original, new, ideal, lesion) if lesion is not None and lesion.any() else None
            if outcome is not None:
                lesions.append({**common, "kind": "head", "class": name, "right": outcome["signed"],
                                "absolute": outcome["absolute"], "inside": float((lesion & mask).sum() / lesion.sum())})
        for k in np.nonzero(after == 1.0)[0]:
            name = findings[k]
            lesion = truth[i].get(name) if name in tail else None
            if lesion is None or not lesion.any():
                continue
            without = after.copy()
            without[k] = 0.0
            clean = _replay(source, np.nan_to_num(without), vocab_name, original.shape[-1])
            reference = float(np.abs(ideal - clean)[lesion].mean())
            if reference <= 1e-3:
                continue
            lesions.append({**common, "kind": "tail", "class": name, "right": retention(new, ideal, clean, lesion),
                            "absolute": float(np.abs(new - clean)[lesion].mean()) >= HALF * reference,
                            "inside": float((lesion & mask).sum() / lesion.sum())})
    return rows, lesions


def _audit(lesions: list[dict], rows: int | None = None) -> dict:
    """Removal (signed and absolute), retention and label precision per class over these lesions."""
    head = [e for e in lesions if e["kind"] == "head"]
    tail = [e for e in lesions if e["kind"] == "tail"]
    wrong_rows = {e["row"] for e in lesions if e["right"] is False}
    judged_rows = {e["row"] for e in lesions}
    classes = sorted({(e["kind"], e["class"]) for e in lesions})
    return {"rows": rows, "head_lesions": len(head), "removed_signed": rate([e["right"] for e in head]),
            "removed_absolute": rate([e["absolute"] for e in head]),
            "tail_lesions": len(tail), "retained_signed": rate([e["right"] for e in tail]),
            "rows_judged": len(judged_rows),
            "rows_all_labels_right": rate([r not in wrong_rows for r in sorted(judged_rows)]),
            "label_precision": {f"{name} ({'0' if kind == 'head' else '1'})":
                                {"n": sum(1 for e in lesions if e["class"] == name and e["kind"] == kind),
                                 "right": rate([e["right"] for e in lesions if e["class"] == name and e["kind"] == kind])}
                                for kind, name in classes}}


def entanglement_error(dataset: str, decisions: list[Decision], head: list[str], tail: list[str]) -> dict:
    """For every train candidate and present head finding: truth = its ground-truth lesion
    (dilated 2 px) touches a present tail lesion; predicted = the decision keeps it."""
    by_question = {(d.head, d.tail): d for d in decisions}
    data = load_tensors(dataset, splits=("train",), columns=("lesion_masks",))
    truth_masks = lesion_masks(data.table)
    predicted, truth = [], []
    for masks, labels in zip(truth_masks, data.labels.numpy()):
        present = [data.findings[k] for k in np.nonzero(labels == 1.0)[0]]
        question = (tuple(sorted(n for n in present if n in head)), tuple(sorted(n for n in present if n in tail)))
        decision = by_question.get(question)
        if decision is None or not question[0] or not question[1]:
            continue
        for h in question[0]:
            if h not in masks:
                continue
            grown = torch.nn.functional.max_pool2d(torch.from_numpy(masks[h]).float()[None, None], 5, 1, 2)[0, 0] > 0
            truth.append(any(bool((grown.numpy() & masks[t]).any()) for t in question[1] if t in masks))
            predicted.append(h in decision.keep)
    p, t = np.array(predicted, dtype=bool), np.array(truth, dtype=bool)
    tp, fp, fn, tn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum()), int((~p & ~t).sum())
    return {"pairs": len(p), "true_overlaps": int(t.sum()), "kept": int(p.sum()),
            "precision": round(tp / max(1, tp + fp), 3), "recall": round(tp / max(1, tp + fn), 3),
            "error_rate": round((fp + fn) / max(1, len(p)), 3), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None

