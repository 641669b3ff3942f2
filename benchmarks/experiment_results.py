"""A saved run of the paper's experiment: benchmarks/results/experiment_<part>.json with its test
probabilities beside it (experiment_<part>_probs.parquet), written, read back, and joined by
later work: new rows (settings) for the same seeds, or new seeds for the same settings.

A join is refused, with the reason and nothing written, unless the two runs answer the same
question: the same test split, and for new rows a baseline that reproduces the saved one
(``ADD_TOLERANCE``), for new seeds the same settings, experiment settings and generators. So a
run too long for one sitting (the nih1000 part at 5 seeds on 2 cores) can be made a few seeds at
a time and still give one table with one shared bootstrap.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.augment import AugmentSettings

ADD_TOLERANCE = 2e-3  # max |test probability difference| of the rerun baseline vs the saved one (earlier runs saved them at 4 decimals)


def write_json(out_dir: Path, part: str, payload: dict) -> None:
    """experiment_<part>.json (indented) and, apart, every run's test probabilities as float32
    log-odds in Parquet (experiment_<part>_probs.parquet: seed, setting, sample_id, logits (K,)
    in ``findings`` order). Log-odds keep the ranking that AUROC and AP need: probabilities
    rounded or cast to float32 tie near 0 and 1 (the 4-decimal JSON of earlier runs did)."""
    rows = {"seed": [], "setting": [], "sample_id": [], "logits": []}
    for record in payload["per_seed"]:
        for setting, entry in record["finetune"].items():
            p = np.clip(np.asarray(entry.pop("test_probs"), dtype=np.float64), 1e-300, 1 - 1e-16)
            logits = (np.log(p) - np.log1p(-p)).astype(np.float32)
            rows["seed"] += [record["seed"]] * len(logits)
            rows["setting"] += [setting] * len(logits)
            rows["sample_id"] += payload["test_sample_ids"]
            rows["logits"] += list(logits)
    table = pa.table({"seed": pa.array(rows["seed"], pa.int32()), "setting": pa.array(rows["setting"]),
                      "sample_id": pa.array(rows["sample_id"]),
                      "logits": pa.array(rows["logits"], pa.list_(pa.float32(), len(payload["findings"])))})
    payload["test_probs_file"] = f"experiment_{part}_probs.parquet"
    pq.write_table(table, out_dir / payload["test_probs_file"], compression="zstd")
    (out_dir / f"experiment_{part}.json").write_text(json.dumps(payload, indent=1) + "\n")


def saved_probs(out_dir: Path, payload: dict) -> dict[str, dict[str, np.ndarray]]:
    """{seed: {setting: (N, K) test probabilities}} of a saved run, rows in test_sample_ids order:
    from the Parquet log-odds, or from the 4-decimal JSON of runs saved before it."""
    path = out_dir / payload["test_probs_file"]
    if path.suffix == ".json":
        payload["probs_precision"] = "4 decimals, which ties scores near 0 and 1"
        return {seed: {s: np.asarray(v) for s, v in by.items()} for seed, by in json.loads(path.read_text()).items()}
    table = pq.read_table(path).to_pydict()
    order = {sid: i for i, sid in enumerate(payload["test_sample_ids"])}
    out: dict[str, dict[str, np.ndarray]] = {}
    for seed, setting, sid, logits in zip(table["seed"], table["setting"], table["sample_id"], table["logits"]):
        out.setdefault(str(seed), {}).setdefault(setting, np.empty((len(order), len(logits))))[order[sid]] = logits
    return {seed: {s: 1.0 / (1.0 + np.exp(-v)) for s, v in by.items()} for seed, by in out.items()}



def load_saved(part: str, out_dir: Path) -> dict:
    """A saved run, each fine-tune's test probabilities put back in its entry (``test_probs``)."""
    payload = json.loads((out_dir / f"experiment_{part}.json").read_text())
    probs = saved_probs(out_dir, payload)
    for record in payload["per_seed"]:
        for setting, entry in record["finetune"].items():
            entry["test_probs"] = probs[str(record["seed"])][setting]
    return payload


def add_rows(saved: dict, new: dict) -> dict:
    """``saved`` with the non-baseline settings of ``new`` (a run of the same part and seeds) added
    or replaced. Refused, with the reason, unless ``new``'s baseline reproduces the saved one."""
    if new["test_sample_ids"] != saved["test_sample_ids"] or list(new["config"]["seeds"]) != saved["config"]["seeds"]:
        raise SystemExit("--add: this run's test split or seeds differ from the saved run's: rerun the whole part")
    differences = {}
    for old, fresh in zip(saved["per_seed"], new["per_seed"]):
        differences[fresh["seed"]] = float(np.abs(np.asarray(fresh["finetune"]["baseline"]["test_probs"])
                                                  - np.asarray(old["finetune"]["baseline"]["test_probs"])).max())
        if differences[fresh["seed"]] > ADD_TOLERANCE:
            raise SystemExit(f"--add: seed {fresh['seed']}'s baseline does not reproduce the saved one (max |dp| "
                             f"{differences[fresh['seed']]:.4f} > {ADD_TOLERANCE}): nothing written; rerun the whole "
                             "part instead")
    added = [s for s in new["config"]["settings"] if s != "baseline"]
    for old, fresh in zip(saved["per_seed"], new["per_seed"]):
        old["generated"].update(fresh["generated"])
        old["finetune"].update({s: fresh["finetune"][s] for s in added})
    saved["config"]["settings"] = list(dict.fromkeys([*saved["config"]["settings"], *added]))
    if new.get("label_generator"):
        saved["label_generator"] = new["label_generator"]
    saved["notes"] = list(dict.fromkeys([*saved.get("notes", []), *new.get("notes", [])]))
    for earlier in saved.get("added", []):
        if set(earlier["settings"]) & set(added):
            earlier["replaced_at"] = new["commit"]
    saved.setdefault("added", []).append({
        "settings": added, "commit": new["commit"], "machine": new["machine"], "seconds": new["seconds"],
        "command": new["command"], "baseline_max_difference": differences, "augment": new["config"]["augment"]})
    return saved


def add_seeds(saved: dict, new: dict) -> dict:
    """``saved`` with the seeds of ``new`` (a run of the same part, settings, experiment settings
    and generators) joined in, in seed order. Refused, with the reason, when anything but the
    seeds differs or a seed is already there."""
    seeds, old_seeds = [int(s) for s in new["config"]["seeds"]], [int(s) for s in saved["config"]["seeds"]]
    if set(seeds) & set(old_seeds):
        raise SystemExit(f"--add: seeds {sorted(set(seeds) & set(old_seeds))} are in the saved run already: "
                         "give only new seeds (or --settings to add rows)")
    if new["test_sample_ids"] != saved["test_sample_ids"]:
        raise SystemExit("--add: this run's test split differs from the saved run's: rerun the whole part")
    check_same_experiment(saved, new["config"], {g: new.get(g) for g in GENERATORS})
    saved["per_seed"] = sorted([*saved["per_seed"], *new["per_seed"]], key=lambda r: int(r["seed"]))
    saved["config"]["seeds"] = sorted(old_seeds + seeds)
    truth, fresh = saved.get("ground_truth"), new.get("ground_truth")
    if truth and fresh:
        for key in ("cam_localisation", "lesions"):
            truth[key] = {**truth[key], **fresh[key]}
    saved["notes"] = list(dict.fromkeys([*saved.get("notes", []), *new.get("notes", [])]))
    saved.setdefault("added", []).append({"seeds": seeds, "commit": new["commit"], "machine": new["machine"],
                                          "seconds": new["seconds"], "command": new["command"]})
    return saved


GENERATORS = ("generator", "label_generator")


def check_same_experiment(saved: dict, config: dict, generators: dict) -> None:
    """Refuses (SystemExit, naming what differs) new seeds whose settings, experiment settings
    (training, augmentation, bootstrap) or generators differ from the saved run's: checked before
    a run starts, and again when it is joined."""
    if list(config["settings"]) != list(saved["config"]["settings"]):
        raise SystemExit(f"--add: new seeds must run the saved settings {saved['config']['settings']}, not "
                         f"{list(config['settings'])}")
    # an augment setting added after a run was made did, at its default, what that run did
    before, now = ({**c, "augment": {**AugmentSettings().to_dict(), **c.get("augment", {})}}
                   for c in (saved["config"], config))
    changed = sorted(k for k in {*before, *now} - {"seeds", "settings"} if _plain(before.get(k)) != _plain(now.get(k)))
    changed += [g for g in GENERATORS if (saved.get(g) or {}).get("id") != (generators.get(g) or {}).get("id")]
    if changed:
        raise SystemExit(f"--add: this run's {', '.join(changed)} differ from the saved run's: its seeds would "
                         "not be the same experiment; rerun the whole part")


def _plain(value):
    """A config value as JSON has it (a fresh run's tuples are the saved run's lists)."""
    return json.loads(json.dumps(value))
