"""Pretraining flow: the classifier on the training split, the normal DiT on normal images."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from flows.crashes import mark_crashed
from flows.gpu import gpu_slots, say_device
from flows.permanent import fails_in_one_line, retry_unless_permanent
from flows.progress import StepProgress
from flows.settings import ClassifierSettings, GeneratorSettings
from flows.stages import write_result
from models.classifier import ClassifierConfig
from models.dit import DiTConfig, DiTTrainConfig
from models.training import TrainConfig
from tasks import pretrain
from tasks.runs import recorded_run


@task(retries=1, retry_delay_seconds=10, retry_condition_fn=retry_unless_permanent,
      task_run_name="train-classifier")
def train_classifier_task(dataset_uri: str, models_uri: str, settings: ClassifierSettings, num_classes: int,
                          image_size: int) -> dict:
    if settings.checkpoint:
        return pretrain.named_checkpoint("classifier", settings.checkpoint)
    config = ClassifierConfig(backbone=settings.model_backbone(), num_classes=num_classes, image_size=image_size,
                              se=settings.se, head=settings.head, gcn=settings.gcn)
    train = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed)
    progress = StepProgress("classifier training", train.epochs, "epoch", key="train-classifier")
    handle = pretrain.train_classifier(dataset_uri, models_uri, config, train, progress=progress.epoch,
                                       processes=settings.processes)
    said_reused(handle)
    return {"kind": "classifier", "id": handle["id"], "uri": handle["uri"], "reused": bool(handle.get("reused")),
            "test_macro": handle["metrics"]["means"]["macro"] if handle["metrics"] else None}


@task(retries=1, retry_delay_seconds=10, retry_condition_fn=retry_unless_permanent,
      task_run_name="train-dit")
def train_generator_task(dataset_uri: str, normals: list[str], models_uri: str, settings: GeneratorSettings,
                         image_size: int, num_labels: int, real_data: bool = False) -> dict:
    """The normal DiT (on ``normals``), or with conditioning "labels" the DfT-Caption DiT (on the
    labelled train split of ``dataset_uri``, never on a normals corpus). On real data
    (``real_data``: not the phantom) with no checkpoint and no normals named, the shipped
    generator for the size (weights/, tasks.pretrain.shipped_dit) when there is one."""
    if settings.checkpoint:
        return pretrain.named_checkpoint("dit", settings.checkpoint)
    labelled = settings.conditioning == "labels"
    shipped = shipped_generator(settings, image_size, real_data)
    if shipped:
        get_run_logger().info(f"using the shipped normal-X-ray generator {shipped} (its card is beside it); "
                              "set generator.checkpoint, or generator.normals to train one, to use another")
        return {**pretrain.named_checkpoint("dit", shipped), "shipped": True}
    config = DiTConfig(image_size=image_size, **settings.sizes(image_size), conditioning=settings.conditioning,
                       num_labels=num_labels if labelled else 0, prediction=settings.prediction)
    train = DiTTrainConfig(steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed,
                           warmup_steps=settings.warmup_steps)
    label = "label-conditioned DiT training" if labelled else "normal DiT training"
    progress = StepProgress(label, train.steps, "step", key="train-dit")
    if labelled:
        handle = pretrain.train_label_dit(dataset_uri, models_uri, config, train, progress=progress.step,
                                          processes=settings.processes)
    else:
        handle = pretrain.train_normal_dit(normals, models_uri, config, train, adult_only=settings.adult_only,
                                           progress=progress.step, processes=settings.processes)
    said_reused(handle)
    return {"kind": "dit", "id": handle["id"], "uri": handle["uri"], "reused": bool(handle.get("reused")),
            "history": handle["history"]}


def shipped_generator(settings: GeneratorSettings, image_size: int, real_data: bool) -> str | None:
    """The shipped generator (weights/) when the settings leave the choice to us: real data, no
    checkpoint, no normals corpus to train on, a plain normal DiT, and one shipped at this size."""
    plain = settings.conditioning == "none" and not settings.normals and not settings.checkpoint
    return pretrain.shipped_dit(image_size) if real_data and plain else None


def said_reused(handle: dict) -> None:
    if handle.get("reused"):
        get_run_logger().info(f"reusing {handle['uri']}: made before from the same data and settings "
                              f"(delete {handle['kind']}'s recipe-*.json beside it to retrain)")


@flow(name="pretrain", log_prints=True)
@fails_in_one_line
def pretrain_flow(dataset_uri: str, models_uri: str, classifier: ClassifierSettings = ClassifierSettings(),
                  generator: GeneratorSettings = GeneratorSettings(), result_uri: str | None = None) -> dict:
    """Train (or reuse) both models; returns their checkpoint handles (also written to
    ``result_uri`` when the factory runs this as a deployment: flows/stages.py)."""
    from tasks.dataset import new_run_id, read_manifest, utcnow

    manifest = read_manifest(dataset_uri)
    normals = list(generator.normals) or [dataset_uri]
    parameters = {"dataset_uri": dataset_uri, "classifier": classifier.__dict__, "generator": generator.__dict__}
    with recorded_run(models_uri, new_run_id(), "pretrain", parameters, utcnow(), on_crashed=mark_crashed) as done, \
            gpu_slots(max(classifier.processes, generator.processes), get_run_logger()):  # a slot per process
        say_device(get_run_logger())
        # one after the other: training seeds torch's process-wide RNG, so threads would race on it;
        # hosts with several GPUs run pretrain deployments on separate workers instead
        classifier_handle = train_classifier_task(dataset_uri, models_uri, classifier, len(manifest["labels"]),
                                                  manifest["image_size"])
        generator_handle = train_generator_task(dataset_uri, normals, models_uri, generator, manifest["image_size"],
                                                len(manifest["labels"]), manifest.get("name") != "phantom")
        done({"classifier": classifier_handle["uri"], "generator": generator_handle["uri"],
              "reused": [k for k, h in (("classifier", classifier_handle), ("generator", generator_handle))
                         if h.get("reused")]})
    return write_result(result_uri, {"classifier": classifier_handle, "generator": generator_handle})
