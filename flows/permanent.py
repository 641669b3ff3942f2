"""Which task failures are worth a retry: ``retry_condition_fn`` for the flows' tasks.

A missing file, a wrong column, a corrupt shard or a full disk fails the same way on every try:
retrying it only delays the one line the operator needs (a 10 s retry before a
missing table's message). Connection errors, timeouts and whatever else may pass on its own
keep their retries.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import typing

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


class _SaidInOneLine(logging.Filter):
    """Drops the flow engine's "Engine execution exited with unexpected exception" record (with
    its traceback) for an exception ``fails_in_one_line`` already logged in one line: a flow
    run started by a worker (a deployment) raises its Failed state's exception once more at
    its end, and Prefect's engine logs it to the run's logs in the UI."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and getattr(record.exc_info[1], SAID, False))


SAID = "_tailforge_said_in_one_line"
logging.getLogger("prefect.flow_runs").addFilter(_SaidInOneLine())


def fails_in_one_line(body):
    """A flow body whose permanent failure (or a stage's ``StageFailed``, or an output another run
    holds: ``DatasetLocked``) ends its flow run Failed with the one line as its state message and
    one log line: no traceback in the UI, and no pickled exception in Prefect's result storage
    (Prefect writes one for every flow that raises, and the server shows each as a key-less
    "unknown" artifact). The caller still gets the exception itself (the state carries it in
    memory), so the CLI's one line and exit 2 are unchanged. Put it under ``@flow``; any other
    exception is raised as before, with its traceback."""
    from flows.stages import StageFailed
    from tasks.locks import DatasetLocked

    @functools.wraps(body)
    def run(*args, **kwargs):
        try:
            return body(*args, **kwargs)
        except Exception as exc:
            if not (is_permanent(exc) or isinstance(exc, (StageFailed, DatasetLocked))):
                raise
            from prefect import get_run_logger
            from prefect.states import Failed

            line = f"{type(exc).__name__}: {exc}"
            get_run_logger().error(line)
            setattr(exc, SAID, True)
            return Failed(message=line, data=exc)

    # Prefect resolves a flow's parameter types in its function's module; this wrapper lives in
    # another, so it carries the body's types resolved (`from __future__ import annotations`
    # leaves them as names)
    hints = typing.get_type_hints(body)
    signature = inspect.signature(body)
    run.__annotations__ = hints
    run.__signature__ = signature.replace(
        parameters=[p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()],
        return_annotation=hints.get("return", signature.return_annotation))
    return run
