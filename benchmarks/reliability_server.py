"""A Prefect server lost in the middle of a factory run (issue 35 item 5), on a real local server,
after a second nightly on the same output was refused while the first ran (item 8):
`tailforge run` (the tiny factory of the tests) is started, the server is killed with SIGKILL once
the run is fine-tuning, and the suite measures how long the run takes to end, its exit status and
its stderr. Then the server is started again on the same database, the same command runs to its
end, and no flow run or task run may be left Running on the server. Before the fix: 312 s,
8 tracebacks, exit 1, and the dead runs Running for good."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import yaml

from benchmarks.reliability_sections import finish, leftovers, start_cli, tally

FAIL_BOUND_S = 60.0  # the bound from the kill to the run's end


def _left_running() -> tuple[int, int]:
    """Flow runs and task runs the server still holds as Running (or Pending)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
                                                TaskRunFilter, TaskRunFilterState, TaskRunFilterStateType)
    from prefect.client.schemas.objects import StateType

    open_states = [StateType.RUNNING, StateType.PENDING]
    with get_client(sync_client=True) as client:
        flows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=open_states))))
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=open_states))))
    return len(flows), len(tasks)


def _when_fine_tuning(output: Path, child, limit_s: float) -> bool:
    """Wait until the factory's fine-tune stage has its run record (the run is deep in Prefect)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and child.poll() is None:
        if list(output.glob("reports/*/runs/*.json")):
            return True
        time.sleep(0.5)
    return False


def _overlap(config: Path, output: Path, child) -> dict:
    """A second nightly on the output a running one holds: refused at once, in one line, before it
    ingests or trains (issue 35 item 8); the first goes on."""
    deadline = time.monotonic() + 300
    while not (output / "runs").exists() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.5)
    second = start_cli(["run", str(config)], env=dict(os.environ))
    started = time.monotonic()
    done = finish(second, 300.0)
    err = done["err"].strip().splitlines()
    right = (done["rc"] == 2 and "Traceback" not in done["err"] and "is being written by" in (err or [""])[-1]
             and child.poll() is None)
    return {"trial": "a second nightly on the output a running one holds", "rc": done["rc"],
            "seconds": round(time.monotonic() - started, 1), "message": (err or [""])[-1][:240],
            "tracebacks": done["err"].count("Traceback"), "first_still_running": child.poll() is None,
            "survived": right}


def section_server_lost(args, work: Path) -> dict:
    from flows import server
    from benchmarks.tiny_factory import TINY

    config = work / "nightly.yaml"
    output = work / "out"
    config.write_text(yaml.safe_dump({**TINY, "output": str(output)}))
    url = server.start(timeout=180.0)  # under $TAILFORGE_HOME/prefect, which the suite set to a temp folder
    os.environ.update(PREFECT_API_URL=url, PREFECT_HOME=str(server.prefect_home()))
    child = start_cli(["run", str(config)], env=dict(os.environ))
    try:
        overlap = _overlap(config, output, child)
        reached = _when_fine_tuning(output, child, 600.0)
        os.killpg(int((server.prefect_home() / "server.pid").read_text()), signal.SIGKILL)
        killed_at = time.monotonic()
        first = finish(child, 600.0)
        ended_s = round(time.monotonic() - killed_at, 1)
    finally:
        server.stop()
    server.start(timeout=180.0)  # the same database: the dead run's flow runs are still there
    try:
        again = finish(start_cli(["run", str(config)], env=dict(os.environ)), 900.0)
        flows_open, tasks_open = _left_running()
    finally:
        server.stop()
    err = first["err"].strip().splitlines()  # Prefect's INFO logs of the run, then what the kill brought
    right = (reached and first["rc"] == 2 and "Traceback" not in first["err"] and url in (err or [""])[-1]
             and ended_s <= FAIL_BOUND_S and again["rc"] == 0 and (flows_open, tasks_open) == (0, 0))
    trial = {"trial": "Prefect server killed while the factory fine-tunes; then restarted and the same run",
             "rc": first["rc"], "seconds": ended_s, "message": (err or [""])[-1][:240],
             "tracebacks": first["err"].count("Traceback"), "rerun_rc": again["rc"],
             "rerun_message": (again["err"].strip().splitlines() or [""])[-1][:240] if again["rc"] else "",
             "left_running": {"flow_runs": flows_open, "task_runs": tasks_open},
             "bound_s": FAIL_BOUND_S, "survived": right}
    return {**tally(trials=2, survived=right + overlap["survived"],
                    crashes=(first["rc"] not in (2, None)) + (again["rc"] not in (0, None)) + (overlap["rc"] not in (2, None)),
                    hangs=(first["rc"] is None) + (again["rc"] is None) + (overlap["rc"] is None),
                    leaks=len(leftovers(output))),
            "details": [overlap, trial]}


def lines(r: dict) -> list[str]:
    """The section's table for reliability.md."""
    if "details" not in r:
        return [f"error: {r.get('error')}", "", "```", *r.get("log", []), "```"]
    out = ["A second nightly on the output the first holds, while it runs: survived when refused with exit 2, one "
           "line naming the holder, no traceback, and the first still running. Then the server is killed: survived "
           f"when the run ends with exit 2 within {FAIL_BOUND_S:.0f} s of the kill, its last line naming the API URL "
           "and no traceback on stderr (Prefect's INFO log lines of the run come before it), the rerun exit 0, and "
           "no flow or task run left Running on the server.", "",
           "| trial | rc | seconds | tracebacks | rerun rc | left Running | message |",
           "|---|---:|---:|---:|---:|---|---|"]
    for d in r["details"]:
        if "left_running" not in d:  # the overlap
            out.append(f"| {d['trial']} | {d['rc']} | {d['seconds']} | {d['tracebacks']} | – | – | "
                       f"{d['message'].replace('|', '/')} |")
            continue
        out.append(f"| {d['trial']} | {d['rc']} | {d['seconds']} | {d['tracebacks']} | {d['rerun_rc']} | "
                   f"{d['left_running']['flow_runs']} flow, {d['left_running']['task_runs']} task | "
                   f"{d['message'].replace('|', '/')} |")
    return out
