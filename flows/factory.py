"""The nightly parent flow: ingest what is new -> pretrain (or reuse) -> plan and augment ->
PIL fine-tune with controls -> report. Parameters come from one YAML file (``tailforge run``)."""

from __future__ import annotations

import time
import uuid

from prefect import flow, get_run_logger, task

from flows.augment import augment_flow
from flows.crashes import mark_crashed
from flows.finetune import finetune_flow, report_task
from flows.permanent import fails_in_one_line, retry_unless_permanent
from flows.progress import counted
from flows.pretrain import pretrain_flow
from flows.settings import (DatasetSettings, FactorySettings, finetune_settings, load_settings,
                            settings_from_dict)
from flows.stages import run_stage
from tasks import store
from tasks.dataset import new_run_id, read_manifest, summarize, utcnow
from tasks.ingest import ingest_phantom, ingest_source
from tasks.locks import dataset_lock
from tasks.runs import recorded_run


@task(retries=1, retry_delay_seconds=10, retry_condition_fn=retry_unless_permanent,
      task_run_name="ingest-{settings.source}")
def ingest_task(settings: DatasetSettings, uri: str) -> dict:
    """Add what is new to the dataset (re-runs skip rows already there)."""
    if settings.source == "existing":
        read_manifest(uri)  # fails clearly when absent
        return {"dataset_uri": uri, "rows_written": 0}
    progress = counted(f"ingest {settings.source}", key="ingest")
    if settings.source == "phantom":
        report = ingest_phantom(uri, settings.n, settings.size, settings.seed, settings.vocab, settings.shard_rows,
                                explicit_tail=settings.tail, progress=progress)
        return report.to_json()
    if not settings.table or not settings.images:
        raise ValueError(f"dataset source {settings.source!r} needs 'table' and 'images'")
    return ingest_source(settings, uri, progress).to_json()


@flow(name="factory", log_prints=True)
@fails_in_one_line
def factory_flow(config_path: str | None = None, overrides: dict | None = None) -> dict:
    """Run the whole factory. ``config_path`` is a YAML file; ``overrides`` (same shape) wins."""
    started = time.perf_counter()
    settings = _settings(config_path, overrides)
    dataset_uri, output = settings.dataset_uri(), settings.output_uri()
    store.must_exist("classifier checkpoint", settings.classifier.checkpoint)  # now, not after the ingest and a training
    store.must_exist("dit checkpoint", settings.generator.checkpoint)
    run_id, started_at = new_run_id(), utcnow()
    # one factory run per output: an overlapping nightly is refused before it ingests or trains
    with dataset_lock(output, "factory"), \
            recorded_run(output, run_id, "factory", settings.to_dict(), started_at, on_crashed=mark_crashed) as done:
        return _run_factory(settings, dataset_uri, output, run_id, started, done)


def _run_factory(settings: FactorySettings, dataset_uri: str, output: str, run_id: str, started: float,
                 done) -> dict:
    logger = get_run_logger()
    ingested = ingest_task(settings.dataset, dataset_uri)
    logger.info(f"dataset {dataset_uri}: {ingested.get('rows_written', 0)} new rows")
    stages = settings.stages

    def stage(name: str, flow_fn, **parameters) -> dict:  # here, or a deployment on its pool (flows/stages.py)
        return run_stage(name, flow_fn, parameters, getattr(stages, name),
                         store.join(output, "stages", f"{run_id}-{name}.json"), stages.timeout_s)

    models = stage("pretrain", pretrain_flow, dataset_uri=dataset_uri, models_uri=settings.models_uri(),
                   classifier=settings.classifier, generator=settings.generator)
    augmented_uri = store.join(output, "augmented")
    # the decision cache is resolved where augment runs (knowledge.cache, else that host's $TAILFORGE_HOME)
    augmented = stage("augment", augment_flow, dataset_uri=dataset_uri, out_uri=augmented_uri,
                      classifier=models["classifier"], generator=models["generator"], knowledge=settings.knowledge,
                      settings=settings.augment)
    own_report = store.join(output, "reports", run_id)
    tuning = finetune_settings(settings)
    # the fine-tune stage's own record, beside its report (as `tailforge finetune` keeps one), a child of this run
    parameters = {"dataset_uri": dataset_uri, "augmented_uri": augmented_uri,
                  "classifier_uri": models["classifier"]["uri"], "settings": tuning.__dict__}
    # its own id: new_run_id() here would be the factory's, and the ingest rows carry that one
    with recorded_run(own_report, str(uuid.uuid4()), "finetune", parameters, utcnow(), on_crashed=mark_crashed,
                      parent=run_id) as finetune_done:
        tuned = stage("finetune", finetune_flow, dataset_uri=dataset_uri, augmented_uri=augmented_uri,
                      classifier_uri=models["classifier"]["uri"], settings=tuning)
        finetune_done({"generated": tuned["generated"], "settings": list(tuned["results"]), "skipped": tuned["skipped"]})
    summary = {"dataset": dataset_uri, "images": summarize(dataset_uri)["rows"], "augmented": augmented_uri,
               "candidates": augmented["candidates"], "generated": augmented["output"]["rows"],
               "accepted": augmented["output"]["accepted"], "generated_this_run": augmented["written"],
               "quarantined_this_run": augmented["quarantined"],
               "llm_calls": augmented["plan"]["llm_calls"], "classifier": models["classifier"]["id"][:16],
               "generator": models["generator"]["id"][:16],
               "augment_orchestration_share": augmented["orchestration_share"]}
    written = report_task(own_report, tuned, augmented_uri, dataset_uri, summary)
    latest_report(written["uris"], store.join(output, "report"), run_id)
    done(summary)
    return {"run_id": run_id, "settings": settings.to_dict(), "dataset_uri": dataset_uri, "output_uri": output,
            "models": models, "augment": augmented, "finetune": tuned, "report": written["uris"],
            "table": written["rows"], "seconds": round(time.perf_counter() - started, 1)}


def latest_report(uris: dict, latest_uri: str, run_id: str) -> None:
    """Each run's report stays in ``reports/<run id>/``; ``report/`` holds a copy of the latest
    one, with ``run.json`` naming its run (a rerun no longer overwrites the only report)."""
    for uri in uris.values():
        store.write_bytes_atomic(store.join(latest_uri, uri.rsplit("/", 1)[-1]), store.read_bytes(uri))
    store.write_json(store.join(latest_uri, "run.json"), {"run_id": run_id, "report": uris})


def _settings(config_path: str | None, overrides: dict | None) -> FactorySettings:
    if config_path is None:
        return settings_from_dict(overrides or {})
    base = load_settings(config_path).to_dict()
    for section, values in (overrides or {}).items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section] = {**base[section], **values}
        else:
            base[section] = values
    return settings_from_dict(base)
