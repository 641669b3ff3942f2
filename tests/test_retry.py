"""The bounded retry policy of LLM requests (tasks/knowledge/retry.py), with a fake clock."""

import random

import pytest

from tasks.knowledge.retry import Failure, GiveUp, RetryPolicy, call_with_retries, retry_after_s


class Clock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _run(failures: list[Failure], policy: RetryPolicy, request_s: float = 0.0):
    """Fail with ``failures`` in turn, then answer "ok"; returns (result or GiveUp, clock, timeouts asked)."""
    clock, timeouts, queue = Clock(), [], list(failures)

    def attempt(timeout):
        timeouts.append(timeout)
        clock.now += request_s
        if queue:
            raise RuntimeError(queue.pop(0))
        return "ok"

    try:
        result = call_with_retries(attempt, (RuntimeError,), lambda exc: exc.args[0], policy, 30.0,
                                   sleep=clock.sleep, clock=clock, rng=random.Random(0))
    except GiveUp as exc:
        result = exc
    return result, clock, timeouts


def test_backoff_is_exponential_with_jitter_and_capped():
    policy = RetryPolicy(max_retries=6, initial_backoff_s=0.5, max_backoff_s=4.0)
    result, clock, _ = _run([Failure("server_error", True)] * 6, policy)
    assert result == "ok" and len(clock.sleeps) == 6
    for k, wait in enumerate(clock.sleeps):
        top = min(4.0, 0.5 * 2 ** k)
        assert 0.75 * top <= wait <= top


def test_retry_after_is_honoured_up_to_the_cap_and_a_longer_one_gives_up_at_once():
    result, clock, _ = _run([Failure("rate_limit", True, 3.0)], RetryPolicy(max_wait_s=10))
    assert result == "ok" and clock.sleeps == [3.0]
    result, clock, _ = _run([Failure("rate_limit", True, 86400.0)], RetryPolicy(max_wait_s=10))
    assert isinstance(result, GiveUp) and result.blocked_s == 86400.0 and clock.sleeps == []


def test_the_budget_bounds_waits_and_request_timeouts():
    policy = RetryPolicy(max_retries=10, max_wait_s=10, budget_s=12)
    result, clock, timeouts = _run([Failure("overloaded", True, 5.0)] * 10, policy, request_s=1.0)
    assert isinstance(result, GiveUp) and "budget" in str(result)
    assert clock.now <= 12 and timeouts[0] == 12 and timeouts[-1] < 12


def test_not_retryable_fails_at_once_and_retries_are_counted():
    result, clock, timeouts = _run([Failure("api_error", False)], RetryPolicy())
    assert isinstance(result, GiveUp) and len(timeouts) == 1
    result, clock, timeouts = _run([Failure("timeout", True)] * 5, RetryPolicy(max_retries=2))
    assert isinstance(result, GiveUp) and len(timeouts) == 3 and len(clock.sleeps) == 2
    assert result.failure.kind == "timeout"


@pytest.mark.parametrize("headers,seconds", [
    ({"retry-after-ms": "250"}, 0.25), ({"retry-after": "86400"}, 86400.0), ({"retry-after": "1.5"}, 1.5),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT"}, 30.0), ({"retry-after": "soon"}, None), ({}, None),
])
def test_retry_after_header_forms(headers, seconds):
    now = 1445412480.0  # 2015-10-21 07:28:00 UTC
    assert retry_after_s(headers, now=now) == seconds

