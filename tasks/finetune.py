"""Fine-tuning with Progressive Incremental Learning (PIL), and the paper's controls.

Every setting starts from the same pretrained classifier and trains the same number of epochs:
- ``baseline``: the original training set D_o only (no augmentation);
- ``augmented``: D_o plus every accepted generated sample D_i, each epoch (no PIL);
- ``pil``: D_o plus a growing prefix of one fixed random order of D_i,
  |prefix| = |D_i| (1 - exp(-beta n)) in epoch n (models/schedule.py).
Thresholds are tuned on val; metrics are computed on test with bootstrap intervals. Nothing
is tuned on the test split.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Callable

import pyarrow.compute as pc
import torch
from pydantic.dataclasses import dataclass as pydantic_dataclass

from models.classifier import load_checkpoint
from models.device import on_device
from models.metrics import evaluate, tune_thresholds
from models.schedule import epoch_indices, pil_prefix, pil_share
from models.training import TrainConfig, fit_classifier, predict_probs, retrain_classifier
from tasks import store
from tasks.checked import CHECKED, one_of
from tasks.dataset import SAMPLES, read_manifest
from tasks.tensors import TensorSet, load_tensors

SETTINGS = ("baseline", "augmented", "pil")
NO_GENERATED = ("no generated samples to add (the augment produced none, or none passed the quality and removal "
                "checks): only the baseline was fine-tuned; look at the augment's quarantine reasons and verdicts")
log = logging.getLogger(__name__)


@pydantic_dataclass(frozen=True, config=CHECKED)
class FinetuneSettings:
    epochs: int = 5  # fine-tuning passes per setting
    beta: float = 0.5  # PIL growth rate
    batch_size: int = TrainConfig.batch_size  # images per optimiser step
    lr: float = 3e-4  # learning rate (constant)
    seed: int = TrainConfig.seed  # initialisation and shuffling
    settings: tuple[one_of("tasks.finetune:SETTINGS"), ...] = SETTINGS  # which of baseline / augmented / pil to run
    accepted_only: bool = True  # use generated samples that passed the quality and removal checks (accepted)
    bootstrap: int = 500  # bootstrap draws for the metrics' confidence intervals
    loss: one_of("models.losses:LOSSES") = "cb"  # cb (class-balanced; the strongest long-tail loss on the phantom) | bce | focal | asl | ldam_drw
    crt_epochs: int = 0  # then classifier re-training (cRT): the last layer alone, class-aware batches; 0 = off

    def __post_init__(self) -> None:
        if self.crt_epochs < 0:
            raise ValueError(f"finetune.crt_epochs must be >= 0 (0: no classifier re-training), got {self.crt_epochs}")

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                           lr_schedule="constant", loss=self.loss)

    def crt_config(self) -> TrainConfig:
        """cRT trains the re-initialised last layer with plain BCE: the class-aware batches do the balancing."""
        return TrainConfig(epochs=self.crt_epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                           lr_schedule="cosine")


@dataclass
class FinetuneResult:
    setting: str
    metrics: dict
    thresholds: list[float]
    generated_per_epoch: list[int] = field(default_factory=list)
    history: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FinetuneData:
    """Everything fine-tuning reads, decoded once per run: every setting and the report share it."""
    original: TensorSet  # the train split
    val: TensorSet
    test: TensorSet
    generated: TensorSet | None  # None: nothing (accepted) to add
    head: list[str]
    tail: list[str]


def load_data(dataset_uri: str, augmented_uri: str | None, accepted_only: bool) -> FinetuneData:
    """The data, each part decoded at most once per content (every setting of a run and the
    flow share it): the cache keys hold the shard names, which name their rows (tasks/store.py),
    so a dataset that grew is decoded again."""
    original, val, test, head, tail = _decoded_dataset(dataset_uri, _shard_names(dataset_uri))
    return FinetuneData(original, val, test, load_generated(augmented_uri, accepted_only), head, tail)


def load_generated(augmented_uri: str | None, accepted_only: bool) -> TensorSet | None:
    """The generated samples to add, or None when there are none (no dataset, no shards, none accepted)."""
    if not augmented_uri or not store.exists(store.join(augmented_uri, "dataset.json")):
        return None
    return _decoded_generated(augmented_uri, _shard_names(augmented_uri), accepted_only)


def _shard_names(dataset_uri: str) -> tuple[str, ...]:
    return tuple(store.list_shards(store.join(dataset_uri, SAMPLES)))


@lru_cache(maxsize=1)  # one run's data: a long-lived worker keeps no more than that
def _decoded_dataset(dataset_uri: str, shards: tuple[str, ...]) -> tuple:
    manifest = read_manifest(dataset_uri)
    return (load_tensors(dataset_uri, splits=("train",)), load_tensors(dataset_uri, splits=("val",)),
            load_tensors(dataset_uri, splits=("test",)), manifest["head_tail"]["head"], manifest["head_tail"]["tail"])


@lru_cache(maxsize=1)
def _decoded_generated(augmented_uri: str, shards: tuple[str, ...], accepted_only: bool) -> TensorSet | None:
    if not shards:
        return None  # an augment that wrote 0 samples still writes its manifest
    where = pc.field("accepted") == True if accepted_only else None  # noqa: E712 (arrow expression)
    generated = load_tensors(augmented_uri, where=where, columns=("accepted",))
    return generated if len(generated) else None


def settings_to_run(settings: FinetuneSettings, n_generated: int) -> tuple[tuple[str, ...], dict[str, str]]:
    """The requested settings worth running and, for each other one, why not: without generated
    samples ``augmented`` and ``pil`` would be the baseline again (only the baseline runs); a PIL
    schedule that adds no generated sample in any epoch (epoch n adds 1 - exp(-beta n) of them,
    none at n = 0) would be the baseline again too (a silent no-op)."""
    requested = tuple(settings.settings)
    if not n_generated:
        return ("baseline",), {s: NO_GENERATED for s in requested if s != "baseline"}
    if "pil" in requested and not any(pil_prefix(n, settings.beta, n_generated) for n in range(settings.epochs)):
        return tuple(s for s in requested if s != "pil"), {"pil": pil_never_adds(settings, n_generated)}
    return requested, {}


def pil_never_adds(settings: FinetuneSettings, n_generated: int) -> str:
    what = (f"PIL skipped: with finetune.epochs = {settings.epochs} and beta = {settings.beta}, no epoch adds any of "
            f"the {n_generated} generated samples (epoch n adds 1 - exp(-beta n) of them, rounded down; none in "
            f"epoch 0), so it would be the baseline again; ")
    last = pil_share(settings.epochs - 1, settings.beta)
    if settings.epochs < 2 or last <= 0:
        return what + "use at least 2 epochs and beta > 0"
    return what + (f"its last epoch would use {last:.2f} of them, under one sample: that takes at least "
                   f"{math.ceil(1 / last)} accepted samples, or more epochs or a larger beta")


def skip_warnings(skipped: dict[str, str]) -> list[str]:
    """One line per distinct reason a setting was not run."""
    return sorted(set(skipped.values()))


def fit_setting(setting: str, original: TensorSet, generated: TensorSet | None, classifier_uri: str,
                val: TensorSet, settings: FinetuneSettings, progress: Callable | None = None
                ) -> tuple[torch.nn.Module, list[int], dict]:
    """Fine-tune the pretrained classifier under one setting; returns the model, the generated
    samples used per epoch and the training history."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown fine-tune setting {setting!r}; choose from {SETTINGS}")
    model = on_device(load_checkpoint(store.read_bytes(classifier_uri))[0])
    n_generated = len(generated) if generated is not None and setting != "baseline" else 0

    def chosen(n: int) -> torch.Tensor:  # the generated samples epoch n adds
        if not n_generated:
            return torch.zeros(0, dtype=torch.long)
        if setting == "augmented":
            return torch.arange(n_generated)
        return torch.from_numpy(epoch_indices(n, settings.beta, n_generated, settings.seed))

    def epoch_data(n: int):  # no side effects: the loop and the loss's class counts both call it
        if n_generated == 0:
            return original.images, original.labels
        pick = chosen(n)
        return torch.cat([original.images, generated.images[pick]]), torch.cat([original.labels, generated.labels[pick]])

    per_epoch = [int(chosen(n).numel()) for n in range(settings.epochs)]
    history = fit_classifier(model, None, None, settings.train_config(), val=(val.images, val.labels),
                             epoch_data=epoch_data, progress=progress)
    if settings.crt_epochs:  # on the last epoch's set (for PIL: the largest prefix)
        images, labels = epoch_data(settings.epochs - 1)
        shifted = (lambda row: progress({**row, "epoch": settings.epochs + row["epoch"]})) if progress else None
        crt = retrain_classifier(model, images, labels, settings.crt_config(), val=(val.images, val.labels),
                                 progress=shifted)
        history = {**history, "crt_train_loss": crt["train_loss"], "crt_val_loss": crt["val_loss"]}
    return model, per_epoch, history


def run_setting(setting: str, original: TensorSet, generated: TensorSet | None, classifier_uri: str,
                val: TensorSet, test: TensorSet, head: list[str], tail: list[str],
                settings: FinetuneSettings, progress: Callable | None = None) -> FinetuneResult:
    """Fine-tune under one setting, tune thresholds on val and score test."""
    model, per_epoch, history = fit_setting(setting, original, generated, classifier_uri, val, settings, progress)
    thresholds = tune_thresholds(predict_probs(model, val.images), val.labels.numpy())
    metrics = evaluate(predict_probs(model, test.images), test.labels.numpy(), test.findings, head, tail,
                       thresholds=thresholds, bootstrap=settings.bootstrap, seed=settings.seed)
    return FinetuneResult(setting, metrics, [float(t) for t in thresholds], per_epoch,
                          {k: history.get(k) for k in ("train_loss", "val_loss", "n_train", "crt_train_loss",
                                                       "crt_val_loss") if k in history})


def finetune(dataset_uri: str, augmented_uri: str | None, classifier_uri: str,
             settings: FinetuneSettings = FinetuneSettings(), progress: Callable | None = None) -> dict:
    """Run every requested setting; returns {"settings": ..., "results": {setting: ...}}."""
    data = load_data(dataset_uri, augmented_uri, settings.accepted_only)
    if not len(data.val) or not len(data.test):
        raise ValueError(f"{dataset_uri} needs val and test images to fine-tune and evaluate")
    n_generated = len(data.generated) if data.generated is not None else 0
    run, skipped = settings_to_run(settings, n_generated)
    for warning in skip_warnings(skipped):
        log.warning("fine-tune of %s: %s", dataset_uri, warning)
    results = {name: asdict(run_setting(name, data.original, data.generated, classifier_uri, data.val, data.test,
                                        data.head, data.tail, settings, progress)) for name in run}
    return {"settings": asdict(settings), "dataset": dataset_uri, "augmented": augmented_uri,
            "classifier": classifier_uri, "original_train": len(data.original), "generated": n_generated,
            "pil_prefix_per_epoch": [pil_prefix(n, settings.beta, n_generated) for n in range(settings.epochs)],
            "results": results, "skipped": skipped, "warnings": skip_warnings(skipped)}
