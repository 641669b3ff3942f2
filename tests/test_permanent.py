"""Which failed task runs the flows retry (flows/permanent.py)."""


def test_the_flows_tasks_retry_only_what_may_pass_on_its_own():
    """Issue 34: a missing file, a wrong column, a corrupt shard or a full disk is not retried."""
    import errno

    from prefect.states import Failed

    from flows.augment import augment_batch
    from flows.factory import ingest_task
    from flows.permanent import retry_unless_permanent
    from flows.pretrain import train_classifier_task, train_generator_task
    from tasks.store import ShardCorrupt

    for permanent in (ValueError("no column 'Finding Labels'"), FileNotFoundError("no table"),
                      ShardCorrupt("shard x is corrupt"), OSError(errno.ENOSPC, "No space left on device")):
        assert not retry_unless_permanent(None, None, Failed(data=permanent)), permanent
    for passing in (ConnectionError("reset"), TimeoutError("slow"), OSError(errno.EIO, "I/O error"),
                    RuntimeError("CUDA error: an illegal memory access")):
        assert retry_unless_permanent(None, None, Failed(data=passing)), passing
    for task in (augment_batch, ingest_task, train_classifier_task, train_generator_task):
        assert task.retries and task.retry_condition_fn is retry_unless_permanent, task.name
