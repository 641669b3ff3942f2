"""The offline judges. The rules judge: a curated table of where each finding projects on a
frontal film. The no-guidance judge: removes every present head finding (the method without
LKG, the paper's "+DM" ablation).

Two findings are entangled when they share a zone (``tasks/data/entanglement.json``); each
such pair carries a one-line clinical reason. A present head finding is kept when it is
entangled with any present tail finding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from tasks.knowledge.decision import Decision, Question, make_decision


@cache
def rules_table() -> dict:
    return json.loads(resources.files("tasks").joinpath("data/entanglement.json").read_text("utf-8"))


def pair_key(a: str, b: str) -> str:
    return "|".join(sorted((a, b)))


def shared_zones(a: str, b: str) -> list[str]:
    findings = rules_table()["findings"]
    for name in (a, b):
        if name not in findings:
            raise KeyError(f"the rules table has no finding {name!r}")
    return sorted(set(findings[a]["zones"]) & set(findings[b]["zones"]))


def entangled(a: str, b: str) -> bool:
    return bool(shared_zones(a, b))


@dataclass(frozen=True)
class RulesJudge:
    name: str = "rules"
    calls_llm = False

    @property
    def model(self) -> str:
        return rules_table()["version"]

    prompt_version: str = "-"

    def decide(self, question: Question, vocabulary: list[str] | None = None, source: str = "rules",
               error: str | None = None, as_judge: tuple[str, str, str] | None = None) -> Decision:
        """Decide by the table (the vocabulary is not needed). ``as_judge`` (judge, model,
        prompt_version) files a fallback under the judge that failed, so its cache key stays
        that judge's."""
        pairs = rules_table()["pairs"]
        keep, reasons = [], []
        for head in question.head:
            hits = [tail for tail in question.tail if entangled(head, tail)]
            if hits:
                keep.append(head)
                reasons.append(f"keep {head}: " + "; ".join(pairs[pair_key(head, t)] for t in hits))
        removed = [h for h in question.head if h not in keep]
        if removed:
            reasons.append(f"remove {', '.join(removed)}: no zone shared with {', '.join(question.tail)}")
        judge, model, prompt_version = as_judge or (self.name, self.model, self.prompt_version)
        return make_decision(judge, model, prompt_version, question, keep, "; ".join(reasons), source, error)


@dataclass(frozen=True)
class NoGuidanceJudge:
    """Keeps nothing: every present head finding is removed (no knowledge guidance)."""

    name: str = "none"
    model: str = "-"
    prompt_version: str = "-"
    calls_llm = False

    def decide(self, question: Question, vocabulary: list[str] | None = None) -> Decision:
        return make_decision(self.name, self.model, self.prompt_version, question, (),
                             f"remove {', '.join(question.head)}: no knowledge guidance", "rules")
