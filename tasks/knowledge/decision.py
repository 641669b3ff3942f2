"""The LKG decision for one label set, and the key that caches it.

A question is the set of head and tail findings present on an image. A decision answers it:
``keep`` (head findings entangled with the tail findings: not inpainted, label kept) and
``remove`` (the other present head findings). Decisions depend only on the question and on
who answered it (judge, model, prompt version), so they are made once per distinct question.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import asdict, dataclass, field

SOURCES = ("rules", "llm", "fallback")


@dataclass(frozen=True)
class Question:
    head: tuple[str, ...]  # present head findings, sorted
    tail: tuple[str, ...]  # present tail findings, sorted

    def __post_init__(self) -> None:
        if not self.head or not self.tail:
            raise ValueError("a question needs at least one head and one tail finding")
        if set(self.head) & set(self.tail):
            raise ValueError(f"findings both head and tail: {sorted(set(self.head) & set(self.tail))}")

    @classmethod
    def of(cls, head, tail) -> "Question":
        return cls(tuple(sorted(head)), tuple(sorted(tail)))

    def label_set(self) -> str:
        """Canonical text of the sorted label set with each finding's role."""
        items = [f"{name}:head" for name in self.head] + [f"{name}:tail" for name in self.tail]
        return ",".join(sorted(items))


def decision_key(judge: str, model: str, prompt_version: str, question: Question) -> str:
    """sha256(judge, model, prompt_version, sorted label set): the cache key."""
    text = "\n".join([judge, model, prompt_version, question.label_set()])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Decision:
    key: str  # decision_key(...) of the judge that was asked
    decision_id: str  # = key, except for a fallback (its own id, so lineage never changes meaning)
    judge: str  # "rules" | "anthropic" | "none": the judge that was asked
    model: str
    prompt_version: str
    head: tuple[str, ...]
    tail: tuple[str, ...]
    keep: tuple[str, ...]
    remove: tuple[str, ...]
    rationale: str
    source: str  # rules | llm | fallback (the rules answered after the LLM failed)
    error: str | None = None  # the LLM's error kind, for a fallback
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}")
        if set(self.keep) | set(self.remove) != set(self.head) or set(self.keep) & set(self.remove):
            raise ValueError("keep and remove must split the present head findings")

    def to_row(self) -> dict:
        row = asdict(self)
        for name in ("head", "tail", "keep", "remove"):
            row[name] = list(row[name])
        return row


def make_decision(judge: str, model: str, prompt_version: str, question: Question, keep, rationale: str,
                  source: str, error: str | None = None) -> Decision:
    keep_set = set(keep)
    key = decision_key(judge, model, prompt_version, question)
    # a fallback has its own id per error kind: lineage never changes meaning, and a later fallback
    # for another reason is recorded beside the first (the cache keeps the first write of an id)
    decision_id = key if source != "fallback" else hashlib.sha256(f"{key}\nfallback\n{error}".encode()).hexdigest()
    return Decision(key=key, decision_id=decision_id, judge=judge, model=model, prompt_version=prompt_version,
                    head=question.head, tail=question.tail,
                    keep=tuple(h for h in question.head if h in keep_set),
                    remove=tuple(h for h in question.head if h not in keep_set),
                    rationale=rationale, source=source, error=error)
