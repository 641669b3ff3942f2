"""The world the phantom draws (``Regime``): how visible its tail findings are and how often a
tail finding sits on a film beside a head finding. The default is the phantom every other part
of the project uses; other regimes are for asking where generated data helps (does a tail
finding that hides beside a head finding gain more from having the head finding removed?).

A regime changes abnormal films only: a normal image's random draws do not depend on it (the
label model's first draw says "normal" with the same probability, and nothing is drawn), so
every regime of one ``(seed, size)`` has the same normal images, and one normal-image generator
serves them all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from urllib.parse import parse_qsl, urlencode

import numpy as np

from tasks.labels import Vocabulary, head_tail_split
from tasks.phantom.prevalence import sample_labels

CONTRAST_RANGE = (0.1, 4.0)


@dataclass(frozen=True)
class Regime:
    tail_contrast: float = 1.0  # times the density change of every tail finding (its lesion or anatomy change)
    # the share of tail-positive films that also show a head finding; None: as the label model
    # draws them (about 0.6 with NIH's vocabulary)
    tail_with_head: float | None = None

    def __post_init__(self) -> None:
        for name, (lo, hi) in (("tail_contrast", CONTRAST_RANGE), ("tail_with_head", (0.0, 1.0))):
            value = getattr(self, name)
            if value is None and name == "tail_with_head":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not lo <= value <= hi:
                raise ValueError(f"phantom regime: {name} must be a number in [{lo}, {hi}], got {value!r}")
            object.__setattr__(self, name, float(value))

    @property
    def is_default(self) -> bool:
        return self == Regime()

    def query(self) -> str:
        """What a source URI adds to name this regime: '' for the default, else ``?k=v&...``
        (only the values that differ from the default), so a row's lineage re-renders it."""
        changed = {k: f"{v:g}" for k, v in asdict(self).items() if v != getattr(Regime(), k)}
        return "?" + urlencode(changed) if changed else ""

    def suffix(self) -> str:
        """A folder-name suffix: '' for the default, else e.g. ``-tail_contrast0.5-tail_with_head0.9``."""
        return "".join(f"-{k}{v}" for k, v in parse_qsl(self.query().lstrip("?")))

    @classmethod
    def parse(cls, text: str) -> "Regime":
        """``tail_contrast=0.5,tail_with_head=0.9`` (commas or ``&``; '' is the default); ValueError names the keys."""
        known = {f.name for f in fields(cls)}
        values: dict[str, float] = {}
        for item in filter(None, text.replace("&", ",").lstrip("?").split(",")):
            key, sep, value = item.partition("=")
            if key.strip() not in known or not sep:
                raise ValueError(f"phantom regime: {item!r} is not key=value with a key among {sorted(known)}")
            try:
                values[key.strip()] = float(value)
            except ValueError:
                raise ValueError(f"phantom regime: {key.strip()} must be a number, got {value!r}") from None
        return cls(**values)


def draw_labels(rng: np.random.Generator, vocab: Vocabulary, regime: "Regime") -> np.ndarray:
    """``sample_labels``, then, on a tail-positive film only (so normal films draw nothing more),
    one draw that says whether it shows a head finding: with probability ``tail_with_head`` a film
    without one gets one (chosen by the head classes' prevalence), otherwise its head findings
    are dropped."""
    labels = sample_labels(rng, vocab)
    tail = np.array([f in tail_findings(vocab) for f in vocab.findings])
    if regime.tail_with_head is None or not labels[tail].any():
        return labels
    head = ~tail
    if rng.random() >= regime.tail_with_head:
        labels[head] = 0.0
    elif not labels[head].any():
        weights = np.array([vocab.counts.get(f, 0) for f in vocab.findings], dtype=np.float64) * head
        labels[rng.choice(len(labels), p=weights / weights.sum())] = 1.0
    return labels


def split_source_uri(source_uri: str) -> tuple[int, int, Regime]:
    """``phantom://seed/index[?regime]`` -> (seed, index, regime)."""
    path, _, query = source_uri.removeprefix("phantom://").partition("?")
    seed, index = (int(part) for part in path.split("/"))
    return seed, index, Regime.parse(query)


def tail_findings(vocab: Vocabulary) -> frozenset[str]:
    """The tail by the vocabulary's published counts (the rule datasets apply to their train counts)."""
    return frozenset(head_tail_split(dict(vocab.counts), vocab).tail)
