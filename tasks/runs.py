"""Run records: one JSON per flow run under ``<output>/runs/``, read by the catalog's runs view."""

from __future__ import annotations

import subprocess
from pathlib import Path

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


def write_run_record(out_uri: str, run_id: str, flow: str, parameters: dict, status: str, started_at,
                     counts: dict | None = None) -> str:
    uri = store.join(out_uri, "runs", f"{run_id}.json")
    store.write_json(uri, {"run_id": run_id, "flow": flow, "status": status, "parameters": _clean(parameters),
                           "git_commit": git_commit(), "started_at": started_at.isoformat(),
                           "ended_at": utcnow().isoformat() if status != "running" else None,
                           "counts": counts or {}})
    return uri
