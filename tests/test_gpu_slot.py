"""The `gpu` slot of augment batches (issue 12, defect 5): a short lease that Prefect renews, and a
log line when a batch has to wait. That a killed holder's slot frees within ~75 s is measured by
benchmarks/reliability.py (section gpu_lease); it takes minutes, so it is not a test."""

import logging

import pytest

from flows.augment import GPU_LEASE_S, gpu_wait_message, log_gpu_wait


def test_the_wait_message_says_what_holds_the_slots():
    assert gpu_wait_message(2, 1) is None
    message = gpu_wait_message(1, 1)
    assert message.startswith("waiting for a `gpu` slot (limit 1, 1 held")
    assert f"{GPU_LEASE_S:.0f} s lease" in message


def test_the_server_takes_the_short_lease_and_a_full_limit_is_announced(prefect_server, caplog):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    logger = logging.getLogger("tests.gpu_slot")
    log_gpu_wait(logger)  # no `gpu` limit on this server: nothing to say, no error
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu", limit=1))
    try:
        with caplog.at_level(logging.INFO, logger="tests.gpu_slot"):
            log_gpu_wait(logger)
            assert not caplog.records  # a free slot is not worth a line
            with concurrency("gpu", occupy=1, lease_duration=GPU_LEASE_S):
                log_gpu_wait(logger)
        assert [r.getMessage()[:44] for r in caplog.records] == ["waiting for a `gpu` slot (limit 1, 1 held by"]
        # why not shorter: the server refuses a lease under 60 s
        with pytest.raises(ConcurrencySlotAcquisitionError, match="422"):
            with concurrency("gpu", occupy=1, lease_duration=GPU_LEASE_S - 1):
                pass
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name("gpu")  # other tests of the session run without it
