"""The paper's experiment on real X-rays and on the phantom, and the factory's throughput: one command.

    python -m benchmarks.experiment                       # everything (hours on 2 cores)
    python -m benchmarks.experiment --part nih1000 --seeds 0 1 2
    python -m benchmarks.experiment --part phantom
    python -m benchmarks.experiment --part phantom128 --seeds 0 --settings ldam-drw +inpainting   # at 128 px
    python -m benchmarks.experiment --part throughput
    python -m benchmarks.experiment --quick --out /tmp/x  # a small smoke run of the whole path
    python -m benchmarks.experiment --rebuild             # tables and plots again from saved results
    python -m benchmarks.experiment --part nih1000 --settings conditional --add   # new rows into a saved run
    python -m benchmarks.experiment --part nih1000 --seeds 3 4 --add   # new seeds into a saved run
    python -m benchmarks.experiment --part phantom128 --prepare   # data and generators only, then seeds apart:
    python -m benchmarks.experiment --part phantom128 --seeds 0 --bootstrap 0 --out runs/seed0   # (one per process)
    python -m benchmarks.experiment --part phantom128 --join runs/seed*/ --out benchmarks/results

Parts:
- ``nih1000``: ../shared/data/nih1000 with its fixed split, the normal DiT the product ships for
  64 px (weights/normal_dit_64.safetensors: trained on the real adult normals of
  ../shared/data/normals; ``--dit-steps-real N`` trains one here instead, about 40 min for 3,000
  steps), settings and seeds as in benchmarks/paper.py;
- ``phantom``: the same on a phantom of ``--phantom-n`` images at 64 px, plus what ground truth gives
  (benchmarks/phantom_truth.py); ``phantom128`` the same at 128 px (the DiT ``make fidelity`` trains
  at 128 px is reused: patch 8, 4,000 steps) and ``phantom256`` at 256 px (patch 16), each scored
  on a second phantom stream of 9,000 other patients (GPU work: benchmarks/gpu_session.sh);
- ``throughput``: benchmarks/throughput.py.

``--settings`` runs some settings only (the baseline always), and trains only the generators they
need. With ``--add`` their rows join the part's saved results: the baseline is fine-tuned again
and must reproduce the saved one (test probabilities within ``experiment_results.ADD_TOLERANCE``,
else nothing is written), then the comparison is recomputed over every row. ``--add`` without ``--settings`` joins
new ``--seeds`` (every saved setting) to the saved run instead: a part too long for one sitting is
made a few seeds at a time (benchmarks/experiment_results.py says what must match). ``--prepare``
ingests the part's data and trains its generators, then stops; seeds run from that
TAILFORGE_HOME in separate processes (benchmarks/gpu_session.sh runs all five at once on one
GPU) and ``--join`` makes them one run with one shared bootstrap.

Writes benchmarks/results/experiment_<part>.json (settings, seeds, split, data, per-seed test
probabilities and thresholds, the comparison), .md (Table 2 layout and means with intervals)
and .png (gains with paired 95% intervals), each with the commit and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from benchmarks import paper, phantom_truth, shortcut, tables
from benchmarks.common import RESULTS, SHARED_DATA, commit, described, ingest_nih1000, machine
from benchmarks.experiment_results import add_rows, add_seeds, check_same_experiment, load_saved, write_json
from benchmarks.train_normal_dit import dataset as normals_dataset
from flows.settings import tailforge_home
from models.checkpoint import checkpoint_id
from models.dit import DiTConfig, DiTTrainConfig
from benchmarks.comparison import compare_settings
from models.training import TrainConfig
from tasks.finetune import FinetuneSettings
from tasks import store
from tasks.dataset import existing_rows, read_manifest
from tasks.ingest import ingest_phantom, phantom_parameters
from tasks.knowledge import NoGuidanceJudge, RulesJudge, plan
from tasks.phantom import Regime
from tasks.pretrain import shipped_dit, train_label_dit, train_normal_dit

PHANTOM_SEED = 21
PHANTOM_SIZES = {"phantom": 64, "phantom128": 128, "phantom256": 256}  # part -> image side
# part's side -> images of the separate test stream (0: the dataset's own test split). Pneumonia, the
# rarest tail class but Hernia, is 1.3% of phantom films: 9,000 of seed 22 hold 126 (Fibrosis 149,
# Edema 152, ...; Hernia, 0.23%, holds 22 and would need ~43,500 for 100)
PHANTOM_TEST_N = {64: 0, 128: 9000, 256: 9000}


def generator(dataset: str, models_uri: str, config: DiTConfig, train: DiTTrainConfig) -> dict:
    """The normal DiT trained on ``dataset``'s normals with these settings: reused, else trained."""
    print(f"the normal DiT on {dataset} ({train.steps} steps; reused when trained before)", flush=True)
    handle = train_normal_dit([dataset], models_uri, config, train)
    return {k: handle[k] for k in ("kind", "id", "uri")} | {"reused": False, "history": handle["history"]}


def label_generator(dataset: str, models_uri: str, args) -> dict:
    """The DfT-Caption DiT (conditioning "labels") on ``dataset``'s labelled train split: reused, else trained."""
    manifest = read_manifest(dataset)
    # patch 4 up to 128 px (1,024 tokens), larger patches above so the token count stays there
    config = DiTConfig(image_size=manifest["image_size"], patch_size=max(4, manifest["image_size"] // 32), depth=4,
                       num_heads=4, head_dim=32,
                       conditioning="labels", num_labels=len(manifest["labels"]), prediction="sample")
    print(f"the label-conditioned DiT on {dataset} ({args.dit_steps_label} steps; reused if made before)", flush=True)
    handle = train_label_dit(dataset, models_uri, config,
                             DiTTrainConfig(steps=args.dit_steps_label, batch_size=32, warmup_steps=100))
    return {k: handle[k] for k in ("kind", "id", "uri")} | {"reused": bool(handle.get("reused"))}


def nih1000(args, work: Path, models_uri: str, needs_dit: bool = True
            ) -> tuple[str, dict | None, paper.ExperimentConfig, dict]:
    root = SHARED_DATA / "nih1000"
    if not (root / "Data_Entry_2017_v2020.csv").exists():
        raise SystemExit(f"{root} is missing: the nih1000 part needs ../shared/data/nih1000")
    dataset = ingest_nih1000(str(work / "nih1000"))
    shipped = shipped_dit(64) if args.dit_steps_real is None else None
    if not needs_dit:
        dit, normals = None, ""
    elif shipped:  # what `tailforge run` uses on 64 px real data (flows.pretrain.shipped_generator)
        dit = {"kind": "dit", "id": checkpoint_id(Path(shipped).read_bytes()), "uri": shipped, "reused": True}
        normals = ("the shipped generator weights/normal_dit_64.safetensors (its card: the adult normals of "
                   "../shared/data/normals)")
    else:
        dit = generator(normals_dataset("real", 64, 0), models_uri,
                        DiTConfig(image_size=64, patch_size=4, depth=6, num_heads=4, head_dim=32, prediction="sample"),
                        DiTTrainConfig(steps=args.dit_steps_real or 3000, batch_size=32, lr=3e-4, warmup_steps=200,
                                       seed=0))
        normals = "../shared/data/normals (adult rows) for the DiT"
    config = paper.ExperimentConfig(seeds=tuple(args.seeds),
                                    pretrain=TrainConfig(epochs=args.pretrain_epochs_nih, batch_size=32, augment=True),
                                    finetune=FinetuneSettings(epochs=args.finetune_epochs, beta=0.5, loss="bce"),
                                    bootstrap=args.bootstrap)
    data = {"source": "../shared/data/nih1000 (NIH ChestX-ray14 images, NIH labels, split.csv)",
            "normals": normals}
    return dataset, dit, config, data


def phantom(args, work: Path, models_uri: str, needs_dit: bool = True, size: int = 64
            ) -> tuple[str, dict | None, paper.ExperimentConfig, dict]:
    regime = args.regime
    normals = str(work.parent / f"phantom{size}-{args.phantom_n}-s{PHANTOM_SEED}")  # the ones fidelity.py uses
    ingest_once(normals, args.phantom_n, size, PHANTOM_SEED)
    dataset = normals + regime.suffix()  # a regime changes abnormal films only: the DiT of the same normals serves
    if dataset != normals:
        ingest_once(dataset, args.phantom_n, size, PHANTOM_SEED, regime)
    # the normal DiT benchmarks/fidelity.py measured at this size (its 4,000-step one is reused when there)
    # patch 4 at 64 px, else 256 tokens at every side (patch 8 at 128 px, 16 at 256 px)
    dit = generator(normals, models_uri, DiTConfig(image_size=size, patch_size=4 if size <= 64 else size // 16, depth=6,
                                                   num_heads=4, head_dim=32, prediction="sample"),
                    DiTTrainConfig(steps=args.dit_steps_phantom, batch_size=32, warmup_steps=100)
                    ) if needs_dit else None
    config = paper.ExperimentConfig(seeds=tuple(args.seeds),
                                    pretrain=TrainConfig(epochs=args.pretrain_epochs_phantom, batch_size=32),
                                    finetune=FinetuneSettings(epochs=args.finetune_epochs, beta=0.5, loss="bce"),
                                    bootstrap=args.bootstrap)
    data = {"source": f"built-in phantom, {args.phantom_n} images at {size} px, seed {PHANTOM_SEED}",
            "normals": "the phantom's own normal train images, for the DiT"}
    if not regime.is_default:
        data["regime"] = regime_facts(dataset, regime)
        data["source"] += f", regime {regime.query().lstrip('?')} (tasks/phantom/regime.py)"
        data["normals"] += f" (the same images as the default regime's: {Path(normals).name})"
    test_n = args.phantom_test_n if args.phantom_test_n is not None else PHANTOM_TEST_N[size]
    if test_n:  # a held-out set large enough for the rare classes: other patients (seed + 1), all of them test
        data["test_dataset"] = str(work.parent / f"phantom{size}-{test_n}-s{PHANTOM_SEED + 1}-test{regime.suffix()}")
        ingest_once(data["test_dataset"], test_n, size, PHANTOM_SEED + 1, regime)
        data["test_source"] = (f"every image of a second phantom stream, {test_n} images at {size} px, seed "
                               f"{PHANTOM_SEED + 1} (other patients), instead of the test split")
    return dataset, dit, config, data


def phantom_ingested(out_uri: str, n: int, size: int, seed: int, regime: Regime = Regime()) -> bool:
    """Whether ``out_uri``'s run records hold a completed phantom ingest of these images."""
    wanted = phantom_parameters(n, size, seed, regime=regime)
    return any(r.get("flow") == "ingest" and r.get("status") == "completed" and r.get("parameters") == wanted
               for r in map(store.read_json, store.glob(store.join(out_uri, "runs"), "*.json")))


def ingest_once(dataset: str, n: int, size: int, seed: int, regime: Regime = Regime()) -> None:
    """``ingest_phantom`` on every core, unless these images were ingested there before (the
    128 px part's 12,000 images take minutes to render)."""
    if not phantom_ingested(dataset, n, size, seed, regime=regime):
        ingest_phantom(dataset, n, size=size, seed=seed, workers=os.cpu_count() or 1, regime=regime)


def regime_facts(dataset: str, regime: Regime) -> dict:
    """The regime's settings and what they make of the train split: the share of its
    tail-positive films that show a head finding too (the axis issue 33's map asks about)."""
    manifest = read_manifest(dataset)
    table = existing_rows(dataset, ["labels", "split"])
    labels = np.array(table.column("labels").to_pylist(), dtype=np.float32)[
        np.array(table.column("split").to_pylist()) == "train"]
    tail = np.isin(manifest["labels"], manifest["head_tail"]["tail"])
    with_tail = (labels[:, tail] == 1).any(axis=1)
    return asdict(regime) | {"train_tail_films": int(with_tail.sum()), "train_tail_films_with_head": round(
        float((labels[with_tail][:, ~tail] == 1).any(axis=1).mean()), 3)}


@contextlib.contextmanager
def llm_judge(settings, notes: list[str]):
    """For settings planned with the anthropic judge: the fake Messages server of
    benchmarks/fake_anthropic.py (mode "ok": it keeps the first head finding offered) as the API, for
    this run only. It shows the path (real Messages JSON, the SDK, the decision cache), not what a
    real LLM would decide; no real key or endpoint is used."""
    if "anthropic" not in paper.judges_needed(settings):
        yield
        return
    from benchmarks.fake_anthropic import FakeAnthropic

    saved = {k: os.environ.get(k) for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")}
    with FakeAnthropic("ok") as fake:
        os.environ.update({"ANTHROPIC_API_KEY": "experiment-fake", "ANTHROPIC_BASE_URL": fake.url})
        try:
            yield
        finally:
            for key, value in saved.items():
                os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
            asked = len(fake.message_requests)
            notes.append("The anthropic judge (setting `+LKG-llm`) asked the fake Messages server of "
                         "benchmarks/fake_anthropic.py (" + (f"{asked} requests" if asked else
                                                         "no request this run: its decisions were cached by an "
                                                         "earlier run of this part") +
                         "; it keeps the first head finding offered): the row shows the path, not an LLM's effect.")


def runs_of(payload: dict) -> dict[str, list]:
    """{setting: [(test probs, thresholds) per seed]} of a run whose entries hold ``test_probs``."""
    return {s: [(np.asarray(r["finetune"][s]["test_probs"]), np.asarray(r["finetune"][s]["thresholds"]))
                for r in payload["per_seed"]] for s in payload["config"]["settings"]}


def versus_best_longtail(payload: dict, runs: dict, labels: np.ndarray, bootstrap: int) -> dict | None:
    """Every setting with generated images against the strongest long-tail baseline (highest
    seed-mean tail F1 at val-tuned thresholds on test, which favours the baseline), with the same
    shared bootstrap, so "beats the best long-tail baseline" gets a paired interval."""
    tail_f1 = {s: payload["comparison"]["settings"][s]["means"]["tail"]["f1_tuned"]["value"]
               for s in paper.LONGTAIL if s in runs}
    if not tail_f1:
        return None
    best = max(tail_f1, key=tail_f1.get)
    rows = [best, *(s for s in runs if paper.SETTINGS[s][0])]
    if len(rows) == 1:
        return None
    comparison = compare_settings({s: runs[s] for s in rows}, labels, payload["findings"], payload["head"],
                                  payload["tail"], baseline=best, bootstrap=bootstrap, seed=0,
                                  progress=lambda m: print(f"[against {best}] {m}", flush=True))
    for row in comparison["settings"].values():
        row.pop("classes")  # the group means answer the question; per class is in the main comparison
    return {"baseline": best, "chosen_by": "highest seed-mean tail F1 (val-tuned thresholds) on test among "
            + ", ".join(tail_f1), "tail_f1": tail_f1, "comparison": comparison}


def versus_controls(payload: dict, runs: dict, labels: np.ndarray, bootstrap: int) -> dict:
    """Each generated-data setting against each of its controls in the run (``paper.CONTROLLED``),
    paired as the main comparison is: {setting: {control: macro / head / tail means with gains}}."""
    out: dict = {}
    for method, controls in paper.CONTROLLED.items():
        for control in (c for c in controls if method in runs and c in runs):
            comparison = compare_settings({control: runs[control], method: runs[method]}, labels, payload["findings"],
                                          payload["head"], payload["tail"], baseline=control, bootstrap=bootstrap,
                                          seed=0)
            out.setdefault(method, {})[control] = comparison["settings"][method]["means"]
    return out


def ground_truth(result: dict, dataset: str, work: Path) -> dict:
    """Phantom only: CAM localisation per seed, lesion outcomes per generated set, decisions' error."""
    out: dict = {"cam_localisation": {}, "lesions": {}, "shortcut": {}, "shortcut_same_labels": {}, "entanglement": {}}
    for record in result["per_seed"]:
        seed = record["seed"]
        out["cam_localisation"][seed] = phantom_truth.cam_localisation(record["classifier"]["uri"], dataset)["_all"]
        inpainted = [v for v in record["generated"] if paper.VARIANTS[v][2] == "dit"]  # conditional rows: no parent
        out["lesions"][seed] = {variant: phantom_truth.lesion_outcomes(dataset, str(work / f"seed{seed}" / variant),
                                                                       result["tail"]) for variant in inpainted}
        out["shortcut"][seed] = {variant: shortcut.probe(record["classifier"]["uri"], dataset,
                                                         str(work / f"seed{seed}" / variant)) for variant in inpainted}
        out["shortcut_same_labels"][seed] = {variant: shortcut.probe_same_labels(
            record["classifier"]["uri"], dataset, str(work / f"seed{seed}" / variant)) for variant in inpainted}
    for name, judge in (("rules", RulesJudge()), ("none", NoGuidanceJudge())):
        _, decisions = plan(dataset, str(work / "decisions.duckdb"), judge)
        out["entanglement"][name] = phantom_truth.entanglement_error(dataset, decisions, result["head"], result["tail"])
    return out


def markdown(part: str, result: dict, data: dict, seconds: float) -> str:
    comparison, tail = result["comparison"], result["tail"]
    generators = ([f"{data['normals']} (`{result['generator']['id'][:16]}`)"] if result.get("generator") else []) + (
        [f"the label-conditioned DiT (DfT-Caption) on the labelled train split (`{result['label_generator']['id'][:16]}`)"]
        if result.get("label_generator") else [])
    lines = [f"# The paper's experiment: {part}", "",
             f"Commit `{result['commit']}`, {described(result['machine'])}, "
             f"{seconds / 60:.0f} min. Command: `{result['command']}`."
             + "".join(f" {note}" for note in result.get("notes", []))
             + (f" Tables rebuilt from the saved probabilities"
                f"{' (' + result['probs_precision'] + ')' if result.get('probs_precision') else ''} at commit "
                f"`{result['summarised_at_commit']}` "
                f"(`--rebuild`, `--add` or `--join`)." if result.get("summarised_at_commit") else ""),
             *[added_line(a) for a in result.get("added", [])], "",
             f"- Data: {data['source']}; split train {result['split']['train']} / val {result['split']['val']} / "
             f"test {result['split']['test']}" + (f" ({data['test_source']})" if data.get("test_source") else "")
             + "." + (f" Generator: {'; '.join(generators)}." if generators else ""),
             f"- Head: {', '.join(result['head'])}. Tail (marked *): {', '.join(tail)}.",
             f"- Seeds {list(result['config']['seeds'])}: each seed pretrains its own classifier, generates its own "
             "sets and fine-tunes every setting. Values are seed means on the test split; thresholds were tuned on "
             "val. Brackets: gain over the baseline.",
             f"- Intervals: {comparison['bootstrap']['resamples']} bootstrap resamples of the test images, shared by "
             "every setting and seed, so gains get paired intervals. A group mean's interval uses the resamples in "
             "which every class of the group has test positives and negatives "
             f"({', '.join(f'{g} {n}' for g, n in comparison['bootstrap'].get('group_resamples_used', {}).items())}). "
             "The intervals cover test-set sampling only; `seed SD` is the spread of a setting over seeds and "
             "`gain seed SD` the spread of its per-seed gain (seed i against baseline seed i).",
             f"- Left out of the means (no positives or no negatives in test): {comparison['excluded'] or 'none'}.",
             "", "## Generated sets (per seed)", "",
             "| seed | set | judge | masks | candidates | generated | accepted | quarantined |", "|---|---|---|---|---|---|---|---|"]
    for record in result["per_seed"]:
        for variant, g in record["generated"].items():
            lines.append(f"| {record['seed']} | {variant} | {g['judge']} | {g['placement']} | {g['candidates']} | "
                         f"{g['generated']} | {g['accepted']} | {g['candidates'] - g['generated']} |")
    for metric, title in tables.METRIC_NAMES.items():
        lines += ["", f"## {title}", "", tables.table2(comparison, tail, metric), "",
                  tables.means_table(comparison, metric)]
    versus = result.get("versus_best_longtail")
    if versus:
        lines += ["", f"## Against the best long-tail baseline: {versus['baseline']}", "",
                  f"Chosen by {versus['chosen_by']} ({', '.join(f'{s} {v:.3f}' for s, v in versus['tail_f1'].items())}). "
                  f"`gain` below is over {versus['baseline']}, with the same paired bootstrap."]
        for metric in ("f1_tuned", "auroc", "ap"):
            lines += ["", f"### {tables.METRIC_NAMES[metric]}", "", tables.means_table(versus["comparison"], metric)]
    lines += controls_lines(result.get("versus_controls"))
    truth = result.get("ground_truth")
    if truth:
        lines += ["", "## Ground truth (phantom)", "", "Grad-CAM localisation of head lesions on test images "
                  "(the classifier's Grad-CAM, not the infill maps the product masks with by default: "
                  "benchmarks/results/fidelity_64.md measures those; pointing game: the map's maximum inside "
                  "the lesion, 2 px tolerance):", "",
                  "| seed | pairs | pointing game | IoU |", "|---|---|---|---|"]
        for seed, c in truth["cam_localisation"].items():
            lines.append(f"| {seed} | {c['n']} | {c['pointing_game']:.3f} | {c['iou_mean']:.3f} |")
        lines += ["", "Lesions in the generated images (removed: the signal over the lesion fell to at most half; "
                  "retained: a tail lesion kept at least half its signal):", "",
                  "| seed | set | images | head lesions | removed | mask covers head lesion | tail lesions | "
                  "tail retained | tail lesion inside mask |", "|---|---|---|---|---|---|---|---|---|"]
        for seed, sets in truth["lesions"].items():
            for variant, o in sets.items():
                lines.append(f"| {seed} | {variant} | {o['images']} | {o.get('head_lesions', 0)} | "
                             f"{o.get('head_removal_rate')} | {o.get('head_lesion_mask_coverage_mean')} | "
                             f"{o.get('tail_lesions', 0)} | {o.get('tail_retention_rate')} | "
                             f"{o.get('tail_lesion_share_inside_mask_mean')} |")
        lines += audit_lines(truth)
        lines += ["", "Entanglement decisions against true overlap (train candidates, one row per present head "
                  "finding; truth: its lesion, grown 2 px, touches a present tail lesion; predicted: kept):", "",
                  "| judge | head findings | true overlaps | kept | precision | recall | error rate |",
                  "|---|---|---|---|---|---|---|"]
        for judge, e in truth["entanglement"].items():
            lines.append(f"| {judge} | {e['pairs']} | {e['true_overlaps']} | {e['kept']} | {e['precision']} | "
                         f"{e['recall']} | {e['error_rate']} |")
    return "\n".join(lines) + "\n"


def controls_lines(versus: dict | None) -> list[str]:
    """The table of each generated-data setting against its controls (``versus_controls``)."""
    if not versus:
        return []
    lines = ["", "## Against the controls", "", "Each generated-data setting against the same parents added again "
             "with their own labels (`+copies`), with the generated labels and unchanged pixels (`+relabel`), and "
             "the same recipe at random places (`random-ctrl`): gains of the seed means with paired 95% intervals "
             "(the same bootstrap of the test images).", "",
             "| setting | against | tail F1 | tail AUROC | head F1 |", "|---|---|---|---|---|"]
    for method, controls in versus.items():
        for control, means in controls.items():
            cells = [tables.gain_cell(means[group][metric])
                     for group, metric in (("tail", "f1_tuned"), ("tail", "auroc"), ("head", "f1_tuned"))]
            lines.append(f"| {method} | {control} | " + " | ".join(cells) + " |")
    return lines


def audit_lines(truth: dict) -> list[str]:
    """The label audit of the generated rows (phantom_truth.lesion_outcomes' ``audit``) and the
    shortcut probe (benchmarks/shortcut.py), per seed and set; empty for runs made before them."""
    rows = [(seed, variant, o["audit"]) for seed, sets in truth["lesions"].items() for variant, o in sets.items()
            if "audit" in o]
    if not rows:
        return []
    lines = ["", "Label audit (issue 33): what fine-tuning reads. Removal by the signed criterion of "
             "benchmarks/fidelity_measures.py (`make fidelity`'s) and by the absolute one (the table above); "
             "`all` every generated row, `accepted` the rows fine-tuning reads, `masked` the accepted rows' head "
             "lesions that their mask touches. Labels right: the share of judged rows whose every removed head "
             "lesion is gone (signed) and every tail lesion kept. Probe: cross-validated ROC-AUC of a linear probe "
             "on the pretrained classifier's features telling accepted rows from their parents, then from real "
             "train images with exactly their labels (0.5: indistinguishable).", "",
             "| seed | set | rows all / accepted | removed signed all / accepted / masked | removed absolute all / "
             "accepted | tail kept (signed, accepted) | labels right (accepted) | probe ROC-AUC vs parents / "
             "vs same labels |",
             "|---|---|---|---|---|---|---|---|"]
    for seed, variant, a in rows:
        probe = truth.get("shortcut", {}).get(seed, {}).get(variant, {})
        same = truth.get("shortcut_same_labels", {}).get(seed, {}).get(variant, {})
        lines.append(f"| {seed} | {variant} | {a['all']['rows']} / {a['accepted']['rows']} | "
                     f"{a['all']['removed_signed']} / {a['accepted']['removed_signed']} / "
                     f"{a['accepted_masked']['removed_signed']} | {a['all']['removed_absolute']} / "
                     f"{a['accepted']['removed_absolute']} | {a['accepted']['retained_signed']} | "
                     f"{a['accepted']['rows_all_labels_right']} | {probe.get('roc_auc')} / {same.get('roc_auc')} |")
    precision: dict[str, dict[str, list]] = {}
    for _, variant, a in rows:
        for label, entry in a["accepted"]["label_precision"].items():
            cell = precision.setdefault(variant, {}).setdefault(label, [0, 0.0])
            if entry["right"] is not None:
                cell[0] += entry["n"]
                cell[1] += entry["n"] * entry["right"]
    lines += ["", "Label precision of the accepted rows per class, over seeds (a head class's 0 after removal, a "
              "tail class's 1): right / judged.", "", "| set | class (label) | judged | right |", "|---|---|---|---|"]
    for variant, classes in precision.items():
        lines += [f"| {variant} | {label} | {n} | {right / n:.3f} |" for label, (n, right) in classes.items() if n]
    return lines


def added_line(a: dict) -> str:
    """One join to a saved run (``--add``): rows, or seeds."""
    if "seeds" in a:
        return (f"\nSeeds {a['seeds']} added at commit `{a['commit']}` ({a['seconds'] / 60:.0f} min; `{a['command']}`; "
                f"{described(a['machine'])}): every saved setting, with the same experiment "
                "settings and generators (checked).")
    return (f"\nRows {', '.join(f'`{s}`' for s in a['settings'])} added at commit `{a['commit']}` "
            f"({a['seconds'] / 60:.0f} min; `{a['command']}`): each seed's baseline, fine-tuned again, reproduced "
            f"the saved test probabilities to within {max(a['baseline_max_difference'].values()):.4f}."
            + (f" Replaced at commit `{a['replaced_at']}` (below)." if a.get("replaced_at") else ""))


def run_part(part: str, args, out_dir: Path) -> None:
    """One part's run; a phantom ``--regime`` other than the default is its own run, its files named
    ``experiment_<part><regime suffix>`` (e.g. experiment_phantom-tail_contrast0.5.json)."""
    started = time.perf_counter()
    work = tailforge_home() / "bench" / "experiment"
    models_uri = str(tailforge_home() / "models")
    name = part + args.regime.suffix()
    saved = load_saved(name, out_dir) if args.add else None
    if saved and args.settings and saved["config"]["seeds"] != list(args.seeds):
        raise SystemExit(f"--add: the saved {part} run has seeds {saved['config']['seeds']}, not {args.seeds}: "
                         "give the same --seeds to add rows")
    if saved and not args.settings and set(saved["config"]["seeds"]) & set(args.seeds):
        raise SystemExit(f"--add: the saved {part} run has seeds {saved['config']['seeds']} already: "
                         "give only new --seeds to add seeds")
    settings = (tuple(dict.fromkeys(["baseline", *args.settings])) if args.settings else
                tuple(saved["config"]["settings"]) if saved else tuple(paper.SETTINGS))
    needed = paper.generators_needed(settings)
    dataset, dit, config, data = (nih1000(args, work, models_uri, needs_dit="dit" in needed) if part == "nih1000" else
                                  phantom(args, work, models_uri, needs_dit="dit" in needed, size=PHANTOM_SIZES[part]))
    config = replace(config, settings=settings)
    if args.quick:
        config = replace(config, pretrain=replace(config.pretrain, epochs=1),
                         finetune=replace(config.finetune, epochs=2),
                         augment=replace(config.augment, max_images=16, inpaint=replace(config.augment.inpaint, steps=5)))
    part_dir = work / (f"{name}-quick" if args.quick else name)
    generators = {"dit": dit, "label_dit": label_generator(dataset, models_uri, args) if "label_dit" in needed else None}
    if args.prepare:
        print(f"[{name}] prepared in {(time.perf_counter() - started) / 60:.1f} min under {tailforge_home()}: "
              f"{dataset}{', ' + data['test_dataset'] if data.get('test_dataset') else ''}; generators "
              f"{ {k: g['id'][:12] for k, g in generators.items() if g} }", flush=True)
        return
    if saved and not args.settings:  # new seeds: the same experiment, checked before hours of work
        check_same_experiment(saved, config.to_json(), {"generator": dit, "label_generator": generators["label_dit"]})
    notes: list[str] = []
    with llm_judge(settings, notes):
        result = paper.run(dataset, {k: g for k, g in generators.items() if g}, part_dir, models_uri, config,
                           log=lambda m: print(f"[{name}] {m}", flush=True), test_dataset=data.get("test_dataset"))
    result["notes"] = notes
    if part in PHANTOM_SIZES and not (args.add and args.settings):
        result["ground_truth"] = ground_truth(result, dataset, part_dir)
    seconds = time.perf_counter() - started
    payload = {"commit": commit(), "machine": machine(), "part": part, "data": data, "seconds": round(seconds, 1),
               "command": " ".join(["python -m benchmarks.experiment", *sys.argv[1:]]), **result}
    if args.add:  # kept first, so a refusal loses nothing: the checkpoints and generated sets are reused anyway
        kept = part_dir / "added_run.json"
        kept.write_text(json.dumps(payload) + "\n")
        print(f"[{name}] this run: {kept}", flush=True)
        added = (f"rows {list(settings[1:])}" if args.settings else f"seeds {list(args.seeds)}")
        summarise(name, out_dir, add_rows(saved, payload) if args.settings else add_seeds(saved, payload),
                  args.bootstrap)
        print(f"[{name}] added {added} to {out_dir}/experiment_{name}.{{json,md,png}} ({seconds / 60:.1f} min)",
              flush=True)
        return
    payload["versus_best_longtail"] = versus_best_longtail(payload, runs_of(payload), test_labels(payload),
                                                           args.bootstrap)
    payload["versus_controls"] = versus_controls(payload, runs_of(payload), test_labels(payload), args.bootstrap)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir, name, payload)
    (out_dir / f"experiment_{name}.md").write_text(markdown(name, payload, data, seconds))
    (out_dir / f"experiment_{name}.png").write_bytes(
        tables.gains_png(result["comparison"], f"{name}: gain over baseline (seed means, paired 95% CI)"))
    print(f"[{name}] written: {out_dir}/experiment_{name}.{{json,md,png}} ({seconds / 60:.1f} min)", flush=True)


def summarise(part: str, out_dir: Path, payload: dict, bootstrap: int) -> None:
    """The comparison over every saved row (from the saved test probabilities), then the
    .json, .md and .png."""
    labels, runs = test_labels(payload), runs_of(payload)
    payload["comparison"] = compare_settings(runs, labels, payload["findings"], payload["head"], payload["tail"],
                                             baseline="baseline", bootstrap=bootstrap, seed=0,
                                             progress=lambda m: print(f"[{part}] {m}", flush=True))
    payload["versus_best_longtail"] = versus_best_longtail(payload, runs, labels, bootstrap)
    payload["versus_controls"] = versus_controls(payload, runs, labels, bootstrap)
    payload["summarised_at_commit"] = commit()
    write_json(out_dir, part, payload)
    (out_dir / f"experiment_{part}.md").write_text(markdown(part, payload, payload["data"], payload["seconds"]))
    (out_dir / f"experiment_{part}.png").write_bytes(
        tables.gains_png(payload["comparison"], f"{part}: gain over baseline (seed means, paired 95% CI)"))


def test_labels(payload: dict) -> np.ndarray:
    """The test labels (N, K) in the run's ``test_sample_ids`` order, read from its datasets
    (``local_dataset``). Refused when they do not hold the images the run scored."""
    test = paper.test_set(local_dataset(payload["dataset"], payload["part"]),
                          local_dataset(payload.get("test_dataset"), payload["part"]))
    order = {sid: i for i, sid in enumerate(test.sample_ids)}
    missing = [sid for sid in payload["test_sample_ids"] if sid not in order]
    if missing:
        raise SystemExit(f"the test set here lacks {len(missing)} of the {len(payload['test_sample_ids'])} images "
                         f"the {payload['part']} run scored (e.g. {missing[0]}): not the same data")
    return test.labels.numpy()[[order[sid] for sid in payload["test_sample_ids"]]]


def local_dataset(path: str | None, part: str) -> str | None:
    """A saved run's dataset on this machine: where the run had it, else the folder of the same
    name under this TAILFORGE_HOME's bench/ (a run made on another machine, a lent GPU's /tmp).
    The phantom renders the same images everywhere, and ``test_labels`` checks the sample ids."""
    if path is None or Path(path).exists():
        return path
    here = tailforge_home() / "bench" / Path(path).name
    if here.exists():
        return str(here)
    raise SystemExit(f"the {part} run's dataset {path} is not on this machine, nor at {here}: make it with "
                     f"`python -m benchmarks.experiment --part {part} --prepare --settings baseline`")


def join(part: str, folders: list[Path], out_dir: Path, bootstrap: int, note: str | None = None) -> None:
    """Runs of one part made apart, a few seeds each (in parallel processes or on other
    machines, from one prepared TAILFORGE_HOME), as one run in ``out_dir``: joined like
    ``--add`` (refused, with the reason, unless they are the same experiment), then compared with
    one shared bootstrap of ``bootstrap`` resamples."""
    missing = [str(folder) for folder in folders if not (folder / f"experiment_{part}.json").is_file()]
    if missing:
        raise SystemExit(f"--join: no saved {part} run (experiment_{part}.json) in {', '.join(missing)}")
    runs = sorted((load_saved(part, folder) for folder in folders), key=lambda p: min(p["config"]["seeds"]))
    joined = functools.reduce(add_seeds, runs)
    joined["config"]["bootstrap"] = bootstrap  # the runs may have skipped the intervals (--bootstrap 0)
    if note:
        joined["notes"] = [*joined.get("notes", []), note]
    out_dir.mkdir(parents=True, exist_ok=True)
    summarise(part, out_dir, joined, bootstrap)
    print(f"[{part}] joined seeds {joined['config']['seeds']} from {len(runs)} runs: "
          f"{out_dir}/experiment_{part}.{{json,md,png}}", flush=True)


def rebuild(part: str, out_dir: Path, bootstrap: int) -> None:
    """Tables, plot and comparison again from a saved run (its thresholds and test probabilities):
    for a change in how results are summarised, without training anything."""
    summarise(part, out_dir, load_saved(part, out_dir), bootstrap)
    print(f"[{part}] rebuilt: {out_dir}/experiment_{part}.{{json,md,png}}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["nih1000", *PHANTOM_SIZES, "throughput", "all"], default="all",
                        help="all: nih1000, phantom (64 px) and throughput; phantom128 and phantom256 only when named")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(paper.ExperimentConfig.seeds))
    parser.add_argument("--phantom-n", type=int, default=3000)
    parser.add_argument("--phantom-test-n", type=int, help="score on this many images of a second phantom stream "
                        "instead of the test split (default: none at 64 px, comparable with the saved runs; "
                        f"{PHANTOM_TEST_N[128]} at 128 px, issue 17: at least 100 test positives in every tail class "
                        "but Hernia)")
    parser.add_argument("--pretrain-epochs-nih", type=int, default=15)
    parser.add_argument("--pretrain-epochs-phantom", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--dit-steps-real", type=int, help="nih1000: train the normal DiT on the real normals "
                        "with this many steps instead of using the shipped weights/normal_dit_64 (trained with 3000 "
                        "when none is shipped)")
    parser.add_argument("--dit-steps-phantom", type=int, default=4000, help="the phantom's normal DiT "
                        "(benchmarks/fidelity.py --sizes 64 --dit-steps 4000 trains the same one)")
    parser.add_argument("--dit-steps-label", type=int, default=800, help="the label-conditioned DiT (DfT-Caption)")
    parser.add_argument("--regime", type=Regime.parse, default=Regime(), metavar="K=V,...",
                        help="phantom parts: the world the phantom draws (tasks/phantom/regime.py), e.g. "
                        "tail_contrast=0.5,tail_with_head=0.9; its own datasets, run and result files")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="tiny epochs and sets: checks the path, not the method")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    parser.add_argument("--settings", nargs="+", choices=list(paper.SETTINGS), metavar="SETTING",
                        help=f"run only these settings (and the baseline); one of {', '.join(paper.SETTINGS)}")
    parser.add_argument("--add", action="store_true",
                        help="join this run to the part's saved results: with --settings, those rows for the saved "
                        "seeds (the baseline must reproduce); without, new --seeds for the saved settings")
    parser.add_argument("--rebuild", action="store_true",
                        help="redo the comparison, tables and plot from the saved results (no training)")
    parser.add_argument("--prepare", action="store_true",
                        help="ingest the part's data and train the generators its settings need, then stop: seeds "
                        "can then run apart from this TAILFORGE_HOME (see --join)")
    parser.add_argument("--join", type=Path, nargs="+", metavar="DIR",
                        help="join the part's saved runs in these folders (other seeds of the same experiment, "
                        "e.g. one per process) into --out, with one bootstrap of --bootstrap resamples")
    parser.add_argument("--note", help="with --join: a sentence for the results' notes (where and how the runs were made)")
    args = parser.parse_args()
    joining = "--join" if args.join else "--add" if args.add else None
    if joining and args.part not in ("nih1000", *PHANTOM_SIZES):
        raise SystemExit(f"{joining} needs --part one of nih1000, {', '.join(PHANTOM_SIZES)}")
    if not args.regime.is_default and args.part not in PHANTOM_SIZES:
        raise SystemExit(f"--regime needs --part one of {', '.join(PHANTOM_SIZES)}")
    if args.join:
        join(args.part + args.regime.suffix(), args.join, args.out, args.bootstrap, args.note)
        return
    if args.rebuild:
        for part in (["nih1000", "phantom"] if args.part == "all" else [args.part]):
            rebuild(part + args.regime.suffix(), args.out, args.bootstrap)
        return
    if args.quick and args.out == RESULTS and not args.prepare:
        raise SystemExit("--quick results are not results: give --out DIR")
    parts = ["nih1000", "phantom", "throughput"] if args.part == "all" else [args.part]
    for part in parts:
        if part == "throughput":
            from benchmarks import throughput
            throughput.main(quick=args.quick, out_dir=args.out)
        else:
            run_part(part, args, args.out)


if __name__ == "__main__":
    main()
