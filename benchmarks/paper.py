"""The paper's experiment on one dataset: baseline, + inpainting, + PIL, + LKG, and the
random-region control, each over several seeds, scored on the test split.

Per seed: pretrain the classifier on the train split; generate three augmented sets with it
and the normal DiT (through the factory's own plan / candidates / run_batch code, no Prefect):

    variant       judge   mask placement
    all-cam       none    cam      every head finding of a candidate inpainted (no LKG)
    lkg-cam       rules   cam      entangled head findings kept (LKG, rules judge)
    lkg-random    rules   random   the same masks moved to random places (control)
    llm-cam       anthropic cam    LKG with the LLM judge (benchmarks/experiment.py: against the
                                   fake Messages server, to show the path, not an LLM effect)

then fine-tune the pretrained classifier once per setting:

    setting       generated set   schedule
    baseline      -               original train set only
    +inpainting   all-cam         every generated sample each epoch
    +PIL          all-cam         PIL's growing prefix
    +LKG          lkg-cam         PIL
    random-ctrl   lkg-random      PIL   (the full method with random regions)

and the long-tail baselines any gain must beat (issue 16; Holste et al.'s NIH-CXR-LT set):

    cb            -               baseline, class-balanced loss (Cui et al.)
    ldam-drw      -               baseline, LDAM-DRW (Cao et al.)
    cRT           -               baseline, then the last layer re-trained class-aware (Kang et al.)
    +LKG+ldam-drw lkg-cam         PIL with LDAM-DRW
    +LKG+cRT      lkg-cam         PIL, then cRT
    +inpainting+ldam-drw all-cam  every generated sample each epoch, with LDAM-DRW
    +inpainting+cb all-cam        the same with the class-balanced loss (inpainting on top of
                                  whichever long-tail baseline proves stronger)
    +LKG-llm      llm-cam         PIL (the LLM judge's decisions instead of the rules table's)

and what the pixels add (issue 33): the accepted rows of all-cam with their pixels unchanged,

    +copies       all-cam-copies  every accepted row's parent again, with its own labels (random
                                  oversampling of the same images: what extra tail exposure gives)
    +relabel      all-cam-relabel every accepted row's parent, labelled as the generated row (the
                                  removed head findings dropped): the label change alone
    +copies+cb, +relabel+cb       the same with the class-balanced loss

and the first lever, more rows from the same parents: all-cam-x4 / all-random-x4 make four
images per parent (augment.variants = 4, each with its own seed):

    +inpainting-x4+cb   all-cam-x4         every accepted row each epoch, class-balanced loss
    +copies-x4+cb       all-cam-x4-copies  its parents, once per accepted row (the same exposure)
    random-ctrl-x4+cb   all-random-x4      its masks moved to random places

and the paper's DfT-Caption baseline (its Table 3): the same LKG candidates, each image sampled
from noise for its kept finding set by a DiT conditioned on labels, trained on the train split:

    conditional   lkg-conditional PIL

Thresholds are tuned on val; test is only scored. Checkpoints, generated sets and each
fine-tune's result are reused on a rerun with the same settings (tasks.pretrain's recipes, done output
ids, ``finetuned_before``), so a run stopped part-way resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.shortcut import accepted_rows
from flows.settings import ClassifierSettings
from models.classifier import ClassifierConfig
from benchmarks.comparison import compare_settings
from models.metrics import tune_thresholds
from models.training import TrainConfig, predict_probs, seed_everything
from tasks import augment as work
from tasks.dataset import read_manifest
from tasks.finetune import FinetuneSettings, fit_setting, load_generated
from tasks.finetune_cache import code_digest
from tasks.knowledge import make_judge, plan
from tasks.pretrain import train_classifier
from tasks.tensors import TensorSet, load_tensors

# generated set -> (judge, mask placement, generator: the normal DiT inpaints; the label DiT samples)
VARIANTS = {"all-cam": ("none", "cam", "dit"), "lkg-cam": ("rules", "cam", "dit"),
            "lkg-random": ("rules", "random", "dit"), "lkg-conditional": ("rules", "-", "label_dit"),
            "llm-cam": ("anthropic", "cam", "dit"), "all-random": ("none", "random", "dit"),
            "all-cam-x4": ("none", "cam", "dit"), "all-random-x4": ("none", "random", "dit")}
# generated set -> augment settings of its own: four images per parent, each with its own seed (issue 33's lever)
VARIANT_AUGMENT = {"all-cam-x4": {"variants": 4}, "all-random-x4": {"variants": 4}}
# control set -> (the generated set whose accepted rows it follows, what it holds): each accepted row's
# parent image unchanged, with the parent's labels ("copies") or the generated row's ("relabel")
CONTROLS = {"all-cam-copies": ("all-cam", "copies"), "all-cam-relabel": ("all-cam", "relabel"),
            "all-cam-x4-copies": ("all-cam-x4", "copies")}
CRT_EPOCHS = 2  # cRT: after the fine-tune, the last layer alone on class-aware batches
# setting -> (generated set, schedule, fine-tune overrides: the long-tail baselines of issue 16)
SETTINGS = {"baseline": (None, "baseline", {}), "+inpainting": ("all-cam", "augmented", {}),
            "+PIL": ("all-cam", "pil", {}), "+LKG": ("lkg-cam", "pil", {}), "random-ctrl": ("lkg-random", "pil", {}),
            "cb": (None, "baseline", {"loss": "cb"}), "ldam-drw": (None, "baseline", {"loss": "ldam_drw"}),
            "cRT": (None, "baseline", {"crt_epochs": CRT_EPOCHS}),
            "+LKG+ldam-drw": ("lkg-cam", "pil", {"loss": "ldam_drw"}),
            "+LKG+cRT": ("lkg-cam", "pil", {"crt_epochs": CRT_EPOCHS}),
            "+inpainting+ldam-drw": ("all-cam", "augmented", {"loss": "ldam_drw"}),
            "+inpainting+cb": ("all-cam", "augmented", {"loss": "cb"}),
            # its control: the same recipe with each mask moved to a random place (the 128 px phantom's one gain)
            "random-ctrl+cb": ("all-random", "augmented", {"loss": "cb"}),
            "+LKG-llm": ("llm-cam", "pil", {}),
            "+copies": ("all-cam-copies", "augmented", {}), "+relabel": ("all-cam-relabel", "augmented", {}),
            "+copies+cb": ("all-cam-copies", "augmented", {"loss": "cb"}),
            "+relabel+cb": ("all-cam-relabel", "augmented", {"loss": "cb"}),
            "+inpainting-x4+cb": ("all-cam-x4", "augmented", {"loss": "cb"}),
            "+copies-x4+cb": ("all-cam-x4-copies", "augmented", {"loss": "cb"}),
            "random-ctrl-x4+cb": ("all-random-x4", "augmented", {"loss": "cb"}),
            "conditional": ("lkg-conditional", "pil", {})}
LONGTAIL = ("cb", "ldam-drw", "cRT")  # the long-tail baselines (no generated images)
# a generated-data setting -> the controls it must beat on the same terms: the same parents again
# (+copies), their labels changed without pixels (+relabel), the same recipe at random places
CONTROLLED = {"+inpainting": ("+copies", "+relabel"),
              "+inpainting+cb": ("+copies+cb", "+relabel+cb", "random-ctrl+cb"),
              "+inpainting-x4+cb": ("+copies-x4+cb", "random-ctrl-x4+cb", "+inpainting+cb")}


@dataclass(frozen=True)
class ExperimentConfig:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    backbone: str = ClassifierSettings.backbone  # the product's classifier
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=ClassifierSettings.epochs,
                                                                      batch_size=ClassifierSettings.batch_size))
    # the paper's baseline is plain BCE; the long-tail rows set their loss (SETTINGS)
    finetune: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(loss="bce"))
    augment: work.AugmentSettings = field(default_factory=lambda: work.AugmentSettings(batch_size=64))  # the product's
    bootstrap: int = 1000
    settings: tuple[str, ...] = tuple(SETTINGS)

    def to_json(self) -> dict:
        return asdict(self)


def generated_sets(settings) -> set[str]:
    """The generated sets (keys of ``VARIANTS``) these settings read, a control's own set included."""
    return {CONTROLS.get(SETTINGS[s][0], (SETTINGS[s][0],))[0] for s in settings if SETTINGS[s][0]}


def judges_needed(settings) -> set[str]:
    """The knowledge judges these settings' generated sets are planned with."""
    return {VARIANTS[v][0] for v in generated_sets(settings)}


def generators_needed(settings) -> set[str]:
    """The generators (keys of ``VARIANTS``' third field) these settings' generated sets need."""
    return {VARIANTS[v][2] for v in generated_sets(settings)}


def parents_of(generated_uri: str, original, holds: str):
    """A control set (``CONTROLS``): for each accepted row of ``generated_uri``, its parent's train
    image from ``original`` with the parent's labels ("copies") or the generated row's ("relabel").
    Its ids name the control and the generated row, so the fine-tune key tells copies from relabel.
    None where nothing was accepted."""
    rows = accepted_rows(generated_uri)
    if rows is None:
        return None
    by_id = {sid: i for i, sid in enumerate(original.sample_ids)}
    pick = torch.tensor([by_id[p] for p in rows.table.column("parent_id").to_pylist()], dtype=torch.long)
    labels = original.labels[pick] if holds == "copies" else rows.labels
    return TensorSet(original.images[pick], labels.clone(), [f"{holds}:{sid}" for sid in rows.sample_ids],
                     original.findings, rows.table.select(["sample_id"]))


def finetune_key(classifier_id: str, schedule: str, options: FinetuneSettings, generated) -> str:
    """What one fine-tune's result depends on: the pretrained classifier (hence dataset and seed),
    the schedule, the fine-tune settings, the generated samples in their order, and the code."""
    ids = "\n".join(generated.sample_ids) if generated is not None else ""
    blob = json.dumps({"classifier": classifier_id, "schedule": schedule, "options": asdict(options),
                       "generated": hashlib.sha256(ids.encode()).hexdigest(), "code": code_digest()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def finetuned_before(folder: Path, key: str) -> dict | None:
    path = folder / f"{key}.json"
    return {**json.loads(path.read_text()), "reused": True} if path.exists() else None


def fine_tune(setting: str, original, generated, classifier: dict, val, test, options: FinetuneSettings,
              folder: Path) -> dict:
    """One setting's fine-tune, scored: val-tuned thresholds and test probabilities (full
    precision), saved under ``folder`` and reused by a rerun with the same inputs."""
    schedule = SETTINGS[setting][1]
    key = finetune_key(classifier["id"], schedule, options, generated)
    found = finetuned_before(folder, key)
    if found:
        return found
    started = time.perf_counter()
    seed_everything(options.seed)
    model, per_epoch, _ = fit_setting(schedule, original, generated, classifier["uri"], val, options)
    thresholds = tune_thresholds(predict_probs(model, val.images), val.labels.numpy())
    probs = predict_probs(model, test.images)
    seconds = time.perf_counter() - started
    entry = {"generated_per_epoch": per_epoch, "thresholds": thresholds.tolist(), "seconds": round(seconds, 1),
             "train_images_per_s": round(sum(len(original) + g for g in per_epoch) / seconds, 1),
             "test_probs": probs.astype(np.float64).tolist()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{key}.json").write_text(json.dumps(entry))
    return entry


def generate(dataset: str, out: str, classifier: dict, generator: dict, variant: str,
             config: ExperimentConfig, cache: str) -> dict:
    """One augmented set through the factory's code path; skips what a previous run wrote."""
    judge_name, placement, _ = VARIANTS[variant]
    options = replace(config.augment, **VARIANT_AUGMENT.get(variant, {}))
    options = options if placement == "-" else replace(options, mask=replace(options.mask, placement=placement))
    manifest = read_manifest(dataset)
    report, decisions = plan(dataset, cache, make_judge(judge_name))
    prepared = work.prepare(dataset, out, manifest, decisions, classifier, generator["id"], options)
    started, run_id = time.perf_counter(), f"experiment-{variant}"
    results = [work.run_batch(dataset, out, batch, classifier, generator, options, run_id) for _, batch in prepared.todo]
    work.finish_output(out, dataset, manifest, classifier, generator, prepared.recipe, judge_name, options, run_id,
                       name=f"experiment-{variant}")
    generated = load_tensors(out, columns=("accepted",))
    accepted = int(np.asarray(generated.table.column("accepted").to_pylist(), dtype=bool).sum()) if len(generated) else 0
    return {"variant": variant, "judge": judge_name, "placement": placement, "candidates": len(prepared.candidates),
            "images_to_generate": report.images_to_generate, "generated": len(generated), "accepted": accepted,
            "new_this_run": work.totals(results), "seconds": round(time.perf_counter() - started, 1)}


def test_set(dataset: str, test_dataset: str | None = None):
    """The images every setting is scored on: ``dataset``'s test split, or every row of
    ``test_dataset`` (which must have the same labels)."""
    if test_dataset is None:
        return load_tensors(dataset, splits=("test",))
    if read_manifest(test_dataset)["labels"] != read_manifest(dataset)["labels"]:
        raise ValueError(f"{test_dataset} does not have the labels of {dataset}")
    return load_tensors(test_dataset)


def run(dataset: str, generators: dict[str, dict], work_dir: Path, models_uri: str, config: ExperimentConfig,
        log=print, test_dataset: str | None = None) -> dict:
    """Every seed and setting on ``dataset``; returns the results (JSON-ready) and the test
    probabilities, for the tables. ``generators``: {"dit": the normal DiT, "label_dit": the
    label-conditioned one (needed by the "conditional" setting only)}. ``test_dataset``: score
    on all of its rows instead of ``dataset``'s test split (a larger held-out set, same labels)."""
    needed = generators_needed(config.settings) - set(generators)
    if needed:
        raise ValueError(f"settings {list(config.settings)} need generators {sorted(needed)}")
    manifest = read_manifest(dataset)
    findings, head, tail = manifest["labels"], manifest["head_tail"]["head"], manifest["head_tail"]["tail"]
    original = load_tensors(dataset, splits=("train",))
    val = load_tensors(dataset, splits=("val",))
    test = test_set(dataset, test_dataset)
    runs: dict[str, list] = {s: [] for s in config.settings}
    per_seed: list[dict] = []
    for seed in config.seeds:
        train = replace(config.pretrain, seed=seed)
        started = time.perf_counter()
        classifier = train_classifier(dataset, models_uri, ClassifierConfig(config.backbone, len(findings),
                                                                            manifest["image_size"]), train)
        record = {"seed": seed, "classifier": {"id": classifier["id"], "uri": classifier["uri"],
                                               "reused": bool(classifier.get("reused")),
                                               "seconds": round(time.perf_counter() - started, 1)},
                  "generated": {}, "finetune": {}}
        log(f"seed {seed}: classifier {classifier['id'][:12]} ({record['classifier']['seconds']} s)")
        sets = {}
        for variant in sorted(generated_sets(config.settings)):
            out = str(work_dir / f"seed{seed}" / variant)
            record["generated"][variant] = generate(dataset, out, classifier, generators[VARIANTS[variant][2]],
                                                    variant, config, str(work_dir / "decisions.duckdb"))
            sets[variant] = load_generated(out, config.finetune.accepted_only)
            log(f"seed {seed}: {variant} {record['generated'][variant]}")
        for control in sorted({SETTINGS[s][0] for s in config.settings} & set(CONTROLS)):
            source, holds = CONTROLS[control]
            sets[control] = parents_of(str(work_dir / f"seed{seed}" / source), original, holds)
        for setting in config.settings:
            variant, _, overrides = SETTINGS[setting]
            entry = fine_tune(setting, original, sets.get(variant), classifier, val, test,
                              replace(config.finetune, seed=seed, **overrides), work_dir / f"seed{seed}" / "finetune")
            runs[setting].append((np.asarray(entry["test_probs"]), np.asarray(entry["thresholds"])))
            record["finetune"][setting] = entry  # full precision: rounding ties scores near 0 and 1 (AUROC, AP)
            log(f"seed {seed}: {setting} " + ("reused" if entry.get("reused") else
                                              f"fine-tuned in {entry['seconds']} s"))
        per_seed.append(record)
    comparison = compare_settings(runs, test.labels.numpy(), findings, head, tail, baseline="baseline",
                                  bootstrap=config.bootstrap, seed=0, progress=log)
    return {"dataset": dataset, "test_dataset": test_dataset, "findings": findings, "head": head, "tail": tail,
            "split": {"train": len(original), "val": len(val), "test": len(test)},
            "test_sample_ids": test.sample_ids, "generator": generators.get("dit"),
            "label_generator": generators.get("label_dit"), "config": config.to_json(),
            "per_seed": per_seed, "comparison": comparison}
