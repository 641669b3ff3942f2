"""The models a process's batches share (cached per process; one batch uses them at a time, but
for the DiT's fills, which batches in flight together pool), and
the out-of-distribution and quality scorers they judge with."""

from __future__ import annotations

import threading
import time
from functools import lru_cache

from models.classifier import load_checkpoint
from models.device import on_device
from models.dit import build_scheduler, load_dit, load_dit_config
from models.ood import FeatureScorer, OODConfig, OODScorer
from models.quality import QualityScorer
from models.removal import Fill
from tasks import store
from tasks.augment.settings import AugmentSettings
from tasks.tensors import load_tensors


# Models are cached per process and shared by task threads; Grad-CAM hooks the model it runs
# on, so two batches must not use one model at once: a batch holds this lock for its model work,
# except while the DiT fills its masks (``unlocked``): the fills of batches in flight together
# share the DiT's calls (models/engine.Pool), and meanwhile another batch uses the classifier.
_MODEL_LOCK = threading.Lock()


def unlocked(fill: Fill, waits: list[float]) -> Fill:
    """``fill``, run with ``_MODEL_LOCK`` let go (its caller holds it) and taken again after;
    each wait to take it back (another batch has the models) is added to ``waits``, seconds."""
    def run(images, masks, seeds):
        if not _MODEL_LOCK.locked():
            raise RuntimeError("unlocked(fill) runs inside `with _MODEL_LOCK`: the fill lets the lock go and takes it back")
        _MODEL_LOCK.release()
        try:
            return fill(images, masks, seeds)
        finally:
            waited = time.perf_counter()
            _MODEL_LOCK.acquire()
            waits.append(time.perf_counter() - waited)
    return run


@lru_cache(maxsize=4)
def _classifier(uri: str):
    model, config, card = load_checkpoint(store.read_bytes(uri))
    return on_device(model).eval(), card


@lru_cache(maxsize=4)
def _generator(uri: str):
    model, config, _ = load_dit(store.read_bytes(uri))
    return on_device(model).eval(), build_scheduler(config), config


@lru_cache(maxsize=4)
def _generator_config(uri: str):
    """The generator's config alone: the flow's process checks it without loading the model on its device."""
    return load_dit_config(store.read_bytes(uri))


def check_ood(settings: AugmentSettings, generator: dict) -> None:
    """Refuse, before any work, a generator judging its own samples: a label-conditioned DiT
    reconstructs its own artefacts better than real films (blocky nih1000 samples
    scored below real ones), so its rows need the feature filter."""
    if settings.ood_filter and settings.ood_method == "reconstruction" and \
            _generator_config(generator["uri"]).conditioning == "labels":
        raise ValueError(f"augment.ood_method 'reconstruction' would have the label-conditioned generator "
                         f"{generator['id'][:16]} judge its own samples; use ood_method: features")


@lru_cache(maxsize=4)
def _ood(dataset_uri: str, method: str, model_uri: str, false_rejection: float) -> FeatureScorer | OODScorer:
    """The OOD scorer, calibrated on the dataset's val images (at most 200): real images of the
    kind the generated ones must pass for. ``model_uri``: the classifier ("features", fitted on
    at most 512 train images) or the normal DiT ("reconstruction")."""
    real = load_tensors(dataset_uri, splits=("val",), limit=200)
    if len(real) < 20:
        raise ValueError(f"{dataset_uri} has {len(real)} val images; the OOD filter needs at least 20 to "
                         f"calibrate (or set augment.ood_filter: false)")
    if method == "features":
        train = load_tensors(dataset_uri, splits=("train",), limit=512)
        return FeatureScorer(_classifier(model_uri)[0], train.images, real.images, false_rejection)
    dit, scheduler, _ = _generator(model_uri)
    return OODScorer(dit, scheduler, real.images, OODConfig(false_rejection=false_rejection))


def ood_scorer(dataset_uri: str, settings: AugmentSettings, classifier: dict, generator: dict
               ) -> FeatureScorer | OODScorer:
    """The filter ``settings`` choose, with the model it needs."""
    model = classifier if settings.ood_method == "features" else generator
    return _ood(dataset_uri, settings.ood_method, model["uri"], settings.ood_false_rejection)


@lru_cache(maxsize=4)
def _quality(dataset_uri: str) -> QualityScorer:
    """Scorer over the dataset's real normal training images (at most 512)."""
    normals = load_tensors(dataset_uri, splits=("train",), normal_only=True, limit=512)
    return QualityScorer(normals.images)
