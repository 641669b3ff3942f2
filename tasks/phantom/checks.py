"""Argument checks shared by the phantom's entry points: integers, image size, vocabulary, labels."""

from __future__ import annotations

import numpy as np

from tasks.labels import Vocabulary, vocabulary
from tasks.phantom.lesions import LESION_KIND

MIN_SIZE, MAX_SIZE = 32, 1024


# ----------------------------------------------------------------------------------------------
# argument checks


def check_int(name: str, value: object, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ValueError(f"{name} must be in [{lo_s}, {hi_s}], got {value}")
    return value


def check_size(size: object) -> int:
    return check_int("size", size, lo=MIN_SIZE, hi=MAX_SIZE)


def resolve_vocab(vocab: str | Vocabulary) -> Vocabulary:
    if isinstance(vocab, Vocabulary):
        voc = vocab
    elif isinstance(vocab, str):
        voc = vocabulary(vocab)  # ValueError on an unknown name
    else:
        raise ValueError(f"vocab must be a name or a Vocabulary, got {type(vocab).__name__}")
    _check_kinds(voc)
    return voc


def _check_kinds(voc: Vocabulary) -> None:
    unknown = [f for f in voc.findings if f not in LESION_KIND]
    if unknown:
        raise ValueError(f"the phantom cannot draw {unknown} (vocabulary {voc.name!r})")


def check_labels(labels: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    arr = np.asarray(labels, dtype=np.float32)
    if arr.shape != (len(vocab.findings),):
        raise ValueError(f"labels must have shape ({len(vocab.findings)},), got {arr.shape}")
    if not np.all((arr == 0.0) | (arr == 1.0)):
        raise ValueError("labels must be 0 or 1 (no NaN, no uncertain values) to be rendered")
    return arr
