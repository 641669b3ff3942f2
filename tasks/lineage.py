"""Lineage: from a generated sample back to its real source image.

Answers "where did this sample come from?": the chain of parents down to the real image and
its source path, labels before and after (by name), removed and kept classes, the LKG decision
with its rationale and source, the mask's extent, the checkpoints that made it, its seed and
its run (with the Prefect UI link when a server address is configured).
"""

from __future__ import annotations

import json
import os

import numpy as np

from tasks import store
from tasks.catalog import Catalog, QueryRefused
from tasks.dataset import GENERATED_ORIGINS, image_root
from tasks.images import decode_mask

ROW_COLUMNS = ("dataset", "sample_id", "labels", "split", "patient_id", "source_uri", "origin", "parent_id",
               "removed_labels", "kept_labels", "mask", "decision_id", "generator_id", "classifier_id", "seed",
               "quality", "accepted", "run_id", "created_at")
OPTIONAL_COLUMNS = ("verdict", "ood_score")
MAX_DEPTH = 16


def _row(catalog: Catalog, sample_id: str, prefer: str | None = None) -> dict | None:
    """The sample a full id or a prefix names; with ``copies``: every other dataset and run that
    holds the same sample (the same content written again, e.g. by two runs into two outputs).
    The copy in dataset ``prefer`` comes first when there is one (a generated row's parent in the
    dataset its run read, not wherever the same image was ingested first)."""
    key = sample_id.strip().lower()
    if len(key) < 8:
        raise QueryRefused("give at least 8 characters of the sample id")
    ids = [r[0] for r in catalog.con.execute(
        "SELECT DISTINCT sample_id FROM samples WHERE sample_id >= ? AND sample_id < ? LIMIT 2",
        [key, key + "g"]).fetchall()]  # prefix match; 'g' sorts after every hex digit
    if len(ids) > 1:
        raise QueryRefused(f"{sample_id!r} matches more than one sample; give more characters")
    if not ids:
        return None
    present = {d[0] for d in catalog.con.execute("SELECT * FROM samples LIMIT 0").description}
    columns = ROW_COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if c in present)  # older shards lack the newer ones
    rows = [dict(zip(columns, r)) for r in catalog.con.execute(
        f"SELECT {', '.join(columns)} FROM samples WHERE sample_id = ? ORDER BY created_at, dataset", ids).fetchall()]
    if prefer:
        rows.sort(key=lambda r: _same_place(r["dataset"], prefer), reverse=True)  # stable: created_at order kept
    return {**rows[0], "copies": [{"dataset": r["dataset"], "run_id": r["run_id"], "created_at": str(r["created_at"])}
                                  for r in rows[1:]]}


def _same_place(a: str, b: str) -> bool:
    """Whether two dataset URIs name one folder (local paths compared absolute)."""
    norm = [u.rstrip("/") if store.is_remote(u) else os.path.abspath(u) for u in (a, b)]
    return norm[0] == norm[1]


def _source(manifest: dict, row: dict) -> dict:
    """Where a real row's image was read from: its path joined to the image folder of the run that
    ingested it (manifest ``images_roots``; manifests written before it name only the last
    ingest's folder), and whether that file is there now: a path is never printed as if it were."""
    path = row["source_uri"]
    if path and path.startswith("phantom://"):  # rendered again from its seed and index, not a file
        return {"source_uri": path, "source_path": path, "source_exists": None}
    certain = True
    if path and "://" not in path:
        root, certain = image_root(manifest, row["run_id"])
        if root is None:
            return {"source_uri": path, "source_path": None, "source_exists": False,
                    "source_note": "the folder it was ingested from is not recorded"}
        path = store.join(root, path)
    found = bool(path) and store.exists(path)
    note = ("not there now: moved or deleted since it was ingested" if path and not found else
            "the dataset records only its last ingest's folder: this may be another folder's file" if not certain
            else None)
    return {"source_uri": row["source_uri"], "source_path": path, "source_exists": found,
            **({"source_note": note} if note else {})}


def _manifest(dataset_uri: str, cache: dict) -> dict:
    if dataset_uri not in cache:
        cache[dataset_uri] = store.read_json(store.join(dataset_uri, "dataset.json"))
    return cache[dataset_uri]


def _named(labels, names: list[str]) -> dict:
    out = {}
    for name, value in zip(names, labels or []):
        out[name] = None if value is None or np.isnan(value) else int(value)
    return out


def _mask_summary(data: bytes | None) -> dict | None:
    if not data:
        return None
    mask = decode_mask(data)
    ys, xs = np.nonzero(mask)
    return {"area": round(float(mask.mean()), 4), "pixels": int(mask.sum()),
            "bbox_xywh": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            if len(xs) else None}


def _one(catalog: Catalog, sql: str, key) -> dict | None:
    cursor = catalog.con.execute(sql, [key])
    row = cursor.fetchone()
    return dict(zip([d[0] for d in cursor.description], row)) if row else None


def _record(catalog: Catalog, view: str, key_column: str, key) -> dict | None:
    """One JSON record of a view (runs, checkpoints) as its file holds it (tasks.catalog keeps
    each file's text in the ``record`` column)."""
    row = catalog.con.execute(f"SELECT record FROM {view} WHERE {key_column} = ? LIMIT 1", [key]).fetchone()
    return drop_nulls(json.loads(row[0])) if row else None


def drop_nulls(value):
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    return value


def ui_link(run_id: str | None) -> str | None:
    base = os.environ.get("PREFECT_UI_URL") or (os.environ.get("PREFECT_API_URL") or "").removesuffix("/api")
    return f"{base.rstrip('/')}/runs/flow-run/{run_id}" if base and run_id else None


def _run_link(catalog: Catalog, row: dict) -> str | None:
    """The Prefect UI page of the run that wrote ``row``, when that run was a Prefect flow run
    (its record says so; a CLI ingest runs outside Prefect, and a link to it would be a 404)."""
    present = {d[0] for d in catalog.con.execute("SELECT * FROM runs LIMIT 0").description}
    if "prefect_flow_run" not in present:
        return None
    found = catalog.con.execute("SELECT bool_or(prefect_flow_run) FROM runs WHERE run_id = ?",
                                [row["run_id"]]).fetchone()
    return ui_link(row["run_id"]) if found and found[0] else None



def _parent_missing(root: str, dataset: str, parent_dataset: str | None) -> str:
    """What to do when a generated row's parent is outside the catalog: the folder that holds the
    row's dataset and the one its run read (from its manifest), when they share one."""
    if not parent_dataset:
        return f"its parent is not under {root}: give a --root that holds both datasets"
    shared = []
    for a, b in zip(dataset.rstrip("/").split("/"), parent_dataset.rstrip("/").split("/")):
        if a != b:
            break
        shared.append(a)
    named = [part for part in shared if part and not part.endswith(":")]  # a folder or bucket, not only "s3:"
    hint = f"--root {'/'.join(shared)}" if named else "a --root that holds both datasets"
    return f"its parent is not under {root}: its run read {parent_dataset}; give {hint}"

def lineage(catalog: Catalog, sample_id: str) -> dict:
    """The chain from ``sample_id`` to its real source; raises LookupError when unknown."""
    manifests: dict = {}
    row = _row(catalog, sample_id)
    if row is None:
        raise LookupError(f"no sample {sample_id!r} under {catalog.root}")
    chain = []
    while row is not None and len(chain) < MAX_DEPTH:
        manifest = _manifest(row["dataset"], manifests)
        names = manifest["labels"]
        step = {"sample_id": row["sample_id"], "dataset": row["dataset"], "origin": row["origin"],
                "split": row["split"], "patient_id": row["patient_id"], "labels": _named(row["labels"], names),
                "run_id": row["run_id"], "created_at": str(row["created_at"]), "run_link": _run_link(catalog, row),
                "also_in": row["copies"]}
        if row["origin"] in GENERATED_ORIGINS:
            decision = _one(catalog, "SELECT decision_id, judge, model, prompt_version, head, tail, keep, remove, "
                                     "rationale, source, error FROM decisions WHERE decision_id = ?", row["decision_id"])
            step.update({
                "parent_id": row["parent_id"], "removed_labels": row["removed_labels"],
                "kept_labels": row["kept_labels"], "mask": _mask_summary(row["mask"]), "seed": row["seed"],
                "quality": row["quality"], "ood_score": row.get("ood_score"), "accepted": row["accepted"],
                "verdict": row.get("verdict"),
                "decision": decision,
                "classifier": _record(catalog, "checkpoints", "id", row["classifier_id"]) or {"id": row["classifier_id"]},
                "generator": _record(catalog, "checkpoints", "id", row["generator_id"]) or {"id": row["generator_id"]},
                "run": _record(catalog, "runs", "run_id", row["run_id"])})
        else:
            step.update(_source(manifest, row))
        chain.append(step)
        if not row["parent_id"]:
            break
        parent_dataset = (manifest.get("source") or {}).get("parent")
        parent = _row(catalog, row["parent_id"], prefer=parent_dataset)
        if parent is None:
            chain.append({"sample_id": row["parent_id"], "missing": _parent_missing(catalog.root, row["dataset"],
                                                                                   parent_dataset)})
        row = parent
    first = chain[0]
    real = next((s for s in reversed(chain) if s.get("origin") not in (None, *GENERATED_ORIGINS)), None)
    summary = {"sample_id": first["sample_id"], "origin": first["origin"], "depth": len(chain) - 1,
               "source": real.get("source_path") if real else None,
               "source_exists": real.get("source_exists") if real else None}
    if real and first is not real:
        summary["labels_before"] = [n for n, v in real["labels"].items() if v == 1]
        summary["labels_after"] = [n for n, v in first["labels"].items() if v == 1]
    return {"summary": summary, "chain": chain}
