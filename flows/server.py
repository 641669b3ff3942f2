"""A local Prefect server for the demo: started on 127.0.0.1 with its state under
$TAILFORGE_HOME/prefect, left running for the user, stopped with ``tailforge demo --stop``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from flows.server_watch import answers
from flows.settings import tailforge_home

HOST = "127.0.0.1"


def prefect_home() -> Path:
    return tailforge_home() / "prefect"


def _pid_file() -> Path:
    return prefect_home() / "server.pid"


def _url_file() -> Path:
    return prefect_home() / "server.url"


def _free_port(preferred: int) -> int:
    for port in [preferred, *range(preferred + 1, preferred + 50)]:
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) != 0:
                return port
    raise RuntimeError(f"no free port between {preferred} and {preferred + 49} on {HOST}")


def server_env() -> dict[str, str]:
    """The environment for Prefect commands that use the demo's state folder."""
    return {**os.environ, "PREFECT_HOME": str(prefect_home()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true"}


def running_url() -> str | None:
    """The URL of a demo server that this home already started and that still answers."""
    if _url_file().exists() and _pid_file().exists():
        url = _url_file().read_text().strip()
        if answers(url):
            return url
    return None


def start(port: int = 4200, timeout: float = 120.0) -> str:
    """Start (or find) the demo server; returns its API URL (http://127.0.0.1:PORT/api)."""
    url = running_url()
    if url:
        return url
    prefect_home().mkdir(parents=True, exist_ok=True)
    port = _free_port(port)
    url = f"http://{HOST}:{port}/api"
    log = open(prefect_home() / "server.log", "ab")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", HOST, "--port", str(port),
         "--analytics-off"], env={**server_env(), "PREFECT_SERVER_UI_API_URL": url},  # the UI's API: this port
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _pid_file().write_text(str(process.pid))
    _url_file().write_text(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited (status {process.returncode}); "
                               f"see {prefect_home() / 'server.log'}")
        if answers(url):
            return url
        time.sleep(1.0)
    stop()
    raise RuntimeError(f"the Prefect server did not answer within {timeout:.0f} s; see {prefect_home() / 'server.log'}")


def stop() -> bool:
    """Stop the demo server this home started; False when none was running."""
    if not _pid_file().exists():
        return False
    pid = int(_pid_file().read_text().strip() or 0)
    _pid_file().unlink()
    _url_file().unlink(missing_ok=True)
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    for _ in range(50):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True


def ensure_gpu_limit(limit: int = 1) -> None:
    """Create the global ``gpu`` concurrency limit when the server has none."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name("gpu")
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu", limit=limit))
