"""A deployment of the real factory flow is served from a process work pool and a worker on
127.0.0.1 picks up its run (slow: a worker subprocess imports the whole stack)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.tiny_factory import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_process_worker_runs_a_deployment(prefect_server, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    assert api_url.startswith("http://127.0.0.1")
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="test-cpu", type="process"), overwrite=True)
    deployment_id = flow.from_source(source=str(ROOT), entrypoint="flows/factory.py:factory_flow").deploy(
        name="tiny", work_pool_name="test-cpu", parameters={"overrides": TINY}, print_next_steps=False)
    run = run_deployment("factory/tiny", timeout=0)
    env = {**os.environ, "PREFECT_API_URL": api_url, "TAILFORGE_HOME": str(tmp_path / "home")}
    worker = subprocess.run([str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", "test-cpu",
                             "--type", "process", "--run-once"], env=env, capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert deployment_id and state.is_completed(), state
    assert (tmp_path / "home" / "runs" / "tiny" / "report" / "metrics.json").exists()


def test_the_nightly_parent_runs_its_gpu_stages_on_the_gpu_pool(prefect_server, tmp_path):
    """Issue 14: one YAML (here: overrides) drives the run; the parent runs on a `cpu` process
    pool and starts pretrain, augment and fine-tune as deployments on a `gpu` pool, each picked
    up by that pool's own worker; the Prefect API shows where each flow run ran."""
    import time

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    with get_client(sync_client=True) as client:
        for pool in ("pool-cpu", "pool-gpu"):
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
    stages = {"pretrain": "pretrain/on-gpu", "augment": "augment/on-gpu", "finetune": "finetune/on-gpu"}
    for entrypoint in ("flows/pretrain.py:pretrain_flow", "flows/augment.py:augment_flow",
                       "flows/finetune.py:finetune_flow"):
        flow.from_source(source=str(ROOT), entrypoint=entrypoint).deploy(
            name="on-gpu", work_pool_name="pool-gpu", print_next_steps=False)
    flow.from_source(source=str(ROOT), entrypoint="flows/factory.py:factory_flow").deploy(
        name="two-pools", work_pool_name="pool-cpu", parameters={"overrides": {**TINY, "stages": stages}},
        print_next_steps=False)
    parent = run_deployment("factory/two-pools", timeout=0)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "TAILFORGE_HOME": str(tmp_path / "home"),
           "PREFECT_WORKER_QUERY_SECONDS": "1"}
    log = open(tmp_path / "workers.log", "wb")
    workers = [subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", pool,
                                 "--type", "process"], env=env, stdout=log, stderr=subprocess.STDOUT)
               for pool in ("pool-cpu", "pool-gpu")]
    try:
        deadline = time.monotonic() + 900
        with get_client(sync_client=True) as client:
            while not (state := client.read_flow_run(parent.id).state).is_final() and time.monotonic() < deadline:
                time.sleep(2)
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])))
            flow_names = {f.id: f.name for f in client.read_flows()}
    finally:  # a worker on a busy SQLite server can take long to stop: its runs are done, so kill it
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    assert state.is_completed(), (state, (tmp_path / "workers.log").read_text()[-4000:])
    ran_on = {flow_names[c.flow_id]: c.work_pool_name for c in children if c.deployment_id}
    assert ran_on == {"pretrain": "pool-gpu", "augment": "pool-gpu", "finetune": "pool-gpu"}
    assert all(c.state.is_completed() for c in children)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(parent.id).work_pool_name == "pool-cpu"
    report = tmp_path / "home" / "runs" / "tiny" / "report" / "metrics.json"
    assert report.exists()  # the parent read each stage's handles and wrote the report
    assert len(list((tmp_path / "home" / "runs" / "tiny" / "stages").glob("*.json"))) == 3


def test_a_stage_that_does_not_finish_in_time_is_cancelled_and_named(prefect_server, tmp_path):
    """No worker serves this pool: the parent waits `stages.timeout_s`, cancels the stage's flow
    run (so it cannot start later and hold a GPU) and fails with a message naming it."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.pretrain import pretrain_flow
    from flows.stages import StageFailed, run_stage

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="pool-nobody", type="process"), overwrite=True)
    flow.from_source(source=str(ROOT), entrypoint="flows/pretrain.py:pretrain_flow").deploy(
        name="unserved", work_pool_name="pool-nobody", print_next_steps=False)

    @flow
    def parent():
        return run_stage("pretrain", pretrain_flow, {"dataset_uri": "x", "models_uri": "y"}, "pretrain/unserved",
                         str(tmp_path / "pretrain.json"), timeout_s=2)

    with pytest.raises(StageFailed, match=r"stage pretrain \(deployment 'pretrain/unserved', flow run .*\) did not "
                                          r"finish within 2 s \(stages.timeout_s\): it was still scheduled"):
        parent()
    with get_client(sync_client=True) as client:
        (child,) = [r for r in client.read_flow_runs() if r.deployment_id and r.work_pool_name == "pool-nobody"]
        assert child.state.type.value in ("CANCELLING", "CANCELLED")


def test_a_worker_run_that_fails_on_a_fixable_mistake_shows_one_line_in_its_logs(prefect_server, tmp_path):
    """A nightly started by a worker with a checkpoint that is not there: its logs in the UI hold
    the one line and its Failed state, not the flow engine's traceback of the same error (the
    engine raises a deployment run's failure again at its end and logs it)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="test-fixable", type="process"), overwrite=True)
    missing = str(tmp_path / "classifier-from-last-week.pt")
    flow.from_source(source=str(ROOT), entrypoint="flows/factory.py:factory_flow").deploy(
        name="missing-checkpoint", work_pool_name="test-fixable", print_next_steps=False,
        parameters={"overrides": {**TINY, "classifier": {"checkpoint": missing}}})
    run = run_deployment("factory/missing-checkpoint", timeout=0)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "TAILFORGE_HOME": str(tmp_path / "home")}
    subprocess.run([str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", "test-fixable",
                    "--type", "process", "--run-once"], env=env, capture_output=True, text=True, timeout=600)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
        logs = [entry.message for entry in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))]
    line = f"FileNotFoundError: classifier checkpoint {missing} does not exist"
    assert state.is_failed() and state.message == line
    assert line in logs
    assert not [m for m in logs if "Traceback" in m or "unexpected exception" in m], logs
