"""The `gpu` slots of an augment run (issues 12 and 14): taken once per run for the whole
fan-out, at most the limit, on a short lease that Prefect renews, with a log line when the run
has to wait. That a killed holder's slot frees within ~75 s is measured by
benchmarks/reliability.py (section gpu_lease); what a slot costs per batch, by
benchmarks/bench_gpu_slot.py. Both take minutes, so they are not tests."""

import logging
import threading
import time

import pytest

from flows.gpu import GPU_LEASE_S, GpuWaitTimeout, gpu_slots, gpu_wait_message


def test_the_wait_message_says_what_holds_the_slots():
    assert gpu_wait_message(2, 1) is None and gpu_wait_message(2, 0, 2) is None
    message = gpu_wait_message(2, 1, 2)
    assert message.startswith("waiting for 2 `gpu` slot(s) (limit 2, 1 held")
    assert f"{GPU_LEASE_S:.0f} s lease" in message


def _active_slots() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name("gpu").active_slots


def test_a_run_holds_its_slots_for_the_fan_out_at_most_the_limit(prefect_server, caplog):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    logger = logging.getLogger("tests.gpu_slot")
    with gpu_slots(3, logger) as slots:  # no `gpu` limit on this server: nothing held, no warning
        assert slots == 3
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu", limit=2))
    try:
        with caplog.at_level(logging.INFO, logger="tests.gpu_slot"):
            with gpu_slots(5, logger) as slots:  # more batches in flight than the limit: the limit
                assert slots == 2 and _active_slots() == 2
            assert _active_slots() == 0 and not caplog.records  # free slots are not worth a line
            got = []

            def second_run():
                with gpu_slots(2, logger) as slots:
                    got.append((slots, _active_slots()))

            with concurrency("gpu", occupy=1, lease_duration=GPU_LEASE_S):  # another run holds one
                waiter = threading.Thread(target=second_run)
                waiter.start()
                deadline = time.monotonic() + 30
                while not caplog.records and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert got == []  # it waits while the other run holds a slot
            waiter.join(timeout=60)
        assert got == [(2, 2)]  # and runs with both once it is released
        assert [r.getMessage()[:49] for r in caplog.records] == ["waiting for 2 `gpu` slot(s) (limit 2, 1 held by r"]
        with concurrency("gpu", occupy=2, lease_duration=GPU_LEASE_S):  # every slot held elsewhere, for good
            started = time.monotonic()
            with pytest.raises(GpuWaitTimeout, match=r"gave up after 2 s waiting for 1 `gpu` slot\(s\) \(limit 2\)"):
                with gpu_slots(1, logger, wait_s=2):
                    pass
            assert time.monotonic() - started < 40  # bounded (the client's retries are at most 30 s apart)
        assert _active_slots() == 0
        # why not shorter: the server refuses a lease under 60 s
        with pytest.raises(ConcurrencySlotAcquisitionError, match="422"):
            with concurrency("gpu", occupy=1, lease_duration=GPU_LEASE_S - 1):
                pass
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name("gpu")  # other tests of the session run without it
