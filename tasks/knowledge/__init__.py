"""LLM Knowledge Guidance: entanglement judges, the DuckDB decision cache and the planner.

The cache and the planner (DuckDB, pyarrow) are imported when first used, so the settings can
read the judges' defaults (tasks/knowledge/llm.py) without them.
"""

import importlib

from models.registry import Registry
from tasks.knowledge.decision import Decision, Question, decision_key
from tasks.knowledge.llm import AnthropicJudge, ConfigError, JudgeError, LLMSettings
from tasks.knowledge.rules import NoGuidanceJudge, RulesJudge

_LAZY = {"DecisionCache": "cache", "export_decisions": "cache", "Judge": "planner", "PlanReport": "planner",
         "plan": "planner"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"tasks.knowledge.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'tasks.knowledge' has no attribute {name!r}")

# The judges by name, each built from the LLM settings (knowledge.judge; used only by an LLM judge):
# ``rules``, the offline clinical table; ``anthropic``, the Messages API (the rules table answers
# what it cannot); ``none``, no guidance (remove every head finding); then the judges
# tasks/knowledge/judges/ registers, one module each. All share one protocol
# (tasks.knowledge.planner.Judge).
JUDGES: Registry = Registry("tasks.knowledge.judges", {
    "rules": lambda llm: RulesJudge(),
    "anthropic": AnthropicJudge,
    "none": lambda llm: NoGuidanceJudge(),
})


def make_judge(kind: str, llm: LLMSettings | None = None) -> "Judge":
    """The one place a judge is made (`tailforge plan` and the augment flow)."""
    if kind not in JUDGES:
        raise ValueError(f"unknown judge {kind!r}; use one of {', '.join(JUDGES)}")
    return JUDGES[kind](llm)


__all__ = ["AnthropicJudge", "ConfigError", "Decision", "DecisionCache", "JUDGES", "Judge", "JudgeError", "LLMSettings",
           "NoGuidanceJudge", "PlanReport", "Question", "RulesJudge", "decision_key", "export_decisions",
           "make_judge", "plan"]
