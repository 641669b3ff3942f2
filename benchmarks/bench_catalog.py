"""Catalog scale: lineage lookups and per-class counts over a million sample rows.

    python -m benchmarks.bench_catalog [--rows 1000000]

Writes a synthetic root (a "real" dataset and a generated one pointing at it, 50,000-row
shards written by the project's own ShardWriter, so rows are sorted by id as in production;
a 68-byte PNG stands in for each image), then times `lineage` for random generated samples
and a per-class count of generated samples per night. Writes benchmarks/results/catalog.json.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import save
from tasks.catalog import open_catalog, query
from tasks.dataset import ShardWriter, finish_manifest, sample_schema
from tasks.images import encode_mask, encode_png
from tasks.knowledge import RulesJudge, Question, export_decisions
from tasks.labels import vocabulary

PER_CLASS = ("SELECT night, class, count(*) AS n FROM (SELECT date_trunc('day', s.created_at) AS night, "
             "unnest(d.tail) AS class FROM samples s JOIN decisions d USING (decision_id) "
             "WHERE s.origin = 'inpainted' AND s.accepted) GROUP BY ALL ORDER BY ALL")


def build(root: Path, rows: int) -> list[str]:
    vocab = vocabulary("nih")
    png = encode_png(np.zeros((8, 8), np.uint8))
    mask = encode_mask(np.eye(8, dtype=bool))
    rng = np.random.default_rng(0)
    decisions = [RulesJudge().decide(Question.of([h], [t])) for h in vocab.findings[:7] for t in vocab.findings[7:]]
    real_n, generated_n = rows // 2, rows - rows // 2
    real_ids = [hashlib.sha256(f"real{i}".encode()).hexdigest() for i in range(real_n)]
    real = ShardWriter(str(root / "datasets" / "real"), sample_schema(), shard_rows=50_000, run_id="ingest")
    for i, sid in enumerate(real_ids):
        real.add({"sample_id": sid, "image": png, "height": 8, "width": 8, "labels": [0.0] * 14, "split": "train",
                  "source_uri": f"{i:08d}.png", "origin": "real", "patient_id": str(i // 3)})
    real.close()
    finish_manifest(str(root / "datasets" / "real"), name="real", kind="real", vocab_name="nih", image_size=8,
                    source={"kind": "nih", "images_root": "/data/nih/images"}, run_id="ingest")
    out = root / "runs" / "nightly" / "augmented"
    generated = ShardWriter(str(out), sample_schema(), shard_rows=50_000, run_id="night-1")
    generated_ids = []
    for i in range(generated_n):
        d = decisions[i % len(decisions)]
        sid = hashlib.sha256(f"gen{i}".encode()).hexdigest()
        generated_ids.append(sid)
        generated.add({"sample_id": sid, "image": png, "height": 8, "width": 8, "labels": [0.0] * 14,
                       "split": "train", "origin": "inpainted", "parent_id": real_ids[int(rng.integers(real_n))],
                       "removed_labels": list(d.remove), "kept_labels": list(d.keep), "mask": mask,
                       "decision_id": d.decision_id, "seed": i, "quality": 0.5, "accepted": bool(i % 5)})
    generated.close()
    export_decisions(decisions, str(out / "decisions"))
    finish_manifest(str(out), name="augmented", kind="augmented", vocab_name="nih", image_size=8,
                    source={"kind": "augment"},
                    run_id="night-1", explicit_tail=list(vocab.findings[7:]))
    return generated_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        started = time.perf_counter()
        ids = build(root, args.rows)
        build_s = time.perf_counter() - started
        from tasks.lineage import lineage

        started = time.perf_counter()
        catalog = open_catalog(str(root))
        open_s = time.perf_counter() - started
        rng = np.random.default_rng(1)
        lookups = []
        for sid in rng.choice(ids, args.lookups, replace=False):
            started = time.perf_counter()
            result = lineage(catalog, str(sid))
            lookups.append(time.perf_counter() - started)
            assert result["summary"]["depth"] == 1
        counts = []
        for _ in range(3):
            started = time.perf_counter()
            _, rows = query(catalog, PER_CLASS)
            counts.append(time.perf_counter() - started)
        total = query(catalog, "SELECT count(*) FROM samples")[1][0][0]
        catalog.close()
    result = {"settings": {"rows": args.rows, "lookups": args.lookups, "shard_rows": 50_000},
              "rows_in_catalog": total, "build_s": round(build_s, 1), "open_catalog_s": round(open_s, 3),
              "lineage_median_s": round(statistics.median(lookups), 4), "lineage_max_s": round(max(lookups), 4),
              "per_class_count_median_s": round(statistics.median(counts), 3), "per_class_rows": len(rows)}
    print(result)
    print(f"written: {save('catalog', result)}")


if __name__ == "__main__":
    main()
