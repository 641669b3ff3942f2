"""LLM Knowledge Guidance: entanglement judges, the DuckDB decision cache and the planner."""

from typing import Callable

from tasks.knowledge.cache import DecisionCache, export_decisions
from tasks.knowledge.decision import Decision, Question, decision_key
from tasks.knowledge.llm import AnthropicJudge, ConfigError, JudgeError, LLMSettings
from tasks.knowledge.planner import Judge, PlanReport, plan
from tasks.knowledge.rules import NoGuidanceJudge, RulesJudge

# The judges by name, each built from the LLM settings (knowledge.judge; used only by an LLM judge):
# ``rules``, the offline clinical table; ``anthropic``, the Messages API (the rules table answers
# what it cannot); ``none``, no guidance (remove every head finding). All share one protocol
# (tasks.knowledge.planner.Judge). A new judge: its module, and one entry here.
JUDGES: dict[str, Callable[[LLMSettings | None], Judge]] = {
    "rules": lambda llm: RulesJudge(),
    "anthropic": AnthropicJudge,
    "none": lambda llm: NoGuidanceJudge(),
}


def make_judge(kind: str, llm: LLMSettings | None = None) -> Judge:
    """The one place a judge is made (`tailforge plan` and the augment flow)."""
    if kind not in JUDGES:
        raise ValueError(f"unknown judge {kind!r}; use one of {', '.join(JUDGES)}")
    return JUDGES[kind](llm)


__all__ = ["AnthropicJudge", "ConfigError", "Decision", "DecisionCache", "JUDGES", "Judge", "JudgeError", "LLMSettings",
           "NoGuidanceJudge", "PlanReport", "Question", "RulesJudge", "decision_key", "export_decisions",
           "make_judge", "plan"]
