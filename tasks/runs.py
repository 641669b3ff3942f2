"""Run records: one JSON per flow run under ``<output>/runs/``, read by the catalog's runs view.

A record names the process that writes it (pid, host, the process's start time). A run that is
killed never writes its final record; the next run that writes into the same output marks such
a record ``crashed`` when its process is gone (else it would stay "running" for good). Only
records of this host can be checked; others are left as they are."""

from __future__ import annotations

import os
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from tasks import store
from tasks.dataset import utcnow

SECRET_WORDS = ("password", "token", "api_key", "secret_access")


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent)
        return done.stdout.strip() or None if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _clean(value):
    """Parameters without anything that looks like a credential."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if any(w in k.lower() for w in SECRET_WORDS) else _clean(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def process_start(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (proc(5), /proc/PID/stat field 22);
    None where there is no /proc. Tells a live process from a later one that reuses its pid."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def run_fields(run_id: str, flow: str, parameters: dict, started_at) -> dict:
    """What a run's record says in every state: which run, of what, started when, by which
    process. Computed once per run (the commit and the Prefect look-ups cost a subprocess and
    API calls), then written with each state."""
    return {"run_id": run_id, "prefect_flow_run": is_prefect_run(run_id), "parent_run_id": parent_run_id(),
            "flow": flow, "parameters": _clean(parameters), "git_commit": git_commit(),
            "started_at": started_at.isoformat(), "pid": os.getpid(), "host": socket.gethostname(),
            "process_start": process_start(os.getpid())}


def write_run_record(out_uri: str, run_id: str, flow: str, parameters: dict, status: str, started_at,
                     counts: dict | None = None, on_crashed: Callable[[dict], None] | None = None,
                     fields: dict | None = None) -> str:
    """Write (or overwrite) a run's record; a new "running" record first marks crashed runs (and
    calls ``on_crashed`` with each one's record: the flows mark its Prefect flow run too).
    ``fields``: the run's ``run_fields`` when the caller has them already."""
    if status == "running":
        mark_crashed_runs(out_uri, run_id, on_crashed)
    uri = store.join(out_uri, "runs", f"{run_id}.json")
    store.write_json(uri, {**(fields or run_fields(run_id, flow, parameters, started_at)), "status": status,
                           "ended_at": utcnow().isoformat() if status != "running" else None,
                           "counts": counts or {}})
    return uri


@contextmanager
def recorded_run(out_uri: str, run_id: str, flow: str, parameters: dict, started_at,
                 on_crashed: Callable[[dict], None] | None = None,
                 parent: str | None = None) -> Iterator[Callable[[dict], str]]:
    """A run's record from start to end: "running" now; the body calls the yielded function with
    its counts to record "completed"; a body that raises leaves "failed" with the error (or
    "interrupted" on Ctrl-C), never "running" (failed runs say so)."""
    fields = run_fields(run_id, flow, parameters, started_at)
    if parent:  # a stage recorded by the run that holds it (the factory's fine-tune), not by a subflow
        fields["parent_run_id"] = parent

    def write(status: str, counts: dict | None = None, **extra) -> str:
        return write_run_record(out_uri, run_id, flow, parameters, status, started_at, counts, fields=fields, **extra)

    write("running", on_crashed=on_crashed)
    try:
        yield lambda counts: write("completed", counts)
    except BaseException as exc:
        status = "failed" if isinstance(exc, Exception) else "interrupted"
        try:
            write(status, {"error": f"{type(exc).__name__}: {exc}"[:500]})
        except Exception:  # the store itself is down: the original error matters more
            pass
        raise


def is_prefect_run(run_id: str) -> bool:
    """Whether ``run_id`` is the Prefect flow run this code runs in (a CLI ingest is not one: a
    UI link to it would lead nowhere)."""
    try:
        from prefect.runtime import flow_run

        return str(flow_run.get_id()) == str(run_id)
    except Exception:
        return False


def parent_run_id() -> str | None:
    """The Prefect flow run this run is a subflow of (the factory's, for its stages), or None."""
    try:
        from prefect.runtime import flow_run

        parent = flow_run.get_parent_flow_run_id()
    except Exception:  # no Prefect, or its server unreachable: the record is still worth writing
        return None
    return str(parent) if parent else None


UNTOLD = ("failed", "interrupted")  # ends a run may not have reached its Prefect server with


def process_gone(record: dict) -> bool:
    """True when the record's process is known to have ended: same host, and its pid is free or
    now belongs to a process that started later. Records of other hosts or without a pid: False."""
    pid, host = record.get("pid"), record.get("host")
    if not pid or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    started, now = record.get("process_start"), process_start(pid)
    return started is not None and now is not None and now != started


def mark_crashed_runs(out_uri: str, current_run_id: str,
                      on_crashed: Callable[[dict], None] | None = None) -> list[str]:
    """Mark "running" records of ``out_uri`` whose process is gone as "crashed", with the reason,
    and call ``on_crashed`` with each new record. Returns their run ids.

    A run that ended "failed" or "interrupted" while its Prefect server was gone could not tell the
    server (its flow run stays Running there): ``on_crashed`` also gets each such record once
    (``server_checked`` is then set), and leaves a flow run that is already final as it is."""
    crashed = []
    for uri in store.glob(out_uri, "runs/*.json"):
        try:
            record = store.read_json(uri)
        except (ValueError, FileNotFoundError):
            continue  # not a record (or removed meanwhile): nothing to mark
        if record.get("run_id") == current_run_id or not process_gone(record):
            continue
        if record.get("status") == "running":
            reason = (f"process {record['pid']} on {record['host']} ended without finishing the run "
                      f"(killed or lost); noticed at {utcnow().isoformat()} by run {current_run_id}")
            record = {**record, "status": "crashed", "counts": {**(record.get("counts") or {}), "error": reason}}
            crashed.append(record.get("run_id"))
        elif on_crashed is None or not (record.get("status") in UNTOLD and record.get("prefect_flow_run")
                                        and not record.get("server_checked")):
            continue
        if on_crashed is not None:
            on_crashed(record)
            record["server_checked"] = True
        store.write_json(uri, record)
    return crashed
