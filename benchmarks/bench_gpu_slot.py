"""What the `gpu` slot costs an augment batch, on a real local Prefect server backed by SQLite
and by PostgreSQL (issue 14, "the slot stall").

    python -m benchmarks.bench_gpu_slot [--tasks 30] [--backends sqlite postgres]

Three flows of empty tasks run one after another (as augment runs its batches at
``parallel: 1``), each timed from submit to result:

- ``bare``: no slot at all (the floor);
- ``slot per batch``: every task takes and releases one slot of a `gpu` limit of 1 (the
  augment flow before issue 14);
- ``slots per run``: the flow takes its slots once with ``flows.gpu.gpu_slots`` and its
  tasks take none (the augment flow now); the one-off cost of taking them is reported apart.

PostgreSQL is Debian's (initdb and pg_ctl as the ``postgres`` user, on a Unix socket in a
temporary folder); without it that backend is skipped and the report says so. Results:
benchmarks/results/bench_gpu_slot.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, save

FLOWS = ("bare", "slot per batch", "slots per run")


def run_flows(n: int) -> dict:
    """The three flows on the server PREFECT_API_URL names; per-task seconds and the one-off cost."""
    from prefect import flow, get_run_logger, task
    from prefect.concurrency.sync import concurrency

    from flows.gpu import GPU_LEASE_S, gpu_slots

    @task
    def empty() -> None:
        return None

    @task
    def empty_holding_a_slot() -> None:
        with concurrency("gpu", occupy=1, lease_duration=GPU_LEASE_S):
            return None

    def timed_tasks(body) -> list[float]:
        seconds = []
        for _ in range(n):
            started = time.perf_counter()
            body.submit().result()
            seconds.append(time.perf_counter() - started)
        return seconds

    @flow
    def bare() -> dict:
        return {"per_task": timed_tasks(empty)}

    @flow
    def slot_per_batch() -> dict:
        return {"per_task": timed_tasks(empty_holding_a_slot)}

    @flow
    def slots_per_run() -> dict:
        started = time.perf_counter()
        with gpu_slots(1, get_run_logger()):
            taken = time.perf_counter() - started
            per_task = timed_tasks(empty)
            started = time.perf_counter()
        return {"per_task": per_task, "once_per_run": taken + time.perf_counter() - started}

    out = {}
    for name, body in zip(FLOWS, (bare, slot_per_batch, slots_per_run)):
        body()  # warm-up: the first flow and task runs of a process pay for imports and registration
        result = body()
        per_task = result["per_task"]
        out[name] = {"median_ms": round(1000 * statistics.median(per_task), 1),
                     "p90_ms": round(1000 * sorted(per_task)[int(0.9 * len(per_task))], 1), "tasks": len(per_task)}
        if "once_per_run" in result:
            out[name]["once_per_run_ms"] = round(1000 * result["once_per_run"], 1)
    return out


class Postgres:
    """A throw-away PostgreSQL cluster on a Unix socket, run as the `postgres` user."""

    def __init__(self, folder: Path):
        self.folder, self.data, self.port = folder, folder / "data", 55432

    def __enter__(self) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.folder, "postgres")
        self._as_postgres(["initdb", "-D", str(self.data), "-U", "postgres", "--auth", "trust"])
        self._as_postgres(["pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "start",
                           "-o", f"-k {self.folder} -p {self.port} -c listen_addresses=''"])
        return f"postgresql+asyncpg://postgres@/postgres?host={self.folder}&port={self.port}"

    def __exit__(self, *exc) -> None:
        self._as_postgres(["pg_ctl", "-D", str(self.data), "-m", "fast", "stop"])

    @staticmethod
    def _as_postgres(command: list[str]) -> None:
        prefix = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        subprocess.run(prefix + command, check=True, capture_output=True, timeout=120)


def measure(backend: str, n: int, work: Path) -> dict:
    """Start a Prefect server on ``backend`` in a child process and time the flows there."""
    env = {**os.environ, "TAILFORGE_HOME": str(work / backend), "BENCH_TASKS": str(n)}
    env.pop("PREFECT_API_URL", None)
    if backend == "postgres":
        if not shutil.which("initdb") or not shutil.which("pg_ctl"):
            return {"skipped": "no PostgreSQL here (Debian's postgresql package has initdb and pg_ctl)"}
        with Postgres(work / "pg") as url:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = url
            return _child(env)
    return _child(env)


def _child(env: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_gpu_slot", "--child"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the measuring process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child() -> None:
    from flows import server

    url = server.start(timeout=180.0)
    os.environ.update(PREFECT_API_URL=url, PREFECT_HOME=str(server.prefect_home()))
    try:
        server.ensure_gpu_limit(1)
        result = run_flows(int(os.environ["BENCH_TASKS"]))
    finally:
        server.stop()
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30, help="tasks per flow (default 30)")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child()
        return {}
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-slot-"))
    os.chmod(work, 0o755)
    try:
        results = {backend: measure(backend, args.tasks, work) for backend in args.backends}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"command": " ".join(["python -m benchmarks.bench_gpu_slot", *(argv or sys.argv[1:])]),
              "results": results, "seconds": round(time.perf_counter() - started, 1)}
    print(save("bench_gpu_slot", report).read_text())
    return report


if __name__ == "__main__":
    main()
