"""Which task failures are worth a retry: ``retry_condition_fn`` for the flows' tasks.

A missing file, a wrong column, a corrupt shard or a full disk fails the same way on every try:
retrying it only delays the one line the operator needs (issue 34: a 10 s retry before a
missing table's message). Connection errors, timeouts and whatever else may pass on its own
keep their retries.
"""

from __future__ import annotations

import errno

# fails the same way on a retry: the user has to change something first
PERMANENT = (ValueError, LookupError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
PERMANENT_ERRNO = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # disk full, over quota, read-only file system


def is_permanent(exc: BaseException | None) -> bool:
    if isinstance(exc, PERMANENT):
        return True
    return isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNO


def retry_unless_permanent(task, task_run, state) -> bool:
    """Prefect's retry condition: retry a failed task run unless its exception is permanent."""
    return not is_permanent(state.result(raise_on_failure=False))
