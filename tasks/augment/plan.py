"""What a run will make: candidates with deterministic output ids (sha256 of parent, decision and
recipe), their batches, what is already done, and the output's manifest and totals."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow.compute as pc

from tasks import store
from tasks.augment.models import _classifier
from tasks.augment.settings import AugmentSettings
from tasks.classifier_gate import class_report
from tasks.dataset import (SAMPLES, check_writable, existing_quarantine_ids, existing_rows, finish_manifest,
                           label_matrix, read_manifest)
from tasks.knowledge.decision import Decision
from tasks.knowledge.planner import candidate_codes, question_of
from tasks.tensors import rows_by_shard


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
