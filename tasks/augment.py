"""Augmentation: candidates with deterministic output ids, and the per-batch work
(class-map masks for the head classes to remove -> inpaint with the normal DiT, re-localising on
the result while a removed class is still called (models/removal.py, ``removal_rounds``) ->
quality score and removal check -> one Parquet shard).

The removal check (``verdict``): a generated row is accepted only when the pretrained
classifier no longer calls any removed class, still calls every tail class it called in the
parent (within ``tail_margin``), and the image is in distribution. Rows that fail are kept with
``accepted = false`` and the reason in ``verdict``; fine-tuning reads accepted rows by default.

Resume and idempotency: an output id is sha256(parent id, decision id, recipe), the recipe
being the checkpoints and every setting that changes pixels. Batches have a fixed membership
(candidates sorted by output id, cut into chunks), each image its own seed, and a batch writes
its quarantine rows first and its samples shard last (atomically). A batch is done when all
its ids are in the output; a rerun skips it, and a killed batch is redone whole with the same
result.

With a label-conditioned generator (``generator.conditioning: labels``, the paper's DfT-Caption
baseline) the same candidates, decisions and checks apply, but no mask is made: each row is
sampled from noise for its candidate's kept finding set (``kept_sets``), written with
``origin = conditional`` and no parent, patient or mask.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from models.cam import MAP_METHODS, LocaliseConfig, MaskConfig, MaskResult
from models.classifier import load_checkpoint
from models.device import describe_device, model_device, on_device
from models.dit import build_scheduler, load_dit, load_dit_config
from models.inpaint import InpaintConfig
from models.ood import FeatureScorer, OODConfig, OODScorer
from models.quality import QualityScorer
from models.removal import dit_fill, kept_classes, remove_lesions
from models.sampling import sample
from models.training import predict_probs
from tasks import store
from tasks.classifier_gate import class_report
from tasks.dataset import (SAMPLES, ShardWriter, check_writable, existing_quarantine_ids, existing_rows,
                           finish_manifest, label_matrix, read_manifest, sample_schema)
from tasks.images import decode_png, encode_mask, encode_png
from tasks.knowledge.decision import Decision
from tasks.knowledge.planner import candidate_codes, question_of
from tasks.tensors import load_tensors, rows_by_shard


OOD_METHODS = ("features", "reconstruction")


@dataclass(frozen=True)
class AugmentSettings:
    batch_size: int = 64  # images per task (32-128: Prefect costs ~10 ms per task)
    cam_method: str = "infill"  # class maps: "infill" (counterfactual occlusion), a Grad-CAM variant or "attention"
    localise: LocaliseConfig = field(default_factory=LocaliseConfig)  # layers, border, prior, gate
    mask: MaskConfig = field(default_factory=MaskConfig)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)
    removal_rounds: int = 4  # localise -> inpaint passes; a pass re-localises on the result where a removed class is still seen
    removal_target: float = 0.25  # passes after the first go on while a removed class's probability >= this x its threshold
    guidance: float = 2.0  # label-conditioned generator: classifier-free guidance weight (1 = none); steps: inpaint.steps
    quality_max_z: float = 3.0  # robust z of the NN distance to real images; above -> accepted = False
    tail_margin: float = 0.1  # a kept tail class may fall below its threshold by at most this much
    verify_removal: bool = True  # accept only rows whose removal the classifier confirms; False: quality alone
    ood_filter: bool = True  # reject rows that score further from real films than held-out real images do (models/ood.py)
    ood_method: str = "features"  # "features": classifier-feature Mahalanobis; "reconstruction": the normal DiT's (not for a label-conditioned generator)
    ood_false_rejection: float = 0.05  # share of the dataset's val images the OOD threshold would reject
    seed: int = 0  # mixed into every image's seed
    max_images: int | None = None  # cap on candidates (smallest output ids first); None = all
    variants: int = 1  # generated images per parent, each with its own seed (more rows from the same parents)
    parallel: int = 1  # batches in flight at once; the run holds as many `gpu` slots (at most the limit) throughout
    runner: str = "local"  # where batches run: "local" (the flow's threads) or "dask" (the cluster at dask_address)
    dask_address: str | None = None  # runner "dask": the scheduler, tcp://HOST:8786
    dask_resource: str | None = "GPU"  # runner "dask": the worker resource each batch takes one of; null: none
    batch_timeout_s: float = 7200.0  # a batch not done this long after the run waits on it fails the run, saying so
    min_class_auroc: float = 0.7  # a head class whose val AUROC is below this is kept, not removed (0: no gate)

    @classmethod
    def from_dict(cls, data: dict) -> "AugmentSettings":
        data = dict(data)
        data["mask"] = MaskConfig(**data.get("mask", {}))
        data["localise"] = LocaliseConfig(**data.get("localise", {}))
        data["inpaint"] = InpaintConfig(**data.get("inpaint", {}))
        return cls(**data)

    def __post_init__(self) -> None:
        if self.cam_method not in MAP_METHODS:  # at load, not inside the first batch
            raise ValueError(f"augment.cam_method must be one of {', '.join(MAP_METHODS)}, not {self.cam_method!r}")
        if self.runner not in ("local", "dask"):
            raise ValueError(f"augment.runner must be 'local' or 'dask', not {self.runner!r}")
        if self.runner == "dask" and not self.dask_address:
            raise ValueError("augment.runner 'dask' needs augment.dask_address, the scheduler (tcp://HOST:8786)")
        if self.ood_method not in OOD_METHODS:
            raise ValueError(f"augment.ood_method must be one of {', '.join(OOD_METHODS)}, not {self.ood_method!r}")
        if not 0 < self.ood_false_rejection < 1:
            raise ValueError("augment.ood_false_rejection must be between 0 and 1")
        if self.parallel < 1 or self.batch_size < 1:
            raise ValueError("augment.parallel and augment.batch_size must be at least 1")
        if self.removal_rounds < 1:
            raise ValueError("augment.removal_rounds must be at least 1 (1 = one mask, no re-localising)")
        if not 0 < self.removal_target <= 1:
            raise ValueError("augment.removal_target must be in (0, 1]: the share of a class's threshold that "
                             "another removal round aims below (1 = until the classifier no longer calls it)")
        if self.variants < 1:
            raise ValueError("augment.variants must be at least 1 (generated images per parent)")
        if not 0 <= self.min_class_auroc < 1:
            raise ValueError("augment.min_class_auroc must be in [0, 1): the val AUROC a class to be removed needs "
                             "(0 turns the classifier gate off)")
        if self.batch_timeout_s <= 0:
            raise ValueError("augment.batch_timeout_s must be positive (seconds a batch may take)")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Candidate:
    output_id: str
    parent_id: str
    parent_shard: str  # URI of the shard holding the parent: a batch reads only its shards
    remove: tuple[str, ...]
    keep: tuple[str, ...]
    decision_id: str
    seed: int


def recipe_id(settings: AugmentSettings, classifier_id: str, generator_id: str) -> str:
    """Everything that changes a generated image's pixels, hashed."""
    recipe = {"classifier": classifier_id, "generator": generator_id, "cam": settings.cam_method,
              "localise": asdict(settings.localise), "mask": asdict(settings.mask),
              "inpaint": asdict(settings.inpaint), "seed": settings.seed, "guidance": settings.guidance,
              "removal_rounds": settings.removal_rounds, "removal_target": settings.removal_target}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def build_candidates(dataset_uri: str, findings: list[str], head: list[str], tail: list[str],
                     decisions: list[Decision], recipe: str, max_images: int | None = None,
                     variants: int = 1, not_removed: frozenset[str] = frozenset()) -> list[Candidate]:
    """The planner's candidates (tasks.knowledge.planner.candidate_codes: train images with a
    head and a tail finding) whose decision removes something, ``variants`` per image: variant 0
    keeps the id (and seed) it has without variants, so raising the count only adds rows. Classes
    in ``not_removed`` (the classifier gate's) are kept instead; a candidate left with nothing to
    remove is dropped, and one that lost a class gets its own id."""
    by_question = {(d.head, d.tail): d for d in decisions}
    head_idx, tail_idx = [findings.index(h) for h in head], [findings.index(t) for t in tail]
    out = []
    for shard, rows in rows_by_shard(dataset_uri, ["sample_id", "labels", "split"]):
        is_train = pc.equal(rows.column("split"), "train").to_numpy(zero_copy_only=False)
        codes = candidate_codes(label_matrix(rows, len(findings)), is_train, head_idx, tail_idx)
        questions = {int(c): question_of(int(c), findings, set(head), set(tail)) for c in np.unique(codes[codes >= 0])}
        for sample_id, code in zip(rows.column("sample_id").to_pylist(), codes.tolist()):
            question = questions.get(code)
            decision = by_question.get((question.head, question.tail)) if question else None
            remove = tuple(r for r in decision.remove if r not in not_removed) if decision else ()
            if not remove:
                continue
            gated = tuple(r for r in decision.remove if r in not_removed)
            for variant in range(variants):
                key = (f"{sample_id}\n{decision.decision_id}\n{recipe}" + (f"\n{variant}" if variant else "")
                       + (f"\nnot removed: {','.join(gated)}" if gated else ""))
                output_id = hashlib.sha256(key.encode()).hexdigest()
                out.append(Candidate(output_id, sample_id, shard, remove, decision.keep + gated,
                                     decision.decision_id, int(output_id[:8], 16)))
    out.sort(key=lambda c: c.output_id)
    return out[:max_images] if max_images is not None else out


def batches(candidates: list[Candidate], batch_size: int) -> list[list[Candidate]]:
    return [candidates[i:i + batch_size] for i in range(0, len(candidates), batch_size)]


@dataclass(frozen=True)
class Prepared:
    """What an augment run will do: its recipe, every candidate, the batches (fixed membership)
    and, by index, the batches not already in the output."""
    recipe: str
    candidates: list[Candidate]
    batches: list[list[Candidate]]
    todo: list[tuple[int, list[Candidate]]]
    gate: dict = field(default_factory=dict)  # tasks.classifier_gate.class_report: the classes not removed, why


def prepare(dataset_uri: str, out_uri: str, manifest: dict, decisions: list[Decision], classifier: dict,
            generator_id: str, settings: AugmentSettings) -> Prepared:
    """The one augment preparation (the flow submits ``todo`` as tasks; the paper experiment and
    the tests loop over it): the classifier gate (tasks/classifier_gate.py) -> recipe ->
    candidates -> batches -> what is not done yet."""
    check_writable(out_uri, "augmented", manifest["vocabulary"], manifest["image_size"], parent=dataset_uri)
    check_judging(out_uri, settings)
    removable = sorted({r for d in decisions for r in d.remove})
    gate = {}
    if removable and settings.min_class_auroc > 0:
        model, card = _classifier(classifier["uri"])
        gate = class_report(dataset_uri, model, card.labels, removable, settings.min_class_auroc)
    recipe = recipe_id(settings, classifier["id"], generator_id)
    candidates = build_candidates(dataset_uri, manifest["labels"], manifest["head_tail"]["head"],
                                  manifest["head_tail"]["tail"], decisions, recipe, settings.max_images,
                                  settings.variants, frozenset(gate.get("weak", {})))
    done = done_ids(out_uri)
    chunks = batches(candidates, settings.batch_size)
    todo = [(i, b) for i, b in enumerate(chunks) if not all(c.output_id in done for c in b)]
    return Prepared(recipe, candidates, chunks, todo, gate)


# The settings that decide a row's verdict but not its pixels (so not in the recipe): a rerun
# into an output skips its done rows, which keep the verdicts they were given.
JUDGING = ("verify_removal", "tail_margin", "quality_max_z", "ood_filter", "ood_method", "ood_false_rejection")
_BEFORE_THE_SETTING = {"ood_method": "reconstruction"}  # outputs written before ood_method existed


def check_judging(out_uri: str, settings: AugmentSettings) -> None:
    """Refuse a run whose judging settings differ from those the output's rows were judged
    with: the output would mix two acceptance rules while its manifest names one."""
    try:
        recorded = read_manifest(out_uri).get("augment_settings")
    except FileNotFoundError:
        return
    if recorded is None:
        return
    changed = [f"{k}: {recorded.get(k, _BEFORE_THE_SETTING.get(k))!r} -> {getattr(settings, k)!r}" for k in JUDGING
               if recorded.get(k, _BEFORE_THE_SETTING.get(k)) != getattr(settings, k)]
    if changed:
        raise ValueError(f"{out_uri} holds rows judged with other settings ({'; '.join(changed)}); a rerun keeps "
                         f"their verdicts, so write to a new output or run with the settings it was made with")


def done_ids(out_uri: str) -> set[str]:
    """Output ids already written: samples or quarantine rows."""
    ids = existing_quarantine_ids(out_uri)
    samples = store.read_shards(store.join(out_uri, SAMPLES), columns=["sample_id"])
    if samples is not None:
        ids.update(samples.column("sample_id").to_pylist())
    return ids


def finish_output(out_uri: str, dataset_uri: str, manifest: dict, classifier: dict, generator: dict, recipe: str,
                  judge: str, settings: AugmentSettings, run_id: str, name: str) -> dict:
    """Write the augmented dataset's manifest, recording where its rows came from."""
    return finish_manifest(out_uri, name=name, kind="augmented", vocab_name=manifest["vocabulary"],
                           image_size=manifest["image_size"],
                           run_id=run_id, explicit_tail=manifest["head_tail"]["tail"],
                           source={"kind": "augment", "parent": dataset_uri, "classifier_id": classifier["id"],
                                   "generator_id": generator["id"], "recipe": recipe, "judge": judge},
                           extra={"augment_settings": settings.to_dict()})


def totals(results: list[dict]) -> dict:
    """Batch results summed: written, accepted, model seconds, quarantine rows and rejected rows
    by reason, [written, accepted] per removed class, and the devices the batches ran on."""
    quarantined: dict[str, int] = {}
    rejected: dict[str, int] = {}
    by_class: dict[str, list[int]] = {}
    for r in results:
        for code, n in r["quarantined"].items():
            quarantined[code] = quarantined.get(code, 0) + n
        for kind, n in r.get("rejected", {}).items():
            rejected[kind] = rejected.get(kind, 0) + n
        for name, (written, accepted) in r.get("by_class", {}).items():
            entry = by_class.setdefault(name, [0, 0])
            entry[0] += written
            entry[1] += accepted
    return {"written": sum(r["written"] for r in results), "accepted": sum(r["accepted"] for r in results),
            "model_seconds": sum(r["model_seconds"] for r in results), "quarantined": quarantined,
            "rejected": rejected, "by_class": {k: by_class[k] for k in sorted(by_class)},
            "devices": sorted({r["device"] for r in results if r.get("device")})}


def output_totals(out_uri: str) -> dict:
    """The whole output, not only what one run added: rows and accepted rows (a rerun that adds
    nothing still reports what is there)."""
    rows = existing_rows(out_uri, ["accepted"])
    if rows is None:
        return {"rows": 0, "accepted": 0}
    accepted = rows.column("accepted").to_pylist()
    return {"rows": len(accepted), "accepted": sum(1 for a in accepted if a)}


# Models are cached per process and shared by task threads; Grad-CAM hooks the model it runs
# on, so two batches must not use one model at once. On one accelerator the global ``gpu``
# limit serialises batches anyway; this lock makes it so within a process whatever the limit.
_MODEL_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _classifier(uri: str):
    model, config, card = load_checkpoint(store.read_bytes(uri))
    return on_device(model).eval(), card


@lru_cache(maxsize=4)
def _generator(uri: str):
    model, config, _ = load_dit(store.read_bytes(uri))
    return on_device(model).eval(), build_scheduler(config), config


@lru_cache(maxsize=4)
def _generator_config(uri: str):
    """The generator's config alone: the flow's process checks it without loading the model on its device."""
    return load_dit_config(store.read_bytes(uri))


def check_ood(settings: AugmentSettings, generator: dict) -> None:
    """Refuse, before any work, a generator judging its own samples: a label-conditioned DiT
    reconstructs its own artefacts better than real films (blocky nih1000 samples
    scored below real ones), so its rows need the feature filter."""
    if settings.ood_filter and settings.ood_method == "reconstruction" and \
            _generator_config(generator["uri"]).conditioning == "labels":
        raise ValueError(f"augment.ood_method 'reconstruction' would have the label-conditioned generator "
                         f"{generator['id'][:16]} judge its own samples; use ood_method: features")


@lru_cache(maxsize=4)
def _ood(dataset_uri: str, method: str, model_uri: str, false_rejection: float) -> FeatureScorer | OODScorer:
    """The OOD scorer, calibrated on the dataset's val images (at most 200): real images of the
    kind the generated ones must pass for. ``model_uri``: the classifier ("features", fitted on
    at most 512 train images) or the normal DiT ("reconstruction")."""
    real = load_tensors(dataset_uri, splits=("val",), limit=200)
    if len(real) < 20:
        raise ValueError(f"{dataset_uri} has {len(real)} val images; the OOD filter needs at least 20 to "
                         f"calibrate (or set augment.ood_filter: false)")
    if method == "features":
        train = load_tensors(dataset_uri, splits=("train",), limit=512)
        return FeatureScorer(_classifier(model_uri)[0], train.images, real.images, false_rejection)
    dit, scheduler, _ = _generator(model_uri)
    return OODScorer(dit, scheduler, real.images, OODConfig(false_rejection=false_rejection))


def ood_scorer(dataset_uri: str, settings: AugmentSettings, classifier: dict, generator: dict
               ) -> FeatureScorer | OODScorer:
    """The filter ``settings`` choose, with the model it needs."""
    model = classifier if settings.ood_method == "features" else generator
    return _ood(dataset_uri, settings.ood_method, model["uri"], settings.ood_false_rejection)


@lru_cache(maxsize=4)
def _quality(dataset_uri: str) -> QualityScorer:
    """Scorer over the dataset's real normal training images (at most 512)."""
    normals = load_tensors(dataset_uri, splits=("train",), normal_only=True, limit=512)
    return QualityScorer(normals.images)


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
    with _MODEL_LOCK:
        model_started = time.perf_counter()
        masks, generated, scores, ood, probs_before, probs_after = _generate(
            dataset_uri, images, kept, conditional, findings, batch, classifier, generator, settings, progress)
        model_seconds = time.perf_counter() - model_started
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


def present(labels: np.ndarray, findings: list[str], among: list[str]) -> list[str]:
    """The findings of ``among`` that a label row (1.0 = present) holds, in vocabulary order."""
    return [findings[k] for k in np.nonzero(np.asarray(labels) == 1.0)[0] if findings[k] in among]


def verdict(remove: tuple[str, ...], tail: list[str], findings: list[str], before: np.ndarray, after: np.ndarray,
            thresholds: list[float], tail_margin: float, quality: float, quality_max_z: float,
            ood: tuple | None = None) -> str:
    """"ok" when the removal is verified, else the first reason it is not: the classifier still
    calls a removed class (probability >= its threshold), a tail class it called before falls
    below min(threshold, before - margin), or the image is out of distribution (its nearest
    real image is too far, or its OOD score, ``ood`` = (score, threshold, what), is above the
    threshold calibrated on held-out real images)."""
    for name in remove:
        k = findings.index(name)
        if after[k] >= thresholds[k]:
            return f"removal_unverified: {name} p={after[k]:.2f} >= {thresholds[k]:.2f}"
    for name in tail:
        k = findings.index(name)
        if before[k] >= thresholds[k] and after[k] < min(thresholds[k], before[k] - tail_margin):
            return f"tail_lost: {name} p={before[k]:.2f} -> {after[k]:.2f}"
    if quality > quality_max_z:
        return f"out_of_distribution: z={quality:.1f} > {quality_max_z:g}"
    if ood is not None and ood[0] > ood[1]:
        return f"out_of_distribution: {ood[2]}={ood[0]:.2f} > {ood[1]:.2f}"
    return "ok"


def _by_class(removed: list[tuple[str, ...]], verdicts: list[str]) -> dict[str, list[int]]:
    """Removed class -> [rows written, rows accepted]."""
    out: dict[str, list[int]] = {}
    for names, v in zip(removed, verdicts):
        for name in names:
            entry = out.setdefault(name, [0, 0])
            entry[0] += 1
            entry[1] += v == "ok"
    return out


def _reasons(verdicts: list[str]) -> dict[str, int]:
    """Rejected rows by kind (the text before the colon)."""
    out: dict[str, int] = {}
    for v in verdicts:
        if v != "ok":
            kind = v.split(":", 1)[0]
            out[kind] = out.get(kind, 0) + 1
    return out


def _generate(dataset_uri: str, images: torch.Tensor, kept: torch.Tensor, conditional: bool, findings: list[str],
              batch: list[Candidate], classifier: dict, generator: dict, settings: AugmentSettings,
              progress: Callable[[str], None] | None = None):
    """CAM masks that leave the ``kept`` findings alone -> inpainting (or, ``conditional``, a
    label-conditioned generator samples the kept finding sets from noise) -> quality score and
    classifier probabilities (the model work)."""
    net, card = _classifier(classifier["uri"])
    before = predict_probs(net, images)  # (B, K): the gate's input and the removal check's "before"
    dit, scheduler, _ = _generator(generator["uri"])
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
        removal = remove_lesions(net, images, remove, [c.seed for c in batch], dit_fill(dit, scheduler, settings.inpaint),
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
