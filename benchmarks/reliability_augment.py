"""Sections of benchmarks/reliability.py that run `tailforge augment` on a real Prefect server
(issue 12): kill -9 of augment at points before, inside and after batches, during shard and
manifest writes, then a resume compared with an uninterrupted run; and two augments (and two
plans) at once into one output. Tiny models trained once per section, on a 32 px phantom."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT
from benchmarks.reliability_sections import (_kill_when, _shards, add, cli, finish, leftovers, start_cli,
                                             tally)

# the fast end of the product: EigenCAM needs no trained gradients and the removal check is off,
# so every candidate becomes a row at this size; the writes are the product's
SETTINGS = """name: reliability
knowledge: {{judge: rules, cache: {cache}}}
augment:
  batch_size: {batch_size}
  max_images: {max_images}
  cam_method: eigencam
  mask: {{max_area: 0.6}}
  localise: {{gate: false}}
  verify_removal: false
  inpaint: {{steps: 3, jump_length: 3, resample: 1}}
  quality_max_z: 1000.0
  ood_filter: false
"""
AUGMENT_POINTS = ("delay", "shards", "temp", "manifest")


def prepare(args, work: Path) -> dict:
    """A phantom dataset, a classifier and a DiT (tiny, seconds), a Prefect server; the world the
    augment trials share."""
    from flows import server
    from models.classifier import ClassifierConfig
    from models.dit import DiTConfig, DiTTrainConfig
    from models.training import TrainConfig
    from tasks import pretrain
    from tasks.dataset import read_manifest
    from tasks.ingest import ingest_phantom

    dataset = str(work / "dataset")
    ingest_phantom(dataset, args.augment_n, size=args.size, seed=args.seed)
    labels = read_manifest(dataset)["labels"]
    classifier = pretrain.train_classifier(dataset, str(work / "models"), ClassifierConfig(
        backbone="resnet18", num_classes=len(labels), image_size=args.size), TrainConfig(epochs=1, batch_size=64))
    generator = pretrain.train_normal_dit([dataset], str(work / "models"), DiTConfig(
        image_size=args.size, patch_size=8, depth=2, num_heads=2, head_dim=16),
        DiTTrainConfig(steps=20, batch_size=16, warmup_steps=2))
    config = work / "augment.yaml"
    config.write_text(SETTINGS.format(cache=work / "decisions.duckdb", batch_size=args.augment_batch,
                                      max_images=args.augment_images))
    url = server.start()
    return {"dataset": dataset, "classifier": classifier["uri"], "generator": generator["uri"],
            "config": str(config), "env": {**os.environ, "PREFECT_API_URL": url}}


def augment_command(world: dict, out: str) -> list[str]:
    return ["augment", world["dataset"], "--classifier", world["classifier"], "--generator", world["generator"],
            "--config", world["config"], "--out", out, "--json"]


def outputs(out: Path) -> dict[str, bytes]:
    """Every row an augment wrote, by id: the generated image's bytes, or b"quarantine" + reason."""
    from benchmarks.reliability_sections import _column, dataset_rows

    ids, images = dataset_rows(out)
    rows = {sample_id: images[sample_id] for sample_id in ids}
    for key, reason in zip(_column(out, "quarantine", "quarantine_id"), _column(out, "quarantine", "reason_code")):
        rows.setdefault(key, b"quarantine:" + reason.encode())
    return rows


def row_count(out: Path) -> int:
    from benchmarks.reliability_sections import _column, dataset_rows

    return len(dataset_rows(out)[0]) + len(_column(out, "quarantine", "quarantine_id"))


def still_running(out: Path, env: dict) -> int:
    """Run records of ``out`` that still say "running" (after a finished resume: should be 0),
    plus their flow runs that the Prefect server still shows as running."""
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    stale = [r for r in records if r.get("status") == "running"]
    ids = [r["run_id"] for r in records if r.get("status") == "crashed"]
    return len(stale) + _prefect_running(ids, env)


def _prefect_running(flow_run_ids: list[str], env: dict) -> int:
    code = ("import json, sys\nfrom prefect.client.orchestration import get_client\n"
            "with get_client(sync_client=True) as c:\n"
            "    print(sum(not c.read_flow_run(i).state.is_final() for i in json.loads(sys.argv[1])))")
    if not flow_run_ids:
        return 0
    done = subprocess.run([sys.executable, "-c", code, json.dumps(flow_run_ids)], env=env, capture_output=True,
                          text=True, timeout=60)
    return int(done.stdout.strip() or 0) if done.returncode == 0 else len(flow_run_ids)


def _manifest_writing(out: Path) -> bool:
    return any(out.glob(".dataset.json.tmp-*"))


def _temp_writing(out: Path) -> bool:
    return any((out / "samples").glob(".part-*.tmp-*")) or any((out / "quarantine").glob(".part-*.tmp-*"))


def augment_kill_trial(world: dict, out: Path, point: tuple[str, float], reference: dict[str, bytes]) -> dict:
    """Start `tailforge augment`, SIGKILL it at ``point``, run it again, compare with the reference."""
    kind, value = point
    command = augment_command(world, str(out))
    started = time.monotonic()
    ready = {"delay": lambda: time.monotonic() - started >= value, "shards": lambda: _shards(out) >= value,
             "temp": lambda: _shards(out) >= value and _temp_writing(out),
             "manifest": lambda: _manifest_writing(out)}[kind]
    child = subprocess.Popen([sys.executable, "-m", "flows.cli", *command], cwd=ROOT, env=world["env"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finished, killed_at = _kill_when(child, ready)
    at_kill = {"rows": row_count(out) if out.exists() else 0, "temps": len(list(out.rglob(".*.tmp-*"))),
               "manifest": (out / "dataset.json").exists()}
    resumed = cli(command, env=world["env"])
    got = outputs(out)
    changed = sum(1 for k, v in reference.items() if k in got and got[k] != v)
    result = {"point": kind, "value": round(value, 2), "killed_after_s": killed_at, "finished_before_kill": finished,
              "at_kill": at_kill, "resume_rc": resumed["rc"], "resume_s": resumed["seconds"],
              "batches_run": json.loads(resumed["out"])["batches_run"] if resumed["rc"] == 0 else None,
              "rows": row_count(out), "lost": len(set(reference) - set(got)) + changed, "changed": changed,
              "duplicated": row_count(out) - len(got), "unexpected": len(set(got) - set(reference)),
              "manifest": (out / "dataset.json").exists(), "leftovers": len(leftovers(out)),
              "still_running": still_running(out, world["env"])}
    if resumed["rc"] not in (0, None):
        result["error"] = resumed["err"].strip().splitlines()[-1:]
    return result


def _augment_point(k: int, wall: float, shards: int, rng: random.Random, strata: int) -> tuple[str, float]:
    """Trial k's kill point: the kinds cycle; delays and shard counts are drawn one per stratum.
    A `manifest` kill that polling misses (the manifest's temporary file lives for milliseconds)
    lands after the run finished, and the trial says so (finished_before_kill)."""
    point = AUGMENT_POINTS[k % len(AUGMENT_POINTS)]
    stratum = (k // len(AUGMENT_POINTS)) % strata
    if point == "delay":  # over the first 60% of the reference's wall time: runs vary with the load
        return point, 0.6 * wall * (stratum + rng.random()) / strata
    if point == "shards":
        return point, 1 + int((shards - 1) * (stratum + rng.random()) / strata)
    if point == "temp":
        return point, int(shards * (stratum + rng.random()) / strata)
    return point, 0.0


def section_augment_kill(args, work: Path) -> dict:
    """kill -9 of `tailforge augment` at ``args.augment_kills`` points, then a re-run (issue 12)."""
    world = prepare(args, work)
    reference_out, wall = _reference(world, work)
    reference, shards = outputs(reference_out), _shards(reference_out)
    rng, total, trials = random.Random(args.seed), tally(), []
    strata = max(1, -(-args.augment_kills // len(AUGMENT_POINTS)))
    for k in range(args.augment_kills):
        point = _augment_point(k, wall, shards, rng, strata)
        trial = augment_kill_trial(world, work / f"killed-{k}", point, reference)
        ok = trial["resume_rc"] == 0 and trial["manifest"] and not (
            trial["lost"] or trial["duplicated"] or trial["unexpected"] or trial["leftovers"]
            or trial["still_running"])
        add(total, tally(trials=1, survived=ok, lost=trial["lost"], duplicated=trial["duplicated"],
                         crashes=trial["resume_rc"] not in (0, None), hangs=trial["resume_rc"] is None,
                         leaks=trial["leftovers"] + trial["still_running"]))
        trials.append(trial)
    partial = sum(0 < t["at_kill"]["rows"] < len(reference) or t["at_kill"]["temps"] > 0 for t in trials)
    return {**total, "reference_s": wall, "reference_rows": len(reference), "reference_shards": shards,
            "killed_mid_run": sum(not t["finished_before_kill"] for t in trials), "killed_mid_write": partial,
            "details": trials}


def section_concurrent_augment(args, work: Path) -> dict:
    """Two `tailforge augment` into one --out at once, and two `tailforge plan` on one decision
    cache: one is refused with status 2 naming what holds it, or they run one after the other;
    a re-run completes; never a duplicated row (issue 12)."""
    world = prepare(args, work)
    reference = outputs(_reference(world, work)[0])
    total, trials = tally(), []
    for k in range(args.concurrent):
        if k % 2 == 0:
            out = work / f"both-{k}"
            command, check = augment_command(world, str(out)), "augment"
        else:  # two plans on one (fresh) decision cache: DuckDB takes one writer
            cache = work / f"plan-{k}.duckdb"
            command, check = ["plan", world["dataset"], "--cache", str(cache), "--json"], "plan"
        pair = [start_cli(command, world["env"]) for _ in (0, 1)]
        results = [finish(child) for child in pair]
        rerun = cli(command, env=world["env"])
        refused = [r for r in results if r["rc"] == 2]
        holder_named = all(("being written by" in r["err"] or "in use by another process" in r["err"])
                           for r in refused)
        trial = {"kind": check, "rcs": [r["rc"] for r in results], "refused_with_holder": len(refused) * holder_named,
                 "rerun_rc": rerun["rc"]}
        if check == "augment":
            got = outputs(out)
            trial.update(rows=row_count(out), unique=len(got), expected=len(reference),
                         lost=len(set(reference) - set(got)), leftovers=len(leftovers(out)))
        else:
            plans = [json.loads(r["out"]) for r in [*results, rerun] if r["rc"] == 0]
            same = all(p["label_sets"] == plans[0]["label_sets"] for p in plans)
            trial.update(rows=len(plans), unique=len(plans) if same else 0, expected=len(plans), lost=0, leftovers=0)
        ok = (all(r["rc"] in (0, 2) for r in results) and any(r["rc"] == 0 for r in [*results, rerun])
              and holder_named and rerun["rc"] == 0 and trial["rows"] == trial["unique"] == trial["expected"]
              and not trial["lost"] and not trial["leftovers"])
        add(total, tally(trials=1, survived=ok, lost=trial["lost"], duplicated=trial["rows"] - trial["unique"],
                         crashes=sum(r["rc"] not in (0, 2, None) for r in [*results, rerun]),
                         hangs=sum(r["rc"] is None for r in [*results, rerun]), leaks=trial["leftovers"]))
        trials.append(trial)
    return {**total, "details": trials}


def _reference(world: dict, work: Path) -> tuple[Path, float]:
    """An uninterrupted augment: (its output, seconds)."""
    out = work / "reference"
    done = cli(augment_command(world, str(out)), env=world["env"])
    if done["rc"] != 0:
        raise RuntimeError(f"the uninterrupted augment failed: {done['err'][-800:]}")
    return out, done["seconds"]
