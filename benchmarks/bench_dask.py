"""Augment's Dask fan-out with 1 and 2 workers: throughput and its ratio (issue 14).

    python -m benchmarks.bench_dask [--batches 16] [--seconds 2.0]

Real batches are CPU-bound here and this machine has 2 cores, so two workers would only split
them; a GPU host's batch is bound by its GPU, not the host's CPU. So each batch is a stand-in
that sleeps ``--seconds`` (the time a GPU would take) and goes through everything else the
real one does: a Prefect task run submitted by ``flows.runners.batch_submitter`` to a
scheduler and worker processes on loopback, one `GPU` resource per worker, inside the run's
`gpu` slots (``flows.gpu.gpu_slots``) on a local Prefect server. Ratio = throughput with 2
workers / with 1; the goal on real hosts is >= 0.9 x N for N GPU hosts.
Results: benchmarks/results/bench_dask.json.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, save


def stand_in_batch(index: int, seconds: float) -> int:
    time.sleep(seconds)  # the GPU's share of a real batch
    return index


def fan_out(address: str, batches: int, seconds: float, workers: int) -> float:
    """Wall seconds for ``batches`` stand-in batches, ``workers`` in flight, on the cluster."""
    from prefect import flow, get_run_logger, task

    from flows.gpu import gpu_slots
    from flows.runners import batch_submitter

    batch = task(stand_in_batch, name="stand-in-batch")

    @flow(name="bench-dask")
    def run() -> float:
        started = time.perf_counter()
        with gpu_slots(workers, get_run_logger()) as slots, batch_submitter(batch, "dask", address, "GPU") as submit:
            assert slots == workers
            futures = [submit(index=i, seconds=seconds) for i in range(batches)]
            assert sorted(f.result() for f in futures) == list(range(batches))
        return time.perf_counter() - started

    return run()


def cluster(workers: int, env: dict, work: Path):
    dask = str(Path(sys.executable).with_name("dask"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    log = open(work / f"dask-{workers}.log", "wb")
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)]
    processes += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--resources", "GPU=1",
                                    "--no-dashboard", "--local-directory", str(work / f"w{workers}-{n}")],
                                   env=env, stdout=log, stderr=subprocess.STDOUT) for n in range(workers)]
    return address, processes


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0, help="stand-in GPU seconds per batch")
    args = parser.parse_args(argv)
    from distributed import Client

    from flows import server

    work = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    os.environ["TAILFORGE_HOME"] = str(work / "home")
    url = server.start(timeout=180.0)
    os.environ.update(PREFECT_API_URL=url, PREFECT_HOME=str(server.prefect_home()))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results = {}
    try:
        server.ensure_gpu_limit(2)
        for workers in (1, 2):
            address, processes = cluster(workers, env, work)
            try:
                with Client(address, timeout="60s") as client:
                    client.wait_for_workers(workers, timeout=120)
                fan_out(address, 2, 0.0, workers)  # warm-up: workers import Prefect and the task's module
                wall = fan_out(address, args.batches, args.seconds, workers)
            finally:
                for process in processes[::-1]:
                    process.kill()
                    process.wait()
            ideal = args.batches * args.seconds / workers
            results[f"{workers}_workers"] = {"wall_s": round(wall, 2), "batches_per_s": round(args.batches / wall, 3),
                                             "overhead_per_batch_s": round((wall - ideal) * workers / args.batches, 3)}
    finally:
        server.stop()
    ratio = results["2_workers"]["batches_per_s"] / results["1_workers"]["batches_per_s"]
    report = {"command": " ".join(["python -m benchmarks.bench_dask", *(argv or sys.argv[1:])]),
              "batches": args.batches, "stand_in_seconds": args.seconds,
              "results": results, "ratio_2_over_1": round(ratio, 3)}
    print(save("bench_dask", report).read_text())
    return report


if __name__ == "__main__":
    main()
