"""Ingest and phantom throughput (images/s) on this machine.

    python -m benchmarks.bench_ingest [--repeats 3] [--quick]

Writes benchmarks/results/ingest.json. Median over repeats; absolute times only describe the
machine recorded beside them. Real-data rows are skipped when ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import SHARED_DATA, rate, save, timed
from tasks import sources
from tasks.ingest import IngestOptions, ingest, ingest_phantom
from tasks.phantom import phantom_images


def _fresh(tmp: Path, name: str, counter=[0]) -> str:
    counter[0] += 1
    return str(tmp / f"{name}-{counter[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller inputs, one repeat")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    results: dict = {"settings": {"repeats": repeats, "quick": args.quick}, "stages": {}}
    stages = results["stages"]
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        nih = SHARED_DATA / "nih1000"
        if (nih / "Data_Entry_2017_v2020.csv").exists():
            for workers in (1, 4):
                seconds, _ = timed(lambda: ingest(sources.read_nih(str(nih / "Data_Entry_2017_v2020.csv")),
                                                  str(nih / "images"), _fresh(tmp, "nih"),
                                                  IngestOptions(size=64, workers=workers)), repeats)
                stages[f"ingest_nih1000_64px_workers{workers}"] = rate(1000, seconds)
        normals = SHARED_DATA / "normals"
        if (normals / "normals.csv").exists() and not args.quick:
            seconds, report = timed(lambda: ingest(sources.read_folder(str(normals / "normals.csv")), str(normals),
                                                   _fresh(tmp, "normals"), IngestOptions(size=128, shard_rows=2048)), 1)
            stages["ingest_normals_128px_workers4"] = rate(report.rows_written, seconds)
        n = 200 if args.quick else 1000
        for size in (64, 128):
            seconds, _ = timed(lambda: sum(1 for _ in phantom_images(n, size=size, seed=1)), repeats)
            stages[f"phantom_render_{size}px"] = rate(n, seconds)
            seconds, _ = timed(lambda: ingest_phantom(_fresh(tmp, "phantom"), n, size=size, seed=1), repeats)
            stages[f"phantom_dataset_{size}px"] = rate(n, seconds)
    path = save("ingest", results)
    print(json.dumps(results["stages"], indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
