"""Fine-tune results reused by their inputs, as pretrained models are (a rerun with
nothing changed retrained every setting, 240 of its 256 s).

A result's key: the dataset's and the generated set's shard names (which carry their rows' and
their bytes' digests: tasks/store.py), the classifier checkpoint's name (its content id), the
settings, and a digest of the code a result depends on. Results live beside the classifier, in
``finetunes/<key>.json``; a changed input, setting or code misses and trains.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict

from tasks import store
from tasks.dataset import SAMPLES


def code_digest() -> str:
    """A digest of the code a fine-tune's result depends on: no result is reused across a change to it."""
    from models import classifier, losses, metrics, schedule, training
    from tasks import finetune
    return hashlib.sha256("".join(inspect.getsource(m) for m in (finetune, training, classifier, losses, metrics,
                                                                 schedule)).encode()).hexdigest()


def _shards(dataset_uri: str | None) -> list[str]:
    if not dataset_uri:
        return []
    return [uri.rsplit("/", 1)[-1] for uri in store.list_shards(store.join(dataset_uri, SAMPLES))]


def result_key(dataset_uri: str, augmented_uri: str | None, classifier_uri: str, settings) -> str:
    blob = json.dumps({"dataset": _shards(dataset_uri), "augmented": _shards(augmented_uri),
                       "classifier": classifier_uri.rsplit("/", 1)[-1], "settings": asdict(settings),
                       "code": code_digest()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_uri(classifier_uri: str) -> str:
    """Where the fine-tunes of a classifier are kept: ``finetunes/`` beside its checkpoint."""
    return store.join(classifier_uri.rsplit("/", 1)[0], "finetunes")


def reused(classifier_uri: str, key: str) -> dict | None:
    uri = store.join(cache_uri(classifier_uri), f"{key}.json")
    return store.read_json(uri) if store.exists(uri) else None


def keep(classifier_uri: str, key: str, result: dict) -> None:
    store.write_json(store.join(cache_uri(classifier_uri), f"{key}.json"), result)
