"""What the factory costs on this machine: per-stage images/s, the orchestration overhead of a
10,000-image augment run on a real Prefect server (batched against one task per image), and
LLM calls per run and on a rerun.

    python -m benchmarks.throughput [--quick]     (or: python -m benchmarks.experiment --part throughput)

Stages are medians over repeats. The batched run generates 10,000 images; one task per image
is measured on 300 (its cost is per task, so it scales linearly). The augment runs use tiny models (a 32 px phantom, a
classifier trained 2 epochs, a 2-block DiT, one denoising step) so that the model work is
small and what is left is the factory's own cost: Prefect (task runs, the ``gpu`` slot),
Parquet reads and writes, PNG coding. That cost per image is then set against the model time
of the real sampler measured here, to give the overhead's share of a real run. Without a GPU in
this task, no CUDA figures are taken.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, ROOT, SHARED_DATA, commit, machine, rate, timed
from flows.settings import tailforge_home
from models.classifier import ClassifierConfig, build_classifier
from models.gradcam import cam_maps
from models.dit import DiTConfig, DiTTrainConfig, build_dit, build_scheduler, load_dit
from models.inpaint import InpaintConfig, inpaint
from models.training import TrainConfig, fit_classifier
from tasks import sources, store
from tasks.dataset import ShardWriter, sample_schema
from tasks.ingest import IngestOptions, ingest, ingest_phantom
from tasks.knowledge import AnthropicJudge, LLMSettings, plan
from tasks.phantom import phantom_images
from tasks.pretrain import train_classifier, train_normal_dit
from tasks.tensors import load_tensors

# the tail split that makes the most phantom train images candidates (about 1 in 10)
WIDE_TAIL = ("Cardiomegaly", "Infiltration", "Nodule", "Consolidation", "Emphysema", "Fibrosis")
REAL_SAMPLER = InpaintConfig()  # the product's sampler
CHEAP = {"cam_method": "eigencam", "mask": {"max_area": 0.6},
         "inpaint": {"steps": 1, "jump_length": 1, "resample": 1}, "quality_max_z": 1000.0,
         "ood_filter": False}


def real_sampler_rate(batch: torch.Tensor, repeats: int) -> dict:
    """Images/s of the real sampler (REAL_SAMPLER) with the 64 px DiT of dit_real.json: its
    checkpoint when it is on this machine, else a DiT of the same config with untrained weights
    (the speed does not depend on the weights; the entry says which)."""
    record = json.loads((RESULTS / "dit_real.json").read_text())
    dit_uri = record["checkpoint"]["uri"]
    if store.exists(dit_uri):
        dit, dit_config, _ = load_dit(store.read_bytes(dit_uri))
        which = dit_uri.rsplit("/", 1)[-1]
    else:
        dit_config = DiTConfig(**{k: v for k, v in record["settings"]["config"].items()})
        dit, which = build_dit(dit_config).eval(), "untrained, the config of dit_real.json (speed only)"
    scheduler = build_scheduler(dit_config)
    mask = torch.zeros_like(batch)
    mask[..., 16:40, 12:36] = 1.0
    return rate(len(batch), timed(lambda: inpaint(
        dit, scheduler, batch, mask, REAL_SAMPLER, [torch.Generator().manual_seed(i) for i in range(len(batch))]),
        repeats)[0]) | {"sampler": REAL_SAMPLER.__dict__, "dit": which}


def stages(work: Path, repeats: int) -> dict:
    out: dict = {}
    nih = SHARED_DATA / "nih1000"
    if (nih / "Data_Entry_2017_v2020.csv").exists():
        def ingest_nih():
            target = work / "ingest-nih"
            shutil.rmtree(target, ignore_errors=True)
            ingest(sources.read_nih(str(nih / "Data_Entry_2017_v2020.csv")), str(nih / "images"), str(target),
                   IngestOptions(size=64))
        out["ingest_nih1000_64px"] = rate(1000, timed(ingest_nih, repeats)[0])
    out["phantom_render_64px"] = rate(500, timed(lambda: [None for _ in phantom_images(500, 64, 7)], repeats)[0])

    phantom = str(tailforge_home() / "bench" / "phantom64-3000-s21")
    if not store.exists(store.join(phantom, "dataset.json")):
        ingest_phantom(phantom, 3000, size=64, seed=21)
    data = load_tensors(phantom, splits=("train",), limit=1024)
    model = build_classifier(ClassifierConfig("resnet18", 14, 64))
    config = TrainConfig(epochs=1, batch_size=32)
    out["classifier_train_resnet18_64px"] = rate(len(data), timed(
        lambda: fit_classifier(model, data.images, data.labels, config), repeats)[0])
    images = data.images[:256]
    out["cam_gradcam_resnet18_64px"] = rate(256, timed(lambda: cam_maps(model.eval(), images, [0] * 256), repeats)[0])

    out["inpaint_real_dit_64px"] = real_sampler_rate(data.images[:32], repeats)

    table = store.read_shards(store.join(phantom, "samples"))
    extra = [name for name in table.schema.names if name not in sample_schema().names]
    rows = table.to_pylist()

    def write():
        target = work / "shards"
        shutil.rmtree(target, ignore_errors=True)
        writer = ShardWriter(str(target), sample_schema(extra), shard_rows=1024)
        for row in rows:
            writer.add(row)
        writer.close()
        shutil.copy(Path(phantom) / "dataset.json", target / "dataset.json")
    out["shard_write_64px"] = rate(len(rows), timed(write, repeats)[0])
    out["shard_read_decode_64px"] = rate(len(rows), timed(lambda: load_tensors(str(work / "shards")), repeats)[0])
    return out


def tiny_models(work: Path) -> tuple[dict, dict]:
    """A classifier and a DiT for 32 px phantom images, trained briefly (the flow needs checkpoints)."""
    tiny = str(work / "tiny32")
    ingest_phantom(tiny, 400, size=32, seed=2)
    models = str(work / "models")
    classifier = train_classifier(tiny, models, ClassifierConfig("resnet18", 14, 32), TrainConfig(epochs=2, batch_size=64))
    dit = train_normal_dit([tiny], models, DiTConfig(image_size=32, patch_size=8, depth=2, num_heads=2, head_dim=16),
                           DiTTrainConfig(steps=20, batch_size=16))
    return ({k: classifier[k] for k in ("kind", "id", "uri")}, {k: dit[k] for k in ("kind", "id", "uri")})


def augment_run(dataset: str, out: str, classifier: dict, generator: dict, batch_size: int, count: int,
                decisions: str) -> dict:
    """One augment flow run (in a process whose environment names the Prefect server)."""
    from flows.augment import augment_flow
    from flows.settings import KnowledgeSettings

    settings = {**CHEAP, "batch_size": batch_size, "max_images": count}
    # judge "none": every candidate is generated, so ~10% of the phantom's images are work
    return augment_flow(dataset, out, classifier, generator, KnowledgeSettings(judge="none"), settings, decisions)


def task_cost(tasks: int = 15) -> dict:
    """Milliseconds per Prefect task run that does nothing, without and with a slot of the
    ``gpu`` global concurrency limit (run where PREFECT_API_URL names the server)."""
    from prefect import flow, task
    from prefect.concurrency.sync import concurrency

    @task
    def bare(i: int) -> int:
        return i

    @task
    def with_slot(i: int) -> int:
        with concurrency("gpu", occupy=1):
            return i

    @flow
    def measure() -> dict:
        out = {}
        for name, fn in (("bare", bare), ("gpu_slot", with_slot), ("bare_after_slot", bare)):
            started = time.perf_counter()
            for i in range(tasks):
                fn.submit(i).result()
            out[f"{name}_ms_per_task"] = round(1000 * (time.perf_counter() - started) / tasks, 1)
        return out

    return {"tasks": tasks, **measure()}


def _child(args: list[str], env: dict) -> dict:
    ran = subprocess.run([sys.executable, "-m", "benchmarks.throughput", *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if ran.returncode:
        raise RuntimeError(f"{args[0]} failed:\n{ran.stderr[-3000:]}")
    return json.loads(ran.stdout.strip().splitlines()[-1])


def prefect_task_cost() -> dict:
    """task_cost() against the local server (started here when none runs)."""
    from flows import server

    started_server = server.running_url() is None
    env = {**os.environ, "PREFECT_API_URL": server.start(), "PREFECT_HOME": str(server.prefect_home())}
    try:
        subprocess.run([sys.executable, "-c", "from flows.server import ensure_gpu_limit; ensure_gpu_limit(1)"],
                       env=env, check=True, cwd=ROOT)
        return _child(["--task-cost"], env)
    finally:
        if started_server:
            server.stop()


def orchestration(work: Path, images: int, per_image: int, real_rate: float | None) -> dict:
    """The augment flow on a real Prefect server: ``images`` in batches of 64, ``per_image`` one per task."""
    from flows import server

    big = str(tailforge_home() / "bench" / "phantom32-wide-tail")
    n = int(images / 0.09)  # about 10% of phantom images are candidates with this tail (9% for a margin)
    started = time.perf_counter()
    report = ingest_phantom(big, n, size=32, seed=5, explicit_tail=WIDE_TAIL)
    phantom_seconds = time.perf_counter() - started
    classifier, generator = tiny_models(work)
    started_server = server.running_url() is None
    env = {**os.environ, "PREFECT_API_URL": server.start(), "PREFECT_HOME": str(server.prefect_home())}
    out: dict = {"dataset": {"images": n, "size": 32, "tail": list(WIDE_TAIL),
                             "phantom_images_per_s_32px": round(report.rows_written / phantom_seconds, 1)
                             if report.rows_written else None},
                 "server": env["PREFECT_API_URL"]}
    try:
        subprocess.run([sys.executable, "-c", "from flows.server import ensure_gpu_limit; ensure_gpu_limit(1)"],
                       env=env, check=True, cwd=ROOT)
        for name, batch_size, count in (("batched", 64, images), ("one_task_per_image", 1, per_image)):
            args = [big, str(work / f"augment-{name}"), json.dumps(classifier), json.dumps(generator),
                    str(batch_size), str(count), str(work / "decisions.duckdb")]
            result = _child(["--augment-run", *args], env)
            wall, model, inside = result["wall_seconds"], result["model_seconds"], result["task_seconds"]
            done = result["written"] + sum(result["quarantined"].values())
            entry = {"images": done, "tasks": result["batches_run"], "batch_size": batch_size,
                     "wall_s": wall, "model_s": model, "inside_tasks_s": inside,
                     "prefect_s": round(wall - inside, 2), "io_and_coding_s": round(inside - model, 2),
                     "overhead_per_image_ms": round(1000 * (wall - model) / done, 2),
                     "prefect_per_task_ms": round(1000 * (wall - inside) / max(1, result["batches_run"]), 1),
                     "overhead_share_measured": round((wall - model) / wall, 3)}
            if real_rate:
                real_model = done / real_rate  # the same images with the real sampler's model time
                entry["overhead_share_at_real_sampler"] = round((wall - model) / (wall - model + real_model), 4)
            out[name] = entry
            print(f"[throughput] {name}: {entry}", flush=True)
        out["per_image_over_batched_overhead"] = round(out["one_task_per_image"]["overhead_per_image_ms"]
                                                       / out["batched"]["overhead_per_image_ms"], 1)
    finally:
        if started_server:
            server.stop()
    out["llm"] = llm_calls(big, work)
    return out


def llm_calls(dataset: str, work: Path) -> dict:
    """Anthropic calls (against the test suite's fake Messages server) for a plan and its rerun."""
    from benchmarks.fake_anthropic import FakeAnthropic

    cache = str(work / "llm.duckdb")
    with FakeAnthropic("ok", delay_s=0.0) as fake:
        saved = {k: os.environ.get(k) for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")}
        os.environ.update({"ANTHROPIC_API_KEY": "throughput-bench", "ANTHROPIC_BASE_URL": fake.url})
        try:
            first, _ = plan(dataset, cache, AnthropicJudge(LLMSettings(max_retries=0)))
            again, _ = plan(dataset, cache, AnthropicJudge(LLMSettings(max_retries=0)))
        finally:
            for key, value in saved.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return {"candidate_images": first.candidate_images, "label_sets": len(first.label_sets),
            "llm_calls_first_run": first.llm_calls, "llm_calls_rerun": again.llm_calls,
            "http_requests": len(fake.message_requests), "first_run_s": first.seconds, "rerun_s": again.seconds}


def markdown(result: dict) -> str:
    lines = ["# Throughput", "", "![stages and overhead](throughput.png)", "", f"Commit `{result['commit']}`, {result['machine']['cpu']} "
             f"({result['machine']['cores']} cores, no GPU). Command: `python -m benchmarks.experiment --part throughput`. "
             "Absolute times describe this machine only; compare ratios.", "",
             "## Stages (median of repeats)", "", "| stage | images | images/s |", "|---|---|---|"]
    for name, entry in result["stages"].items():
        lines.append(f"| {name} | {entry['items']} | {entry['images_per_s']} |")
    o = result["orchestration"]
    lines += ["", f"## Augment orchestration on a real Prefect server ({o['dataset']['images']}-image 32 px phantom, "
              "tiny models, one denoising step)", "",
              "| run | images | tasks | wall s | model s | Prefect s | Parquet + PNG s | overhead ms/image | "
              "Prefect ms/task | overhead share (measured) | overhead share at the real sampler |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("batched", "one_task_per_image"):
        e = o[name]
        lines.append(f"| {name} | {e['images']} | {e['tasks']} | {e['wall_s']} | {e['model_s']} | {e['prefect_s']} | "
                     f"{e['io_and_coding_s']} | {e['overhead_per_image_ms']} | {e['prefect_per_task_ms']} | "
                     f"{e['overhead_share_measured']} | {e.get('overhead_share_at_real_sampler', '–')} |")
    cost = result.get("prefect_task_cost")
    lines += ["", f"One task per image costs {o.get('per_image_over_batched_overhead')}x the batched overhead per image."]
    if cost:
        lines += ["", f"Where the Prefect time goes ({cost['tasks']} empty tasks each, same server): a bare task run "
                  f"{cost['bare_ms_per_task']} ms, one holding a `gpu` slot {cost['gpu_slot_ms_per_task']} ms, a bare "
                  f"one after slots were used {cost['bare_after_slot_ms_per_task']} ms."
                  + (f" (Measured at commit `{cost['commit']}`.)" if cost.get("commit") else "")]
    lines += [
              "", "## LLM calls (fake Messages server; the plan of the 32 px phantom above)", "",
              "| candidate images | label sets | calls, first run | calls, rerun |", "|---|---|---|---|",
              f"| {o['llm']['candidate_images']} | {o['llm']['label_sets']} | {o['llm']['llm_calls_first_run']} | "
              f"{o['llm']['llm_calls_rerun']} |"]
    return "\n".join(lines) + "\n"


def plot(result: dict) -> bytes:
    """Per-stage images/s (log scale) and the overhead per image, batched against one task per image."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    names = list(result["stages"])
    left.barh(names, [result["stages"][n]["images_per_s"] for n in names], color="C0")
    left.set_xscale("log"), left.set_xlabel("images/s (median)"), left.invert_yaxis()
    o = result["orchestration"]
    runs = ["batched", "one_task_per_image"]
    right.bar(runs, [o[r]["overhead_per_image_ms"] for r in runs], color=["C2", "C3"])
    right.set_yscale("log"), right.set_ylabel("ms per image outside the model")
    for x, r in enumerate(runs):
        right.text(x, o[r]["overhead_per_image_ms"], f"{o[r]['overhead_per_image_ms']:.0f}", ha="center", va="bottom")
    fig.suptitle(f"tailforge throughput, {result['machine']['cores']}-core CPU, commit {result['commit']}", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write(out_dir: Path, result: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "throughput.md").write_text(markdown(result))
    (out_dir / "throughput.png").write_bytes(plot(result))


def main(quick: bool = False, out_dir: Path = RESULTS) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tailforge-throughput-"))
    try:
        started = time.perf_counter()
        stage_rates = stages(work, 1 if quick else 3)
        real_rate = stage_rates.get("inpaint_real_dit_64px", {}).get("images_per_s")
        images, per_image = (200, 20) if quick else (10_000, 300)
        result = {"commit": commit(), "machine": machine(), "cuda": torch.cuda.is_available(),
                  "stages": stage_rates, "orchestration": orchestration(work, images, per_image, real_rate),
                  "prefect_task_cost": prefect_task_cost(),
                  "seconds": round(time.perf_counter() - started, 1)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write(out_dir, result)
    print(f"[throughput] written: {out_dir}/throughput.{{json,md,png}}", flush=True)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--task-cost"]:  # the child process of prefect_task_cost()
        print(json.dumps(task_cost()))
        sys.exit(0)
    if sys.argv[1:2] == ["--augment-run"]:  # the child process of orchestration()
        dataset, out, classifier, generator, batch_size, count, decisions = sys.argv[2:]
        print(json.dumps(augment_run(dataset, out, json.loads(classifier), json.loads(generator), int(batch_size),
                                     int(count), decisions)))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--task-cost-only", action="store_true",
                        help="measure only the Prefect per-task cost and add it to an existing throughput.json")
    cli = parser.parse_args()
    if cli.task_cost_only:
        saved = json.loads((cli.out / "throughput.json").read_text())
        saved["prefect_task_cost"] = {**prefect_task_cost(), "commit": commit()}
        write(cli.out, saved)
        print(json.dumps(saved["prefect_task_cost"]))
    else:
        main(cli.quick, cli.out)
