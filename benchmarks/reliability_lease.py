"""The `gpu` slot of a killed augment (issue 12, defect 5), on a real Prefect server on loopback:
a process takes the slot as an augment run does (flows/gpu.py: GPU_LEASE_S), keeps it past
the lease's term while alive (Prefect renews the lease), is killed with SIGKILL, and the suite
measures how long the slot stays taken. Prefect's default lease kept it 300 s."""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT
from benchmarks.reliability_sections import tally

HOLDER = ("import time\n"
          "from prefect.concurrency.sync import concurrency\n"
          "from flows.gpu import GPU_LEASE_S\n"
          "with concurrency('gpu', occupy=1, lease_duration=GPU_LEASE_S):\n"
          "    print('held', flush=True)\n"
          "    time.sleep(900)\n")
FREE_LIMIT_S = 240.0  # a slot still taken this long after the kill counts as a hang


def active_slots() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name("gpu").active_slots


def _wait_for_line(child: subprocess.Popen, expected: str, limit_s: float) -> bool:
    ready, _, _ = select.select([child.stdout], [], [], limit_s)
    return bool(ready) and child.stdout.readline().strip() == expected


def _watch(seconds: float, every: float) -> int:
    """The fewest slots seen taken over ``seconds``."""
    fewest, deadline = active_slots(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(every)
        fewest = min(fewest, active_slots())
    return fewest


def _until_free(limit_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if active_slots() == 0:
            return round(time.monotonic() - started, 1)
        time.sleep(2.0)
    return None


def _wait_line() -> str:
    """What flows.augment logs when a run finds the slot taken (before it waits for it)."""
    from flows.gpu import gpu_wait_message, read_gpu_limit

    limit = read_gpu_limit(logging.getLogger("reliability.gpu"))
    return (gpu_wait_message(limit.limit, limit.active_slots) or "") if limit else ""


def section_gpu_lease(args, work: Path) -> dict:
    from flows import server

    url = server.start(timeout=180.0)  # under $TAILFORGE_HOME/prefect, which the suite set to a temp folder
    os.environ.update(PREFECT_API_URL=url, PREFECT_HOME=str(server.prefect_home()))  # the holder inherits them
    holder = None
    try:
        server.ensure_gpu_limit(1)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=ROOT,
                                  stdout=subprocess.PIPE, text=True, env=dict(os.environ))
        if not _wait_for_line(holder, "held", 180.0):
            raise RuntimeError("the slot holder did not take the `gpu` slot within 180 s")
        return _measure(args, holder)
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        server.stop()


def _measure(args, holder: subprocess.Popen) -> dict:
    from flows.gpu import GPU_LEASE_S

    kept = _watch(args.lease_hold, 5.0)  # alive past the term: renewed, so still taken
    line = _wait_line()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    freed_after = _until_free(FREE_LIMIT_S)
    bound = GPU_LEASE_S + 15 + 10  # term + the repossessor's 15 s loop + polling and a busy machine
    ok = kept == 1 and freed_after is not None and freed_after <= bound and "waiting for 1 `gpu` slot(s)" in line
    return {**tally(trials=1, survived=ok, hangs=freed_after is None), "lease_s": GPU_LEASE_S,
            "held_alive_s": args.lease_hold, "slot_kept_while_alive": kept == 1,
            "freed_after_kill_s": freed_after, "bound_s": bound, "prefect_default_lease_s": 300,
            "wait_log_line": line}
