"""Does the OOD post-selection filter catch broken samples that today's quality score passes?
(issue 16: a sample whose top 10 rows were noise passed with quality 1.21, limit 6.0)

    python -m benchmarks.bench_ood [--size 64] [--n 200] [--no-nih1000]

On the phantom of benchmarks/fidelity.py (its dataset and normal DiT, trained when absent):
real held-out images (test split) against the same images broken five ways inside a
lesion-sized box or band: uniform noise, the film's top rows as noise, a blank (mid-grey) patch,
a black patch, and a patch of another patient pasted at a different place (wrong anatomy).
Three scores: today's quality (models/quality.py: robust z of the nearest-real distance, cut-off
``augment.quality_max_z``), the diffusion reconstruction score and the classifier-feature score
(the largest per-stage z of Mahalanobis distances; models/ood.py; both calibrated on val-split
real images at 5% false rejection). Per kind: ROC-AUC (broken vs real) and the share rejected at each score's cut-off.

Then nih1000: the rows the label-conditioned DiT (DfT-Caption) generated in the saved experiment
(benchmarks/experiment.py --part nih1000, under TAILFORGE_HOME), accepted and rejected, against
nih1000's real test films, scored by the features of the classifier that judged them (from the
rows' lineage), by that DiT's own reconstruction (what the filter did before: a generator judging
itself) and by quality; and the five broken kinds on the nih1000 films (features and quality:
no normal DiT of nih1000's kind is cached). Skipped, saying so, when that run is not there.
Results: benchmarks/results/bench_ood.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from benchmarks.common import RESULTS, save
from benchmarks.fidelity import prepare
from flows.settings import tailforge_home
from models.classifier import load_checkpoint
from models.dit import build_scheduler, load_dit
from models.metrics import auroc
from models.ood import FeatureScorer, OODConfig, OODScorer
from models.quality import QualityScorer
from tasks import store
from tasks.augment import AugmentSettings
from tasks.tensors import load_tensors

KINDS = ("noise_patch", "noise_top_rows", "blank_patch", "black_patch", "misplaced_paste")


def broken(images: torch.Tensor, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """The images with one region broken as ``kind`` says (a box of 20-35% of the side, or the
    top tenth of the film)."""
    out = images.clone()
    n, _, side, _ = images.shape
    for i in range(n):
        box = int(side * rng.uniform(0.2, 0.35))
        top, left = rng.integers(side // 8, side - box - side // 8, size=2)
        region = (slice(None), slice(top, top + box), slice(left, left + box))
        if kind == "noise_patch":
            out[i][region] = torch.rand(1, box, box)
        elif kind == "noise_top_rows":
            out[i][:, : side // 10, :] = torch.rand(1, side // 10, side)
        elif kind == "blank_patch":
            out[i][region] = 0.5
        elif kind == "black_patch":
            out[i][region] = 0.0
        elif kind == "misplaced_paste":  # another patient's pixels from somewhere else on the film
            j = (i + 1 + int(rng.integers(n - 1))) % n
            src_top, src_left = rng.integers(0, side - box, size=2)
            out[i][region] = images[j][:, src_top:src_top + box, src_left:src_left + box]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=200, help="real test images (and as many broken per kind)")
    parser.add_argument("--phantom-n", type=int, default=3000)
    parser.add_argument("--dit-steps", type=int, default=600)
    parser.add_argument("--no-nih1000", action="store_true", help="skip the nih1000 conditional rows")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(0)
    prep = prepare(args.size, args.phantom_n, args.dit_steps)
    uri = prep["main"]["dataset"]
    model, config, _ = load_dit(store.read_bytes(prep["dit"]["uri"]))
    model.eval()
    scheduler = build_scheduler(config)
    classifier = load_checkpoint(store.read_bytes(prep["main"]["classifier"]))[0].eval()
    train_normals = load_tensors(uri, splits=("train",), normal_only=True).images
    calibration = load_tensors(uri, splits=("val",), limit=args.n).images
    real = load_tensors(uri, splits=("test",), limit=args.n).images
    ood_config = OODConfig()
    scorers = {"ood": OODScorer(model, scheduler, calibration, ood_config),
               "features": FeatureScorer(classifier, load_tensors(uri, splits=("train",), limit=512).images,
                                         calibration),
               "quality": QualityScorer(train_normals)}
    cuts = {"ood": scorers["ood"].threshold, "features": scorers["features"].threshold,
            "quality": AugmentSettings().quality_max_z}
    table, real_rejected = compare(scorers, cuts, real, broken_sets(real))
    report = {"command": " ".join(["python -m benchmarks.bench_ood", *(argv or sys.argv[1:])]),
              "size": args.size, "dit": prep["dit"], "classifier": prep["main"]["classifier"],
              "images": int(real.shape[0]), "calibration_images": int(calibration.shape[0]),
              "ood_config": ood_config.__dict__, "ood_threshold": round(cuts["ood"], 3),
              "feature_threshold": round(cuts["features"], 3),
              "feature_shrinkage": [round(g[2], 4) for g in scorers["features"].gaussians], "quality_cut": cuts["quality"],
              "real_rejected": real_rejected, "by_kind": table,
              "nih1000": None if args.no_nih1000 else nih1000_conditional()}
    report["seconds"] = round(time.perf_counter() - started, 1)
    save("bench_ood", report)
    (RESULTS / "bench_ood.md").write_text(markdown(report))
    print(markdown(report))
    return report


def broken_sets(real: torch.Tensor) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    return {kind: broken(real, kind, rng) for kind in KINDS}


def compare(scorers: dict, cuts: dict, real: torch.Tensor, sets: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Per set and score: ROC-AUC against the real images and the share over the cut-off; and
    the share of the real images over each cut-off."""
    real_scores = {name: scorer.score(real) for name, scorer in scorers.items()}
    table = {}
    for done, (kind, images) in enumerate(sets.items(), 1):
        row = {}
        for name, scorer in scorers.items():
            neg, pos = real_scores[name], scorer.score(images)
            row[name] = {"auroc": round(auroc(np.r_[neg, pos], np.r_[np.zeros(len(neg)), np.ones(len(pos))]), 4),
                         "rejected": round(float((pos > cuts[name]).mean()), 4)}
        table[kind] = row
        print(f"bench_ood: {kind} scored by {', '.join(scorers)} ({done}/{len(sets)})", flush=True)
    return table, {name: round(float((real_scores[name] > cuts[name]).mean()), 4) for name in scorers}


def nih1000_conditional() -> dict | None:
    """The saved nih1000 experiment's conditional rows against real test films (see the docstring)."""
    work = tailforge_home() / "bench" / "experiment" / "nih1000"
    seeds = sorted(p for p in work.glob("seed*/lkg-conditional") if (p / "dataset.json").exists())
    if not seeds:
        print(f"nih1000: no conditional rows under {work} (run benchmarks.experiment --part nih1000 "
              f"--settings conditional first); skipped", flush=True)
        return None
    models = tailforge_home() / "models"
    train = load_tensors(str(work), splits=("train",), limit=512).images
    calibration = load_tensors(str(work), splits=("val",)).images
    real = load_tensors(str(work), splits=("test",)).images
    quality = QualityScorer(load_tensors(str(work), splits=("train",), normal_only=True, limit=512).images)
    broken_films = broken_sets(real)
    out = {"real_test_images": int(real.shape[0]), "calibration_images": int(calibration.shape[0]), "seeds": {}}
    for folder in seeds:
        print(f"bench_ood: nih1000 {folder.parent.name}", flush=True)
        rows = load_tensors(str(folder), columns=("classifier_id", "generator_id", "accepted"))
        classifier_id, generator_id = (rows.table.column(c)[0].as_py() for c in ("classifier_id", "generator_id"))
        classifier = load_checkpoint(store.read_bytes(str(models / f"classifier-{classifier_id[:16]}.pt")))[0].eval()
        dit, dit_config, _ = load_dit(store.read_bytes(str(models / f"dit-{generator_id[:16]}.pt")))
        scorers = {"features": FeatureScorer(classifier, train, calibration),
                   "own_reconstruction": OODScorer(dit.eval(), build_scheduler(dit_config), calibration),
                   "quality": quality}
        cuts = {"features": scorers["features"].threshold, "own_reconstruction": scorers["own_reconstruction"].threshold,
                "quality": AugmentSettings().quality_max_z}
        accepted = np.array(rows.table.column("accepted").to_pylist(), dtype=bool)
        sets = {"conditional (all)": rows.images, "conditional (accepted then)": rows.images[accepted]}
        table, real_rejected = compare(scorers, cuts, real, sets)
        broken_table, _ = compare({k: scorers[k] for k in ("features", "quality")}, cuts, real, broken_films)
        out["seeds"][folder.parent.name] = {"classifier": classifier_id[:16], "generator": generator_id[:16],
                                            "rows": int(len(accepted)), "accepted_then": int(accepted.sum()),
                                            "cuts": {k: round(v, 3) for k, v in cuts.items()},
                                            "real_rejected": real_rejected, "by_set": table, "broken": broken_table}
    return out


def markdown(report: dict) -> str:
    lines = [f"# OOD post-selection on the phantom at {report['size']} px", "",
             f"Command: `{report['command']}`. {report['images']} real test images, as many broken per kind; "
             f"the diffusion score calibrated on {report['calibration_images']} val images at "
             f"{report['ood_config']['false_rejection']:.0%} false rejection (levels {report['ood_config']['levels']}, "
             f"{report['ood_config']['steps']} DDIM steps back).", "",
             f"Feature score: the largest per-stage z of the Mahalanobis distances of the phantom classifier's "
             f"stage features ({len(report['feature_shrinkage'])} stages, Ledoit-Wolf shrinkage "
             f"{report['feature_shrinkage']}), threshold {report['feature_threshold']}.", "",
             f"Real test images rejected: diffusion score {report['real_rejected']['ood']:.1%}, features "
             f"{report['real_rejected']['features']:.1%}, quality (z > {report['quality_cut']}) "
             f"{report['real_rejected']['quality']:.1%}.", "",
             *_table("broken how", report["by_kind"], ("ood", "features", "quality"))]
    nih = report.get("nih1000")
    if nih:
        lines += ["", "## nih1000: the label-conditioned DiT's rows (DfT-Caption) against real test films", "",
                  f"{nih['real_test_images']} real test films; thresholds from {nih['calibration_images']} val films "
                  f"at 5% false rejection. `own_reconstruction` is the DiT that made the rows reconstructing them "
                  f"(the filter's score before: a generator judging itself); `features` the judging classifier's.", ""]
        for seed, entry in nih["seeds"].items():
            lines += [f"### {seed}: {entry['rows']} rows ({entry['accepted_then']} accepted by the run), classifier "
                      f"`{entry['classifier']}`, DiT `{entry['generator']}`", "",
                      f"Real test films rejected: " + ", ".join(f"{k} {v:.1%}" for k, v in entry["real_rejected"].items()),
                      "", *_table("rows", entry["by_set"], ("features", "own_reconstruction", "quality")), "",
                      *_table("nih1000 films broken how", entry["broken"], ("features", "quality")), ""]
    return "\n".join(lines) + "\n"


def _table(first: str, rows: dict, scores: tuple[str, ...]) -> list[str]:
    names = {"ood": "diffusion", "features": "features", "quality": "quality",
             "own_reconstruction": "own reconstruction"}
    head = " | ".join(f"{names[s]} ROC-AUC | {names[s]} rejects" for s in scores)
    out = [f"| {first} | {head} |", "|---|" + "---|" * (2 * len(scores))]
    for kind, row in rows.items():
        out.append(f"| {kind} | " + " | ".join(f"{row[s]['auroc']} | {row[s]['rejected']:.1%}" for s in scores) + " |")
    return out


if __name__ == "__main__":
    main()
