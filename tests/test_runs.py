"""Run records of killed runs (issue 12, low items): the next run into the same output marks
them crashed when their process is gone; live ones and other hosts' are left alone."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from flows.cli import main
from tasks import store
from tasks.dataset import utcnow
from tasks.runs import process_gone, process_start, write_run_record

REPO = Path(__file__).resolve().parents[1]
START_AND_HANG = ("import sys, time; sys.path.insert(0, {repo!r}); from tasks.runs import write_run_record\n"
                  "from tasks.dataset import utcnow\n"
                  "write_run_record({out!r}, 'killed-run', 'augment', {{}}, 'running', utcnow())\n"
                  "print('running', flush=True); time.sleep(120)")


def _record(out: str, run_id: str) -> dict:
    return store.read_json(store.join(out, "runs", f"{run_id}.json"))


def test_a_killed_run_is_marked_crashed_by_the_next_run(tmp_path, capsys):
    out = str(tmp_path / "runs" / "nightly")
    child = subprocess.Popen([sys.executable, "-c", START_AND_HANG.format(repo=str(REPO), out=out)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "running"
    write_run_record(out, "alive-run", "factory", {}, "running", utcnow())  # this process: alive
    assert _record(out, "killed-run")["status"] == "running"  # its process still runs
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    write_run_record(out, "next-run", "augment", {}, "running", utcnow())
    killed = _record(out, "killed-run")
    assert killed["status"] == "crashed"
    assert f"process {child.pid} on {socket.gethostname()}" in killed["counts"]["error"]
    assert "next-run" in killed["counts"]["error"]
    assert _record(out, "alive-run")["status"] == "running" and _record(out, "next-run")["status"] == "running"
    assert main(["runs", "--root", str(tmp_path), "--json"]) == 0
    shown = {r["run_id"]: r["status"] for r in json.loads(capsys.readouterr().out)}
    assert shown == {"killed-run": "crashed", "alive-run": "running", "next-run": "running"}


def test_a_run_that_ended_without_its_server_is_told_to_the_server_once(tmp_path):
    """A run that ended "failed" or "interrupted" while its Prefect server was gone left its flow
    run Running there: the next run hands each such record to ``on_crashed`` once."""
    out = str(tmp_path / "runs" / "nightly")
    gone = {"pid": 2 ** 22 + 7, "host": socket.gethostname(), "prefect_flow_run": True}  # above any Linux pid_max: gone
    for run_id, status in (("lost-server", "interrupted"), ("failed-run", "failed"), ("fine", "completed")):
        write_run_record(out, run_id, "factory", {}, status, utcnow(), fields={"run_id": run_id, **gone})
    write_run_record(out, "local-run", "ingest", {}, "failed", utcnow(),
                     fields={"run_id": "local-run", **gone, "prefect_flow_run": False})
    told = []
    write_run_record(out, "next-run", "factory", {}, "running", utcnow(), on_crashed=told.append)
    assert sorted(r["run_id"] for r in told) == ["failed-run", "lost-server"]
    assert _record(out, "lost-server")["status"] == "interrupted" and _record(out, "lost-server")["server_checked"]
    write_run_record(out, "third-run", "factory", {}, "running", utcnow(), on_crashed=told.append)
    assert len(told) == 2  # once each


def test_other_hosts_old_records_and_reused_pids():
    me = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": process_start(os.getpid())}
    assert not process_gone(me)
    assert not process_gone({**me, "host": "another-host"})  # cannot be checked from here
    assert not process_gone({"run_id": "old"})  # a record from before pids were written
    assert process_gone({**me, "process_start": me["process_start"] - 1})  # same pid, a later process


def test_the_prefect_flow_run_of_a_crashed_record_is_marked_crashed(prefect_server):
    """A killed run's flow run and its unfinished task runs stay Running on the server until the
    next run's record check marks them Crashed (flows/crashes.py)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running

    from flows.crashes import mark_crashed

    @flow(name="killed-in-a-test")
    def killed():
        pass

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(killed, state=Running())
        running = client.create_task_run(_task(), flow_run.id, dynamic_key="0", state=Running())
        finished = client.create_task_run(_task(), flow_run.id, dynamic_key="1", state=Completed())
        stage = client.create_task_run(_task(), flow_run.id, dynamic_key="2", state=Running())  # a subflow's
        subflow = client.create_flow_run(killed, parent_task_run_id=stage.id, state=Running())
        inside = client.create_task_run(_task(), subflow.id, dynamic_key="0", state=Running())
        record = {"run_id": str(flow_run.id), "flow": "augment", "counts": {"error": "process 1 on h ended"}}
        assert mark_crashed(record)
        assert client.read_flow_run(flow_run.id).state.is_crashed()
        assert client.read_flow_run(flow_run.id).state.message == "process 1 on h ended"
        assert client.read_task_run(running.id).state.is_crashed()
        assert client.read_task_run(finished.id).state.is_completed()  # finished work stays as it was
        assert client.read_flow_run(subflow.id).state.is_crashed()  # the stage's run, and what it ran
        assert client.read_task_run(inside.id).state.is_crashed()
        assert not mark_crashed(record)  # already final: nothing to do
    assert not mark_crashed({"run_id": "local-20261129-1"})  # not a Prefect run id
    assert not mark_crashed({"run_id": "00000000-0000-4000-8000-000000000000"})  # unknown to the server


def _task():
    from prefect import task

    @task(name="augment-batch")
    def batch():
        pass

    return batch
