"""The global `gpu` concurrency limit: how a run takes its slots, once, for all its GPU work.

A slot request costs ~2 s on a SQLite-backed Prefect server (docs/operations.md, "Why once per
run"), so runs take their slots once instead of per batch or per task. With no `gpu` limit on
the server nothing is held and nothing is logged (Prefect would warn "Concurrency limits
['gpu'] do not exist" at every request).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

from prefect.concurrency.sync import concurrency

from models.device import DEVICE_VARIABLE, describe_device, resolve_device


# The `gpu` slot's lease. Prefect renews it from a thread in the holder every
# 0.75 of the term (prefect/concurrency/_leases.py, _RENEWAL_FRACTION), so a long batch keeps its slot;
# a killed holder stops renewing and the server's repossessor (every 15 s) frees the slot once the
# term ends. 60 s is the shortest term the server accepts (lease_duration ge=60 in
# prefect/server/api/concurrency_limits_v2.py); Prefect's default is 300 s.
GPU_LEASE_S = 60.0
# How long a run waits for its `gpu` slots before it fails saying why (nothing waits without a
# bound): longer than any one nightly run's GPU work, shorter than a day.
GPU_WAIT_S = 12 * 3600.0


class GpuWaitTimeout(TimeoutError):
    """The `gpu` slots stayed taken for the whole wait; the message says what to look at."""


def gpu_wait_message(limit: int, active: int, wanted: int = 1) -> str | None:
    """What a run waits for when the `gpu` slots it asks for are not free; None when they are."""
    if active + wanted <= limit:
        return None
    return (f"waiting for {wanted} `gpu` slot(s) (limit {limit}, {active} held by running runs or by a killed "
            f"run, whose slots free within ~{GPU_LEASE_S + 15:.0f} s as its {GPU_LEASE_S:.0f} s lease lapses)")


def read_gpu_limit(logger):
    """The server's active `gpu` limit, or None when there is none (or it cannot be read: then
    nothing is held, and the run says so in a warning)."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name("gpu")
        except ObjectNotFound:
            return None
        except httpx.HTTPError as exc:
            logger.warning(f"could not read the `gpu` limit ({exc}); running without holding a slot")
            return None
    return limit if limit.active else None


@contextmanager
def gpu_slots(wanted: int, logger, wait_s: float = GPU_WAIT_S) -> Iterator[int]:
    """Hold slots of the global `gpu` limit for a whole fan-out; yields how many batches may be
    in flight. The run takes ``wanted`` slots (at most the limit) once and keeps them until its
    last batch ends, so the limit still bounds GPU work across runs, processes and hosts, but no
    batch pays for a slot: on a SQLite-backed server each slot request costs ~2 s
    (docs/operations.md, "Why once per run, not per batch"). No `gpu` limit on the server: nothing to hold,
    ``wanted`` in flight. Slots still taken after ``wait_s`` seconds: GpuWaitTimeout."""
    limit = read_gpu_limit(logger)
    if limit is None:
        yield wanted
        return
    slots = max(1, min(wanted, limit.limit))
    message = gpu_wait_message(limit.limit, limit.active_slots, slots)
    if message:
        logger.info(message)
    with ExitStack() as held:
        try:
            held.enter_context(concurrency("gpu", occupy=slots, lease_duration=GPU_LEASE_S, timeout_seconds=wait_s))
        except TimeoutError as exc:
            raise GpuWaitTimeout(
                f"gave up after {wait_s:g} s waiting for {slots} `gpu` slot(s) (limit {limit.limit}): other runs "
                f"held them all that time; see which in the Prefect UI (Concurrency, `gpu`), or raise the limit"
            ) from exc
        yield slots


def say_device(logger) -> str:
    """Resolve where this process's models run (models/device.py; a bad ``$TAILFORGE_DEVICE``
    fails here, before any work) and log it: an operator sees whether a GPU worker used its GPU."""
    where = describe_device(resolve_device())
    logger.info(f"models run on {where} in this process (${DEVICE_VARIABLE}: auto, cpu, cuda or cuda:N)")
    return where
