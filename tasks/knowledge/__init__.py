"""LLM Knowledge Guidance: entanglement judges, the DuckDB decision cache and the planner."""

from tasks.knowledge.cache import DecisionCache, export_decisions
from tasks.knowledge.decision import Decision, Question, decision_key
from tasks.knowledge.llm import AnthropicJudge, ConfigError, JudgeError, LLMSettings
from tasks.knowledge.planner import PlanReport, plan
from tasks.knowledge.rules import NoGuidanceJudge, RulesJudge

__all__ = ["AnthropicJudge", "ConfigError", "Decision", "DecisionCache", "JudgeError", "LLMSettings",
           "NoGuidanceJudge", "PlanReport", "Question", "RulesJudge", "decision_key", "export_decisions", "plan"]
