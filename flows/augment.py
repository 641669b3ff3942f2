"""Augment flow: plan -> candidates with deterministic ids -> skip what exists -> one task per
batch, inside `gpu` slots the run holds for its whole fan-out -> manifest, decisions export,
summary."""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import CancelledError

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.crashes import mark_crashed
from flows.gpu import gpu_slots, say_device
from flows.permanent import fails_in_one_line, retry_unless_permanent
from flows.progress import StepProgress
from flows.runners import RunnerError, batch_submitter
from flows.settings import KnowledgeSettings
from flows.stages import write_result
from models.device import resolve_device
from tasks import augment as work
from tasks import store
from tasks.dataset import check_writable, new_run_id, read_manifest, utcnow
from tasks.knowledge import export_decisions, plan
from tasks.locks import dataset_lock
from tasks.runs import recorded_run


@task(task_run_name="plan")
def plan_task(dataset_uri: str, cache_path: str, knowledge: KnowledgeSettings) -> tuple[dict, list]:
    """Decisions are made here, before the fan-out: the DuckDB cache has one writer."""
    report, decisions = plan(dataset_uri, cache_path, knowledge.make_judge())
    summary = {k: v for k, v in report.to_json().items() if k != "label_sets"}
    summary["label_sets"] = len(report.label_sets)
    return summary, decisions


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_permanent,
      task_run_name="augment-batch-{index}")
def augment_batch(index: int, dataset_uri: str, out_uri: str, batch: list[work.Candidate], classifier: dict,
                  generator: dict, settings: dict, run_id: str) -> dict:
    """One batch of images; GPU-bound: it runs inside its run's `gpu` slots (gpu_slots). Each
    step of its model work is a log line (on a CPU a batch takes minutes)."""
    logger, started = get_run_logger(), time.monotonic()
    return work.run_batch(dataset_uri, out_uri, batch, classifier, generator,
                          work.AugmentSettings.from_dict(settings), run_id,
                          lambda text: logger.info(f"batch {index}: {text} ({time.monotonic() - started:.0f} s)"))


class BatchTimeout(RuntimeError):  # not TimeoutError: Prefect would call the flow run itself timed out
    """A batch did not finish within augment.batch_timeout_s; the message says where to look."""


def run_batches(todo: list, shared: dict, options: work.AugmentSettings, logger) -> list[dict]:
    """Every batch of ``todo`` ((index, candidates) pairs), at most one per `gpu` slot the run
    holds in flight, on the configured runner; their results in order. On a CUDA host the local
    runner keeps one batch more in flight: it reads and decodes its parents, and encodes and
    writes its rows, while another has the models (one batch uses them at a time in a process,
    but for the DiT's fills, which pool: tasks/augment/models.py), so the GPU does not wait on
    the CPU's part. Images done, rate and ETA are logged as batches finish (flows/progress.py)."""
    in_flight: deque = deque()
    results: list[dict] = []
    progress = StepProgress("augment", sum(len(batch) for _, batch in todo), "image", "augment-progress")

    def done_so_far() -> str:
        return (f"{len(results)} of {len(todo)} batches done; the done ones are written and a rerun goes on "
                f"from them")

    def finish_one() -> None:
        try:
            results.append(in_flight.popleft().result(timeout=options.batch_timeout_s))
        except TimeoutError as exc:
            where = (f"are the Dask workers at {options.dask_address} with the {options.dask_resource!r} resource "
                     f"alive?" if options.runner == "dask" else "is the host overloaded or the batch too large?")
            raise BatchTimeout(f"a batch was not done {options.batch_timeout_s:g} s after the run began waiting on "
                               f"it ({done_so_far()}): {where} (augment.batch_timeout_s)") from exc
        except CancelledError as exc:  # Dask cancels every pending batch when its client loses the scheduler
            if options.runner != "dask":
                raise
            raise RunnerError(f"the Dask scheduler at {options.dask_address} went away during the run "
                              f"({done_so_far()}): start `dask scheduler` and its workers again, then rerun "
                              f"({exc})") from exc
        progress.update(sum(len(batch) for _, batch in todo[:len(results)]))

    if options.runner == "local":  # on Dask each batch reports its worker's device ("devices")
        say_device(logger)
    ahead = 1 if options.runner == "local" and resolve_device().type == "cuda" else 0
    with gpu_slots(options.parallel, logger) as slots, \
            batch_submitter(augment_batch, options.runner, options.dask_address, options.dask_resource) as submit:
        for index, batch in todo:
            if len(in_flight) >= slots + ahead:
                finish_one()
            in_flight.append(submit(index=index, batch=batch, **shared))
        while in_flight:
            finish_one()
    return results


def acceptance_artifact(counts: dict) -> None:
    """A table in the Prefect UI: per removed class, rows written, accepted and the rate."""
    rows = [{"removed class": name, "written": w, "accepted": a, "acceptance": f"{a / w:.0%}" if w else "-"}
            for name, (w, a) in counts["by_class"].items()]
    rejected = ", ".join(f"{k} {n}" for k, n in counts["rejected"].items()) or "none"
    create_table_artifact(rows, key="augment-acceptance",
                          description=f"generated rows whose removal was verified; rejected: {rejected}")


@flow(name="augment", log_prints=True)
@fails_in_one_line
def augment_flow(dataset_uri: str, out_uri: str, classifier: dict, generator: dict,
                 knowledge: KnowledgeSettings = KnowledgeSettings(), settings: dict | None = None,
                 cache_path: str | None = None, result_uri: str | None = None) -> dict:
    """Generate tail-class samples for every planned candidate not already in ``out_uri``. One
    writer per output (tasks/locks.py): a second run into it is refused, naming the holder. The
    summary is also written to ``result_uri`` when the factory runs this as a deployment. An
    output that is not this dataset's augmented set is refused before a lock or run record."""
    manifest = read_manifest(dataset_uri)
    check_writable(out_uri, "augmented", manifest["vocabulary"], manifest["image_size"], parent=dataset_uri)
    with dataset_lock(out_uri, "augment"):
        return write_result(result_uri, _augment(dataset_uri, out_uri, classifier, generator, knowledge, settings,
                                                 cache_path))


def _augment(dataset_uri: str, out_uri: str, classifier: dict, generator: dict, knowledge: KnowledgeSettings,
             settings: dict | None, cache_path: str | None) -> dict:
    started = time.perf_counter()
    options = work.AugmentSettings.from_dict(settings or {})
    work.check_ood(options, generator)
    manifest = read_manifest(dataset_uri)
    run_id = new_run_id()
    started_at = utcnow()
    parameters = {"dataset_uri": dataset_uri, "out_uri": out_uri, "classifier": classifier["id"],
                  "generator": generator["id"], "knowledge": knowledge.__dict__, "settings": options.to_dict()}
    with recorded_run(out_uri, run_id, "augment", parameters, started_at, on_crashed=mark_crashed) as done:
        return _fan_out(dataset_uri, out_uri, classifier, generator, knowledge, cache_path, options, manifest,
                        run_id, started, done)


def _fan_out(dataset_uri: str, out_uri: str, classifier: dict, generator: dict, knowledge: KnowledgeSettings,
             cache_path: str | None, options: work.AugmentSettings, manifest: dict, run_id: str, started: float,
             done) -> dict:
    logger = get_run_logger()
    plan_summary, decisions = plan_task(dataset_uri, cache_path or knowledge.cache_path(), knowledge)
    prepared = work.prepare(dataset_uri, out_uri, manifest, decisions, classifier, generator["id"], options)
    candidates, all_batches, todo, recipe = prepared.candidates, prepared.batches, prepared.todo, prepared.recipe
    gate = {k: prepared.gate.get(k, {}) for k in ("weak", "unjudged")}
    for name, why in gate["weak"].items():
        logger.warning(f"not removing {name}: the classifier cannot localise it ({why}; augment.min_class_auroc); "
                       f"its images keep it, or have nothing else to remove")
    for name, why in gate["unjudged"].items():
        logger.warning(f"removing {name} unjudged by the classifier gate: {why}")
    logger.info(f"{len(candidates)} candidates in {len(all_batches)} batches; {len(todo)} to run, "
                f"{len(all_batches) - len(todo)} already done")
    shared = {"dataset_uri": dataset_uri, "out_uri": out_uri, "classifier": classifier, "generator": generator,
              "settings": options.to_dict(), "run_id": run_id}
    results = run_batches(todo, shared, options, logger) if todo else []
    decisions_uri = export_decisions(decisions, store.join(out_uri, "decisions"))
    work.finish_output(out_uri, dataset_uri, manifest, classifier, generator, recipe, knowledge.judge, options,
                       run_id, name=f"augmented-{manifest['name']}")
    wall = time.perf_counter() - started
    counts = work.totals(results)
    model_seconds = counts["model_seconds"]
    acceptance_artifact(counts)
    quarantined = counts["quarantined"]
    done({
        "candidates": len(candidates), "batches_run": len(todo), "written": counts["written"],
        "accepted": counts["accepted"], "rejected": counts["rejected"], "by_class": counts["by_class"],
        "quarantined": quarantined, "llm_calls": plan_summary["llm_calls"], "fallbacks": plan_summary["fallbacks"],
        "not_removed": gate["weak"], "unjudged": gate["unjudged"]})
    return {"run_id": run_id, "out_uri": out_uri, "plan": plan_summary, "candidates": len(candidates),
            "output": work.output_totals(out_uri),  # the whole output: what earlier runs wrote too
            "batches": len(all_batches), "batches_run": len(todo), "written": counts["written"],
            "accepted": counts["accepted"], "rejected": counts["rejected"], "by_class": counts["by_class"],
            "quarantined": quarantined, "not_removed": gate["weak"], "unjudged": gate["unjudged"],
            "decisions_uri": decisions_uri, "wall_seconds": round(wall, 2), "model_seconds": round(model_seconds, 2),
            "task_seconds": round(sum(r["seconds"] for r in results), 2),  # inside the batch tasks: model + I/O
            "devices": counts["devices"],  # where the batches' models ran (models/device.py)
            # the non-model share (with the gpu limit at 1; on CUDA two batches' pooled fills may overlap, each
            # counting the shared calls: a lower bound there)
            "orchestration_share": round(max(0.0, 1 - model_seconds / wall), 3) if results and wall > 0 else None}
