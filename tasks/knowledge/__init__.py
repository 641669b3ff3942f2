"""LLM Knowledge Guidance: entanglement judges, the DuckDB decision cache and the planner."""

from tasks.knowledge.cache import DecisionCache, export_decisions
from tasks.knowledge.decision import Decision, Question, decision_key
from tasks.knowledge.llm import AnthropicJudge, ConfigError, JudgeError, LLMSettings
from tasks.knowledge.planner import Judge, PlanReport, plan
from tasks.knowledge.rules import NoGuidanceJudge, RulesJudge

def make_judge(kind: str, llm: LLMSettings | None = None) -> Judge:
    """The one place a judge is made (`tailforge plan` and the augment flow): ``rules``, the
    offline clinical table; ``anthropic``, the Messages API with ``llm`` (the rules table answers
    what it cannot); ``none``, no guidance (remove every head finding). All share one protocol
    (tasks.knowledge.planner.Judge)."""
    if kind == "rules":
        return RulesJudge()
    if kind == "none":
        return NoGuidanceJudge()
    if kind == "anthropic":
        return AnthropicJudge(llm)
    raise ValueError(f"unknown judge {kind!r}; use rules, anthropic or none")


__all__ = ["AnthropicJudge", "ConfigError", "Decision", "DecisionCache", "Judge", "JudgeError", "LLMSettings",
           "NoGuidanceJudge", "PlanReport", "Question", "RulesJudge", "decision_key", "export_decisions",
           "make_judge", "plan"]
