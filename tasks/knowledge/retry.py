"""The project's own bounded retry policy for LLM requests (the SDK's retries are off).

The SDK sleeps for whatever a server's Retry-After says (86,400 s included) and client
timeouts do not cap it. Here every wait is bounded:

- retried: timeouts, connection errors, 408, 429, 529 and other 5xx;
- the wait before retry k (0-based) is the server's Retry-After when it gives one, else
  exponential backoff ``min(max_backoff_s, initial_backoff_s * 2**k)`` with jitter in
  (0.75, 1] (the SDK's own schedule);
- a Retry-After above ``max_wait_s`` is not waited for: the request fails at once, and the
  judge answers "rate limited" without a request until that time has passed;
- the attempts of one question share a wall-clock ``budget_s``: a wait that would overrun it
  is not taken, and each request's timeout is cut to the budget that is left.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from typing import Callable, Mapping

RETRYABLE_STATUS = {408, 429}  # and every 5xx (529: overloaded)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2  # retries after the first attempt
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_wait_s: float = 10.0  # the longest wait honoured, Retry-After included
    budget_s: float = 90.0  # wall clock for one question, all attempts and waits

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.budget_s <= 0 or self.max_wait_s < 0:
            raise ValueError("retries must be >= 0, the budget > 0 s and the wait cap >= 0 s")

    def backoff(self, retry: int, rng: random.Random) -> float:
        return min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** retry) * (1 - 0.25 * rng.random())


def retry_after_s(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds a response asks to wait: ``retry-after-ms``, else ``retry-after`` (seconds or an HTTP date)."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers.get(name)) * scale)
        except (TypeError, ValueError):
            continue
    parsed = email.utils.parsedate_tz(headers.get("retry-after") or "")
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - (time.time() if now is None else now))


@dataclass
class Failure:
    """One failed attempt, as the caller classifies it."""

    kind: str  # a JudgeError kind
    retryable: bool
    retry_after: float | None = None  # seconds the server asked to wait
    detail: str = ""


class GiveUp(Exception):
    """Retries ended; ``failure`` is the last one and ``blocked_s`` how long the server asked to be left alone."""

    def __init__(self, failure: Failure, reason: str, blocked_s: float | None = None):
        super().__init__(reason)
        self.failure, self.blocked_s = failure, blocked_s


def call_with_retries(attempt: Callable[[float], object], catch: tuple[type[Exception], ...],
                      classify: Callable[[Exception], Failure], policy: RetryPolicy, timeout_s: float,
                      sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                      rng: random.Random | None = None):
    """``attempt(request_timeout_s)`` until it returns, under ``policy``; raises GiveUp.

    Exceptions of the ``catch`` types are turned into a Failure by ``classify``; others propagate."""
    rng = rng or random.Random()
    deadline = clock() + policy.budget_s
    for retry in range(policy.max_retries + 1):
        left = deadline - clock()
        if left <= 0:
            raise GiveUp(failure, f"no time left in the {policy.budget_s:g} s budget")
        try:
            return attempt(min(timeout_s, left))
        except catch as exc:
            failure = classify(exc)
        _wait_or_give_up(failure, retry, policy, deadline - clock(), sleep, rng)
    raise GiveUp(failure, f"{policy.max_retries} retries used")


def _wait_or_give_up(failure: Failure, retry: int, policy: RetryPolicy, left: float,
                     sleep: Callable[[float], None], rng: random.Random) -> None:
    if not failure.retryable:
        raise GiveUp(failure, "not retryable")
    if failure.retry_after is not None and failure.retry_after > policy.max_wait_s:
        raise GiveUp(failure, f"the server asks to wait {failure.retry_after:g} s, "
                              f"over the {policy.max_wait_s:g} s cap", blocked_s=failure.retry_after)
    if retry == policy.max_retries:
        return  # the loop ends: no wait after the last attempt
    wait = failure.retry_after if failure.retry_after is not None else policy.backoff(retry, rng)
    if wait >= left:
        raise GiveUp(failure, f"waiting {wait:.1f} s would overrun the {policy.budget_s:g} s budget")
    sleep(wait)
