"""Planning at full-table scale: NIH (112,120 rows) and CheXpert (223,414 rows).

    python -m benchmarks.bench_plan [--llm]

Builds synthetic datasets of that size whose label sets come from the phantom's calibrated
prevalence/co-occurrence model (tiny 8x8 PNGs stand in for images; planning never reads
them), then times `plan` cold (every decision new, rules judge), warm (all cached), and,
with --llm, counts Anthropic calls against the fake Messages server of the test suite.
Writes benchmarks/results/plan.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks.common import save
from tasks.dataset import ShardWriter, finish_manifest, sample_schema
from tasks.images import encode_png
from tasks.knowledge import AnthropicJudge, LLMSettings, plan
from tasks.labels import vocabulary
from tasks.phantom import sample_labels

SIZES = {"nih": 112_120, "chexpert": 223_414}


def build(uri: str, vocab: str, rows: int) -> float:
    started = time.perf_counter()
    voc = vocabulary(vocab)
    png = encode_png(np.arange(64, dtype=np.uint8).reshape(8, 8))
    writer = ShardWriter(uri, sample_schema(), shard_rows=50_000, run_id="bench")
    splits = np.random.default_rng(1).choice(["train", "val", "test"], size=rows, p=[0.7, 0.1, 0.2])
    for i in range(rows):
        labels = sample_labels(np.random.default_rng([7, i]), voc)
        writer.add({"sample_id": f"{vocab}-{i:07d}", "image": png, "height": 8, "width": 8, "bit_depth": 8,
                    "labels": labels.tolist(), "split": str(splits[i]), "origin": "phantom"})
    writer.close()
    finish_manifest(uri, name=f"synthetic-{vocab}", kind="real", vocab_name=vocab, image_size=8,
                    source={"kind": "synthetic-labels", "rows": rows}, run_id="bench")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", action="store_true", help="also count LLM calls against the fake server")
    args = parser.parse_args()
    results: dict = {"settings": {"rows": SIZES, "label_model": "tasks.phantom.sample_labels"}, "runs": {}}
    with tempfile.TemporaryDirectory() as folder:
        for vocab, rows in SIZES.items():
            uri = os.path.join(folder, vocab)
            build_s = build(uri, vocab, rows)
            cache = os.path.join(folder, f"{vocab}.duckdb")
            cold_start = time.perf_counter()
            cold, _ = plan(uri, cache)
            cold_s = time.perf_counter() - cold_start
            warm_start = time.perf_counter()
            warm, _ = plan(uri, cache)
            warm_s = time.perf_counter() - warm_start
            run = {"rows": rows, "build_s": round(build_s, 1), "train_images": cold.train_images,
                   "candidate_images": cold.candidate_images, "distinct_label_sets": len(cold.label_sets),
                   "plan_cold_s": round(cold_s, 3), "plan_warm_s": round(warm_s, 3),
                   "cold_decisions_made": cold.cache_misses, "warm_cache_hits": warm.cache_hits,
                   "images_to_generate": cold.images_to_generate}
            if args.llm:
                from benchmarks.fake_anthropic import FakeAnthropic

                with FakeAnthropic("ok") as fake:
                    os.environ.update({"ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": fake.url})
                    llm_cache = os.path.join(folder, f"{vocab}-llm.duckdb")
                    start = time.perf_counter()
                    first, _ = plan(uri, llm_cache, AnthropicJudge(LLMSettings(max_retries=0)))
                    first_s = time.perf_counter() - start
                    again, _ = plan(uri, llm_cache, AnthropicJudge(LLMSettings(max_retries=0)))
                    run.update({"llm_calls_first_run": first.llm_calls, "llm_calls_rerun": again.llm_calls,
                                "http_requests": len(fake.message_requests),
                                "plan_llm_first_s": round(first_s, 2)})
            results["runs"][vocab] = run
            print(vocab, json.dumps(run))
    print(f"written: {save('plan', results)}")


if __name__ == "__main__":
    main()
