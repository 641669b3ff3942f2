"""Label vocabularies, synonyms, the uncertainty policy and the head/tail split.

The contract follows torchxrayvision: a dataset has one ordered vocabulary of findings; every
image carries a float32 vector aligned to it with 1 = present, 0 = absent, NaN = unknown or
uncertain. "No Finding" is not a column: an image is normal when every finding is 0.
The vocabularies themselves are data (``tasks/data/vocabularies.json``), not strings in code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from importlib import resources
from typing import Iterable, Mapping, Sequence

import numpy as np

VOCAB_ALIASES = {"nih": "nih", "chexpert": "chexpert", "mimic": "chexpert"}


class UnknownLabelError(ValueError):
    """A label name that is neither in the vocabulary nor in its synonym map."""


@dataclass(frozen=True)
class Vocabulary:
    name: str  # "nih" | "chexpert"
    title: str
    findings: tuple[str, ...]  # ordered; label vectors are aligned to this
    normal_label: str  # "No Finding": all findings absent
    synonyms: Mapping[str, str] = field(repr=False)  # source spelling -> canonical finding
    counts: Mapping[str, int] = field(repr=False)  # published image counts per class
    total: int = 0  # images in the published table the counts come from

    def __len__(self) -> int:
        return len(self.findings)

    def index(self, finding: str) -> int:
        return self.findings.index(self.canonical(finding))

    def canonical(self, raw: str) -> str:
        """Map a source spelling to this vocabulary's finding name, or raise."""
        name = raw.strip()
        if name in self.findings:
            return name
        if name in self.synonyms:
            return self.synonyms[name]
        raise UnknownLabelError(
            f"unknown label {name!r} for vocabulary {self.name!r}; known: {', '.join(self.findings)}"
        )

    def vector(self, present: Iterable[str]) -> np.ndarray:
        """All-zero vector with 1 at each present finding (names may be synonyms)."""
        out = np.zeros(len(self.findings), dtype=np.float32)
        for raw in present:
            out[self.index(raw)] = 1.0
        return out

    def positives(self, labels: Sequence[float]) -> list[str]:
        return [f for f, v in zip(self.findings, labels) if v == 1.0]


@cache
def _table() -> dict:
    text = resources.files("tasks").joinpath("data/vocabularies.json").read_text("utf-8")
    return json.loads(text)


def vocabulary(name: str) -> Vocabulary:
    """The vocabulary called ``nih``, ``chexpert`` or ``mimic`` (an alias of chexpert)."""
    key = VOCAB_ALIASES.get(name.lower())
    if key is None:
        raise ValueError(f"unknown vocabulary {name!r}; choose one of {sorted(VOCAB_ALIASES)}")
    spec = _table()["vocabularies"][key]
    counts = {k: int(v) for k, v in spec["counts"].items() if not k.startswith("_") and k != "total"}
    return Vocabulary(
        name=key,
        title=spec["title"],
        findings=tuple(spec["findings"]),
        normal_label=spec["normal_label"],
        synonyms=dict(spec["source_synonyms"]),
        counts=counts,
        total=int(spec["counts"]["total"]),
    )


def cross_map(src: Vocabulary, dst: Vocabulary) -> dict[str, tuple[str | None, str]]:
    """``{src finding: (dst finding or None, relation)}`` between the two vocabularies."""
    table = _table()["cross_map"]["nih_to_chexpert"]
    if src.name == dst.name:
        return {f: (f, "same") for f in src.findings}
    if (src.name, dst.name) == ("nih", "chexpert"):
        return {k: (v[0], v[1]) for k, v in table.items()}
    if (src.name, dst.name) == ("chexpert", "nih"):
        out: dict[str, tuple[str | None, str]] = {f: (None, "none") for f in src.findings}
        for nih_name, (chx_name, relation) in table.items():
            if chx_name is not None and relation == "same":
                out[chx_name] = (nih_name, "same")
        return out
    raise ValueError(f"no map from {src.name!r} to {dst.name!r}")


def parse_label_list(text: str, vocab: Vocabulary, sep: str = "|") -> np.ndarray:
    """NIH-style 'A|B' or 'No Finding' -> vector. Raises UnknownLabelError on a foreign name."""
    names = [t.strip() for t in str(text).split(sep) if t.strip()]
    if not names:
        raise UnknownLabelError("empty label cell")
    if names == [vocab.normal_label]:
        return vocab.vector([])
    if vocab.normal_label in names:
        raise UnknownLabelError(f"{vocab.normal_label!r} combined with findings: {text!r}")
    return vocab.vector(names)


class UncertainPolicy(str, Enum):
    """What a CheXpert/MIMIC uncertain cell (-1) becomes."""

    IGNORE = "ignore"  # NaN: the loss and metrics skip it (default)
    ONES = "ones"  # U-Ones of the CheXpert paper
    ZEROS = "zeros"  # U-Zeros


class BlankPolicy(str, Enum):
    """What a blank CheXpert/MIMIC cell (finding not mentioned) becomes."""

    IGNORE = "ignore"  # NaN (default)
    ZEROS = "zeros"


_UNCERTAIN_VALUE = {UncertainPolicy.IGNORE: math.nan, UncertainPolicy.ONES: 1.0, UncertainPolicy.ZEROS: 0.0}
_BLANK_VALUE = {BlankPolicy.IGNORE: math.nan, BlankPolicy.ZEROS: 0.0}


def chexpert_vector(
    cells: Mapping[str, object],
    vocab: Vocabulary,
    uncertain: UncertainPolicy = UncertainPolicy.IGNORE,
    blank: BlankPolicy = BlankPolicy.IGNORE,
) -> np.ndarray:
    """One CheXpert-labeler row (1.0 / 0.0 / -1.0 / blank per column) -> vector.

    A row whose "No Finding" cell is 1 had no positive or uncertain finding in its report
    (the labeler's rule), so its blank findings are 0 whatever the blank policy says.
    Raises ValueError on a value outside {1, 0, -1, blank}.
    """
    normal = _cell(cells.get(vocab.normal_label)) == 1.0
    out = np.empty(len(vocab.findings), dtype=np.float32)
    for i, finding in enumerate(vocab.findings):
        value = _cell(cells.get(finding))
        if value is None:
            out[i] = 0.0 if normal else _BLANK_VALUE[BlankPolicy(blank)]
        elif value == -1.0:
            out[i] = _UNCERTAIN_VALUE[UncertainPolicy(uncertain)]
        else:
            out[i] = value
    return out


def _cell(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
    number = float(value)  # raises ValueError on text
    if math.isnan(number):
        return None
    if number not in (1.0, 0.0, -1.0):
        raise ValueError(f"label cell {value!r} is not one of 1, 0, -1 or blank")
    return number


@dataclass(frozen=True)
class HeadTailSplit:
    head: tuple[str, ...]
    tail: tuple[str, ...]
    rule: str  # "below-median-train-frequency" | "explicit"
    train_counts: Mapping[str, int]  # positives per finding in the train split

    def to_json(self) -> dict:
        return {"head": list(self.head), "tail": list(self.tail), "rule": self.rule,
                "train_counts": dict(self.train_counts)}

    @classmethod
    def from_json(cls, data: Mapping) -> "HeadTailSplit":
        return cls(tuple(data["head"]), tuple(data["tail"]), data["rule"], dict(data["train_counts"]))


def positive_counts(labels: np.ndarray, vocab: Vocabulary) -> dict[str, int]:
    """Images with each finding present; ``labels`` is (N, K), NaN counts as not present."""
    labels = np.asarray(labels, dtype=np.float32).reshape(-1, len(vocab.findings))
    sums = (labels == 1.0).sum(axis=0)
    return {f: int(n) for f, n in zip(vocab.findings, sums)}


def head_tail_split(
    train_counts: Mapping[str, int], vocab: Vocabulary, explicit_tail: Iterable[str] | None = None
) -> HeadTailSplit:
    """Tail = classes whose train frequency is strictly below the median class frequency.

    With CheXpert's 13 findings this gives exactly the six tail classes of the paper.
    ``explicit_tail`` (names or synonyms) overrides the rule.
    """
    counts = {f: int(train_counts.get(f, 0)) for f in vocab.findings}
    if explicit_tail is not None:
        tail_set = {vocab.canonical(t) for t in explicit_tail}
        rule = "explicit"
    elif not any(counts.values()):  # no labelled train row: no class is common or rare yet
        return HeadTailSplit(head=(), tail=(), rule="none: no finding in the train split yet", train_counts=counts)
    else:
        median = float(np.median(list(counts.values())))
        tail_set = {f for f, n in counts.items() if n < median}
        rule = "below-median-train-frequency"
    head = tuple(f for f in vocab.findings if f not in tail_set)
    tail = tuple(f for f in vocab.findings if f in tail_set)
    return HeadTailSplit(head=head, tail=tail, rule=rule, train_counts=counts)
