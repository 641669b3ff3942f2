"""A killed run, shown as crashed in the Prefect UI too.

A run killed with SIGKILL never reports its end: its flow run and the task runs it had started
stay "Running" on the Prefect server forever; so does a run that ended while its Prefect server
was gone (its record says "failed" or "interrupted"; the server never heard). The next run into
the same output notices the dead process from its run record (tasks/runs.py) and calls
``mark_crashed`` with that record; the record's run id is its Prefect flow run id
(tasks.dataset.new_run_id), so the flow run, its subflow runs and their unfinished task runs are
set to Crashed with the reason. Best effort: a run that cannot reach
the server (or whose record is not a Prefect run) is logged and left as it is.
"""

from __future__ import annotations

import logging
import uuid

log = logging.getLogger(__name__)
UNFINISHED = ("RUNNING", "PENDING", "SCHEDULED", "PAUSED")


def mark_crashed(record: dict) -> bool:
    """Set the record's Prefect flow run, its unfinished subflow runs and their unfinished task runs
    to Crashed; True when the flow run was marked (False: not a Prefect run, not found, already
    final, or no server)."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        flow_run_id = uuid.UUID(str(record.get("run_id")))
    except ValueError:
        return False  # a run outside Prefect (tasks.dataset.new_run_id's local id)
    message = (record.get("counts") or {}).get("error") or "the run's process ended without finishing it"
    try:
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is None or flow_run.state.type.value not in UNFINISHED:
                return False
            _crash(client, flow_run_id, message)
    except ObjectNotFound:
        return False
    except (httpx.HTTPError, RuntimeError) as exc:
        log.warning(f"could not mark flow run {flow_run_id} crashed on the Prefect server: {exc}")
        return False
    log.warning(f"flow run {flow_run_id} ({record.get('flow')}) marked Crashed: {message}")
    return True


def _crash(client, flow_run_id: uuid.UUID, message: str) -> None:
    """Crashed: the flow run's unfinished task runs, its unfinished subflow runs (the same way), then it."""
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentFlowRunId, FlowRunFilterState,
                                                FlowRunFilterStateType, TaskRunFilter, TaskRunFilterFlowRunId,
                                                TaskRunFilterState, TaskRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    unfinished = [StateType[name] for name in UNFINISHED]
    for task_run in client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]),
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=unfinished)))):
        client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
    for child in client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished)))):
        _crash(client, child.id, f"its parent flow run ended: {message}"[:500])
    client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
