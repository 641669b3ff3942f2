"""Where the factory's stages run: in the factory's own process (a subflow, the default) or as a
deployment on another work pool, e.g. pretrain and augment on the `gpu` pool while the nightly
parent runs on the `cpu` pool. One YAML still drives the whole run: its `stages`
section names the deployment of each stage that should run elsewhere.

A stage run as a deployment gets the same parameters as the subflow, plus ``result_uri``: the
stage writes the handles it returns there (JSON, on the run's output storage, which every pool
can reach), and the parent reads them once the stage's flow run has completed. Prefect's own
result storage is per host by default, so it cannot carry them between pools. The parent waits
at most ``stages.timeout_s`` for a stage; a stage that fails, crashes, is cancelled or does not
finish in time stops the factory with an error that names its flow run.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from tasks import store


class StageFailed(RuntimeError):
    """A stage run as a deployment did not complete."""


def write_result(result_uri: str | None, result: dict) -> dict:
    """What a stage flow returns, also written to ``result_uri`` when its parent asked for it."""
    if result_uri:
        store.write_json(result_uri, result)
    return result


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


def run_stage(name: str, flow_fn: Callable[..., dict], parameters: dict, deployment: str | None,
              result_uri: str, timeout_s: float) -> dict:
    """Run one stage: ``flow_fn(**parameters)`` here, or the ``deployment`` ("flow/deployment")
    with those parameters on its pool, waiting at most ``timeout_s``; returns the stage's handles."""
    if not deployment:
        return flow_fn(**parameters)
    from prefect import get_run_logger
    from prefect.deployments import run_deployment

    sent = {key: _jsonable(value) for key, value in parameters.items()}
    get_run_logger().info(f"{name}: running deployment {deployment!r} on its work pool")
    flow_run = run_deployment(deployment, parameters={**sent, "result_uri": result_uri}, timeout=timeout_s)
    state = flow_run.state
    where = f"stage {name} (deployment {deployment!r}, flow run {flow_run.name} {flow_run.id})"
    if state is None or not state.is_final():  # out of time: do not leave it to take a GPU later
        _cancel(flow_run.id, f"the factory stopped waiting for it after {timeout_s:.0f} s (stages.timeout_s)")
        still = state.type.value.lower() if state else "not created"
        raise StageFailed(f"{where} did not finish within {timeout_s:.0f} s (stages.timeout_s): it was still "
                          f"{still}, and is cancelled; is a worker of its pool running?")
    if not state.is_completed():
        raise StageFailed(f"{where} ended {state.type.value.lower()}" + (f": {state.message}" if state.message else ""))
    return store.read_json(result_uri)


def _cancel(flow_run_id, message: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelling(message=message), force=True)
