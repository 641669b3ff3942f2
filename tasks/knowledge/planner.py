"""The planner: which training images become new tail samples, and the decisions they need.

Candidates are training images holding at least one tail and one head finding. Their
distinct label sets are found with bit masks, so planning scales with the number of distinct
sets, not images. Decisions come from the cache, else from the judge (the LLM with the rules as
fallback, the rules alone, or "none": remove every head finding): LLM calls equal the distinct uncached label sets.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow.compute as pc

from tasks.dataset import existing_rows, label_matrix, read_manifest
from tasks.knowledge.cache import DecisionCache
from tasks.knowledge.decision import Decision, Question, decision_key
from tasks.knowledge.rules import RulesJudge


class Judge(Protocol):
    """What every judge is (rules, none, anthropic): its identity for the cache key, whether a
    decision costs an LLM call, and ``decide``."""
    name: str
    calls_llm: bool

    @property
    def model(self) -> str: ...

    @property
    def prompt_version(self) -> str: ...

    def decide(self, question: Question, vocabulary: list[str]) -> Decision: ...


@dataclass
class LabelSetPlan:
    head: list[str]
    tail: list[str]
    images: int  # candidate images with exactly this label set
    decision_id: str
    keep: list[str]
    remove: list[str]
    source: str  # rules | llm | fallback
    rationale: str


@dataclass
class PlanReport:
    dataset_uri: str
    vocabulary: str
    judge: str
    model: str
    prompt_version: str
    head: list[str]
    tail: list[str]
    head_tail_rule: str
    train_images: int = 0
    candidate_images: int = 0  # train images with >=1 head and >=1 tail finding
    images_to_generate: int = 0  # candidates whose decision removes at least one head finding
    new_samples_per_tail: dict[str, int] = field(default_factory=dict)
    label_sets: list[LabelSetPlan] = field(default_factory=list)
    decisions_needed: int = 0  # cache misses before this plan
    cache_hits: int = 0
    cache_misses: int = 0
    llm_calls: int = 0
    fallbacks: dict[str, int] = field(default_factory=dict)  # error kind -> label sets
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def candidate_codes(labels: np.ndarray, is_train: np.ndarray, head_idx: list[int], tail_idx: list[int]
                    ) -> np.ndarray:
    """The one definition of a candidate: a training image with at least one head and one tail
    finding present. Returns each image's label-set bit code (bit k: finding k present), and
    -1 for images that are not candidates. ``labels`` is (N, K); 1 = present (NaN and 0 are not)."""
    present = labels == 1.0  # (N, K)
    weights = (1 << np.arange(labels.shape[1], dtype=np.int64))  # (K,)
    codes = present.astype(np.int64) @ weights  # (N,)
    head_bits = int(weights[head_idx].sum()) if head_idx else 0
    tail_bits = int(weights[tail_idx].sum()) if tail_idx else 0
    candidate = is_train & ((codes & head_bits) != 0) & ((codes & tail_bits) != 0)
    return np.where(candidate, codes, -1)


def distinct_label_sets(labels: np.ndarray, is_train: np.ndarray, head_idx: list[int], tail_idx: list[int]
                        ) -> tuple[np.ndarray, np.ndarray, int]:
    """Bit codes of the candidates' distinct label sets, their image counts, and the number
    of candidates."""
    codes = candidate_codes(labels, is_train, head_idx, tail_idx)
    unique, counts = np.unique(codes[codes >= 0], return_counts=True)
    return unique, counts, int((codes >= 0).sum())


def question_of(code: int, findings: list[str], head: set[str], tail: set[str]) -> Question:
    """The question a label-set code asks: its head findings and its tail findings."""
    present = [f for k, f in enumerate(findings) if code >> k & 1]
    return Question.of([f for f in present if f in head], [f for f in present if f in tail])


def decide(questions: list[Question], vocabulary: list[str], judge: Judge, cache: DecisionCache
           ) -> tuple[dict[Question, Decision], dict]:
    """Decisions for these questions, and the counts of how they were made: cached ones first,
    then one ``judge.decide`` per miss. An LLM judge's answers are stored as they arrive (a
    killed plan loses none); a fallback decision (the LLM failed; the rules answered) is
    counted by its error kind."""
    keys = {q: decision_key(judge.name, judge.model, judge.prompt_version, q) for q in questions}
    cached = cache.lookup(list(keys.values()))
    out: dict[Question, Decision] = {}
    fresh: list[Decision] = []
    fallbacks: Counter = Counter()
    llm_calls = 0
    for question, key in keys.items():
        if key in cached:
            out[question] = cached[key]
            continue
        decision = out[question] = judge.decide(question, vocabulary)
        if decision.source == "fallback":
            fallbacks[decision.error] += 1
        if judge.calls_llm:
            llm_calls += 1
            cache.store([decision])
        else:
            fresh.append(decision)
    cache.store(fresh)
    misses = len(keys) - len(cached)
    return out, {"cache_hits": len(cached), "cache_misses": misses, "decisions_needed": misses,
                 "llm_calls": llm_calls, "fallbacks": dict(fallbacks)}


def plan(dataset_uri: str, cache_path: str | Path, judge: Judge | None = None
         ) -> tuple[PlanReport, list[Decision]]:
    """Plan a dataset's augmentation with ``judge`` (default: the rules); returns the report
    and the decisions it used."""
    started = time.perf_counter()
    manifest = read_manifest(dataset_uri)
    findings = list(manifest["labels"])
    head, tail = list(manifest["head_tail"]["head"]), list(manifest["head_tail"]["tail"])
    judge = judge or RulesJudge()
    report = PlanReport(dataset_uri, manifest["vocabulary"], judge.name, judge.model, judge.prompt_version,
                        head, tail, manifest["head_tail"]["rule"])
    rows = existing_rows(dataset_uri, ["labels", "split"])
    if rows is None or not head or not tail:
        report.seconds = round(time.perf_counter() - started, 3)
        return report, []
    labels = label_matrix(rows, len(findings))
    is_train = pc.equal(rows.column("split"), "train").to_numpy(zero_copy_only=False)
    report.train_images = int(is_train.sum())
    codes, counts, report.candidate_images = distinct_label_sets(
        labels, is_train, [findings.index(h) for h in head], [findings.index(t) for t in tail])
    questions = [question_of(int(c), findings, set(head), set(tail)) for c in codes]
    with DecisionCache(cache_path) as cache:
        decisions, made = decide(questions, findings, judge, cache)
    for name, value in made.items():
        setattr(report, name, value)
    per_tail: Counter = Counter()
    for question, n in zip(questions, counts.tolist()):
        d = decisions[question]
        report.label_sets.append(LabelSetPlan(list(question.head), list(question.tail), n, d.decision_id,
                                              list(d.keep), list(d.remove), d.source, d.rationale))
        if d.remove:
            report.images_to_generate += n
            per_tail.update({t: n for t in question.tail})
    report.new_samples_per_tail = {t: per_tail.get(t, 0) for t in tail}
    report.label_sets.sort(key=lambda s: -s.images)
    report.seconds = round(time.perf_counter() - started, 3)
    return report, list({d.decision_id: d for d in decisions.values()}.values())
