"""Fine-tune flow (PIL and the paper's controls) and the report, published as Prefect artifacts."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.crashes import mark_crashed
from flows.gpu import gpu_slots, say_device
from flows.permanent import fails_in_one_line
from flows.progress import StepProgress
from flows.stages import write_result
from tasks import finetune as work
from tasks import finetune_cache
from tasks import report
from tasks.runs import recorded_run


@task(task_run_name="finetune-{setting}")
def finetune_setting(setting: str, dataset_uri: str, augmented_uri: str | None, classifier_uri: str,
                     settings: work.FinetuneSettings) -> dict:
    one = work.FinetuneSettings(**{**settings.__dict__, "settings": (setting,)})
    key = finetune_cache.result_key(dataset_uri, augmented_uri, classifier_uri, one)
    found = finetune_cache.reused(classifier_uri, key)
    if found is not None:
        get_run_logger().info(f"fine-tune {setting}: reusing the result of the same data, generated set, classifier, "
                              f"settings and code ({finetune_cache.cache_uri(classifier_uri)}/{key}.json)")
        return found
    progress = StepProgress(f"fine-tune {setting}", settings.epochs + settings.crt_epochs, "epoch",
                            key=f"finetune-{setting}")
    result = work.finetune(dataset_uri, augmented_uri, classifier_uri, one, progress.epoch)["results"][setting]
    finetune_cache.keep(classifier_uri, key, result)
    return result


@task(task_run_name="report")
def report_task(report_uri: str, result: dict, augmented_uri: str | None, dataset_uri: str, summary: dict) -> dict:
    written = report.write_report(report_uri, result, augmented_uri, dataset_uri, summary)
    if written["rows"]:
        create_table_artifact(report.ui_rows(written["rows"]), key="factory-metrics",
                              description="macro / head / tail means per fine-tune setting (test split; "
                                          "F1 at val-tuned thresholds; every metric in metrics.json)")
    create_markdown_artifact(written["ui_markdown"], key="factory-report",
                             description="factory run summary, per-class metrics, the chart and the before/after sheet")
    return written


@flow(name="finetune", log_prints=True)
@fails_in_one_line
def finetune_flow(dataset_uri: str, augmented_uri: str | None, classifier_uri: str,
                  settings: work.FinetuneSettings = work.FinetuneSettings(), result_uri: str | None = None) -> dict:
    """Every setting from the same pretrained classifier, then metrics per setting (also written
    to ``result_uri`` when the factory runs this as a deployment: flows/stages.py)."""
    data = work.load_data(dataset_uri, augmented_uri, settings.accepted_only)  # decoded once; the settings reuse it
    n_generated = len(data.generated) if data.generated is not None else 0
    run, skipped = work.settings_to_run(settings, n_generated)
    for warning in work.skip_warnings(skipped):
        get_run_logger().warning(warning)
    # sequential: each setting seeds torch's process-wide RNG (see flows/pretrain.py); one `gpu`
    # slot for all of them (flows/gpu.py: once per run)
    with gpu_slots(1, get_run_logger()):
        say_device(get_run_logger())
        results = {name: finetune_setting(name, dataset_uri, augmented_uri, classifier_uri, settings) for name in run}
    return write_result(result_uri, {
        "settings": settings.__dict__, "dataset": dataset_uri, "augmented": augmented_uri,
        "classifier": classifier_uri, "generated": n_generated, "results": results,
        "skipped": skipped, "warnings": work.skip_warnings(skipped)})


@flow(name="finetune-and-report", log_prints=True)
@fails_in_one_line
def finetune_and_report_flow(dataset_uri: str, augmented_uri: str | None, classifier_uri: str, report_uri: str,
                             settings: work.FinetuneSettings = work.FinetuneSettings()) -> dict:
    """`tailforge finetune`: the fine-tune flow, then the report (as the factory ends)."""
    from tasks.dataset import new_run_id, utcnow

    parameters = {"dataset_uri": dataset_uri, "augmented_uri": augmented_uri, "classifier_uri": classifier_uri,
                  "settings": settings.__dict__}
    with recorded_run(report_uri, new_run_id(), "finetune", parameters, utcnow(), on_crashed=mark_crashed) as done:
        tuned = finetune_flow(dataset_uri, augmented_uri, classifier_uri, settings)
        written = report_task(report_uri, tuned, augmented_uri, dataset_uri,
                              {"dataset": dataset_uri, "augmented": augmented_uri})
        done({"generated": tuned["generated"], "settings": list(tuned["results"]), "skipped": tuned["skipped"]})
    return {"finetune": tuned, "report": written["uris"], "table": written["rows"]}
