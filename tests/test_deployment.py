"""A deployment of the real factory flow is served from a process work pool and a worker on
127.0.0.1 picks up its run (slow: a worker subprocess imports the whole stack)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_factory import TINY

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
