"""One batch: read its parents, make masks and fill them (or sample from finding sets), judge
each result, and write the batch's quarantine rows and then its one samples shard."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from models.masks import MaskResult
from models.device import describe_device, model_device
from models.engine import use_engine
from models.removal import dit_fill, kept_classes, remove_lesions
from models.sampling import sample
from models.training import predict_probs
from tasks.augment.models import _MODEL_LOCK, _classifier, _generator, _generator_config, _quality, ood_scorer, unlocked
from tasks.augment.plan import Candidate
from tasks.augment.settings import AugmentSettings
from tasks.augment.verdict import _by_class, _reasons, present, verdict
from tasks.dataset import ShardWriter, sample_schema
from tasks.images import decode_png, encode_mask, encode_png
from tasks.tensors import load_tensors


def run_batch(dataset_uri: str, out_uri: str, batch: list[Candidate], classifier: dict, generator: dict,
              settings: AugmentSettings, run_id: str, progress: Callable[[str], None] | None = None) -> dict:
    """Generate one batch and write it; returns counts and timings (a handle, no pixels).
    ``progress`` gets a line at each step of the model work (masks, each removal round)."""
    started = time.perf_counter()
    wanted = pa.array([c.parent_id for c in batch])
    parents = load_tensors(dataset_uri, where=pc.is_in(pc.field("sample_id"), wanted),
                           columns=("patient_id", "source_uri", "image"),
                           shards=sorted({c.parent_shard for c in batch}))
    index = {sid: i for i, sid in enumerate(parents.sample_ids)}
    missing = [c for c in batch if c.parent_id not in index]
    batch = [c for c in batch if c.parent_id in index]
    rows = [index[c.parent_id] for c in batch]
    images = parents.images[rows]  # (B, 1, S, S)
    findings = parents.findings
    kept = kept_sets(parents.labels[rows], findings, batch)  # (B, K): each row's labels after the removal
    conditional = _generator_config(generator["uri"]).conditioning == "labels"
    waits: list[float] = []  # taking the models back after a fill, while another batch has them
    with _MODEL_LOCK:
        model_started = time.perf_counter()
        masks, generated, scores, ood, probs_before, probs_after = _generate(
            dataset_uri, images, kept, conditional, findings, batch, classifier, generator, settings, waits, progress)
        model_seconds = time.perf_counter() - model_started - sum(waits)
    ok = [i for i, m in enumerate(masks) if m.outcome == "ok"]

    writer = ShardWriter(out_uri, sample_schema(), shard_rows=len(batch) + 1, run_id=run_id)
    for c in missing:
        writer.quarantine(reason_code="missing_parent", reason=f"parent {c.parent_id[:12]} is not in {dataset_uri}",
                          stage="augment", key=c.output_id)
    for i, c in enumerate(batch):
        if masks[i].outcome != "ok":
            writer.quarantine(reason_code=f"mask_{masks[i].outcome}", stage="augment", key=c.output_id,
                              reason=_mask_reason(c, masks[i], findings, kept[i]),
                              patient_id=parents.table.column("patient_id")[rows[i]].as_py(),
                              source_uri=parents.table.column("source_uri")[rows[i]].as_py())
    labels = parents.labels[rows].numpy()
    card = _classifier(classifier["uri"])[1]
    verdicts = []
    for j, i in enumerate(ok):
        c = batch[i]
        tail = present(labels[i], findings, card.tail)
        ood_score = float(ood[0][j]) if ood else None
        verdicts.append(verdict(c.remove if settings.verify_removal else (),
                                tail if settings.verify_removal else [], findings, probs_before[j], probs_after[j],
                                card.thresholds, settings.tail_margin, float(scores[j]), settings.quality_max_z,
                                (ood_score, *ood[1:]) if ood else None))
        original = decode_png(parents.table.column("image")[rows[i]].as_py())
        writer.add({**_generated_row(c, generated[j, 0], masks[i].mask, original, kept[i].numpy(), parents, rows[i],
                                     classifier["id"], generator["id"], float(scores[j]), verdicts[-1], conditional),
                    "ood_score": ood_score})
    writer.close()
    removed_drop = [float(probs_before[j][findings.index(r)] - probs_after[j][findings.index(r)])
                    for j, i in enumerate(ok) for r in batch[i].remove] if ok else []
    return {"written": writer.written, "quarantined": dict(writer.quarantined), "images": len(batch) + len(missing),
            "accepted": verdicts.count("ok"), "rejected": _reasons(verdicts),
            "by_class": _by_class([batch[i].remove for i in ok], verdicts),
            "model_seconds": round(model_seconds, 3), "seconds": round(time.perf_counter() - started, 3),
            "device": describe_device(model_device(_classifier(classifier["uri"])[0])),
            "removed_prob_drop_mean": float(np.mean(removed_drop)) if removed_drop else None}


def _mask_reason(c: Candidate, mask: MaskResult, findings: list[str], kept: torch.Tensor) -> str:
    """Why an image got no mask, for its quarantine row."""
    if mask.outcome == "on_kept":
        keeps = present(kept.numpy(), findings, findings)
        return (f"the mask for {', '.join(c.remove)} lies on findings the image keeps ({', '.join(keeps)}): "
                f"{mask.area:.3f} of the image left once they are taken out (augment.mask.protect)")
    return f"CAM mask for {', '.join(c.remove)} is {mask.outcome} (area {mask.area:.3f})"


def _generate(dataset_uri: str, images: torch.Tensor, kept: torch.Tensor, conditional: bool, findings: list[str],
              batch: list[Candidate], classifier: dict, generator: dict, settings: AugmentSettings,
              waits: list[float], progress: Callable[[str], None] | None = None):
    """CAM masks that leave the ``kept`` findings alone -> inpainting (or, ``conditional``, a
    label-conditioned generator samples the kept finding sets from noise) -> quality score and
    classifier probabilities (the model work)."""
    net, card = _classifier(classifier["uri"])
    before = predict_probs(net, images)  # (B, K): the gate's input and the removal check's "before"
    dit, scheduler, _ = _generator(generator["uri"])
    use_engine(dit, settings.engine)  # its calls in model batches, whatever this task's batch
    if conditional:  # DfT-Caption: no mask, the whole image is new
        side = images.shape[-1]
        seeds = [torch.Generator().manual_seed(c.seed) for c in batch]
        masks = [MaskResult(np.ones((side, side), dtype=bool), "ok", 1.0) for _ in batch]
        generated = sample(dit, scheduler, len(batch), side, settings.inpaint.steps, seeds,
                           labels=kept, guidance=settings.guidance)
        ok = list(range(len(batch)))
        after = predict_probs(net, generated)
    else:
        priors = {findings.index(name): np.asarray(p) for name, p in card.location_prior.items() if name in findings}
        remove = [[findings.index(r) for r in c.remove] for c in batch]
        fill = unlocked(dit_fill(dit, scheduler, settings.inpaint), waits)  # the DiT's fills pool across batches
        removal = remove_lesions(net, images, remove, [c.seed for c in batch], fill,
                                 method=settings.cam_method, mask=settings.mask, localise=settings.localise,
                                 thresholds=card.thresholds, priors=priors, rounds=settings.removal_rounds,
                                 target=settings.removal_target, probs=before,
                                 keep=kept_classes(kept.numpy(), remove), progress=progress)
        masks, generated, ok, after = removal.masks, removal.generated, removal.ok, removal.probs
        if not ok:
            return masks, generated, np.zeros(0), None, None, None
    scores = _quality(dataset_uri).score(generated)
    ood = None
    if settings.ood_filter:
        scorer = ood_scorer(dataset_uri, settings, classifier, generator)
        ood = (scorer.score(generated), scorer.threshold, scorer.what)
    return masks, generated, scores, ood, before[ok], after


def kept_sets(labels: torch.Tensor, findings: list[str], batch: list[Candidate]) -> torch.Tensor:
    """Each candidate's finding set after the removal: its parent's labels with the removed
    classes set to 0 (what an inpainted row is labelled, and what a label-conditioned DiT samples)."""
    kept = labels.clone()
    for i, c in enumerate(batch):
        for name in c.remove:
            kept[i, findings.index(name)] = 0.0
    return kept


def _generated_row(c: Candidate, pixels01: torch.Tensor, mask: np.ndarray, original: np.ndarray,
                   labels: np.ndarray, parents, row: int, classifier_id: str,
                   generator_id: str, quality: float, verdict_: str, conditional: bool) -> dict:
    """An inpainted row (the parent's pixels outside the mask, its patient and source) or, from
    a label-conditioned generator, a conditional one: a new image, no parent, no patient, no mask;
    the lineage is the finding set (labels, removed/kept), the seed and the checkpoint."""
    top = np.iinfo(original.dtype).max
    new = np.round(pixels01.numpy() * top).astype(original.dtype)
    new = np.where(mask, new, original)  # outside the mask: the parent's stored pixels, bit for bit
    column = (lambda name: None) if conditional else (lambda name: parents.table.column(name)[row].as_py())
    return {"sample_id": c.output_id, "image": encode_png(new), "height": new.shape[0], "width": new.shape[1],
            "bit_depth": 16 if new.dtype == np.uint16 else 8, "labels": [float(v) for v in labels],
            "split": "train", "patient_id": column("patient_id"), "source_uri": column("source_uri"),
            "origin": "conditional" if conditional else "inpainted",
            "parent_id": None if conditional else c.parent_id, "removed_labels": list(c.remove),
            "kept_labels": list(c.keep), "mask": None if conditional else encode_mask(mask),
            "decision_id": c.decision_id, "generator_id": generator_id,
            "classifier_id": classifier_id, "seed": c.seed, "quality": quality, "accepted": verdict_ == "ok",
            "verdict": verdict_}
