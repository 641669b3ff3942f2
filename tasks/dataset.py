"""The dataset contract (design doc, section 4): row schema, dataset.json, shard writer, summary.

A dataset is a folder URI holding ``dataset.json``, ``samples/part-*.parquet`` (one row per
image, the image embedded as PNG bytes) and ``quarantine/part-*.parquet`` (rows that could
not be ingested or generated, each with its reason).

Longer than ~300 lines: the dataset contract in one place (row schema, manifest, shard writer,
verification, split checks), which every reader and writer of a dataset shares.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from tasks import store
from tasks.labels import HeadTailSplit, head_tail_split, positive_counts, vocabulary

SCHEMA_VERSION = 1
MANIFEST = "dataset.json"
SAMPLES = "samples"
QUARANTINE = "quarantine"
KINDS = ("real", "phantom", "augmented")  # what a dataset holds: one kind per dataset (check_writable)

BOX = pa.struct([("label", pa.string()), ("x", pa.float32()), ("y", pa.float32()),
                 ("w", pa.float32()), ("h", pa.float32())])
LESION_MASK = pa.struct([("label", pa.string()), ("mask", pa.binary())])

SAMPLE_FIELDS = [
    pa.field("sample_id", pa.string(), nullable=False),  # sha256 of pixels (real) / of parent+recipe (generated)
    pa.field("image", pa.binary(), nullable=False),  # PNG, 8- or 16-bit grayscale
    pa.field("height", pa.int32()),
    pa.field("width", pa.int32()),
    pa.field("bit_depth", pa.int8()),
    pa.field("labels", pa.list_(pa.float32())),  # aligned to dataset.json "labels": 1 / 0 / NaN
    pa.field("split", pa.string()),  # train | val | test
    pa.field("patient_id", pa.string()),  # the source's own pseudonymous id
    pa.field("view", pa.string()),
    pa.field("source_uri", pa.string()),  # path relative to the source's image root
    pa.field("origin", pa.string()),  # real | phantom | inpainted | conditional (GENERATED_ORIGINS: made here)
    pa.field("boxes", pa.list_(BOX)),  # source bounding boxes, fractions of the side
    pa.field("lesion_masks", pa.list_(LESION_MASK)),  # ground truth (phantom only)
    pa.field("parent_id", pa.string()),
    pa.field("removed_labels", pa.list_(pa.string())),
    pa.field("kept_labels", pa.list_(pa.string())),
    pa.field("mask", pa.binary()),
    pa.field("decision_id", pa.string()),
    pa.field("generator_id", pa.string()),
    pa.field("classifier_id", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("quality", pa.float32()),
    pa.field("ood_score", pa.float32()),  # generated: the OOD filter's score (augment.ood_method, models/ood.py); null: off
    pa.field("accepted", pa.bool_()),  # generated: passed quality and the removal check (fine-tuning uses these)
    pa.field("verdict", pa.string()),  # generated: "ok", or why the row is not accepted
    pa.field("run_id", pa.string()),
    pa.field("created_at", pa.timestamp("us", tz="UTC")),
]
GENERATED_ORIGINS = ("inpainted", "conditional")  # rows the factory made: decision, seed, checkpoints, verdict
QUARANTINE_SCHEMA = pa.schema([
    pa.field("quarantine_id", pa.string(), nullable=False),
    pa.field("row", pa.int64()),  # data row in the source table (0-based)
    pa.field("source_uri", pa.string()),
    pa.field("patient_id", pa.string()),
    pa.field("raw_labels", pa.string()),
    pa.field("reason_code", pa.string()),  # short kind, for counting
    pa.field("reason", pa.string()),  # what is wrong, for a person
    pa.field("stage", pa.string()),  # ingest | phantom | augment
    pa.field("run_id", pa.string()),
    pa.field("created_at", pa.timestamp("us", tz="UTC")),
])


def sample_schema(extra_columns: list[str] = ()) -> pa.Schema:
    names = {f.name for f in SAMPLE_FIELDS}
    clashes = [c for c in extra_columns if c in names]
    if clashes:
        raise ValueError(f"extra columns {clashes} clash with the sample contract; rename them")
    return pa.schema(SAMPLE_FIELDS + [pa.field(c, pa.string()) for c in extra_columns])


def new_run_id() -> str:
    """The Prefect flow run id inside a flow run, else a fresh uuid4."""
    try:
        from prefect.runtime import flow_run

        run_id = flow_run.get_id()
        if run_id:
            return str(run_id)
    except ImportError:
        pass
    return str(uuid.uuid4())


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class ShardWriter:
    """Collects rows and writes them as content-named shards of ``shard_rows`` rows."""

    dataset_uri: str
    schema: pa.Schema
    shard_rows: int = 1024
    run_id: str = field(default_factory=new_run_id)
    written: int = 0
    shards: list[str] = field(default_factory=list)
    quarantined: Counter = field(default_factory=Counter)  # by reason code, repeats included
    known_quarantine: set[str] = field(default_factory=set)  # ids already recorded: not written again
    _rows: list[dict] = field(default_factory=list)
    _bad: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.shard_rows < 1:
            raise ValueError("shard_rows must be at least 1")
        self.created_at = utcnow()

    def add(self, row: dict) -> None:
        self._rows.append({"run_id": self.run_id, "created_at": self.created_at, **row})
        if len(self._rows) >= self.shard_rows:
            self.flush()

    def quarantine(self, *, reason_code: str, reason: str, stage: str, row: int | None = None,
                   source_uri: str | None = None, patient_id: str | None = None,
                   raw_labels: str | None = None, key: str | None = None) -> None:
        key = key or f"{stage}|{row}|{source_uri}|{reason_code}"
        self.quarantined[reason_code] += 1
        if key in self.known_quarantine:
            return
        self.known_quarantine.add(key)
        self._bad.append({"quarantine_id": key, "row": row, "source_uri": source_uri,
                          "patient_id": patient_id, "raw_labels": raw_labels, "reason_code": reason_code,
                          "reason": reason, "stage": stage, "run_id": self.run_id,
                          "created_at": self.created_at})

    def flush(self) -> None:
        if self._rows:
            # sorted ids give each row group a narrow id range: lookups skip the others
            self._rows.sort(key=lambda r: r["sample_id"])
            table = pa.Table.from_pylist(self._rows, schema=self.schema)
            uri, _ = store.write_shard(store.join(self.dataset_uri, SAMPLES), table, "sample_id")
            self.shards.append(uri)
            self.written += len(self._rows)
            self._rows = []

    def close(self) -> None:
        """Quarantine first, samples last: a samples shard marks its batch as complete."""
        if self._bad:
            table = pa.Table.from_pylist(self._bad, schema=QUARANTINE_SCHEMA)
            store.write_shard(store.join(self.dataset_uri, QUARANTINE), table, "quarantine_id")
            self._bad = []
        self.flush()


def existing_rows(dataset_uri: str, columns: list[str]) -> pa.Table | None:
    return store.read_shards(store.join(dataset_uri, SAMPLES), columns=columns)


def quarantine_rows(dataset_uri: str, limit: int | None = None) -> list[dict]:
    """The quarantine rows of a dataset, in table order (``tailforge info --reasons``)."""
    read_manifest(dataset_uri)  # a clear error for a path that is no dataset
    table = store.read_shards(store.join(dataset_uri, QUARANTINE),
                              columns=["row", "source_uri", "reason_code", "reason", "stage"])
    if table is None:
        return []
    rows = sorted(table.to_pylist(), key=lambda r: (r["stage"] or "", r["row"] if r["row"] is not None else -1))
    return rows[:limit] if limit else rows


STANDING_REASONS = ("duplicate_row", "duplicate_image")  # about another row: still true when this one lands


def retire_quarantine(dataset_uri: str, landed_paths: set[str], stage: str = "ingest") -> int:
    """Drop the ``stage`` quarantine rows whose source path is now a sample (a re-ingest after
    the folder was fixed); returns how many. Each shard that held one is rewritten
    without them: the new content-named shard first, then the old one removed, so a crash in
    between leaves the old rows beside the new ones, never fewer (the next re-ingest retires
    them). Call it under the dataset's lock."""
    folder = store.join(dataset_uri, QUARANTINE)
    retired = 0
    for uri in store.list_shards(folder):
        table = store.read_parquet([uri])
        stages, paths = table.column("stage").to_pylist(), table.column("source_uri").to_pylist()
        codes = table.column("reason_code").to_pylist()
        keep = [not (st == stage and p in landed_paths and c not in STANDING_REASONS)
                for st, p, c in zip(stages, paths, codes)]
        if all(keep):
            continue
        if any(keep):
            store.write_shard(folder, table.filter(pa.array(keep)), "quarantine_id")
        store.remove(uri)
        retired += keep.count(False)
    return retired


def existing_quarantine_ids(dataset_uri: str) -> set[str]:
    table = store.read_shards(store.join(dataset_uri, QUARANTINE), columns=["quarantine_id"])
    return set(table.column("quarantine_id").to_pylist()) if table is not None else set()


def read_manifest(dataset_uri: str) -> dict:
    uri = store.join(dataset_uri, MANIFEST)
    if not store.exists(uri):
        raise FileNotFoundError(f"no dataset at {dataset_uri}: {MANIFEST} is missing "
                                f"(make one with `tailforge ingest ...` or `tailforge phantom`)")
    return store.read_json(uri)


def label_matrix(table: pa.Table, n_labels: int) -> np.ndarray:
    """(N, K) float32 from a ``labels`` list column."""
    flat = table.column("labels").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(-1, n_labels)


def dataset_kind(manifest: dict) -> str:
    """What a dataset holds (``KINDS``): recorded in its manifest, or read from the source of a
    manifest written before kinds were."""
    if "kind" in manifest:
        return manifest["kind"]
    return {"augment": "augmented", "phantom": "phantom"}.get((manifest.get("source") or {}).get("kind"), "real")


def image_root(manifest: dict, run_id: str | None) -> tuple[str | None, bool]:
    """(the image folder a real row's ingest run read, whether that is known for certain). A
    manifest written before ``images_roots`` names only its last ingest's folder (uncertain)."""
    roots = manifest.get("images_roots") or {}
    if run_id in roots:
        return roots[run_id], True
    return (manifest.get("source") or {}).get("images_root"), False


def check_writable(dataset_uri: str, kind: str, vocab_name: str | None = None, image_size: int | None = None,
                   parent: str | None = None) -> dict | None:
    """Refuse, before any work and in one line, to add ``kind`` rows to an existing dataset of
    another kind (phantom rows in a real dataset, generated rows in an ingested one), of another
    vocabulary or size, or (generated rows) made from another parent dataset: such a write would
    change its counts, name and head/tail without a word. A new folder is always writable.
    Returns the existing manifest (None for a new folder). A system folder is refused too."""
    store.check_output_location(dataset_uri, "dataset")
    try:
        manifest = read_manifest(dataset_uri)
    except FileNotFoundError:
        return None
    have = dataset_kind(manifest)
    if have != kind:
        raise ValueError(f"{dataset_uri} is a {have} dataset ({manifest['name']!r}); adding {kind} rows would mix "
                         f"them into it. Choose another --out")
    if vocab_name is not None and (manifest["vocabulary"], manifest["image_size"]) != (vocab_name, image_size):
        raise ValueError(f"{dataset_uri} already holds a {manifest['vocabulary']} dataset at {manifest['image_size']} "
                         f"px; this write is {vocab_name} at {image_size} px. Choose another --out.")
    made_from = (manifest.get("source") or {}).get("parent")
    if parent is not None and made_from not in (None, parent):
        raise ValueError(f"{dataset_uri} holds samples generated from {made_from}, not from {parent}: choose "
                         f"another --out")
    return manifest


def finish_manifest(dataset_uri: str, *, name: str, kind: str, vocab_name: str, image_size: int, source: dict,
                    run_id: str, explicit_tail: list[str] | None = None, extra_columns: list[str] = (),
                    extra: dict | None = None) -> dict:
    """Recompute the head/tail split over all rows and write dataset.json atomically."""
    if kind not in KINDS:
        raise ValueError(f"dataset kind {kind!r} is not one of {KINDS}")
    vocab = vocabulary(vocab_name)
    rows = existing_rows(dataset_uri, ["labels", "split"])
    if rows is None or rows.num_rows == 0:
        counts = {f: 0 for f in vocab.findings}
    else:
        train = rows.filter(pa.compute.equal(rows.column("split"), "train"))
        counts = positive_counts(label_matrix(train, len(vocab)), vocab)
    split: HeadTailSplit = head_tail_split(counts, vocab, explicit_tail)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "kind": kind,
        "vocabulary": vocab.name,
        "labels": list(vocab.findings),
        "normal_label": vocab.normal_label,
        "image_size": image_size,
        "head_tail": split.to_json(),
        "source": source,
        "extra_columns": list(extra_columns),
        "run_id": run_id,
        "updated_at": utcnow().isoformat(),
        **(extra or {}),
    }
    store.write_json(store.join(dataset_uri, MANIFEST), manifest)
    return manifest


def summarize(dataset_uri: str) -> dict:
    """Rows, per-split and per-class counts, head/tail classes and quarantine counts."""
    manifest = read_manifest(dataset_uri)
    findings = manifest["labels"]
    rows = existing_rows(dataset_uri, ["sample_id", "labels", "split", "origin", "patient_id"])
    splits: Counter = Counter()
    per_class = {f: Counter() for f in findings}
    normal: Counter = Counter()
    origins: Counter = Counter()
    if rows is not None:
        labels = label_matrix(rows, len(findings))
        split_column = np.asarray(rows.column("split").to_pylist(), dtype=object)
        splits.update(split_column.tolist())
        origins.update(rows.column("origin").to_pylist())
        for split in splits:
            chosen = labels[split_column == split]
            for f, n in zip(findings, (chosen == 1.0).sum(axis=0)):
                per_class[f][split] = int(n)
            normal[split] = int((chosen == 0.0).all(axis=1).sum())
    bad = store.read_shards(store.join(dataset_uri, QUARANTINE), columns=["reason_code"])
    reasons = Counter(bad.column("reason_code").to_pylist()) if bad is not None else Counter()
    return {
        "uri": dataset_uri,
        "name": manifest["name"],
        "vocabulary": manifest["vocabulary"],
        "image_size": manifest["image_size"],
        "rows": int(sum(splits.values())),
        "splits": dict(sorted(splits.items())),
        "origins": dict(origins),
        "classes": {f: {**dict(per_class[f]), "all": int(sum(per_class[f].values()))} for f in findings},
        "normal": {**dict(normal), "all": int(sum(normal.values()))},
        "head": manifest["head_tail"]["head"],
        "tail": manifest["head_tail"]["tail"],
        "head_tail_rule": manifest["head_tail"]["rule"],
        "quarantined": int(sum(reasons.values())),
        "quarantine_reasons": dict(reasons.most_common()),
        "duplicate_ids": duplicate_ids(rows),
        "patients_in_several_splits": patients_in_several_splits(rows),
    }


def verify_dataset(dataset_uri: str) -> dict:
    """Every shard of a dataset (samples, quarantine, decisions) read whole and checked against its
    name (tasks/store.py); ``ShardCorrupt`` names the first that differs."""
    read_manifest(dataset_uri)  # a folder that is no dataset: the usual one line
    started = time.perf_counter()
    counts = store.verify_shards(store.glob(dataset_uri, f"**/{store.SHARD_PREFIX}*.parquet"))
    return {"uri": dataset_uri, **counts, "seconds": round(time.perf_counter() - started, 3)}


def patient_splits(rows: pa.Table | None) -> dict[str, str]:
    """{patient id: the split of its first row} over rows with ``patient_id`` and ``split``."""
    found: dict[str, str] = {}
    if rows is not None:
        for patient, split in zip(rows.column("patient_id").to_pylist(), rows.column("split").to_pylist()):
            if patient:
                found.setdefault(patient, split)
    return found


def patients_in_several_splits(rows: pa.Table | None) -> dict[str, list[str]]:
    """{patient id: its splits} for every patient whose rows sit in more than one split."""
    splits: dict[str, set[str]] = {}
    if rows is not None:
        for patient, split in zip(rows.column("patient_id").to_pylist(), rows.column("split").to_pylist()):
            if patient:
                splits.setdefault(patient, set()).add(split)
    return {p: sorted(s) for p, s in sorted(splits.items()) if len(s) > 1}


def duplicate_ids(rows: pa.Table | None) -> dict[str, int]:
    """sample_id -> copies, for ids held more than once (two writers at once; should be empty)."""
    if rows is None:
        return {}
    counts = pa.compute.value_counts(rows.column("sample_id")).to_pylist()
    return {c["values"]: c["counts"] for c in counts if c["counts"] > 1}
