"""Pretraining: the classifier on a dataset's training split, the normal DiT on normal images.

Both write a self-describing checkpoint named by its sha256 under a models URI, plus a JSON
card beside it (config, data shards, history summary), and return a small handle dict: the
flows pass handles, never tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.compute as pc
import torch

from models.checkpoint import checkpoint_id
from models.classifier import ClassifierCard, ClassifierConfig, build_classifier, save_checkpoint
from models.device import on_device
from models.dit import DiTConfig, DiTTrainConfig, save_dit, train_dit
from models.heads import cooccurrence
from models.metrics import evaluate, tune_thresholds
from models.training import TrainConfig, fit_classifier, predict_probs, seed_everything
from tasks import store
from tasks.dataset import SAMPLES, read_manifest
from tasks.distributed import fit_classifier_processes, train_dit_processes
from tasks.tensors import lesion_masks, load_tensors


def shard_hashes(dataset_uri: str) -> list[str]:
    """sha256 of each sample shard's name (names are content hashes): the data a model saw."""
    return [hashlib.sha256(uri.rsplit("/", 1)[-1].encode()).hexdigest()[:16]
            for uri in store.list_shards(store.join(dataset_uri, SAMPLES))]


def _write_checkpoint(models_uri: str, kind: str, data: bytes, card: dict) -> dict:
    model_id = checkpoint_id(data)
    uri = store.join(models_uri, f"{kind}-{model_id[:16]}.pt")
    if not store.exists(uri):
        store.write_bytes_atomic(uri, data)
    store.write_json(store.join(models_uri, f"{kind}-{model_id[:16]}.json"), {"id": model_id, "kind": kind, **card})
    return {"kind": kind, "id": model_id, "uri": uri}


def named_checkpoint(kind: str, uri: str) -> dict:
    """The handle of a checkpoint the user named (or the shipped one): its id is the sha256 of
    its bytes; FileNotFoundError naming it when it is not there."""
    store.must_exist(f"{kind} checkpoint", uri)
    return {"kind": kind, "id": checkpoint_id(store.read_bytes(uri)), "uri": uri, "reused": True}


def recipe_id(kind: str, shards: list[str], **settings) -> str:
    """What a model is made from, hashed before it is trained: its kind, the content hashes of the
    shards it learns from, and every setting (dataclasses as dicts)."""
    parts = {k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in settings.items()}
    return hashlib.sha256(json.dumps({"kind": kind, "shards": shards, **parts}, sort_keys=True).encode()).hexdigest()


def _recipe_uri(models_uri: str, kind: str, recipe: str) -> str:
    return store.join(models_uri, f"recipe-{kind}-{recipe[:16]}.json")


def trained_before(models_uri: str, kind: str, recipe: str) -> dict | None:
    """The handle of a checkpoint already made from this recipe (reruns retrained), or
    None. A pointer whose checkpoint is gone does not count."""
    uri = _recipe_uri(models_uri, kind, recipe)
    if not store.exists(uri):
        return None
    handle = store.read_json(uri)
    return {**handle, "reused": True} if store.exists(handle["uri"]) else None


def _remember(models_uri: str, kind: str, recipe: str, handle: dict) -> None:
    store.write_json(_recipe_uri(models_uri, kind, recipe), {**handle, "recipe": recipe})


def train_classifier(dataset_uri: str, models_uri: str, config: ClassifierConfig, train: TrainConfig,
                     progress: Callable | None = None, processes: int = 1) -> dict:
    """Fit on the train split, tune thresholds on val, score test; returns the checkpoint handle.
    A classifier made before from the same shards and settings is reused, not retrained.
    ``processes`` > 1 trains data-parallel under torchrun (tasks/distributed.py)."""
    recipe = recipe_id("classifier", shard_hashes(dataset_uri), dataset=dataset_uri, config=config, train=train)
    known = trained_before(models_uri, "classifier", recipe)
    if known:
        return known
    manifest = read_manifest(dataset_uri)
    data = load_tensors(dataset_uri, splits=("train",), columns=("lesion_masks",))
    val = load_tensors(dataset_uri, splits=("val",))
    test = load_tensors(dataset_uri, splits=("test",))
    seed_everything(train.seed)
    model = on_device(build_classifier(config, cooccurrence(data.labels)))  # the co-occurrence counts: for gcn
    held = (val.images, val.labels) if len(val) else None
    if processes > 1:
        history = fit_classifier_processes(processes, model, data.images, data.labels, train,
                                           _work_folder(models_uri, f"classifier-{recipe}"), held, progress)
    else:
        history = fit_classifier(model, data.images, data.labels, train, val=held, progress=progress)
    thresholds = tune_thresholds(predict_probs(model, val.images), val.labels.numpy()) if len(val) else None
    head, tail = manifest["head_tail"]["head"], manifest["head_tail"]["tail"]
    metrics = evaluate(predict_probs(model, test.images), test.labels.numpy(), data.findings, head, tail,
                       thresholds=thresholds, bootstrap=200, seed=train.seed) if len(test) else {}
    card = ClassifierCard(labels=list(data.findings), head=list(head), tail=list(tail),
                          thresholds=[float(t) for t in thresholds] if thresholds is not None else [],
                          train_shards_sha256=shard_hashes(dataset_uri), seed=train.seed,
                          metrics={"test_macro": metrics["means"]["macro"]} if metrics else {},
                          location_prior=card_location_prior(data))
    handle = _write_checkpoint(models_uri, "classifier", save_checkpoint(model, config, card), {
        "config": asdict(config), "train": asdict(train), "dataset": dataset_uri, "train_images": len(data),
        "history": {k: history[k] for k in ("train_loss", "val_loss") if k in history}})
    handle = {**handle, "metrics": metrics}
    _remember(models_uri, "classifier", recipe, handle)
    return handle


def location_prior(data, side: int = 32) -> dict[str, np.ndarray]:
    """Per class, the mean of its training lesion masks at ``side`` x ``side``: where the class
    usually lies on the film, image-blind; empty when the data has no masks (real films). The
    prior weights CAM maps (models.cam.class_maps)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for truth in lesion_masks(data.table):
        for name, mask in truth.items():
            if mask.any():
                small = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(mask).float()[None, None], side)[0, 0]
                sums[name] = sums.get(name, 0) + small
                counts[name] = counts.get(name, 0) + 1
    return {name: (sums[name] / counts[name]).numpy() for name in sorted(sums)}


def card_location_prior(data) -> dict[str, list[list[float]]]:
    """``location_prior`` as the classifier card stores it: 32 x 32, plain lists, 4 decimals."""
    return {name: np.round(prior, 4).tolist() for name, prior in location_prior(data).items()}


def load_normals(dataset_uris: list[str], image_size: int, adult_only: bool = True,
                 splits: tuple[str, ...] | None = ("train",)) -> tuple[torch.Tensor, list[str]]:
    """Normal images (all findings 0) of one or more datasets; pediatric rows left out when
    the dataset records an ``age_group`` and ``adult_only`` is set."""
    images, shards = [], []
    for uri in dataset_uris:
        manifest = read_manifest(uri)
        if manifest["image_size"] != image_size:
            raise ValueError(f"{uri} is {manifest['image_size']} px; the DiT is configured for {image_size} px")
        has_age = "age_group" in manifest.get("extra_columns", [])
        where = pc.field("age_group") == "adult" if adult_only and has_age else None
        part = load_tensors(uri, splits=splits, normal_only=True, columns=("age_group",) if has_age else (),
                            where=where)
        images.append(part.images)
        shards += shard_hashes(uri)
    return torch.cat(images), shards


def train_normal_dit(dataset_uris: list[str], models_uri: str, config: DiTConfig, train: DiTTrainConfig,
                     adult_only: bool = True, splits: tuple[str, ...] | None = ("train",),
                     progress: Callable | None = None, processes: int = 1) -> dict:
    """Train the DiT on normals only (train split by default, so val/test stay held out);
    returns the checkpoint handle (EMA weights). One made before from the same shards and
    settings is reused, not retrained. ``processes`` > 1 trains data-parallel under
    torchrun (tasks/distributed.py). (A DiT conditioned on labels: ``train_label_dit``.)"""
    recipe = recipe_id("dit", sorted(h for uri in dataset_uris for h in shard_hashes(uri)), datasets=dataset_uris,
                       config=config, train=train, adult_only=adult_only, splits=splits)
    known = trained_before(models_uri, "dit", recipe)
    if known:
        return known
    images, shards = load_normals(dataset_uris, config.image_size, adult_only, splits)
    return _fit_dit(models_uri, recipe, config, train, images, None, shards, dataset_uris, progress, processes)


def weights_dir() -> Path:
    """The shipped weights: ``weights/`` of the checkout ($TAILFORGE_CHECKOUT in the worker images)."""
    return Path(os.environ.get("TAILFORGE_CHECKOUT") or Path(__file__).resolve().parents[1]) / "weights"


def shipped_dit(image_size: int) -> str | None:
    """The shipped normal-X-ray generator for ``image_size`` px (trained on real normal chest
    X-rays, card beside it), or None when none is shipped for that size."""
    path = weights_dir() / f"normal_dit_{image_size}.safetensors"
    return str(path) if path.exists() else None


def train_label_dit(dataset_uri: str, models_uri: str, config: DiTConfig, train: DiTTrainConfig,
                    progress: Callable | None = None, processes: int = 1) -> dict:
    """The DfT-Caption generator (models/dit.py, conditioning "labels"): the DiT trained on every
    train-split image of ``dataset_uri`` with its finding set; reused like the normal DiT."""
    manifest = read_manifest(dataset_uri)
    if config.num_labels != len(manifest["labels"]) or config.image_size != manifest["image_size"]:
        raise ValueError(f"{dataset_uri} has {len(manifest['labels'])} findings at {manifest['image_size']} px; "
                         f"the DiT is set for {config.num_labels} at {config.image_size} px")
    shards = shard_hashes(dataset_uri)
    recipe = recipe_id("dit", shards, datasets=[dataset_uri], config=config, train=train)
    known = trained_before(models_uri, "dit", recipe)
    if known:
        return known
    data = load_tensors(dataset_uri, splits=("train",))
    return _fit_dit(models_uri, recipe, config, train, data.images, data.labels, shards, [dataset_uri], progress,
                    processes)


def _fit_dit(models_uri: str, recipe: str, config: DiTConfig, train: DiTTrainConfig, images: torch.Tensor,
             labels: torch.Tensor | None, shards: list[str], datasets: list[str], progress: Callable | None,
             processes: int = 1) -> dict:
    if processes > 1:  # a killed rank leaves its saved state in this folder; the next launch resumes
        model, ema, history = train_dit_processes(processes, images, config, train,
                                                  _work_folder(models_uri, f"dit-{recipe}"), labels, progress)
    else:
        model, ema, history = train_dit(images, config, train, progress, labels=labels)
    ema.copy_to(model)
    data = save_dit(model, config, {"train_shards_sha256": shards, "train_images": int(images.shape[0]),
                                    "steps": train.steps, "seed": train.seed})
    losses = history["loss"]
    window = max(1, len(losses) // 10)
    summary = {"first_loss": float(np.mean(losses[:window])), "last_loss": float(np.mean(losses[-window:])),
               "seconds": history["seconds"], "parameters": history["parameters"]}
    handle = _write_checkpoint(models_uri, "dit", data, {
        "config": asdict(config), "train": asdict(train), "datasets": datasets,
        "train_images": int(images.shape[0]), "history": summary})
    _remember(models_uri, "dit", recipe, {**handle, "history": summary})
    return {**handle, "history": summary, "loss": losses}


def _work_folder(models_uri: str, name: str) -> Path:
    """Where a training on several processes keeps its inputs and saved state: beside the
    models when they are on this host, else under the temporary folder."""
    local = Path(tempfile.gettempdir()) / "tailforge" if store.is_remote(models_uri) else \
        Path(models_uri.removeprefix("file://"))
    return local / "training" / name
