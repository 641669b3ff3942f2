"""The Anthropic judge: the Messages API with forced tool use and a versioned prompt.

The client honours the SDK's standard environment (``ANTHROPIC_API_KEY``,
``ANTHROPIC_BASE_URL``), so calls can go through a gateway or proxy. The prompt holds label
names and the vocabulary only: never a patient id, path, image, report text or date. The
answer is validated; anything but a list of present head findings is an invalid answer.
Every failure is a ``JudgeError`` with a short ``kind``; its message never holds the key.
The SDK's retries are off (it would sleep for any Retry-After, a day included): the project's
bounded policy in ``tasks/knowledge/retry.py`` retries instead, and a server that asks to be
left alone for longer than the cap is not asked again until then (answered as ``rate_limit``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.knowledge.decision import Decision, Question, make_decision
from tasks.knowledge.retry import RETRYABLE_STATUS, Failure, GiveUp, RetryPolicy, call_with_retries, retry_after_s
from tasks.knowledge.rules import RulesJudge

if TYPE_CHECKING:
    import anthropic

PROMPT_VERSION = "lkg-v1"
TOOL_NAME = "record_entanglement"
DEFAULT_MODEL = "claude-sonnet-5-5"  # current in anthropic 2.12; 4-5 reaches end of life on 2026-11-30
SYSTEM_PROMPT = (
    "You are a thoracic radiologist advising a data pipeline. The pipeline erases some findings from "
    "frontal chest radiographs by repainting their region with healthy lung. A radiograph is a "
    "projection, so one finding can lie over another: erasing it would also erase or alter the other. "
    "You get the findings present on one radiograph, split into HEAD findings (candidates for "
    "erasing) and TAIL findings (which must survive). Name the head findings that are entangled with "
    "any tail finding on a frontal view (they overlap in projection or are part of the same process), "
    "and give a one-sentence reason. Answer only by calling the tool."
)


class JudgeError(Exception):
    """A failed LLM judgement; ``kind`` is one of ERROR_KINDS."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


ERROR_KINDS = ("timeout", "rate_limit", "overloaded", "server_error", "connection", "api_error", "malformed",
               "invalid_answer", "refusal")  # overloaded: HTTP 529


class ConfigError(ValueError):
    """The judge cannot be set up (no key); raised before any work."""


def default_model() -> str:
    """$TAILFORGE_LLM_MODEL, else DEFAULT_MODEL: read here only, so `plan` and `run` ask the same
    model and share the decision cache's keys."""
    return os.environ.get("TAILFORGE_LLM_MODEL") or DEFAULT_MODEL


@dataclass(frozen=True)
class LLMSettings:
    model: str = field(default_factory=default_model)  # the Messages API model name
    prompt_version: str = PROMPT_VERSION  # bump to make new decisions; old ones stay cached
    timeout_s: float = 30.0  # per request
    max_retries: int = RetryPolicy.max_retries  # retries on timeouts, connection errors, 408, 429, 529, 5xx
    max_wait_s: float = RetryPolicy.max_wait_s  # the longest wait between tries; a longer Retry-After is not waited for
    budget_s: float = RetryPolicy.budget_s  # wall clock per question, all tries and waits
    max_tokens: int = 400
    api_key_secret: str | None = None  # a Prefect Secret block holding the key, else ANTHROPIC_API_KEY


def resolve_api_key(settings: LLMSettings) -> str:
    """The key from a Prefect Secret block (when named) or the environment. Never printed."""
    if settings.api_key_secret:
        from prefect.blocks.system import Secret

        return Secret.load(settings.api_key_secret).get()
    key = os.environ.get("ANTHROPIC_API_KEY")
    if not key:
        raise ConfigError("the anthropic judge needs a key: set ANTHROPIC_API_KEY or name a Prefect "
                          "Secret block with --api-key-secret")
    return key


def tool_schema(question: Question) -> dict:
    return {
        "name": TOOL_NAME,
        "description": "Record which head findings are entangled with the tail findings.",
        "input_schema": {
            "type": "object",
            "properties": {
                "keep": {"type": "array", "items": {"type": "string", "enum": list(question.head)},
                         "description": "head findings entangled with a tail finding (may be empty)"},
                "rationale": {"type": "string", "description": "one sentence"},
            },
            "required": ["keep", "rationale"],
        },
    }


def request_body(question: Question, vocabulary: list[str], settings: LLMSettings) -> dict[str, Any]:
    """The exact Messages API arguments: label names and the vocabulary, nothing else."""
    text = (f"Vocabulary: {', '.join(vocabulary)}.\n"
            f"HEAD findings present: {', '.join(question.head)}.\n"
            f"TAIL findings present: {', '.join(question.tail)}.\n"
            "Which head findings are entangled with a tail finding?")
    return {"model": settings.model, "max_tokens": settings.max_tokens, "system": SYSTEM_PROMPT,
            "messages": [{"role": "user", "content": text}], "tools": [tool_schema(question)],
            "tool_choice": {"type": "tool", "name": TOOL_NAME}}


class AnthropicJudge:
    """The LLM judge; a question it cannot answer (every JudgeError kind) gets the rules
    table's decision instead, filed under this judge's key with the error kind (``decide``)."""
    name = "anthropic"
    calls_llm = True

    def __init__(self, settings: LLMSettings | None = None, client: anthropic.Anthropic | None = None):
        settings = settings or LLMSettings()
        self.settings = settings
        self.policy = RetryPolicy(max_retries=settings.max_retries, max_wait_s=settings.max_wait_s,
                                  budget_s=settings.budget_s)
        # max_retries=0: the SDK would sleep for any Retry-After; retries are ours (self.policy)
        import anthropic  # here, not at import: its import costs every command a second or two

        self.client = (client.with_options(max_retries=0) if client else
                       anthropic.Anthropic(api_key=resolve_api_key(settings), timeout=settings.timeout_s,
                                           max_retries=0))
        self.blocked_until = 0.0  # monotonic time before which the server asked not to be called

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def prompt_version(self) -> str:
        return self.settings.prompt_version

    def decide(self, question: Question, vocabulary: list[str]) -> Decision:
        """The LLM's decision, or the rules' as a fallback that records why."""
        try:
            keep, rationale = self.ask(question, vocabulary)
        except JudgeError as exc:
            return RulesJudge().decide(question, source="fallback", error=exc.kind,
                                       as_judge=(self.name, self.model, self.prompt_version))
        return make_decision(self.name, self.model, self.prompt_version, question, keep, rationale, "llm")

    def ask(self, question: Question, vocabulary: list[str]) -> tuple[list[str], str]:
        """(keep, rationale) for one question, or JudgeError; bounded by the retry policy."""
        waiting = self.blocked_until - time.monotonic()
        if waiting > 0:
            raise JudgeError("rate_limit", f"the API asked not to be called for another {waiting:.0f} s")
        import anthropic

        body = request_body(question, vocabulary, self.settings)
        try:
            message = call_with_retries(lambda timeout: self.client.messages.create(**body, timeout=timeout),
                                        (anthropic.APIError, ValueError), classify, self.policy,
                                        self.settings.timeout_s)
        except GiveUp as exc:
            if exc.blocked_s:
                self.blocked_until = time.monotonic() + exc.blocked_s
            raise JudgeError(exc.failure.kind, "; ".join(filter(None, (exc.failure.detail, str(exc))))) from exc
        return validate_answer(message, question)


def classify(exc: Exception) -> Failure:
    """An SDK exception as a Failure: its kind, whether to retry, the server's Retry-After."""
    import anthropic

    if isinstance(exc, anthropic.APITimeoutError):
        return Failure("timeout", True)
    if isinstance(exc, anthropic.APIConnectionError):
        return Failure("connection", True)
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        kind = {429: "rate_limit", 529: "overloaded", 408: "timeout"}.get(
            status, "server_error" if status >= 500 else "api_error")
        return Failure(kind, status in RETRYABLE_STATUS or status >= 500, retry_after_s(exc.response.headers),
                       f"HTTP {status}")
    return Failure("malformed", False, None, type(exc).__name__)  # APIResponseValidationError, bad JSON


def validate_answer(message: Any, question: Question) -> tuple[list[str], str]:
    if getattr(message, "stop_reason", None) == "refusal":
        raise JudgeError("refusal")
    blocks = [b for b in (getattr(message, "content", None) or [])
              if getattr(b, "type", None) == "tool_use" and getattr(b, "name", None) == TOOL_NAME]
    if not blocks or not isinstance(blocks[0].input, dict):
        raise JudgeError("malformed", "no tool call in the answer")
    answer = blocks[0].input
    keep, rationale = answer.get("keep"), answer.get("rationale")
    if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
        raise JudgeError("invalid_answer", "keep is not a list of names")
    unknown = sorted(set(keep) - set(question.head))
    if unknown or len(set(keep)) != len(keep):
        raise JudgeError("invalid_answer", f"not present head findings: {unknown}" if unknown else "repeated names")
    if not isinstance(rationale, str) or not rationale.strip():
        raise JudgeError("invalid_answer", "no rationale")
    return keep, rationale.strip()[:500]
